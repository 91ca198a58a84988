"""`llmpulse grafana sync`: push the data source, folder, dashboards and alerting to a
running Grafana through its HTTP API (grafana-client), idempotently.

Every object is read first and written only when it differs from the code, so a second
run makes no writes. Secrets that Grafana never returns (the data source password,
secure contact point fields shown as `[REDACTED]`) are sent on create only, unless
`rotate_secrets=True`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from . import alerts
from .build import DASHBOARDS, render
from .clickhouse import DATASOURCE_UID
from .definitions import FOLDER_TITLE, FOLDER_UID

Action = Literal["created", "updated", "unchanged"]
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class ClickHouseConnection:
    """How Grafana reaches ClickHouse (use the read-only user)."""

    host: str
    port: int = 8123
    protocol: str = "http"
    secure: bool = False
    username: str = "grafana_ro"
    password: str = ""
    database: str = "llmpulse"


@dataclass(frozen=True)
class ContactSettings:
    """Where Grafana's alerts go. With `alertmanager_url`, everything goes to that
    Alertmanager (as the provisioning files do) and it routes by severity; otherwise Grafana
    routes itself, to the receivers whose secret or URL is set (empty ones are left out:
    Grafana rejects a PagerDuty or Slack contact point without its secret)."""

    pagerduty_integration_key: str = ""
    slack_webhook_url: str = ""
    slack_channel: str = ""
    webhook_url: str = ""
    business_tz: str = "UTC"
    alertmanager_url: str = ""

    def enabled_receivers(self) -> set[str]:
        if self.alertmanager_url:
            return {alerts.ALERTMANAGER}
        return {name for name, value in ((alerts.PAGE, self.pagerduty_integration_key),
                                         (alerts.CHAT, self.slack_webhook_url),
                                         (alerts.WEBHOOK, self.webhook_url)) if value}

    def policy_tree(self) -> dict[str, Any]:
        if self.alertmanager_url:
            return alerts.alertmanager_policy_tree()
        return alerts.policy_tree(self.enabled_receivers())


@dataclass
class SyncReport:
    actions: list[tuple[str, str, Action]] = field(default_factory=list)

    def add(self, kind: str, ident: str, action: Action) -> None:
        self.actions.append((kind, ident, action))

    @property
    def changed(self) -> list[tuple[str, str, Action]]:
        return [a for a in self.actions if a[2] != "unchanged"]


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "status_code", None) == 404


def _subset_equal(desired: Any, actual: Any, *, redacted_ok: bool = False) -> bool:
    """Whether every field the code sets has that value in Grafana (extra fields ignored)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        return all(k in actual and _subset_equal(v, actual[k], redacted_ok=redacted_ok) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(actual, list) and len(desired) == len(actual)
                and all(_subset_equal(d, a, redacted_ok=redacted_ok) for d, a in zip(desired, actual)))
    if redacted_ok and actual == REDACTED:
        return True
    if isinstance(desired, float) and isinstance(actual, (int, float)):
        return float(actual) == desired
    return desired == actual


def _get(fetch: Callable[[], Any]) -> Any | None:
    try:
        return fetch()
    except Exception as exc:  # grafana_client raises GrafanaClientError with status_code
        if _is_not_found(exc):
            return None
        raise


def datasource_body(conn: ClickHouseConnection) -> dict[str, Any]:
    ds = alerts.datasource()
    ds["jsonData"] = {"host": conn.host, "port": conn.port, "protocol": conn.protocol, "secure": conn.secure,
                      "username": conn.username, "defaultDatabase": conn.database}
    ds.pop("secureJsonData", None)
    ds.pop("orgId", None)
    return ds


def contact_point_bodies(c: ContactSettings) -> list[dict[str, Any]]:
    values = {
        "${LLMPULSE_PAGERDUTY_INTEGRATION_KEY}": c.pagerduty_integration_key,
        "${LLMPULSE_SLACK_WEBHOOK_URL}": c.slack_webhook_url,
        "${LLMPULSE_SLACK_CHANNEL}": c.slack_channel,
        "${LLMPULSE_ALERT_WEBHOOK_URL}": c.webhook_url,
        "${LLMPULSE_ALERTMANAGER_URL}": c.alertmanager_url,
    }
    points = alerts.alertmanager_contact_points() if c.alertmanager_url else alerts.contact_points(c.enabled_receivers())
    out = []
    for cp in points:
        for r in cp["receivers"]:
            settings = {k: values.get(v, v) if isinstance(v, str) else v for k, v in r["settings"].items()}
            out.append({"uid": r["uid"], "name": cp["name"], "type": r["type"], "settings": settings,
                        "disableResolveMessage": r["disableResolveMessage"]})
    return out


