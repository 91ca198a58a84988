"""The Deduper's store side: which event ids ClickHouse holds, and the Bloom filter's load.

`{db}.event_ids` (schemas/migrations/0004_event_ids.sql) holds every stored event_id,
sorted by id, written by a materialized view from the same INSERT as `events`.

What ClickHouse guarantees for that view (documented, and checked on chDB here): an INSERT
that returns success has written its blocks to `events` and through the view to
`event_ids`; it is not atomic. A reader running at the same time may see a block in one
table and not yet the other. On error nothing is rolled back: when the view's write fails,
the `events` part may already be committed (reproduced: a view that throws leaves the
source rows in place and `event_ids` without them); an error in `events` itself (too many
partitions, a type error) stops the block before the view. So after a failed insert,
`events` may hold ids that `event_ids` lacks, never the reverse: call `repair_event_ids` for
the failed batch's offsets before reading it again (the sink's `unseen` then skips the
stored rows, which would otherwise never reach `event_ids`).

Blocking calls on any clickhouse-connect client; the worker runs them on its ClickHouse
thread.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from llmpulse.processors.dedup import DedupConfig, Deduper

_DAY_MS = 86_400_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _db(database: str) -> str:
    if not _IDENT.match(database):
        raise ValueError(f"not a database name: {database!r}")
    return database


def stored_event_ids(client: Any, database: str, ids: Sequence[str], chunk: int = 2_000) -> set[str]:
    """Which of `ids` are in `{database}.event_ids`: one parametrised query per `chunk` ids.
    Exceptions are the client's own (e.g. OperationalError: transient), unchanged."""
    db = _db(database)
    found: set[str] = set()
    uniq = list(dict.fromkeys(ids))
    for i in range(0, len(uniq), chunk):
        part = uniq[i:i + chunk]
        rows = client.query(
            f"SELECT DISTINCT event_id FROM {db}.event_ids WHERE event_id IN {{ids:Array(String)}}",
            parameters={"ids": part},
        ).result_rows
        found.update(r[0] for r in rows)
    return found


@dataclass
class LoadReport:
    ids: int  # ids read from the store
    seconds: float
    store_now_ms: int  # the store's clock when the read began: the next refresh starts there

    @property
    def ids_per_second(self) -> float:
        return self.ids / self.seconds if self.seconds > 0 else float("inf")


def load_bloom(client: Any, database: str, deduper: Deduper, horizon_days: int | None = None) -> LoadReport:
    """Fill the Deduper's filter with every stored id of the last `horizon_days` (default: the
    Deduper's horizon, else all), streamed from `event_ids`; then the Deduper is `primed`.

    Call once at worker start, before the first batch. Until it returns, the Deduper looks
    every id up (correct, slower), so a failed load costs speed, not duplicates."""
    db = _db(database)
    t0 = time.perf_counter()
    if horizon_days is None and deduper.horizon_ms is not None:
        horizon_days = max(1, -(-deduper.horizon_ms // _DAY_MS))
    where = f"WHERE ts >= now64(3) - INTERVAL {int(horizon_days)} DAY" if horizon_days else ""
    count, newest, now = client.query(
        f"SELECT count(), toUnixTimestamp64Milli(max(ts)), toUnixTimestamp64Milli(now64(3)) "
        f"FROM {db}.event_ids {where}"
    ).result_rows[0]
    bloom = deduper.reset(int(count), int(newest) if count else 0)
    n = 0
    with client.query_column_block_stream(f"SELECT event_id FROM {db}.event_ids {where}") as blocks:
        for block in blocks:
            n += len(block[0])
            bloom.load_many(block[0])
    deduper.primed = True
    deduper.loaded_at_ms = int(now)
    return LoadReport(n, time.perf_counter() - t0, int(now))


def refresh_bloom(client: Any, database: str, deduper: Deduper, slack_ms: int = 60_000) -> LoadReport:
    """Add the ids stored since the last load (minus `slack_ms`: an insert's `ingested_at`
    is taken before its parts become visible) to the filter. Needed when ids can come from
    another worker: after a partition is assigned (its previous owner stored ids this worker
    never saw) and every `DedupConfig.refresh_seconds`. Without a previous load: `load_bloom`."""
    if not deduper.primed or deduper.loaded_at_ms is None:
        return load_bloom(client, database, deduper)
    db = _db(database)
    t0 = time.perf_counter()
    since = deduper.loaded_at_ms - slack_ms
    now = int(client.query("SELECT toUnixTimestamp64Milli(now64(3))").result_rows[0][0])
    n = 0
    newest = 0
    with client.query_column_block_stream(
        f"SELECT event_id, toUnixTimestamp64Milli(ts) FROM {db}.event_ids "
        "WHERE ingested_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')",
        parameters={"since": since},
    ) as blocks:
        for ids, ts in blocks:
            if ids:
                n += len(ids)
                newest = max(newest, max(ts))
                deduper.add_loaded(ids, newest)
    deduper.loaded_at_ms = now
    return LoadReport(n, time.perf_counter() - t0, now)


def repair_event_ids(client: Any, database: str, ranges: Iterable[tuple[str, int, int, int]]) -> int:
    """Copy into `event_ids` the ids of the `events` rows at (topic, partition, low..high
    offset): after a failed insert, whose `events` part may be committed without its view
    rows. Harmless when they are there (one row per id is kept). Returns the rows copied."""
    db = _db(database)
    copied = 0
    for topic, partition, low, high in ranges:
        params = {"t": topic, "p": int(partition), "lo": int(low), "hi": int(high)}
        where = ("WHERE kafka_topic = {t:String} AND kafka_partition = {p:UInt32} "
                 "AND kafka_offset BETWEEN {lo:UInt64} AND {hi:UInt64}")
        n = int(client.query(f"SELECT count() FROM {db}.events {where}", parameters=params).result_rows[0][0])
        if n:
            client.command(f"INSERT INTO {db}.event_ids (event_id, ts, ingested_at) "
                           f"SELECT event_id, ts, ingested_at FROM {db}.events {where}", parameters=params)
            copied += n
    return copied


def offset_ranges(messages: Iterable[Any]) -> list[tuple[str, int, int, int]]:
    """(topic, partition, lowest, highest offset) of RawMessages, for `repair_event_ids`."""
    spans: dict[tuple[str, int], list[int]] = {}
    for m in messages:
        s = spans.get((m.topic, m.partition))
        if s is None:
            spans[(m.topic, m.partition)] = [m.offset, m.offset]
        else:
            s[0] = min(s[0], m.offset)
            s[1] = max(s[1], m.offset)
    return [(t, p, lo, hi) for (t, p), (lo, hi) in spans.items()]


def deduper_for(client: Any, database: str, config: DedupConfig, retention_days: int, **kw: Any) -> Deduper:
    """A Deduper looking ids up in `{database}.event_ids`, horizon = `config.horizon_days`
    or the retention. Not primed: call `load_bloom` next."""
    days = config.horizon_days or retention_days
    chunk = config.lookup_chunk
    return Deduper(config, lambda ids: stored_event_ids(client, database, ids, chunk),
                   horizon_ms=days * _DAY_MS, **kw)
