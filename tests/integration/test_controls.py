"""Kill switches end to end: the CLI publishes to a real broker, an app with the SDK in its own
process enforces (tests/integration/controls_app.py), and what it decided lands on llm.events.

- `llmpulse control pause` reaches a running app; `resume` lifts it; a pause `--for 2s`
  lifts itself when it expires, with no record sent.
- An app started while a pause is active comes up paused.
- With its broker stopped, a fail-closed workflow refuses once the view is stale, a fail-open
  one keeps what it last knew; both recover when the broker is back.
- The OTLP gateway serves the active actions with ETag / 304.
- A real worker stores it all: `control_audit` says who stopped what, when, why, and how many
  calls each action refused.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llmpulse.kafka.local import LocalKafka
from tests.conftest import KAFKA_HOME, ROOT, free_broker_port, wait_for

pytestmark = pytest.mark.integration
LLMPULSE = str(Path(sys.executable).with_name("llmpulse"))


class App:
    """The controls app in its own process; its verdict changes arrive on a queue."""

    def __init__(self, bootstrap: str, events: str, controls: str, config: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.controls_app", bootstrap, events, controls,
             orjson.dumps(config).decode()],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(orjson.loads(line))

    def next(self, workflow: str, outcome: str, timeout: float = 15.0) -> dict:
        """The next change of `workflow` to `outcome` (earlier changes of others are kept)."""
        deadline = time.monotonic() + timeout
        for d in self.seen:
            if d["workflow"] == workflow and d["outcome"] == outcome:
                self.seen.remove(d)
                return d
        while time.monotonic() < deadline:
            try:
                d = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if d["workflow"] == workflow and d["outcome"] == outcome:
                return d
            self.seen.append(d)
        raise AssertionError(f"{workflow} never became {outcome}; seen {self.seen}")

    def since_now(self) -> list[dict]:
        """Forget the changes seen so far (returned), so `next` waits for new ones."""
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        old, self.seen = self.seen, []
        return old

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def control(bootstrap: str, controls: str, *args: str, actor: str = "alice") -> str:
    env = {**os.environ, "LLMPULSE_KAFKA_BOOTSTRAP": bootstrap, "LLMPULSE_CONTROLS_TOPIC": controls,
           "LLMPULSE_ACTOR": actor, "COLUMNS": "200"}
    out = subprocess.run([LLMPULSE, "control", *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def action_id(cli_output: str) -> str:
    return cli_output.split("action ")[1].split()[0].strip(",")


def topics() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"llm.events.ctl.{tag}", f"llm.controls.ctl.{tag}"


def decision_events(bootstrap: str, topic: str, timeout: float = 20.0) -> list[dict]:
    """Every decision event on `topic` (read until nothing new arrives for 2 s)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tap-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    got: list[dict] = []
    deadline, idle_until = time.monotonic() + timeout, time.monotonic() + 5
    while time.monotonic() < min(deadline, idle_until):
        msg = c.poll(0.2)
        if msg is not None and not msg.error():
            idle_until = time.monotonic() + 2
            e = orjson.loads(msg.value())
            if e["event_type"] == "decision":
                got.append(e)
    c.close()
    return got


def test_pause_reaches_a_running_app_resume_lifts_it_and_an_expired_pause_lifts_itself(worker, kafka) -> None:
    s = worker.settings  # a real worker stores the audit: actions from llm.controls, decisions from llm.events
    events, controls = s.events_topic, s.controls_topic
    app = App(kafka.bootstrap, events, controls, {"workflows": ["support-bot", "search"]})
    try:
        app.next("support-bot", "allow")
        sent = time.time_ns() // 1_000_000
        pause = action_id(control(kafka.bootstrap, controls, "pause", "--workflow", "support-bot",
                                  "--reason", "refund loop"))
        denied = app.next("support-bot", "deny")
        assert (denied["action_id"], denied["kind"]) == (pause, "pause_workflow")
        assert "alice" in denied["reason"] and "refund loop" in denied["reason"]
        print(f"pause reached the app {denied['at_ms'] - sent} ms after the CLI started publishing")
        listing = control(kafka.bootstrap, controls, "list")
        assert pause in listing and "refund loop" in listing
        control(kafka.bootstrap, controls, "resume", "--workflow", "support-bot", actor="bob")
        assert app.next("support-bot", "allow")["action_id"] == ""

        short = action_id(control(kafka.bootstrap, controls, "pause", "--workflow", "support-bot",
                                  "--reason", "cool down", "--for", "2s"))
        assert app.next("support-bot", "deny")["action_id"] == short
        lifted = app.next("support-bot", "allow", timeout=10)  # nothing was sent: it expired
        assert lifted["at_ms"] >= sent
        history = control(kafka.bootstrap, controls, "list", "--all")
        # The topic keeps the latest record per scope: the expired pause superseded the lifted one.
        assert short in history and "expired" in history and pause not in history
        assert all(d["workflow"] != "search" or d["outcome"] == "allow" for d in app.seen)
    finally:
        app.stop()
    # What the app refused is on llm.events, counted and joined to the action by id.
    got = decision_events(kafka.bootstrap, events)
    assert {e["action_id"] for e in got} == {pause, short}
    assert all(e["decision"] == "deny" and e["workflow"] == "support-bot" and e["control_kind"] == "pause_workflow"
               for e in got)
    assert sum(e.get("decision_count", 1) for e in got if e["action_id"] == pause) > 1
    # Who stopped what, when, why, and what it blocked: one query.
    refused = sum(e.get("decision_count", 1) for e in got if e["action_id"] == pause)
    sql = ("SELECT action_id, kind, state, who, reason, ended_by, denied, traces_affected FROM {db}.control_audit "
           "ORDER BY created_at")
    last: list = []

    def stored():
        last[:] = worker.query(sql)
        return len(last) == 2 and last[0][6] == refused and list(last)

    try:
        audit = wait_for(stored, 30, what="the audit of both pauses")
    except AssertionError:
        raise AssertionError(f"audit {last}, refused {refused}; worker log: {worker.log_path.read_text()[-2000:]}")
    assert [r[:6] for r in audit] == [[pause, "pause_workflow", "lifted", "alice", "refund loop", "bob"],
                                      [short, "pause_workflow", "expired", "alice", "cool down", "expiry"]]
    assert audit[0][7] > 1  # a new trace per check: every one refused is counted


