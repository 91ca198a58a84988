"""Policy actions are exactly once through the batch checkpoint (issue 15): with a step failing
transiently after the policies ran (side outputs, the control_actions insert, the events
insert, the commit), every action record reaches `llm.controls` once and `control_actions`
holds exactly the backtest's actions. In process: the worker's own BatchIngest on the real
broker and chDB; every third batch fails once at the chosen step.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from clickhouse_connect.driver.exceptions import OperationalError
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from llmpulse.commands.backtest import run as backtest_run
from llmpulse.ingest import KafkaPublisher
from llmpulse.processors.pipeline import Pipeline
from llmpulse.processors.runtime.batch_ingest import BatchIngest, RetryLater
from llmpulse.processors.runtime.sink import ClickHouseSink
from llmpulse.processors.runtime.worker import ensure_pipeline_topics
from llmpulse.schemas.controls import decode_action, scope_key
from llmpulse.schemas.store import migrate
from llmpulse.testing import isolated_settings, tool_loop_events

pytestmark = pytest.mark.integration

CONFIG = {"policies": {"defaults": "enforce"}, "stages": ["price", "budgets", "contracts", "loops"],
          "budgets": [{"scope": {"tenant": f"t{i}"}, "period": "day", "limit_usd": 1.0} for i in range(5)]}


def traffic() -> list[bytes]:
    """40 loops and 5 blown budgets among 2,000 ordinary calls, in small batches' worth."""
    now = int(time.time() * 1000) - 60_000
    out: list[dict] = []
    for i in range(2000):
        out.append({"event_id": f"o{i}", "event_type": "output", "ts": now + i * 10, "trace_id": f"c{i % 300}",
                    "tenant": f"t{i % 7}", "workflow": "chat", "model": "selfhosted-x", "provider": "self",
                    "status": "ok", "latency_ms": 5.0, "cost_usd": 0.02})
        if i % 50 == 0:
            out += tool_loop_events(f"loop{i}", n=3, start_ms=now + i * 10)
    return [orjson.dumps(e) for e in out]


class _Proxy:
    def __init__(self, target, **overrides) -> None:
        self._target, self._overrides = target, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._target, name)


def controls_on_topic(settings, timeout: float = 20) -> list[tuple[str, str, str]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"chk-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(settings.controls_topic, 0, OFFSET_BEGINNING)])
    got, deadline, quiet = [], time.monotonic() + timeout, 0
    while time.monotonic() < deadline and quiet < 3:
        msgs = [m for m in consumer.consume(1000, timeout=0.3) if not m.error()]
        quiet = 0 if msgs else quiet + 1
        for m in msgs:
            a = decode_action(m.value())
            assert m.key().decode() == scope_key(a)
            got.append((a.action_id, a.state, a.kind))
    consumer.close()
    return got


@pytest.mark.parametrize("stage", ["none", "publish_before", "publish_after", "store_actions", "store_events", "commit"])
def test_failed_steps_publish_and_store_each_action_once(kafka, tmp_path: Path, chdb_client, stage) -> None:
    lines = traffic()
    history = tmp_path / "h.jsonl"
    history.write_bytes(b"\n".join(lines) + b"\n")
    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.1, batch_max_events=300,
                                 **CONFIG)
    expected = backtest_run(Pipeline.from_settings(settings, replay=True), history).actions
    assert Counter(a.kind for a in expected) == {"halt_trace": 40, "block_spend": 5}
    ensure_pipeline_topics(settings)
    db = f"policy_faults_{stage}"
    migrate(chdb_client, db, settings.retention_days)
    ingest = BatchIngest(settings, ClickHouseSink(chdb_client, db), Pipeline.from_settings(settings))
    calls = Counter()

    def fail(what: str) -> bool:  # the first try of every third batch's step
        calls[what] += 1
        return calls[what] % 3 == 1

    real_publish = ingest._publish
    if stage.startswith("publish"):
        def flaky_publish(cp):
            if stage == "publish_after":  # delivered, then the acknowledgement is lost
                real_publish(cp)
            if cp.result.actions and fail("p"):
                raise OperationalError("injected: side outputs not acknowledged")
            real_publish(cp)
        ingest._publish = flaky_publish
    elif stage.startswith("store"):
        table = ".control_actions" if stage == "store_actions" else ".events"
        client = ingest.sink.client
        real_insert = client.insert

        def insert(name, *args, **kwargs):
            if name.endswith(table) and fail("i"):
                raise OperationalError("injected: connection reset")
            return real_insert(name, *args, **kwargs)
        ingest.sink.client = _Proxy(client, insert=insert)
    elif stage == "commit":
        consumer = ingest.consumer

        def commit(*args, **kwargs):
            if fail("c"):
                raise KafkaException(KafkaError(KafkaError._TRANSPORT, "injected: broker unreachable"))
            return consumer.commit(*args, **kwargs)
        ingest.consumer = _Proxy(consumer, commit=commit)
    pub = KafkaPublisher(settings.kafka_bootstrap, settings.events_topic, redaction=False)
    for line in lines:
        assert pub.publish_raw(line, orjson.loads(line)["trace_id"])
    assert pub.flush(30) == 0
    pub.close()
    try:
        deadline = time.monotonic() + 120
        while ingest.stats["inserted"] < len(lines) and time.monotonic() < deadline:
            try:
                ingest.step()
            except RetryLater:
                pass
    finally:
        ingest._publish = real_publish
        ingest.close()
    assert ingest.stats["inserted"] == len(lines) and (ingest.stats["retries"] > 0) == (stage != "none"), ingest.stats
    want = Counter((a.action_id, a.state, a.kind) for a in expected)
    assert Counter(controls_on_topic(settings)) == want  # each record exactly once
    rows = chdb_client.query(f"SELECT action_id, state, kind FROM {db}.control_actions FINAL").result_rows
    assert Counter(map(tuple, rows)) == want
