"""The faust-streaming worker: thin wiring of topics to the pipeline and the sink.

One agent reads `llm.events` in batches (`take_events`), runs the pure pipeline,
sends dead letters to `llm.events.dlq` (original bytes, reason and source in
headers) and findings to `llm.findings`, writes ClickHouse, and only then lets
faust ack the batch, so committed offsets never run ahead of stored rows.

ClickHouse calls run on one dedicated thread: chDB is in-process and blocking.
In embedded mode that thread also answers `/query/` for `llmpulse sql`, since a
chDB data directory can be opened by one process only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import faust
import orjson

from llmpulse.kafka.topics import ensure_topics
from llmpulse.processors.pipeline import BatchResult, Pipeline, RawMessage
from llmpulse.processors.sink import ClickHouseSink
from llmpulse.schemas.findings import encode_finding
from llmpulse.schemas.store import connect, migrate
from llmpulse.settings import Settings

log = logging.getLogger("llmpulse.worker")
T = TypeVar("T")


class WorkerRuntime:
    """Everything the agent needs, built once per worker process."""

    def __init__(self, settings: Settings, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline or Pipeline()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.sink: ClickHouseSink | None = None
        self.ready = asyncio.Event()  # set once ClickHouse is connected and migrated
        self.stats = {"ready": False, "consumed": 0, "inserted": 0, "dead_letters": 0, "findings": 0, "skipped_duplicates": 0,
                      "batches": 0, "last_batch_ms": 0.0, "started_at": time.time()}

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def open(self) -> None:
        """Connect and migrate (on the ClickHouse thread)."""
        s = self.settings
        client = connect(s.dsn, s.clickhouse_user, s.clickhouse_password.get_secret_value())
        applied = migrate(client, s.database, s.retention_days)
        if applied:
            log.info("applied migrations %s", applied)
        self.sink = ClickHouseSink(client, s.database)

    def process(self, messages: Sequence[RawMessage]) -> tuple[BatchResult, int]:
        """Dedupe against stored rows, run the pipeline (ClickHouse thread; pipeline state stays single-threaded)."""
        assert self.sink is not None
        fresh = self.sink.unseen(messages)
        return self.pipeline.run(fresh), len(messages) - len(fresh)

    def query(self, sql: str) -> dict:
        assert self.sink is not None
        result = self.sink.client.query(sql)
        return {"columns": list(result.column_names), "types": [t.name for t in result.column_types],
                "rows": result.result_rows}


def build_app(settings: Settings, pipeline: Pipeline | None = None) -> faust.App:
    s = settings
    app = faust.App(
        s.worker_id,
        broker=f"kafka://{s.kafka_bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=s.topic_partitions,
        producer_acks=-1,
        broker_commit_every=max(1000, s.batch_max_events),
        broker_commit_interval=1.0,
        # Throughput: let the consumer prefetch while a batch is being written.
        stream_buffer_maxsize=max(8 * s.batch_max_events, 65_536),
        consumer_max_fetch_size=8 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        web_bind="127.0.0.1",
        web_port=s.worker_web_port,
        web_in_thread=False,
    )
    runtime = WorkerRuntime(s, pipeline)
    events_topic = app.topic(s.events_topic, partitions=s.topic_partitions)
    dlq_topic = app.topic(s.dlq_topic, partitions=1)
    findings_topic = app.topic(s.findings_topic, partitions=1)

    @app.task
    async def _open() -> None:
        await runtime.call(runtime.open)
        runtime.stats["ready"] = True
        runtime.ready.set()

    @app.on_partitions_revoked.connect
    async def _on_revoked(app: faust.App, revoked: Any, **kw: Any) -> None:
        if runtime.sink is not None:
            await runtime.call(runtime.sink.forget_assignments)

    @app.agent(events_topic)
    async def ingest(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_max_events, within=s.batch_max_seconds):
            started = time.perf_counter()
            await runtime.ready.wait()  # migrations may still be running
            messages = [RawMessage(e.message.value or b"", e.message.topic, e.message.partition, e.message.offset)
                        for e in events]
            result, skipped = await runtime.call(runtime.process, messages)
            await _publish_side_outputs(result, dlq_topic, findings_topic)
            await runtime.call(runtime.sink.write, result)
            st = runtime.stats
            st["consumed"] += len(messages)
            st["skipped_duplicates"] += skipped
            st["inserted"] += len(result.rows)
            st["dead_letters"] += len(result.dead_letters)
            st["findings"] += len(result.findings)
            st["batches"] += 1
            st["last_batch_ms"] = (time.perf_counter() - started) * 1000
            # Leaving the loop body lets take_events ack the batch; faust commits acked offsets.

    @app.page("/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(runtime.stats)

    @app.page("/query/")
    class Query(faust.web.View):
        async def post(self, request: Any) -> Any:
            body = await request.json()
            await runtime.ready.wait()
            try:
                result = await runtime.call(runtime.query, body["sql"])
            except Exception as exc:  # report the ClickHouse error to the caller, keep serving
                return self.bytes(orjson.dumps({"error": str(exc)}), content_type="application/json", status=400)
            return self.bytes(orjson.dumps(result, default=str), content_type="application/json")

    app.llmpulse_runtime = runtime  # type: ignore[attr-defined]
    return app


async def _publish_side_outputs(result: BatchResult, dlq_topic: faust.TopicT, findings_topic: faust.TopicT) -> None:
    """Dead letters and findings to Kafka, waiting for the broker's acks before the batch is acked."""
    pending = []
    for dl in result.dead_letters:
        m = dl.message
        headers = {
            "llmpulse.error": dl.reason.encode(),
            "llmpulse.source.topic": m.topic.encode(),
            "llmpulse.source.partition": str(m.partition).encode(),
            "llmpulse.source.offset": str(m.offset).encode(),
        }
        pending.append(await dlq_topic.send(value=m.value, headers=headers))
    for f in result.findings:
        pending.append(await findings_topic.send(key=f.finding_id.encode(), value=encode_finding(f)))
    if pending:
        await asyncio.gather(*pending)


def ensure_pipeline_topics(s: Settings) -> None:
    ensure_topics(s.kafka_bootstrap, {s.events_topic: s.topic_partitions, s.dlq_topic: 1, s.findings_topic: 1})


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    ensure_pipeline_topics(settings)
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