def test_an_app_started_during_a_pause_comes_up_paused(kafka) -> None:
    events, controls = topics()
    pause = action_id(control(kafka.bootstrap, controls, "pause", "--workflow", "support-bot", "--reason", "incident"))
    app = App(kafka.bootstrap, events, controls, {"workflows": ["support-bot"]})
    try:
        first = app.next("support-bot", "deny")
        assert first["action_id"] == pause and first["stale"] is False
        assert not app.seen  # its very first answer was the deny
    finally:
        app.stop()


def test_fail_open_and_fail_closed_with_the_broker_stopped(tmp_path) -> None:
    broker = LocalKafka(KAFKA_HOME, f"127.0.0.1:{free_broker_port()}")  # its own: stopping it disturbs no one
    broker.up()
    events, controls = topics()
    try:
        pause = action_id(control(broker.bootstrap, controls, "pause", "--workflow", "known-paused", "--reason", "r"))
        app = App(broker.bootstrap, events, controls, {
            "workflows": ["known-paused", "payments", "search"],
            "contracts": {"payments": {"fail_mode": "closed"}, "known-paused": {"fail_mode": "open"}},
            "controls": {"stale_after_s": 2.0, "refresh_s": 0.2}})
        try:
            assert app.next("known-paused", "deny")["action_id"] == pause
            assert app.next("payments", "allow")["stale"] is False
            app.next("search", "allow")
            assert [d for d in app.since_now() if d["workflow"] != "payments" or d["outcome"] != "allow"] == []
            stopping = time.time_ns() // 1_000_000
            broker.down()
            closed = app.next("payments", "deny", timeout=20)
            assert closed["kind"] == "" and "fails closed" in closed["reason"] and closed["stale"] is True
            # Not before stale_after_s (2 s) without an answer from the broker.
            assert closed["at_ms"] - stopping >= 1800, closed["at_ms"] - stopping
            time.sleep(0.5)
            changes = [d for d in app.seen if d["workflow"] in ("known-paused", "search")]
            assert not changes, changes  # fail open: still paused where paused, still allowed elsewhere
            broker.up()
            assert app.next("payments", "allow", timeout=60)["stale"] is False
        finally:
            app.stop()
    finally:
        broker.down()


def test_gateway_serves_the_active_actions_with_etag(kafka, tmp_path) -> None:
    from llmpulse.ingest import KafkaPublisher
    from llmpulse.ingest.otel_gateway_config import GatewayConfig, key_line, new_key
    from llmpulse.ingest.otlp_gateway import GatewayThread

    events, controls = topics()
    key, other = new_key(), new_key()
    keys = tmp_path / "keys.yaml"
    keys.write_text(key_line(key, 'acme', 'acme-1') + "\n" + key_line(other, 'beta', 'beta-1') + "\n")
    acme = action_id(control(kafka.bootstrap, controls, "pause", "--workflow", "bot", "--tenant", "acme", "--reason", "a"))
    sink = KafkaPublisher(kafka.bootstrap, events, controls=True, controls_topic=controls)
    with GatewayThread(sink, config=GatewayConfig(keys_file=keys), controls=sink.enforcer.view) as gw:
        url = gw.url + "/v1/controls"
        assert requests.get(url, timeout=5).status_code == 401
        r = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert r.status_code == 200 and [a["action_id"] for a in r.json()["actions"]] == [acme]
        assert r.json()["stale"] is False
        etag = r.headers["ETag"]
        same = requests.get(url, headers={"Authorization": f"Bearer {key}", "If-None-Match": etag}, timeout=5)
        assert same.status_code == 304 and not same.content
        beta = requests.get(url, headers={"x-api-key": other}, timeout=5)
        assert beta.json()["actions"] == []  # another tenant's pause is not beta's business
        everywhere = action_id(control(kafka.bootstrap, controls, "disable-tool", "issue_refund", "--reason", "b"))

        def changed():
            r = requests.get(url, headers={"Authorization": f"Bearer {key}", "If-None-Match": etag}, timeout=5)
            return r if r.status_code == 200 else None

        r2 = wait_for(changed, 10, interval=0.1, what="a new ETag")
        assert {a["action_id"] for a in r2.json()["actions"]} == {acme, everywhere}
        assert r2.headers["ETag"] != etag
    sink.close(5)
