"""ClickHouse sink: writes a processed batch; the caller commits offsets only after it returns.

Exactly-once rows across restarts: each row carries its Kafka (topic, partition,
offset). After a (re)assignment the sink learns the highest offset already stored
per partition and, for messages at or below it, skips exactly the offsets that are
in the table: a worker killed between insert and commit re-reads those messages
and writes nothing twice. Events re-published by an app under the same event_id never
reach the sink (the Deduper drops them, processors/dedup.py).

Blocking calls; the worker runs them on its single ClickHouse thread.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, NamedTuple, Sequence

from clickhouse_connect.driver.client import Client

from llmpulse.processors.pipeline import BatchResult, RawMessage
from llmpulse.processors.runtime.dedup_store import repair_event_ids
from llmpulse.processors.runtime.retry import classify
from llmpulse.schemas.findings import Finding
from llmpulse.schemas.rows import (
    CONTROL_ACTION_COLUMNS, DEAD_LETTER_COLUMNS, EVENT_COLUMNS, FINDING_COLUMNS, control_action_row, finding_row, row_source,
)

log = logging.getLogger("llmpulse.sink")


class ClickHouseSink:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.db = database
        self._stored_max: dict[tuple[str, int], int] = {}  # offsets at or below may already be stored

    # -- restart safety ------------------------------------------------------------
    def forget_assignments(self) -> None:
        """Call on rebalance: another worker may have written these partitions meanwhile."""
        self._stored_max.clear()

    def beyond_stored(self, messages: Sequence[RawMessage]) -> bool:
        """True when every message lies past what this sink knows is stored, so `unseen` would
        keep them all without asking ClickHouse (the usual batch: no query, no wait for an
        insert in flight)."""
        low: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic, m.partition)
            if m.offset < low.get(key, m.offset + 1):
                low[key] = m.offset
        known = self._stored_max
        return all(key in known and offset > known[key] for key, offset in low.items())

    def unseen(self, messages: Sequence[RawMessage]) -> list[RawMessage]:
        """Drop messages whose rows are already in ClickHouse (re-delivered after a crash)."""
        by_partition: dict[tuple[str, int], list[RawMessage]] = {}
        for m in messages:
            by_partition.setdefault((m.topic, m.partition), []).append(m)
        fresh: list[RawMessage] = []
        for key, msgs in by_partition.items():
            stored_max = self._stored_max.get(key)
            if stored_max is None:
                stored_max = self._stored_max[key] = self._max_stored_offset(*key)
            low = min(m.offset for m in msgs)
            if low > stored_max:
                fresh.extend(msgs)
                continue
            high = min(stored_max, max(m.offset for m in msgs))
            stored = self._stored_offsets(key[0], key[1], low, high)
            fresh.extend(m for m in msgs if m.offset not in stored)
            if stored:  # a batch stored, not committed: its event ids may have missed the view
                repair_event_ids(self.client, self.db, [(key[0], key[1], low, high)])
        return fresh

    def _max_stored_offset(self, topic: str, partition: int) -> int:
        rows = self.client.query(
            f"SELECT max(kafka_offset), count() FROM {self.db}.events "
            "WHERE kafka_topic = {t:String} AND kafka_partition = {p:UInt32}",
            parameters={"t": topic, "p": partition},
        ).result_rows
        return int(rows[0][0]) if rows and rows[0][1] else -1

    def _stored_offsets(self, topic: str, partition: int, low: int, high: int) -> set[int]:
        rows = self.client.query(
            f"SELECT kafka_offset FROM {self.db}.events WHERE kafka_topic = {{t:String}} "
            "AND kafka_partition = {p:UInt32} AND kafka_offset BETWEEN {lo:UInt64} AND {hi:UInt64}",
            parameters={"t": topic, "p": partition, "lo": low, "hi": high},
        ).result_rows
        return {r[0] for r in rows}

    # -- writes -----------------------------------------------------------------------
    def write(self, result: BatchResult, findings: Iterable[Finding] = ()) -> list[Rejected]:
        """Dead letters, findings and control actions first, events last: `unseen` keys off the events table,
        so a crash in between re-inserts the others (deduplicated by their sort keys).

        Transient errors are raised (the caller retries the same batch later). Rows that fail
        for good (classified permanent: the same rows always fail) are isolated by splitting
        the insert, the rest is written, and the rejected event rows are returned with the
        engine's reason so the caller dead-letters their messages."""
        now = time.time_ns() // 1_000_000
        if result.dead_letters:
            rows = [[now, d.reason, len(d.message.value), d.message.topic, d.message.partition, d.message.offset]
                    for d in result.dead_letters]
            for row, reason in self._insert_isolating("dead_letters", rows, DEAD_LETTER_COLUMNS):
                log.error("dead letter row not storable (%s): %s", reason, row[3:])
        found = list(findings) or result.findings
        if found:
            for row, reason in self._insert_isolating("findings", [finding_row(f) for f in found], FINDING_COLUMNS):
                log.error("finding %s not storable (%s); it is on the findings topic", row[0], reason)
        if result.actions:  # the audit: every action, lift and expiry is a row
            rows = [control_action_row(a) for a in result.actions]
            for row, reason in self._insert_isolating("control_actions", rows, CONTROL_ACTION_COLUMNS):
                log.error("control action %s not storable (%s); it is on the controls topic", row[0], reason)
        rejected: list[Rejected] = []
        if result.rows:
            for row, reason in self._insert_isolating("events", result.rows, EVENT_COLUMNS):
                rejected.append(Rejected(*row_source(row), reason))
            for row in result.rows:  # later batches of these partitions are beyond what is stored
                topic, partition, offset = row_source(row)
                if offset > self._stored_max.get((topic, partition), -1):
                    self._stored_max[(topic, partition)] = offset
        return rejected

    def _insert_isolating(self, table: str, rows: list, columns: list[str]) -> list[tuple[list, str]]:
        """Insert `rows`; return those that fail permanently, each with its reason.

        A block that fails permanently is split in halves until the failing rows stand alone
        (log2(n) extra inserts per bad row). That also splits a block spanning more months
        than ClickHouse takes in one insert (max_partitions_per_insert_block, 100)."""
        bad: list[tuple[list, str]] = []
        if rows:
            self._bisect(table, rows, columns, bad)
        return bad

    def _bisect(self, table: str, rows: list, columns: list[str], bad: list[tuple[list, str]]) -> None:
        try:
            self.client.insert(f"{self.db}.{table}", rows, column_names=columns)
            return
        except Exception as exc:
            if classify(exc) == "transient":
                raise
            if len(rows) == 1:
                bad.append((rows[0], _reason(exc)))
                return
        half = len(rows) // 2
        self._bisect(table, rows[:half], columns, bad)
        self._bisect(table, rows[half:], columns, bad)


class Rejected(NamedTuple):
    """An event row the store refused for good: its message goes to the DLQ with `reason`."""

    topic: str
    partition: int
    offset: int
    reason: str


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0]
    return f"rejected by ClickHouse: {text}"[:500]
