"""ClickHouse sink: writes a processed batch; the caller commits offsets only after it returns.

Exactly-once rows across restarts: each row carries its Kafka (topic, partition,
offset). After a (re)assignment the sink learns the highest offset already stored
per partition and, for messages at or below it, skips exactly the offsets that are
in the table: a worker killed between insert and commit re-reads those messages
and writes nothing twice. Rows re-published by an app under the same event_id are
collapsed by ReplacingMergeTree (readers use FINAL).

Blocking calls; the worker runs them on its single ClickHouse thread.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from llmpulse.processors.pipeline import BatchResult, RawMessage
from llmpulse.schemas.findings import Finding
from llmpulse.schemas.rows import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, FINDING_COLUMNS, finding_row

log = logging.getLogger("llmpulse.sink")



class ClickHouseSink:
    def __init__(self, client: Client, database: str, max_retry_seconds: float = 300.0) -> None:
        self.client = client
        self.db = database
        self.max_retry_seconds = max_retry_seconds
        self._stored_max: dict[tuple[str, int], int] = {}  # offsets at or below may already be stored

    # -- restart safety ------------------------------------------------------------
    def forget_assignments(self) -> None:
        """Call on rebalance: another worker may have written these partitions meanwhile."""
        self._stored_max.clear()

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
            stored = self._stored_offsets(key[0], key[1], low, min(stored_max, max(m.offset for m in msgs)))
            fresh.extend(m for m in msgs if m.offset not in stored)
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
    def write(self, result: BatchResult, findings: Iterable[Finding] = ()) -> None:
        """Dead letters and findings first, events last: `unseen` keys off the events table,
        so a crash in between re-inserts the others (deduplicated by their sort keys)."""
        now = time.time_ns() // 1_000_000
        if result.dead_letters:
            rows = [[now, d.reason, len(d.message.value), d.message.topic, d.message.partition, d.message.offset]
                    for d in result.dead_letters]
            self._insert("dead_letters", rows, DEAD_LETTER_COLUMNS)
        found = list(findings) or result.findings
        if found:
            self._insert("findings", [finding_row(f) for f in found], FINDING_COLUMNS)
        if result.rows:
            self._insert("events", result.rows, EVENT_COLUMNS)
            for row in result.rows:  # later batches of these partitions are beyond what is stored
                key = (row[-3], row[-2])
                if row[-1] > self._stored_max.get(key, -1):
                    self._stored_max[key] = row[-1]

    def _insert(self, table: str, rows: list, columns: list[str]) -> None:
        deadline = time.monotonic() + self.max_retry_seconds
        delay = 0.2
        while True:
            try:
                self.client.insert(f"{self.db}.{table}", rows, column_names=columns)
                return
            except OperationalError as exc:  # transient: connection, timeout; retry with backoff
                if time.monotonic() > deadline:
                    raise
                log.warning("insert into %s failed (%s); retrying in %.1fs", table, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            except DatabaseError:
                raise  # permanent: the same rows will fail again; let the worker stop uncommitted
