"""The sink against the real ClickHouse engine (chDB): restart safety by Kafka offsets."""

from __future__ import annotations

import orjson

from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.processors.runtime.sink import ClickHouseSink
from llmpulse.schemas.store import migrate, migration_files
from llmpulse.traffic import MALFORMED, TrafficGenerator


def _messages(n: int, partition: int = 0, start: int = 0) -> list[RawMessage]:
    events = list(TrafficGenerator(seed=5).events(n))[:n]
    return [RawMessage(orjson.dumps(e), "llm.events", partition, start + i) for i, e in enumerate(events)]


def test_redelivered_messages_are_written_once(chdb_client) -> None:
    client = chdb_client
    assert migrate(client, "lp", 30) == [name for name, _ in migration_files()]
    assert migrate(client, "lp", 30) == []  # idempotent
    msgs = _messages(300) + [RawMessage(MALFORMED[0], "llm.events", 0, 300)]
    sink = ClickHouseSink(client, "lp")
    first = msgs[:200]
    sink.write(Pipeline().run(sink.unseen(first)))
    # A crash before the commit: a new sink (new worker) gets the same and later messages again.
    sink = ClickHouseSink(client, "lp")
    fresh = sink.unseen(msgs[150:])
    assert [m.offset for m in fresh] == list(range(200, 301))
    sink.write(Pipeline().run(fresh))
    assert client.query("SELECT count(), uniqExact(event_id) FROM lp.events").result_rows == [(300, 300)]
    assert client.query("SELECT count() FROM lp.dead_letters").result_rows == [(1,)]
    # Partitions are independent.
    assert [m.offset for m in sink.unseen(_messages(5, partition=1))] == [0, 1, 2, 3, 4]


def test_rows_the_store_refuses_are_isolated_and_the_rest_is_written(chdb_client) -> None:
    """A block over 101 months (ClickHouse takes 100 partitions per insert) and one row whose
    token count no UInt64 holds: the sink writes every other row and returns the bad one."""
    from llmpulse.processors.pipeline import BatchResult
    from llmpulse.schemas.rows import EVENT_COLUMNS, event_row
    from llmpulse.schemas.contract import Prompt

    migrate(chdb_client, "iso", 3650)
    sink = ClickHouseSink(chdb_client, "iso")
    month = 31 * 86_400_000
    now = 1_764_000_000_000
    rows = [event_row(Prompt(event_id=f"m{i}", ts=now - i * month, trace_id="t", workflow="w"), {}, "x", 0, i)
            for i in range(101)]
    bad = list(rows[50])
    bad[EVENT_COLUMNS.index("event_id")], bad[EVENT_COLUMNS.index("kafka_offset")] = "bad", 101
    bad[EVENT_COLUMNS.index("input_tokens")] = 2**64
    rejected = sink.write(BatchResult(rows=rows + [bad]))
    assert [(r.offset, "rejected by ClickHouse" in r.reason) for r in rejected] == [(101, True)]
    assert chdb_client.query("SELECT count(), uniqExact(toYYYYMM(ts)) FROM iso.events").result_rows == [(101, 101)]
