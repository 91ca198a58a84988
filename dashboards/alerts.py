"""Grafana unified alerting as code: rules, contact points, routing, mute timings, and
the data source / dashboard provider provisioning files.

Everything is plain data built here; `provisioning_files()` renders the file-provisioning
YAML committed under `dashboards/provisioning/`, and `sync.py` pushes the same objects
through Grafana's HTTP API (whose bodies differ slightly: `folderUID`, `ruleGroup`).

Two ways to page. The files (used by docker-compose.yml) hand every alert to Prometheus
Alertmanager through Grafana's Alertmanager integration (`prometheus-alertmanager`, which
posts Alertmanager's own v2 format); routing by severity, business hours, inhibition and
the PagerDuty/Slack secrets live in one place, deploy/alertmanager/alertmanager.yml.
`sync.py` can instead route inside Grafana (`contact_points()`, `policy_tree()`,
`mute_timings()`) for a Grafana that has no Alertmanager beside it.

Secrets never live in the repo: contact point settings and the ClickHouse password are
`${ENV}` references that Grafana expands when it reads the files. Alert *labels* are
expanded too (so they hold no `$`); *annotations* are not, so they carry the
`{{ $labels.x }}` templates and relative dashboard links.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import yaml

from .clickhouse import DATASOURCE_UID, FORMAT_BY_QUERY_TYPE, PLUGIN_ID
from .definitions import FOLDER_TITLE, FOLDER_UID, TRACE_UID, UID_PREFIX
from .sql import open_findings

ORG_ID = 1
EXPR_UID = "__expr__"

# Receivers (contact point names)
PAGE = "llmpulse-page"
PAGE_BUSINESS_HOURS = "llmpulse-page"  # same receiver, muted outside business hours
CHAT = "llmpulse-chat"
WEBHOOK = "llmpulse-webhook"
ALERTMANAGER = "llmpulse-alertmanager"
ALERTMANAGER_DATASOURCE_UID = "llmpulse-alertmanager"
OUTSIDE_BUSINESS_HOURS = "llmpulse-outside-business-hours"


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    group: str
    sql: str
    threshold: float
    labels: dict[str, str]
    annotations: dict[str, str]
    window_s: int = 600
    for_: str = "0s"
    no_data: str = "OK"
    #: label columns the query returns besides the value (become alert labels)
    label_columns: tuple[str, ...] = ()
    value_column: str = "value"
    dashboard_uid: str = UID_PREFIX + "overview"


_FINDING_LABELS = ("finding_id", "kind", "tenant", "workflow", "model", "trace_id")

_FINDING_ANNOTATIONS = {
    "summary": "{{ $labels.kind }} on {{ $labels.tenant }}/{{ $labels.workflow }}",
    "description": "A {{ $labels.kind }} finding opened for tenant {{ $labels.tenant }}, "
                   "workflow {{ $labels.workflow }}, model {{ $labels.model }}.",
    "trace_url": "/d/" + TRACE_UID + "?var-trace_id={{ $labels.trace_id }}",
    "dashboard_url": "/d/" + UID_PREFIX + "overview?var-tenant={{ $labels.tenant }}&var-workflow={{ $labels.workflow }}",
}


def _finding_sql(severity: str) -> str:
    # One series per open finding: it fires when the finding opens and, once its
    # `resolved` row lands, the series disappears and Grafana resolves the alert.
    return ("SELECT finding_id, kind, tenant, workflow, model, trace_id, toFloat64(1) AS value FROM ("
            + open_findings(f"severity = '{severity}' AND $__timeFilter(event_ts)") + ")")


RULES: tuple[AlertRule, ...] = (
    AlertRule(
        uid="llmpulse-finding-critical", title="Critical finding", group="findings",
        sql=_finding_sql("critical"), threshold=0.5,
        labels={"severity": "critical", "source": "llmpulse"},
        annotations=_FINDING_ANNOTATIONS, window_s=86400, label_columns=_FINDING_LABELS,
    ),
    AlertRule(
        uid="llmpulse-finding-high", title="High finding", group="findings",
        sql=_finding_sql("high"), threshold=0.5,
        labels={"severity": "high", "source": "llmpulse"},
        annotations=_FINDING_ANNOTATIONS, window_s=86400, label_columns=_FINDING_LABELS,
    ),
    AlertRule(
        uid="llmpulse-error-rate", title="Model call error rate above 10%", group="rollups",
        sql="SELECT tenant, workflow, sum(errors) / sum(calls) AS value FROM calls_per_minute "
            "WHERE $__timeFilter(minute) GROUP BY tenant, workflow HAVING sum(calls) >= 20",
        threshold=0.10, for_="5m",
        labels={"severity": "high", "source": "llmpulse"},
        annotations={
            "summary": "Error rate {{ humanizePercentage $values.B.Value }} on {{ $labels.tenant }}/{{ $labels.workflow }}",
            "dashboard_url": "/d/" + UID_PREFIX + "overview?var-tenant={{ $labels.tenant }}&var-workflow={{ $labels.workflow }}",
        },
        window_s=600, label_columns=("tenant", "workflow"),
    ),
    AlertRule(
        uid="llmpulse-p95-latency", title="Model call p95 latency above 20 s", group="rollups",
        # Per-minute quantiles cannot be merged, so p95 over the window comes from the events.
        sql="SELECT tenant, workflow, quantile(0.95)(latency_ms) AS value FROM events FINAL "
            "WHERE event_type = 'output' AND $__timeFilter(ts) GROUP BY tenant, workflow HAVING count() >= 20",
        threshold=20_000, for_="10m",
        labels={"severity": "medium", "source": "llmpulse"},
        annotations={
            "summary": "p95 latency {{ $values.B.Value }} ms on {{ $labels.tenant }}/{{ $labels.workflow }}",
            "dashboard_url": "/d/" + UID_PREFIX + "overview?var-tenant={{ $labels.tenant }}&var-workflow={{ $labels.workflow }}",
        },
        window_s=900, label_columns=("tenant", "workflow"),
    ),
    AlertRule(
        uid="llmpulse-dead-letters", title="Pipeline dead letters", group="pipeline",
        sql="SELECT kafka_topic, toFloat64(count()) AS value FROM dead_letters FINAL "
            "WHERE $__timeFilter(received_at) GROUP BY kafka_topic",
        threshold=100, for_="5m",
        labels={"severity": "low", "source": "llmpulse"},
        annotations={"summary": "{{ $values.B.Value }} dead letters in 10 min on {{ $labels.kafka_topic }}",
                     "dashboard_url": "/d/" + UID_PREFIX + "overview"},
        window_s=600, label_columns=("kafka_topic",),
    ),
)


def _query_model(sql: str) -> dict[str, Any]:
    return {
        "refId": "A",
        "datasource": {"type": PLUGIN_ID, "uid": DATASOURCE_UID},
        "editorType": "sql",
        "queryType": "table",
        "format": FORMAT_BY_QUERY_TYPE["table"],
        "rawSql": sql,
        "intervalMs": 1000,
        "maxDataPoints": 43200,
    }


def rule_data(rule: AlertRule) -> list[dict[str, Any]]:
    """A (query) → B (reduce: last) → C (threshold) — the shape Grafana's editor produces."""
    return [
        {"refId": "A", "relativeTimeRange": {"from": rule.window_s, "to": 0},
         "datasourceUid": DATASOURCE_UID, "model": _query_model(rule.sql)},
        {"refId": "B", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": EXPR_UID,
         "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                   "settings": {"mode": "dropNN"}, "datasource": {"type": "__expr__", "uid": EXPR_UID}}},
        {"refId": "C", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": EXPR_UID,
         "model": {"refId": "C", "type": "threshold", "expression": "B",
                   "conditions": [{"evaluator": {"type": "gt", "params": [rule.threshold]}}],
                   "datasource": {"type": "__expr__", "uid": EXPR_UID}}},
    ]


def _annotations(rule: AlertRule) -> dict[str, str]:
    return {**rule.annotations, "__dashboardUid__": rule.dashboard_uid}


def file_rule(rule: AlertRule) -> dict[str, Any]:
    """A rule as the file-provisioning format writes it."""
    return {
        "uid": rule.uid, "title": rule.title, "condition": "C", "data": rule_data(rule),
        "noDataState": rule.no_data, "execErrState": "Error", "for": rule.for_,
        "labels": dict(rule.labels), "annotations": _annotations(rule), "isPaused": False,
    }


def api_rule(rule: AlertRule) -> dict[str, Any]:
    """A rule as POST/PUT /api/v1/provisioning/alert-rules takes it."""
    return {
        "uid": rule.uid, "title": rule.title, "condition": "C", "data": rule_data(rule),
        "noDataState": rule.no_data, "execErrState": "Error", "for": rule.for_,
        "labels": dict(rule.labels), "annotations": _annotations(rule), "isPaused": False,
        "folderUID": FOLDER_UID, "ruleGroup": rule.group, "orgID": ORG_ID,
    }


GROUP_INTERVAL_S = {"findings": 10, "rollups": 60, "pipeline": 60}


def rule_groups() -> list[dict[str, Any]]:
    groups: dict[str, list[AlertRule]] = {}
    for r in RULES:
        groups.setdefault(r.group, []).append(r)
    return [
        {"orgId": ORG_ID, "name": name, "folder": FOLDER_TITLE, "interval": f"{GROUP_INTERVAL_S[name]}s",
         "rules": [file_rule(r) for r in rules]}
        for name, rules in groups.items()
    ]


RECEIVERS = (PAGE, CHAT, WEBHOOK)


def contact_points(enabled: Collection[str] = RECEIVERS) -> list[dict[str, Any]]:
    """PagerDuty, Slack and a webhook (values filled in by `sync.py`); only the `enabled`
    ones: Grafana rejects a PagerDuty or Slack contact point with an empty secret."""
    return [cp for cp in _all_contact_points() if cp["name"] in enabled]


def _all_contact_points() -> list[dict[str, Any]]:
    return [
        {"orgId": ORG_ID, "name": PAGE, "receivers": [
            {"uid": "llmpulse-pagerduty", "type": "pagerduty", "disableResolveMessage": False,
             "settings": {"integrationKey": "${LLMPULSE_PAGERDUTY_INTEGRATION_KEY}",
                          "severity": '{{ or .CommonLabels.severity "critical" }}',
                          "summary": '{{ template "default.title" . }}'}},
        ]},
        {"orgId": ORG_ID, "name": CHAT, "receivers": [
            {"uid": "llmpulse-slack", "type": "slack", "disableResolveMessage": False,
             "settings": {"url": "${LLMPULSE_SLACK_WEBHOOK_URL}", "recipient": "${LLMPULSE_SLACK_CHANNEL}"}},
        ]},
        {"orgId": ORG_ID, "name": WEBHOOK, "receivers": [
            {"uid": "llmpulse-webhook", "type": "webhook", "disableResolveMessage": False,
             "settings": {"url": "${LLMPULSE_ALERT_WEBHOOK_URL}", "httpMethod": "POST"}},
        ]},
    ]


def mute_timings() -> list[dict[str, Any]]:
    """Outside business hours: weekday nights and weekends (UTC unless the env says)."""
    return [{
        "orgId": ORG_ID, "name": OUTSIDE_BUSINESS_HOURS,
        "time_intervals": [
            {"weekdays": ["monday:friday"], "times": [{"start_time": "00:00", "end_time": "09:00"}],
             "location": "${LLMPULSE_BUSINESS_TZ}"},
            {"weekdays": ["monday:friday"], "times": [{"start_time": "18:00", "end_time": "24:00"}],
             "location": "${LLMPULSE_BUSINESS_TZ}"},
            {"weekdays": ["saturday", "sunday"], "location": "${LLMPULSE_BUSINESS_TZ}"},
        ],
    }]


def policy_tree(enabled: Collection[str] = RECEIVERS) -> dict[str, Any]:
    """The severity mapping of deploy/alertmanager/alertmanager.yml, inside Grafana: critical →
    page now and chat; high → page in business hours, chat always; medium → chat; everything
    → the webhook. Routes to receivers that are not `enabled` are left out."""
    routes = [
        {"receiver": WEBHOOK, "object_matchers": [["source", "=", "llmpulse"]], "continue": True},
        {"receiver": PAGE, "object_matchers": [["severity", "=", "critical"]],
         "group_wait": "10s", "repeat_interval": "1h", "continue": True},
        {"receiver": PAGE_BUSINESS_HOURS, "object_matchers": [["severity", "=", "high"]],
         "mute_time_intervals": [OUTSIDE_BUSINESS_HOURS], "continue": True},
        {"receiver": CHAT, "object_matchers": [["severity", "=~", "critical|high|medium"]]},
    ]
    root = next(r for r in (WEBHOOK, CHAT, PAGE) if r in enabled) if enabled else WEBHOOK
    return {
        "receiver": root,
        "group_by": ["grafana_folder", "alertname", "tenant", "workflow"],
        "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
        "routes": [r for r in routes if r["receiver"] in enabled],
    }


def alertmanager_contact_points() -> list[dict[str, Any]]:
    """One contact point: Grafana's Alertmanager integration, which POSTs the alerts as
    Alertmanager's v2 `postableAlerts` to `<url>/api/v2/alerts` (a webhook contact point
    posts Grafana's own JSON there, which Alertmanager answers with 400)."""
    return [{"orgId": ORG_ID, "name": ALERTMANAGER, "receivers": [
        {"uid": ALERTMANAGER, "type": "prometheus-alertmanager", "disableResolveMessage": False,
         "settings": {"url": "${LLMPULSE_ALERTMANAGER_URL}"}},
    ]}]


def alertmanager_policy_tree() -> dict[str, Any]:
    """Every alert to Alertmanager, one group per alert: Alertmanager groups and routes.

    Alertmanager ends an alert at its `endsAt`, which Grafana sets 4 × max(30 s, the rule's
    interval) ahead (2 min for the 10 s findings group), so Grafana must re-send firing
    alerts sooner than that, as Prometheus does: every minute. Repeats of a firing alert do
    not page again (same labels, same fingerprint in Alertmanager).
    """
    return {
        "receiver": ALERTMANAGER,
        "group_by": ["..."],
        "group_wait": "5s", "group_interval": "1m", "repeat_interval": "1m",
    }


def alertmanager_datasource() -> dict[str, Any]:
    """Alertmanager as a data source: its alerts and silences in Grafana's UI, behind
    Grafana's login (Alertmanager itself has no auth and is not published)."""
    return {
        "name": "llmpulse Alertmanager", "type": "alertmanager", "uid": ALERTMANAGER_DATASOURCE_UID,
        "access": "proxy", "orgId": ORG_ID, "isDefault": False, "editable": False,
        "url": "${LLMPULSE_ALERTMANAGER_URL}",
        "jsonData": {"implementation": "prometheus", "handleGrafanaManagedAlerts": False},
    }


def datasource() -> dict[str, Any]:
    """The ClickHouse data source, connecting as a read-only user."""
    return {
        "name": "llmpulse ClickHouse", "type": PLUGIN_ID, "uid": DATASOURCE_UID, "access": "proxy",
        "orgId": ORG_ID, "isDefault": False, "editable": False,
        "jsonData": {
            "host": "${LLMPULSE_CLICKHOUSE_HOST}", "port": 8123, "protocol": "http", "secure": False,
            "username": "${LLMPULSE_GRAFANA_CH_USER}", "defaultDatabase": "${LLMPULSE_DATABASE}",
        },
        "secureJsonData": {"password": "${LLMPULSE_GRAFANA_CH_PASSWORD}"},
    }


READONLY_USER_SQL = """\
-- Read-only ClickHouse user for Grafana (run once on a ClickHouse server; embedded chDB
-- has no users; docker-compose.yml uses deploy/clickhouse/users.d/grafana_ro.xml instead).
-- readonly=2 forbids writes and DDL but lets the session set query settings: Grafana's
-- ClickHouse plugin sets max_execution_time, which readonly=1 refuses. Only SELECT is
-- granted, so table functions (file, url, s3, remote) are refused too. {grafana_network} is
-- where Grafana connects from (e.g. 10.0.0.5/32); add a row policy per tenant for tenant-scoped views.
CREATE USER IF NOT EXISTS grafana_ro IDENTIFIED WITH sha256_password BY '{password}'
    HOST IP '{grafana_network}'
    SETTINGS readonly = 2, max_execution_time = 60 MAX 300;
GRANT SELECT ON {db}.* TO grafana_ro;
"""


def provisioning_files() -> dict[str, str]:
    def dump(obj: Any, header: str) -> str:
        return "# Generated by dashboards/build.py - do not edit.\n# " + header + "\n" + yaml.safe_dump(
            obj, sort_keys=False, allow_unicode=True, width=1000)

    return {
        "datasources/llmpulse-clickhouse.yaml": dump(
            {"apiVersion": 1, "datasources": [datasource(), alertmanager_datasource()]},
            "ClickHouse data source (official plugin), read-only user from the environment; "
            "Alertmanager (alerts and silences in the UI)."),
        "dashboards/llmpulse.yaml": dump(
            {"apiVersion": 1, "providers": [{
                "name": "llmpulse", "orgId": ORG_ID, "folder": FOLDER_TITLE, "folderUid": FOLDER_UID,
                "type": "file", "disableDeletion": False, "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": "${LLMPULSE_DASHBOARDS_DIR}", "foldersFromFilesStructure": False},
            }]},
            "Loads dashboards/generated/*.json into the llmpulse folder."),
        "alerting/rules.yaml": dump({"apiVersion": 1, "groups": rule_groups()},
                                    "Alert rules on findings and rollups."),
        "alerting/contact-points.yaml": dump(
            {"apiVersion": 1, "contactPoints": alertmanager_contact_points()},
            "Grafana's Alertmanager integration; PagerDuty/Slack secrets live in Alertmanager only."),
        "alerting/policies.yaml": dump(
            {"apiVersion": 1, "policies": [{"orgId": ORG_ID, **alertmanager_policy_tree()}]},
            "Everything to Alertmanager, which routes by severity (deploy/alertmanager/alertmanager.yml)."),
        "clickhouse/readonly-user.sql": READONLY_USER_SQL,
    }
