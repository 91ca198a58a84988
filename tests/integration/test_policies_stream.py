"""Policies in the real worker (issue 15): a finding's action is published to `llm.controls`
in the same batch (keyed by scope), stored in `control_actions`, and expires on the watermark.

One worker for the module (one partition, so the watermark is that partition's event
time), configured with the one-line defaults plus a short halt for one workflow, and a $1
budget for one tenant. A tap reads `llm.controls` from the start. The expiry is written by
a restarted worker, which restores its active actions from `control_actions`.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
import uuid

import orjson
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llmpulse.ingest import KafkaPublisher
from llmpulse.schemas.controls import ControlAction, decode_action, scope_key
from llmpulse.testing import WorkerProcess, isolated_settings, tool_loop_events, wait_for

pytestmark = pytest.mark.integration

CONFIG = {
    "policies": {"defaults": "enforce", "rules": [
        {"name": "short-halt", "findings": ["tool_loop"], "workflows": ["short-agent"], "action": "halt_trace",
         "for": "1m"}]},
    "budgets": [{"scope": {"tenant": "spendy"}, "period": "day", "limit_usd": 1.0}],
}


class ControlsTap:
    """Every record of the controls topic: (key, action)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.got: list[tuple[str, ControlAction]] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tap-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            with self._lock:
                self.got.append((msg.key().decode(), decode_action(msg.value())))

    def records(self, **match: str) -> list[tuple[str, ControlAction]]:
        with self._lock:
            return [(k, a) for k, a in self.got if all(getattr(a, f) == v for f, v in match.items())]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@pytest.fixture(scope="module")
def env(kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    config = root / "llmpulse.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    s = isolated_settings(kafka.bootstrap, root / "state", batch_max_seconds=0.1)
    worker = WorkerProcess(s, root / "worker.log", {"LLMPULSE_CONFIG_FILE": str(config),
                                                    "LLMPULSE_TOPIC_PARTITIONS": "1"}).start()
    tap = ControlsTap(s.kafka_bootstrap, s.controls_topic)
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)
    yield s, worker, tap, pub
    pub.close()
    tap.close()
    worker.stop()


def send(pub: KafkaPublisher, events: list[dict]) -> None:
    for e in events:
        assert pub.publish_raw(orjson.dumps(e), e["trace_id"])
    assert pub.flush(10) == 0


def output(trace: str, i: int, ts: int, tenant: str, cost: float) -> dict:
    return {"event_id": f"{trace}-o{i}", "event_type": "output", "ts": ts, "trace_id": trace, "tenant": tenant,
            "workflow": "chat", "model": "selfhosted-x", "provider": "self", "status": "ok", "latency_ms": 5.0,
            "cost_usd": cost}


def test_a_loop_finding_halts_its_trace_in_the_same_batch_and_the_audit_has_it(env):
    s, worker, tap, pub = env
    trace = f"loop-{uuid.uuid4().hex[:6]}"
    send(pub, tool_loop_events(trace, n=3, tenant="acme"))
    [(key, a)] = wait_for(lambda: tap.records(trace_id=trace), 30, what="halt on llm.controls")
    assert (a.kind, a.state, a.source, a.policy, a.tenant, a.workflow) == (
        "halt_trace", "active", "policy", "halt-loops", "acme", "research-agent")
    assert key == scope_key(a) and a.expires_at == a.created_at + 3_600_000
    finding_id = worker.scalar(f"SELECT finding_id FROM {{db}}.findings FINAL WHERE trace_id = '{trace}' AND kind = 'tool_loop'")
    assert a.finding_id == finding_id
    # The row is written before the batch's offsets commit: once the events are there, so is the row.
    wait_for(lambda: worker.scalar(f"SELECT count() FROM {{db}}.events WHERE trace_id = '{trace}'") == 4, 30)
    rows = worker.query(f"SELECT kind, state, policy, finding_id FROM {{db}}.control_actions FINAL WHERE trace_id = '{trace}'")
    assert rows == [["halt_trace", "active", "halt-loops", finding_id]]
    with urllib.request.urlopen(f"http://127.0.0.1:{s.worker_web_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert re.search(r'llmpulse_control_actions_total\{kind="halt_trace",mode="enforce",state="active"\} [1-9]', metrics)
    # The same loop again, re-sent: no second finding, no second action.
    send(pub, tool_loop_events(trace, n=3, tenant="acme"))
    time.sleep(1.5)
    assert len(tap.records(trace_id=trace)) == 1


def test_a_budget_at_100_percent_blocks_its_tenant_until_the_day_ends(env):
    s, worker, tap, pub = env
    now = int(time.time() * 1000)
    send(pub, [output(f"b{i}-{uuid.uuid4().hex[:4]}", 0, now + i, "spendy", 0.30) for i in range(4)])
    [(key, a)] = wait_for(lambda: tap.records(tenant="spendy"), 30, what="block_spend")
    assert (a.kind, a.policy, a.workflow, a.model) == ("block_spend", "block-spend", "", "")
    assert a.expires_at == (now // 86_400_000 + 1) * 86_400_000  # midnight UTC: the budget's period ends
    assert key == scope_key(a)


def test_an_action_expires_when_the_watermark_passes_it_also_after_a_restart(env):
    s, worker, tap, pub = env
    trace = f"short-{uuid.uuid4().hex[:6]}"
    send(pub, tool_loop_events(trace, n=3, tenant="acme", workflow="short-agent"))
    [(key, a)] = wait_for(lambda: tap.records(trace_id=trace), 30, what="short halt")
    assert a.policy == "short-halt" and a.expires_at - a.created_at == 60_000
    assert tap.records(trace_id=trace, state="expired") == []
    wait_for(lambda: worker.scalar(f"SELECT count() FROM {{db}}.control_actions FINAL WHERE trace_id = '{trace}'") == 1, 30)
    worker.stop()  # the restarted worker knows its active actions from control_actions
    worker.start()
    # Event time moves past the expiry (validation admits up to 5 minutes ahead).
    later = a.expires_at + 5_000
    send(pub, [{"event_id": f"tick-{trace}", "event_type": "prompt", "ts": later, "trace_id": f"tick-{trace}",
                "tenant": "acme", "workflow": "other"}])
    [(key2, e)] = wait_for(lambda: tap.records(trace_id=trace, state="expired"), 30, what="expiry record")
    assert (key2, e.action_id, e.ended_by, e.updated_at) == (key, a.action_id, "expiry", a.expires_at)
    wait_for(lambda: worker.scalar(f"SELECT count() FROM {{db}}.control_actions FINAL WHERE trace_id = '{trace}'") == 2, 30)
