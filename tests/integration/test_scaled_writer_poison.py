"""The scaled writer (processors/runtime/scaled.py RowsWriter) on the real broker and chDB: a
rows record it cannot store (bytes, a row of the wrong width, an event row without its Kafka
source) becomes a dead letter with the reason, and the good records around it are stored."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from llmpulse.processors.runtime import scaled
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
