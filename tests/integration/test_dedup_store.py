"""event_ids in chDB: the migration, its view, the backfill, lookups, the filter's load.

Each test has its own database in the process's one chDB engine (tests/conftest.py).
"""

from __future__ import annotations

import time
import uuid

import pytest

from llmpulse.processors.dedup import DedupConfig
from llmpulse.processors.runtime.dedup_store import (
    deduper_for,
    load_bloom,
    offset_ranges,
    refresh_bloom,
    repair_event_ids,
    stored_event_ids,
)
from llmpulse.schemas.store import migrate, migration_files, render, split_statements

COLS = ["event_id", "event_type", "ts", "tenant", "workflow", "trace_id", "model", "status",
        "price_usd", "kafka_topic", "kafka_partition", "kafka_offset"]


@pytest.fixture
def db(chdb_client):
    name = f"dedup_{uuid.uuid4().hex[:10]}"
    yield name
    chdb_client.command(f"DROP DATABASE IF EXISTS {name}")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def output_row(event_id: str, ts: int, offset: int, price: float = 0.5, partition: int = 0) -> list:
    return [event_id, "output", ts, "acme", "support-bot", f"t-{event_id}", "gpt-4o", "ok", price,
            "llm.events", partition, offset]


def insert_others(client, db: str, n: int, ts_ms: int, first_offset: int) -> None:
    """n other output events in one INSERT ... SELECT (the store's side of 200,000 events)."""
    client.command(
        f"INSERT INTO {db}.events ({', '.join(COLS)}) SELECT 'other-' || toString(number), 'output', "
        f"fromUnixTimestamp64Milli(toInt64({ts_ms} + number), 'UTC'), 'acme', 'support-bot', "
        f"'t-' || toString(number), 'gpt-4o', 'ok', 0.001, 'llm.events', 1, {first_offset} + number "
        f"FROM numbers({n})"
    )


