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
