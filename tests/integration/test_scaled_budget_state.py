"""A scaled scope stage's budgets over a takeover that replays less than the period (real broker):
the period's spend and the thresholds that fired come back from the committed state record
(`scale.state_topic`), so the next thresholds fire at the event they would have on one worker,
and none that fired before the takeover is paged again; a record on the state topic that is not
ours leaves the state committed before it standing."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from llmpulse.kafka.topics import ensure_topics
from llmpulse.processors.runtime import scaled
from llmpulse.schemas import scope as sc
from llmpulse.schemas.contract import Output
from llmpulse.schemas.findings import decode_finding
from llmpulse.testing import isolated_settings
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _findings(bootstrap: str, topic: str) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "isolation.level": "read_committed", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got, deadline = [], time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(100, timeout=0.5)
            got += [decode_finding(m.value()) for m in msgs if m.error() is None]
            if any(m.error() is not None for m in msgs):
                break
    finally:
        c.close()
    return got


def _run(stage: scaled.ScopeStage, until: int) -> None:
    wait_for(lambda: stage.step() >= 0 and stage.stats["consumed"] >= until, 60, what=f"{until} records read")


def test_a_takeover_replaying_3_records_keeps_the_days_spend_and_pages_each_threshold_once(kafka, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    s = isolated_settings(kafka.bootstrap, tmp_path, batch_max_seconds=0.2, batch_max_events=4,
                          warmup_max_events=3, stages=["budgets"],
                          budgets=[{"scope": {"tenant": "acme"}, "period": "day", "limit_usd": 10}])
    s = s.model_copy(update={"scale": s.scale.model_copy(update={
        "rows_topic": f"llm.rows.{tag}", "scope_topic": f"llm.scope.{tag}", "state_topic": f"llm.scope.state.{tag}",
        "scope_partitions": 1})})
    ensure_topics(s.kafka_bootstrap, {s.events_topic: 1, s.dlq_topic: 1, s.scale.scope_topic: 1,
                                      s.scale.rows_topic: 1, s.findings_topic: 1, s.controls_topic: 1})
    t0 = time.time_ns() // 1_000_000 - 30 * 60_000
    if t0 // 86_400_000 != (t0 + 40 * 10_000) // 86_400_000:
        t0 -= 3_600_000  # one UTC day for the whole run
    events = [Output(event_id=f"e{i:02d}", ts=t0 + i * 10_000, trace_id=f"t{i}", workflow="w", tenant="acme",
                     model="gpt-4o", status="ok", latency_ms=1.0) for i in range(40)]
    p = Producer({"bootstrap.servers": s.kafka_bootstrap})
    publish = lambda batch: ([p.produce(s.scale.scope_topic, sc.encode(sc.record_for(e, 0, 0.25)), b"acme")
                              for e in batch], p.flush(10))
    publish(events[:24])  # $6: 50 % fired at e19
    first = scaled.ScopeStage(s, [(s.events_topic, 0)])
    try:
        _run(first, 24)
    finally:
        first.close()
    # Bytes no stage of ours wrote, last on the state partition: logged, the committed state before it stands.
    p.produce(s.scale.state_topic, b"\xc1not msgpack", b"scope/0", partition=0)
    publish(events[24:])  # $10 in all: 80 % at e31, 100 % at e39
    second = scaled.ScopeStage(s, [(s.events_topic, 0)])
    try:
        _run(second, 16)
    finally:
        second.close()
    assert second.stats["replayed"] == 3 and second.stats["budget_periods_restored"] == 1, dict(second.stats)
    got = [(f.evidence["threshold_pct"], f.evidence["event_id"]) for f in _findings(s.kafka_bootstrap, s.findings_topic)
           if f.kind == "budget_threshold"]
    assert got == [(50, "e19"), (80, "e31"), (100, "e39")]
