"""The shipped Alertmanager config (deploy/alertmanager/) against the real tools.

`amtool check-config` on the file as shipped and as deploy/alertmanager/entrypoint.sh renders
it (with and without the paging secrets); `amtool config routes test` for the severity →
receiver mapping; then the real `prometheus-alertmanager` runs the rendered config and takes
the two payloads that reach it in docker-compose.yml: what Grafana's Alertmanager contact
point posts (a JSON list of Alertmanager `types.Alert`, with Grafana's labels and its
`UpdatedAt`/`Timeout` fields) and what the worker's notifier posts. Each must answer 200 and
arrive at the webhook receivers its severity routes to; the inhibition rules are checked the
same way. Only the timers are shortened (group_wait / group_interval → 1 s) so the test does
not wait 30 s per group.

Needs the Debian package `prometheus-alertmanager` (amtool and the binary).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from llmpulse.dashboards import alerts
from llmpulse.dashboards.definitions import FOLDER_TITLE
from llmpulse.processors.runtime.notify import AlertmanagerNotifier, finding_to_alert
from llmpulse.schemas.findings import Finding, finding_id
from llmpulse.testing import alertmanager_binary, free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ENTRYPOINT = ROOT / "deploy" / "alertmanager" / "entrypoint.sh"
AMTOOL = shutil.which("amtool")

# The mapping README's "With Docker" section documents.
EXPECTED_RECEIVERS = {
    "critical": ["log", "page", "chat"],
    "high": ["log", "page", "chat"],  # page only inside business hours (active_time_intervals)
    "medium": ["log", "chat"],
    "low": ["log"],
    "info": ["log"],
}


@pytest.fixture(scope="module", autouse=True)
def _tools():
    if AMTOOL is None or alertmanager_binary() is None:  # ./dev test installs them; a skip proves nothing
        pytest.fail("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")


def render(run_dir: Path, **env: str) -> Path:
    """deploy/alertmanager/entrypoint.sh --render-only, as the container runs it."""
    full = {"PATH": os.environ["PATH"], "AM_TEMPLATE": str(SHIPPED), "AM_RUN_DIR": str(run_dir), **env}
    out = subprocess.run(["sh", str(ENTRYPOINT), "--render-only"], env=full, capture_output=True, text=True,
                         check=True)
    return Path(out.stdout.strip())


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True)


def routes_for(config: Path, **labels: str) -> list[str]:
    res = amtool("config", "routes", "test", f"--config.file={config}", *(f"{k}={v}" for k, v in labels.items()))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(",")


# ------------------------------------------------------------------ amtool


def test_shipped_config_passes_amtool_check_config(tmp_path):
    for config in (SHIPPED, render(tmp_path / "plain")):
        res = amtool("check-config", str(config))
        print(res.stdout)
        assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
        assert "2 inhibit rules" in res.stdout and "3 receivers" in res.stdout
    text = render(tmp_path / "plain").read_text()
    assert "pagerduty_configs" not in text.replace("#pagerduty pagerduty_configs", "")
    assert "slack_configs" not in text.replace("#slack slack_configs", "")


def test_paging_receivers_exist_only_with_their_secret(tmp_path):
    key, hook = "pd-" + uuid.uuid4().hex, "https://hooks.slack.com/services/T0/B0/" + uuid.uuid4().hex + "?a=1&b=2"
    run = tmp_path / "secrets"
    config = render(run, PAGERDUTY_INTEGRATION_KEY=key, SLACK_WEBHOOK_URL=hook, LLMPULSE_BUSINESS_TZ="Europe/Berlin")
    res = amtool("check-config", str(config))
    assert res.returncode == 0, res.stdout + res.stderr
    parsed = yaml.safe_load(config.read_text())
    receivers = {r["name"]: r for r in parsed["receivers"]}
    assert receivers["page"]["pagerduty_configs"][0]["routing_key_file"] == str(run / "pagerduty_integration_key")
    assert receivers["chat"]["slack_configs"][0]["api_url_file"] == str(run / "slack_webhook_url")
    assert parsed["time_intervals"][0]["time_intervals"][0]["location"] == "Europe/Berlin"
    # the secrets live in files only this user reads, never in the config
    assert key not in config.read_text() and hook not in config.read_text()
    assert (run / "pagerduty_integration_key").read_text() == key
    assert (run / "slack_webhook_url").read_text() == hook
    assert (run / "slack_webhook_url").stat().st_mode & 0o077 == 0
    # only one secret: only its receiver
    only_pd = yaml.safe_load(render(tmp_path / "pd", PAGERDUTY_INTEGRATION_KEY=key).read_text())
    by_name = {r["name"]: r for r in only_pd["receivers"]}
    assert "pagerduty_configs" in by_name["page"] and "slack_configs" not in by_name["chat"]


def test_a_bad_business_time_zone_is_refused(tmp_path):
    res = amtool("check-config", str(render(tmp_path / "tz", LLMPULSE_BUSINESS_TZ="Mars/Olympus_Mons")))
    assert res.returncode != 0


def test_severity_routes(tmp_path):
    for config in (SHIPPED, render(tmp_path / "r", PAGERDUTY_INTEGRATION_KEY="k", SLACK_WEBHOOK_URL="https://h/x")):
        for severity, expected in EXPECTED_RECEIVERS.items():
            assert routes_for(config, alertname="llmpulse_tool_loop", severity=severity) == expected, severity
        assert routes_for(config, alertname="anything") == ["log"]  # no severity: logged, never lost


# ------------------------------------------------------------------ the real Alertmanager


class Receivers:
    """The webhook end of every receiver: the path names it (/log, /page, /chat)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with rec.cond:
                    rec.got.append((self.path.strip("/"), body))
                    rec.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def receivers_of(self, key: str, value: str, status: str = "firing") -> set[str]:
        with self.cond:
            return {path for path, body in self.got for a in body.get("alerts", [])
                    if a["labels"].get(key) == value and a["status"] == status}

    def wait(self, key: str, value: str, want: set[str], status: str = "firing", timeout: float = 15) -> set[str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not want <= self.receivers_of(key, value, status) and time.monotonic() < deadline:
                self.cond.wait(0.05)
        return self.receivers_of(key, value, status)


@contextlib.contextmanager
def running_alertmanager(work: Path, webhook_base: str):
    """The real Alertmanager on the rendered config, timers shortened; yields its URL."""
    config = render(work / "run", LLMPULSE_ALERT_WEBHOOK_URL=webhook_base)
    text = re.sub(r"(group_wait|group_interval): \w+", r"\1: 1s", config.read_text())
    config.write_text(text)
    port = free_port()
    log = open(work / "alertmanager.log", "wb")
    proc = subprocess.Popen(
        [alertmanager_binary(), f"--config.file={config}", f"--storage.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError((work / "alertmanager.log").read_text())
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, 20, interval=0.05, what="alertmanager ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    receivers = Receivers()
    try:
        with running_alertmanager(tmp_path_factory.mktemp("alertmanager"), receivers.base) as url:
            yield url, receivers
    finally:
        receivers.server.shutdown()
        receivers.server.server_close()


def post(url: str, body) -> tuple[int, str]:
    req = urllib.request.Request(url + "/api/v2/alerts", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def grafana_alerts(rule: alerts.AlertRule, values: dict[str, str], *, resolved: bool = False) -> list[dict]:
    """What Grafana's Alertmanager contact point posts for one alert instance of `rule`:
    `json.Marshal([]*types.Alert)` (grafana/alerting receivers/alertmanager), i.e. the
    Alertmanager model plus `UpdatedAt` and `Timeout`, with Grafana's own labels
    (alertname = rule title, grafana_folder, __alert_rule_uid__) and annotations."""
    now = datetime.now(timezone.utc)
    labels = {"alertname": rule.title, "grafana_folder": FOLDER_TITLE, "__alert_rule_uid__": rule.uid,
              **rule.labels, **{col: values[col] for col in rule.label_columns}}
    return [{
        "labels": labels,
        "annotations": {"summary": f"{rule.title} on {values.get('tenant', '')}", "__orgId__": "1",
                        "__dashboardUid__": rule.dashboard_uid, "__value_string__": "[ var='C' value=1 ]",
                        "__values__": '{"B":1,"C":1}'},
        "startsAt": _iso(now - timedelta(seconds=30)),
        "endsAt": _iso(now - timedelta(seconds=1) if resolved else now + timedelta(minutes=4)),
        "generatorURL": f"http://127.0.0.1:3000/alerting/grafana/{rule.uid}/view?orgId=1",
        "UpdatedAt": _iso(now),
        "Timeout": False,
    }]


def _rule(uid: str) -> alerts.AlertRule:
    return next(r for r in alerts.RULES if r.uid == uid)


def _finding(kind: str, severity: str, tenant: str, status: str = "open", sig: str = "search") -> Finding:
    now_ms = int(time.time() * 1000)
    return Finding(
        finding_id=finding_id(kind, tenant, "research-agent", sig), detected_at=now_ms, event_ts=now_ms - 500,
        kind=kind, severity=severity, status=status, tenant=tenant, workflow="research-agent", model="gpt-4o",
        trace_id="trace-" + tenant, title=f"{kind} on {tenant}", value=11, threshold=5,
        evidence={"tool": sig}, wasted_usd=0.11,
    )


def _in_business_hours(now: datetime) -> bool:  # the shipped interval, location UTC
    return now.weekday() < 5 and 9 <= now.hour < 18


def test_grafana_alertmanager_payload_is_accepted_and_routed_by_severity(stack):
    url, receivers = stack
    cases = {  # rule → severity it carries
        "llmpulse-finding-critical": "critical", "llmpulse-error-rate": "high",
        "llmpulse-p95-latency": "medium", "llmpulse-dead-letters": "low",
    }
    tenants = {}
    for uid, severity in cases.items():
        rule = _rule(uid)
        assert rule.labels["severity"] == severity
        tenant = f"g-{severity}-{uuid.uuid4().hex[:6]}"
        tenants[severity] = tenant
        values = {"finding_id": "f-" + tenant, "kind": "tool_loop", "tenant": tenant, "workflow": "research-agent",
                  "model": "gpt-4o", "trace_id": "t-1", "kafka_topic": tenant}
        status, text = post(url, grafana_alerts(rule, values))
        assert status == 200, text
    for severity, tenant in tenants.items():
        key = "kafka_topic" if severity == "low" else "tenant"
        expected = set(EXPECTED_RECEIVERS[severity])
        if severity == "high" and not _in_business_hours(datetime.now(timezone.utc)):
            expected.discard("page")
        receivers.wait(key, tenant, expected)
        time.sleep(0.5 if severity != "low" else 0)
        assert receivers.receivers_of(key, tenant) == expected, (severity, receivers.receivers_of(key, tenant))


def test_worker_payload_is_accepted_routed_and_resolved(stack):
    url, receivers = stack
    notifier = AlertmanagerNotifier(url, hold=timedelta(minutes=5), grafana_url="http://127.0.0.1:3000")
    # a read-only tool loop that wasted < $1 is `medium` (processors/loops.py): chat, no page
    cheap = _finding("tool_loop", "medium", "w-" + uuid.uuid4().hex[:6])
    assert notifier.notify([cheap])
    assert receivers.wait("finding_id", cheap.finding_id, {"log", "chat"}) == {"log", "chat"}
    # an irreversible one is `critical`: it pages, and resolving it resolves the page
    worse = _finding("tool_loop", "critical", "w-" + uuid.uuid4().hex[:6])
    assert notifier.notify([worse])
    assert receivers.wait("finding_id", worse.finding_id, {"log", "page", "chat"}) == {"log", "page", "chat"}
    assert notifier.notify([_finding("tool_loop", "critical", worse.tenant, status="resolved")])
    assert "page" in receivers.wait("finding_id", worse.finding_id, {"page"}, status="resolved")
    assert notifier.stats.failed == 0 and notifier.stats.sent == 3
    assert "page" not in receivers.receivers_of("finding_id", cheap.finding_id)


def test_grafana_webhook_format_is_what_alertmanager_refuses(stack):
    """Why the contact point type matters: Grafana's webhook JSON is an object, /api/v2/alerts
    takes a list of alerts (the 400 seen with the old provisioning)."""
    url, _ = stack
    webhook_body = {"receiver": "llmpulse-webhook", "status": "firing", "orgId": 1, "groupKey": "{}", "version": "1",
                    "alerts": grafana_alerts(_rule("llmpulse-finding-critical"),
                                             {c: "x" for c in _rule("llmpulse-finding-critical").label_columns})}
    status, text = post(url, webhook_body)
    assert status == 400 and "cannot unmarshal object" in text, (status, text)


def test_a_finding_pages_once_though_both_senders_report_it(stack):
    url, receivers = stack
    tenant = "d-" + uuid.uuid4().hex[:6]
    f = _finding("unauthorized_tool", "critical", tenant)
    assert AlertmanagerNotifier(url).notify([f])
    assert receivers.wait("finding_id", f.finding_id, {"page"}) >= {"page"}
    # Grafana's open-findings rule reports the same finding a few seconds later
    rule = _rule("llmpulse-finding-critical")
    values = {"finding_id": f.finding_id, "kind": f.kind, "tenant": tenant, "workflow": f.workflow, "model": f.model,
              "trace_id": f.trace_id}
    assert post(url, grafana_alerts(rule, values))[0] == 200
    time.sleep(3)  # several group intervals
    with receivers.cond:
        pages = [a for path, body in receivers.got if path == "page" for a in body["alerts"]
                 if a["labels"].get("finding_id") == f.finding_id]
    assert {a["labels"]["alertname"] for a in pages} == {"llmpulse_unauthorized_tool"}


def test_critical_silences_lower_severities_of_its_group(stack):
    url, receivers = stack
    tenant = "b-" + uuid.uuid4().hex[:6]
    full = _finding("budget_threshold", "critical", tenant, sig="100")
    assert AlertmanagerNotifier(url).notify([full])
    assert receivers.wait("finding_id", full.finding_id, {"page", "chat"}) >= {"page", "chat"}
    eighty = _finding("budget_threshold", "medium", tenant, sig="80")
    assert AlertmanagerNotifier(url).notify([eighty])
    time.sleep(3)
    assert receivers.receivers_of("finding_id", eighty.finding_id) == set()
    # another workflow's medium is not silenced
    other = _finding("budget_threshold", "medium", tenant, sig="80b")
    alert = finding_to_alert(other, now=datetime.now(timezone.utc), hold=timedelta(minutes=5))
    alert["labels"]["workflow"] = "other-workflow"
    assert post(url, [alert])[0] == 200
    assert receivers.wait("finding_id", other.finding_id, {"chat"}) >= {"chat"}


def test_with_no_secret_the_alert_log_service_shows_every_page(tmp_path):
    """docker-compose.yml's default receiver: deploy/alert-log/alert_log.py prints one line per
    notification, naming the receiver, so routing is visible before any secret is set."""
    port = free_port()
    log = subprocess.Popen([sys.executable, str(ROOT / "deploy" / "alert-log" / "alert_log.py")],
                           env={**os.environ, "ALERT_LOG_PORT": str(port)}, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: [lines.append(json.loads(x)) for x in log.stdout], daemon=True)
    reader.start()
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, 10, interval=0.05, what="alert-log ready")
        with running_alertmanager(tmp_path, f"http://127.0.0.1:{port}") as url:
            f = _finding("unapproved_irreversible_action", "critical", "l-" + uuid.uuid4().hex[:6])
            assert AlertmanagerNotifier(url).notify([f])
            seen = lambda: {x["receiver"] for x in lines for a in x["alerts"] if a["finding_id"] == f.finding_id}
            wait_for(lambda: seen() >= {"page", "chat", "log"}, 15, interval=0.05, what="alert-log lines")
            line = next(x for x in lines if x["receiver"] == "page")
            assert line["alerts"][0]["severity"] == "critical" and "summary" not in json.dumps(line)
    finally:
        log.terminate()
        log.wait(10)
