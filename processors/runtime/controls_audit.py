"""`llm.controls` -> `control_actions`: every record on the controls topic is an audit row.

The worker's own policy actions are written by the batch that made them (sink.write); this
agent adds what others publish (people through `llmpulse control`, other workers) and writes
the worker's records again, which collapse (same action_id, updated_at and state). A record
that breaks the contract is logged with its reason and skipped (the SDK ignores it too). A
ClickHouse error is retried with the one backoff while transient; rows it refuses for good are
logged and skipped one by one (an exception would stop the agent, and the audit with it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from llmpulse.processors.runtime.retry import Backoff, RetryConfig, classify
from llmpulse.schemas.controls import ControlError, decode_action
from llmpulse.schemas.rows import CONTROL_ACTION_COLUMNS, control_action_row

log = logging.getLogger("llmpulse.worker.controls")


def audit_rows(values: list[bytes | None]) -> list[list]:
    rows = []
    for v in values:
        if not v:
            continue  # a tombstone: the key is forgotten, its records stay in the audit
        try:
            rows.append(control_action_row(decode_action(v)))
        except ControlError as exc:
            log.warning("control record not audited: %s", exc)
    return rows


def wire_controls_audit(app: Any, settings: Any, runtime: Any) -> None:
    topic = app.topic(settings.controls_topic, partitions=1)

    @app.agent(topic)
    async def audit_controls(stream: Any) -> None:
        async for batch in stream.take(500, within=0.5):
            rows = audit_rows(list(batch))
            if rows:
                await runtime.ready.wait()  # ClickHouse connected and migrated
                await store_rows(rows, lambda rs: runtime.call(_insert, runtime, rs), settings.retry)


async def store_rows(rows: list[list], insert: Callable[[list[list]], Awaitable[Any]], retry: RetryConfig,
                     sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> int:
    """Insert `rows`; returns how many were stored."""
    backoff = Backoff(retry)
    while True:
        try:
            await insert(rows)
            return len(rows)
        except Exception as exc:
            if classify(exc) == "permanent":
                refused = exc
                break
            delay = backoff.next_delay()
            log.warning("control_actions insert failed, retrying in %.1fs: %s", delay, exc)
            await sleep(delay)
    if len(rows) == 1:
        log.error("control record not audited (refused by the store): %s", refused)
        return 0
    stored = 0
    for row in rows:  # which of them the store refuses
        stored += await store_rows([row], insert, retry, sleep)
    return stored


def _insert(runtime: Any, rows: list[list]) -> None:
    sink = runtime.ingest.sink
    sink.client.insert(f"{sink.db}.control_actions", rows, column_names=CONTROL_ACTION_COLUMNS)