def mute_timing_bodies(c: ContactSettings) -> list[dict[str, Any]]:
    """Business hours for the page route; not needed when nothing pages from Grafana."""
    out = []
    for mt in (alerts.mute_timings() if alerts.PAGE in c.enabled_receivers() else []):
        body = json.loads(json.dumps({"name": mt["name"], "time_intervals": mt["time_intervals"]})
                          .replace("${LLMPULSE_BUSINESS_TZ}", c.business_tz))
        out.append(body)
    return out


def sync(
    url: str,
    token: str,
    *,
    clickhouse: ClickHouseConnection | None = None,
    contacts: ContactSettings | None = None,
    rotate_secrets: bool = False,
    api: Any = None,
) -> SyncReport:
    """Make Grafana at `url` match the code; returns what was created/updated/unchanged."""
    if api is None:
        from grafana_client import GrafanaApi

        api = GrafanaApi.from_url(url, credential=token)
    report = SyncReport()

    # --- data source
    if clickhouse is not None:
        desired = datasource_body(clickhouse)
        current = _get(lambda: api.datasource.get_datasource_by_uid(DATASOURCE_UID))
        if current is None:
            api.datasource.create_datasource({**desired, "secureJsonData": {"password": clickhouse.password}})
            report.add("datasource", DATASOURCE_UID, "created")
        elif rotate_secrets or not _subset_equal(desired, current):
            body = dict(desired)
            if rotate_secrets:
                body["secureJsonData"] = {"password": clickhouse.password}
            api.datasource.update_datasource_by_uid(DATASOURCE_UID, body)
            report.add("datasource", DATASOURCE_UID, "updated")
        else:
            report.add("datasource", DATASOURCE_UID, "unchanged")

    # --- folder
    current = _get(lambda: api.folder.get_folder(FOLDER_UID))
    if current is None:
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        report.add("folder", FOLDER_UID, "created")
    elif current.get("title") != FOLDER_TITLE:
        api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
        report.add("folder", FOLDER_UID, "updated")
    else:
        report.add("folder", FOLDER_UID, "unchanged")

    # --- dashboards
    for spec in DASHBOARDS:
        desired = render(spec)
        current = _get(lambda: api.dashboard.get_dashboard(spec.uid))
        if current is not None and _subset_equal(desired, current.get("dashboard", {})) \
                and current.get("meta", {}).get("folderUid") == FOLDER_UID:
            report.add("dashboard", spec.uid, "unchanged")
            continue
        body = dict(desired)
        body["id"] = None  # matched by uid; overwrite keeps one dashboard per uid
        api.dashboard.update_dashboard({"dashboard": body, "folderUid": FOLDER_UID, "overwrite": True,
                                        "message": "llmpulse grafana sync"})
        report.add("dashboard", spec.uid, "created" if current is None else "updated")

    # --- alert rules
    for rule in alerts.RULES:
        desired = alerts.api_rule(rule)
        current = _get(lambda: api.alertingprovisioning.get_alertrule(rule.uid))
        if current is None:
            api.alertingprovisioning.create_alertrule(desired)
            report.add("alert-rule", rule.uid, "created")
        elif not _subset_equal(desired, current):
            api.alertingprovisioning.update_alertrule(rule.uid, desired)
            report.add("alert-rule", rule.uid, "updated")
        else:
            report.add("alert-rule", rule.uid, "unchanged")

    if contacts is None or not contacts.enabled_receivers():
        return report  # no receiver configured: leave Grafana's alert routing as it is

    # --- contact points (one per receiver uid)
    existing = {cp.get("uid"): cp for cp in (api.alertingprovisioning.get_contactpoints() or [])}
    for body in contact_point_bodies(contacts):
        current = existing.get(body["uid"])
        if current is None:
            api.alertingprovisioning.create_contactpoint(body)
            report.add("contact-point", body["uid"], "created")
        elif rotate_secrets or not _subset_equal(body, current, redacted_ok=True):
            api.alertingprovisioning.update_contactpoint(body["uid"], body)
            report.add("contact-point", body["uid"], "updated")
        else:
            report.add("contact-point", body["uid"], "unchanged")

    # --- mute timings
    for body in mute_timing_bodies(contacts):
        current = _get(lambda: api.alertingprovisioning.get_mute_timing(body["name"]))
        if current is None:
            api.alertingprovisioning.create_mute_timing(body)
            report.add("mute-timing", body["name"], "created")
        elif not _subset_equal(body, current):
            api.alertingprovisioning.update_mute_timing(body["name"], body)
            report.add("mute-timing", body["name"], "updated")
        else:
            report.add("mute-timing", body["name"], "unchanged")

    # --- notification policy tree
    desired = contacts.policy_tree()
    current = _get(lambda: api.alertingprovisioning.get_notification_policy_tree())
    if current is not None and _subset_equal(desired, current):
        report.add("policies", "root", "unchanged")
    else:
        api.alertingprovisioning.set_notification_policy_tree(desired)
        report.add("policies", "root", "updated")
    return report