def count(client, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def test_migration_creates_the_table_and_view_and_backfills_once(chdb_client, db) -> None:
    client = chdb_client
    # A database from before this migration, with events in it.
    client.command(f"CREATE DATABASE {db}")
    client.command(f"CREATE TABLE {db}.schema_migrations (version String, applied_at DateTime DEFAULT now()) "
                   "ENGINE = ReplacingMergeTree ORDER BY version")
    for version, sql in migration_files():
        if version < "0004":
            for statement in split_statements(render(sql, db, 90)):
                client.command(statement)
            client.insert(f"{db}.schema_migrations", [[version]], column_names=["version"])
    t = now_ms()
    client.insert(f"{db}.events", [output_row("old-1", t, 1), output_row("old-2", t, 2),
                                   output_row("old-1", t + 5_000, 3)], column_names=COLS)  # a legacy duplicate

    assert "0004_event_ids" in migrate(client, db)
    assert count(client, f"SELECT count() FROM {db}.event_ids FINAL") == 2  # backfilled, one row per id
    # The legacy duplicate is gone from events: its first copy stays, spend is not doubled.
    assert client.query(f"SELECT event_id, kafka_offset FROM {db}.events FINAL ORDER BY event_id").result_rows == [
        ("old-1", 1), ("old-2", 2)]
    assert client.query(f"SELECT sum(spend_usd) FROM {db}.calls_per_day").result_rows[0][0] == pytest.approx(1.0)
    ddl = client.query(f"SHOW CREATE TABLE {db}.event_ids").result_rows[0][0]
    assert "ORDER BY event_id" in ddl and "index_granularity = 256" in ddl and "TTL" in ddl

    # From now on the events insert writes event_ids too (the view), with ingested_at.
    client.insert(f"{db}.events", [output_row("new-1", t, 4)], column_names=COLS)
    assert stored_event_ids(client, db, ["old-1", "old-2", "new-1", "never"]) == {"old-1", "old-2", "new-1"}
    assert count(client, f"SELECT count() FROM {db}.event_ids WHERE event_id = 'new-1' "
                         "AND ingested_at > now64(3) - INTERVAL 1 MINUTE") == 1
    assert migrate(client, db) == []  # applied once; the backfill does not run again
    assert count(client, f"SELECT count() FROM {db}.event_ids") == count(client, f"SELECT count() FROM {db}.event_ids FINAL")


def test_stored_event_ids_chunks_and_binds_its_parameters(chdb_client, db) -> None:
    client = chdb_client
    migrate(client, db)
    t = now_ms()
    client.insert(f"{db}.events", [output_row(f"e{i}", t, i) for i in range(10)], column_names=COLS)
    asked = [f"e{i}" for i in range(0, 20, 2)] + ["it's'; DROP TABLE x; --"]
    assert stored_event_ids(client, db, asked, chunk=3) == {f"e{i}" for i in range(0, 10, 2)}
    assert stored_event_ids(client, db, []) == set()
    with pytest.raises(ValueError):
        stored_event_ids(client, "x; DROP DATABASE y", ["e1"])


def test_a_re_published_event_with_a_new_ts_after_200000_others_is_found(chdb_client, db) -> None:
    """The issue's case end to end on the store: one row after FINAL, spend not doubled."""
    client = chdb_client
    migrate(client, db)
    t0 = now_ms() - 3_600_000
    client.insert(f"{db}.events", [output_row("the-one", t0, 0, price=2.0)], column_names=COLS)
    insert_others(client, db, 200_000, t0 + 1, first_offset=0)

    for primed in (False, True):  # a worker that looks everything up, and one with the filter loaded
        deduper = deduper_for(client, db, DedupConfig(expected_ids=100_000), retention_days=90)
        if primed:
            report = load_bloom(client, db, deduper)
            assert report.ids == 200_001 and deduper.primed
        again = ["the-one", "fresh-1", "fresh-2"]
        assert deduper.split(again, newest_ts_ms=t0 + 3_600_000) == [False, True, True]
        assert deduper.stats["duplicates_stored"] == 1

    # What the pipeline then inserts: the fresh ones only.
    client.insert(f"{db}.events", [output_row("fresh-1", t0 + 3_600_000, 5)], column_names=COLS)
    assert count(client, f"SELECT count() FROM {db}.events FINAL WHERE event_id = 'the-one'") == 1
    spend = client.query(f"SELECT sum(spend_usd) FROM {db}.calls_per_day").result_rows[0][0]
    assert spend == pytest.approx(2.0 + 0.5 + 200_000 * 0.001)


def test_refresh_picks_up_what_another_worker_stored(chdb_client, db) -> None:
    client = chdb_client
    migrate(client, db)
    t = now_ms()
    client.insert(f"{db}.events", [output_row("mine", t, 0)], column_names=COLS)
    deduper = deduper_for(client, db, DedupConfig(expected_ids=10_000), retention_days=90)
    load_bloom(client, db, deduper)
    client.insert(f"{db}.events", [output_row("theirs", t, 0, partition=3)], column_names=COLS)  # another worker
    assert "theirs" not in deduper
    report = refresh_bloom(client, db, deduper)
    assert report.ids >= 1 and "theirs" in deduper and "mine" in deduper
    assert deduper.split(["theirs"]) == [False]


def test_repair_copies_ids_a_failed_insert_left_out(chdb_client, db) -> None:
    """A view that fails leaves the events part in place (ClickHouse does not roll back)."""
    client = chdb_client
    migrate(client, db)
    t = now_ms()
    rows = [output_row(f"r{i}", t, 100 + i) for i in range(5)]
    client.insert(f"{db}.events", rows, column_names=COLS)
    client.command(f"TRUNCATE TABLE {db}.event_ids")  # as if the view's write had failed
    assert stored_event_ids(client, db, ["r0", "r4"]) == set()

    class Msg:
        def __init__(self, offset: int) -> None:
            self.topic, self.partition, self.offset = "llm.events", 0, offset

    ranges = offset_ranges([Msg(o) for o in (104, 100, 102)])
    assert ranges == [("llm.events", 0, 100, 104)]
    assert repair_event_ids(client, db, ranges) == 5
    assert stored_event_ids(client, db, [f"r{i}" for i in range(5)]) == {f"r{i}" for i in range(5)}
    assert repair_event_ids(client, db, [("llm.events", 7, 0, 10)]) == 0


def test_the_sinks_insert_fills_event_ids(chdb_client, db) -> None:
    """The real row mapping and sink: what the worker inserts is what the lookup finds."""
    from llmpulse.processors.pipeline import BatchResult
    from llmpulse.processors.runtime.sink import ClickHouseSink
    from llmpulse.schemas.contract import Output
    from llmpulse.schemas.rows import event_row

    client = chdb_client
    migrate(client, db)
    t = now_ms()
    events = [Output(event_id=f"s{i}", ts=t + i, trace_id="t", workflow="w", status="ok", latency_ms=1.0)
              for i in range(3)]
    rows = [event_row(e, {}, "llm.events", 0, i) for i, e in enumerate(events)]
    ClickHouseSink(client, db).write(BatchResult(rows=rows))
    assert stored_event_ids(client, db, ["s0", "s1", "s2", "s3"]) == {"s0", "s1", "s2"}
    got = client.query(f"SELECT event_id, toUnixTimestamp64Milli(ts) FROM {db}.event_ids ORDER BY event_id").result_rows
    assert got == [(f"s{i}", t + i) for i in range(3)]
