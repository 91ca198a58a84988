"""The scaled stages (processors/runtime/scaled.py) on the real broker and chDB, fed records no
stage of ours wrote: the writer turns a rows record it cannot store (bytes, a row of the wrong
width, an event row without its Kafka source) into a dead letter with the reason and stores the
good records around it; the scope stage sends an unreadable scope record's bytes to the DLQ
topic and its reason to `dead_letters`, and goes on."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from llmpulse.kafka.topics import ensure_topics
from llmpulse.processors.runtime import scaled
from llmpulse.schemas import scope as sc
from llmpulse.schemas.store import migrate
from llmpulse.testing import isolated_settings
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_a_poison_rows_record_is_a_dead_letter_and_the_writer_goes_on(kafka, chdb_client, tmp_path: Path) -> None:
    db = f"poison_{uuid.uuid4().hex[:8]}"
    s = isolated_settings(kafka.bootstrap, tmp_path, database=db)
    s = s.model_copy(update={"scale": s.scale.model_copy(update={"rows_topic": f"llm.rows.{uuid.uuid4().hex[:8]}"})})
    migrate(chdb_client, db, s.retention_days)
    now_ms = time.time_ns() // 1_000_000  # a 1970 row would be gone by the table's TTL
    good_before = [now_ms, "before", 7, "llm.events.x", 0, 1]
    good_after = [now_ms, "after", 7, "llm.events.x", 0, 2]
    short_event = ["not", "a", "row"]
    sourceless = [None] * len(scaled.COLUMNS["events"])
    p = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for value in (scaled.encode_rows("dead_letters", [good_before]), b"\x00garbage",
                  scaled.encode_rows("events", [short_event]), scaled.encode_rows("events", [sourceless]),
                  scaled.encode_rows("dead_letters", [good_after])):
        p.produce(s.scale.rows_topic, value)
    p.flush(10)
    writer = scaled.RowsWriter(s, scaled.WriterSink(chdb_client, db))
    try:
        stored = lambda: chdb_client.query(f"SELECT reason, kafka_topic FROM {db}.dead_letters FINAL "
                                           "ORDER BY kafka_topic, kafka_offset").result_rows
        wait_for(lambda: writer.step() >= 0 and len(stored()) == 5, 30, what="every record stored or dead-lettered")
    finally:
        writer.close()
    rows = stored()
    assert [r for r, _ in rows if r in ("before", "after")] == ["before", "after"]
    poison = [r for r, t in rows if t == s.scale.rows_topic]
    assert len(poison) == 3 and all(r.startswith("unreadable rows record: ") for r in poison)
    assert any("3 columns" in r for r in poison) and any("no Kafka source" in r for r in poison)
    assert writer.stats["unreadable"] == 3 and "retries" not in writer.stats


def test_an_unreadable_scope_record_is_a_dead_letter_and_the_stage_goes_on(kafka, chdb_client, tmp_path: Path) -> None:
    db = f"poison_{uuid.uuid4().hex[:8]}"
    s = isolated_settings(kafka.bootstrap, tmp_path, database=db, batch_max_seconds=0.2)
    tag = uuid.uuid4().hex[:8]
    s = s.model_copy(update={"scale": s.scale.model_copy(update={
        "rows_topic": f"llm.rows.{tag}", "scope_topic": f"llm.scope.{tag}", "scope_partitions": 1})})
    ensure_topics(s.kafka_bootstrap, {s.events_topic: 1, s.dlq_topic: 1, s.scale.scope_topic: 1,
                                      s.scale.rows_topic: 1, s.findings_topic: 1, s.controls_topic: 1})
    migrate(chdb_client, db, s.retention_days)
    garbage = b"\xc1not msgpack"
    p = Producer({"bootstrap.servers": s.kafka_bootstrap})
    now_ms = time.time_ns() // 1_000_000
    for value in (sc.encode(sc.progress(0, now_ms)), garbage, sc.encode(sc.progress(0, now_ms + 1000))):
        p.produce(s.scale.scope_topic, value, b"*")
    p.flush(10)
    stage = scaled.ScopeStage(s, [(s.events_topic, 0)])
    try:
        wait_for(lambda: stage.step() >= 0 and stage.stats["consumed"] == 3, 60, what="the scope stage read all 3")
    finally:
        stage.close()
    assert stage.stats["unreadable"] == 1 and stage.stats["aborted"] == 0
    writer = scaled.RowsWriter(s, scaled.WriterSink(chdb_client, db))
    try:
        stored = lambda: chdb_client.query(f"SELECT reason, kafka_topic, kafka_offset FROM {db}.dead_letters FINAL"
                                           ).result_rows
        wait_for(lambda: writer.step() >= 0 and len(stored()) >= 1, 30, what="the dead letter stored")
    finally:
        writer.close()
    [(reason, topic, offset)] = stored()
    assert reason.startswith("unreadable scope record: ") and (topic, offset) == (s.scale.scope_topic, 1)
    dlq = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"t-{tag}", "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed"})
    dlq.subscribe([s.dlq_topic])
    try:
        got: list[bytes] = []
        wait_for(lambda: got.extend(m.value() for m in dlq.consume(10, 1.0) if m.error() is None) or got, 30,
                 what="the DLQ record")
    finally:
        dlq.close()
    assert got == [garbage]
