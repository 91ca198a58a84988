"""Contact points are provisioned only when their secret is set (Grafana rejects a PagerDuty
or Slack contact point with an empty one), and the notification policy only names contact
points that exist; the files hand everything to Alertmanager."""

from __future__ import annotations

import yaml

from llmpulse.dashboards import alerts
from llmpulse.dashboards.sync import ContactSettings, contact_point_bodies, mute_timing_bodies


def _receivers_named(tree: dict) -> set[str]:
    names = {tree["receiver"]}
    for route in tree.get("routes", []):
        names |= _receivers_named(route) if "receiver" in route else set()
    return names


def _check(c: ContactSettings) -> list[dict]:
    bodies = contact_point_bodies(c)
    for body in bodies:
        for value in body["settings"].values():
            assert value != "" and "${" not in str(value), body  # every secret/URL filled in
    assert _receivers_named(c.policy_tree()) <= {b["name"] for b in bodies}
    muted = {m for r in c.policy_tree().get("routes", []) for m in r.get("mute_time_intervals", [])}
    assert muted <= {m["name"] for m in mute_timing_bodies(c)}
    return bodies


def test_only_receivers_with_a_secret_are_provisioned():
    assert contact_point_bodies(ContactSettings()) == []
    assert ContactSettings().enabled_receivers() == set()
    webhook_only = _check(ContactSettings(webhook_url="http://hooks.internal/llmpulse"))
    assert [b["type"] for b in webhook_only] == ["webhook"]
    assert mute_timing_bodies(ContactSettings(webhook_url="http://hooks.internal/llmpulse")) == []
    slack_only = _check(ContactSettings(slack_webhook_url="https://hooks.slack.com/x", slack_channel="#a"))
    assert [b["type"] for b in slack_only] == ["slack"]
    everything = _check(ContactSettings(pagerduty_integration_key="k", slack_webhook_url="https://h/x",
                                        slack_channel="#a", webhook_url="http://h/y", business_tz="Europe/Berlin"))
    assert sorted(b["type"] for b in everything) == ["pagerduty", "slack", "webhook"]
    assert mute_timing_bodies(ContactSettings(pagerduty_integration_key="k"))[0]["time_intervals"][0]["location"] \
        == "UTC"


def test_grafana_routes_severities_as_alertmanager_does():
    tree = alerts.policy_tree()
    by_severity = {}
    for route in tree["routes"]:
        (label, op, value), = route["object_matchers"]
        if label == "severity":
            for s in value.split("|"):
                by_severity.setdefault(s, []).append(route["receiver"])
    assert by_severity == {"critical": [alerts.PAGE, alerts.CHAT], "high": [alerts.PAGE, alerts.CHAT],
                           "medium": [alerts.CHAT]}


def test_with_an_alertmanager_everything_goes_there():
    c = ContactSettings(alertmanager_url="http://alertmanager:9093", pagerduty_integration_key="ignored")
    bodies = _check(c)
    assert [(b["type"], b["settings"]["url"]) for b in bodies] == [("prometheus-alertmanager", "http://alertmanager:9093")]
    assert c.policy_tree() == alerts.alertmanager_policy_tree()


def test_grafana_resends_firing_alerts_before_alertmanager_expires_them():
    # Grafana's endsAt: evaluation + 4 x max(30 s, interval) (ngalert state.nextEndsTime)
    expires_s = min(4 * max(30, interval) for interval in alerts.GROUP_INTERVAL_S.values())
    tree = alerts.alertmanager_policy_tree()
    seconds = {"s": 1, "m": 60, "h": 3600}
    repeat = int(tree["repeat_interval"][:-1]) * seconds[tree["repeat_interval"][-1]]
    group = int(tree["group_interval"][:-1]) * seconds[tree["group_interval"][-1]]
    assert max(repeat, group) < expires_s


def test_provisioning_files_hold_no_paging_secret_placeholders():
    files = alerts.provisioning_files()
    for name, text in files.items():
        for placeholder in ("PAGERDUTY", "SLACK", "LLMPULSE_ALERT_WEBHOOK_URL", "LLMPULSE_BUSINESS_TZ"):
            assert placeholder not in text, (name, placeholder)
    points = yaml.safe_load(files["alerting/contact-points.yaml"])["contactPoints"]
    assert [r["type"] for cp in points for r in cp["receivers"]] == ["prometheus-alertmanager"]
