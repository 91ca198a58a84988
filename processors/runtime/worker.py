"""The faust-streaming worker: thin wiring of topics to the pipeline and the sink.

The faust app owns the process: start-up (topics, migrations), the batch ingest
loop of `llm.events` (processors/runtime/batch_ingest.py; see there why it reads whole
batches from librdkafka rather than one message at a time), the `llm.findings`
agent that pages through Alertmanager, and the web endpoints `/metrics`
(processors/runtime/metrics.py), `/healthz`, `/readyz`, `/stats/` and `/query/`.

All ClickHouse calls run on one dedicated thread: chDB is in-process and
blocking. In embedded mode that thread also answers `/query/` for `llmpulse sql`,
since a chDB data directory can be opened by one process only.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

import faust

from llmpulse.kafka.local import wait_for_broker
from llmpulse.kafka.topics import CONTROLS_TOPIC_CONFIG, ensure_topics, topic_partitions
from llmpulse.processors.runtime.batch_ingest import BatchIngest, RetryLater
from llmpulse.processors.runtime.controls_audit import wire_controls_audit
from llmpulse.processors.runtime.metrics import CONTENT_TYPE, WorkerMetrics
from llmpulse.processors.runtime.retry import Backoff, RetryConfig
from llmpulse.processors.pipeline import Pipeline
from llmpulse.processors.runtime.query_endpoint import is_local_peer, register_query_endpoint
from llmpulse.processors.runtime.sink import ClickHouseSink
from llmpulse.schemas.store import connect, migrate
from llmpulse.settings import Settings

log = logging.getLogger("llmpulse.worker")
T = TypeVar("T")


class WorkerRuntime:
    """Everything the worker needs, built once per process."""

    def __init__(self, settings: Settings, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline or Pipeline.from_settings(settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.ingest: BatchIngest | None = None
        self.ready = asyncio.Event()  # set once ClickHouse is connected and migrated
        self.metrics = WorkerMetrics(self)
        self.migrated = False
        self.clickhouse_error = ""  # the last failed idle ping, "" when ClickHouse answered
        self._checked = 0.0  # monotonic time of the last assignment/lag refresh and idle ping
        self.started_at = time.time()
        self.notifier: Any = None  # AlertmanagerNotifier when paging is configured
        self.trims, self.trim_ms = 0, 0.0  # malloc_trim calls, the last one's duration
        self.heap_ages = 0  # _age_heap calls
        now = time.monotonic()
        # Heap housekeeping clocks; batches aged since the last full collection when
        # _last_batch > _collected.
        self._trimmed = self._collected = self._last_batch = now

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._exclusive, fn, args)

    def _exclusive(self, fn: Callable[..., T], args: tuple) -> T:
        """Anything but a step (a `/query/`, the shutdown) waits for the insert in flight:
        one ClickHouse client, used by one thread at a time."""
        if fn != self.step and self.ingest is not None:
            self.ingest.settle_quietly()
        return fn(*args)

    def open(self) -> None:
        s = self.settings
        client = connect(s.dsn, s.clickhouse_user, s.clickhouse_password.get_secret_value())
        applied = migrate(client, s.database, s.retention_days, s.clickhouse_cluster)
        self.migrated = True
        if applied:
            log.info("applied migrations %s", applied)
        self._restore(client)
        self.ingest = BatchIngest(s, ClickHouseSink(client, s.database), self.pipeline, self._deduper(client))
        self.ingest.metrics = self.metrics
        self.ingest.between_writes = self._age_batch

    def _deduper(self, client: Any) -> Any:
        """The event-id filter over what is stored, loaded before the first batch."""
        if not self.settings.dedup.enabled:
            return None
        from llmpulse.processors.runtime.dedup_store import deduper_for, load_bloom

        s = self.settings
        deduper = deduper_for(client, s.database, s.dedup, s.retention_days)
        report = load_bloom(client, s.database, deduper)
        log.info("event-id filter: %d stored ids loaded in %.1fs", report.ids, report.seconds)
        return deduper

    def _restore(self, client: Any) -> None:
        """Detector state from the store: the recent past replayed, budgets' period spend,
        the policies' active actions."""
        s = self.settings
        # Every partition of the events topic, also those with nothing stored yet: a backlog
        # read one partition first must not see its windows closed by the others' progress.
        expected = topic_partitions(s.kafka_bootstrap, s.events_topic)
        warmed = warm_up(self.pipeline, client, s.database, s.warmup_minutes, s.warmup_max_events, expected)
        if warmed:
            log.info("detector state rebuilt from %d stored events", warmed)
        self._seed_budgets(client)
        if self.pipeline.policies is not None:
            from llmpulse.processors.runtime.policies_seed import restore_policies

            log.info("active policy actions restored: %d", restore_policies(self.pipeline.policies, client, s.database))

    def rebuild(self) -> None:
        """Detectors that no longer match the store (a batch half processed, or taken by a
        rebalance after they counted it) are rebuilt as after a restart."""
        assert self.ingest is not None
        log.warning("rebuilding detector state from the store")
        self.pipeline = Pipeline.from_settings(self.settings)
        self._restore(self.ingest.sink.client)
        self.ingest.pipeline = self.pipeline
        self.ingest.pipeline_dirty = False
        self.ingest.pipeline.expect_partitions(
            (tp.topic, tp.partition) for tp in self.ingest.consumer.assignment())

    def _seed_budgets(self, client: Any) -> None:
        """After warm-up (which restores recent spend), restore each budget's whole-period spend."""
        from llmpulse.processors.budgets import BudgetTracker
        from llmpulse.processors.runtime.budgets_seed import seed_budgets

        for detector in self.pipeline.detectors:
            if isinstance(detector, BudgetTracker) and detector.rules:
                seeded = seed_budgets(detector, client, self.settings.database, time.time_ns() // 1_000_000)
                log.info("budget spend restored: %s", seeded)

    def stats(self) -> dict:
        base = self.ingest.stats if self.ingest else {}
        if self.ingest is not None and self.ingest.deduper is not None:
            base = {**base, "dedup": self.ingest.deduper.describe()}
        health = self.ingest.health() if self.ingest else {"stalled": False}
        paging = {"paged": self.notifier.stats.sent, "page_failures": self.notifier.stats.failed} if self.notifier else {}
        return {"ready": self.readiness()["ready"], "started_at": self.started_at, **base, **health, **paging,
                **self._memory()}

    def readiness(self) -> dict:
        """/readyz: ClickHouse connected and migrated, partitions of the events topic assigned,
        and no batch waiting past retry.stall_seconds for its outputs."""
        health = self.ingest.health() if self.ingest else {"stalled": False, "waiting_seconds": 0.0}
        opened = self.ready.is_set()
        standby = self.ingest is not None and self.ingest.joined and self.metrics.assigned == 0
        checks = {
            "clickhouse": {"ok": opened and not self.clickhouse_error,
                           "detail": self.clickhouse_error or ("connected" if opened else "connecting")},
            "migrated": {"ok": self.migrated, "detail": "schema up to date" if self.migrated else "not yet"},
            "partitions": {"ok": self.metrics.assigned > 0 or standby,
                           "detail": f"{self.metrics.assigned} of {self.settings.events_topic} assigned"
                                     + (" (standby: the group has more members than partitions)" if standby else "")},
            "batches": {"ok": not health["stalled"],
                        "detail": (f"stalled {health['waiting_seconds']}s at {health.get('waiting_stage')}: "
                                   f"{health.get('last_error')}") if health["stalled"] else "flowing"},
        }
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    def step(self) -> int:
        """One batch (BatchIngest.step), then the heap's housekeeping; returns the messages handled.
        Raises RetryLater when the batch must wait."""
        assert self.ingest is not None
        if self.ingest.pipeline_dirty and self.ingest.settled():  # the store holds what they counted
            self.rebuild()
        gc.disable()  # no cyclic-GC pass inside a batch (~10 us an event): _age_batch collects between inserts
        handled: int | None = None
        try:
            handled = self.ingest.step()
        finally:
            gc.enable()
            self._observe(handled)  # a waiting batch too: its lag keeps growing
        self._tend_heap(handled, time.monotonic())
        return handled

    def _observe(self, handled: int | None) -> None:
        """Once a second: assignment and lag (the consumer's cached watermarks), and when idle
        (handled == 0) whether ClickHouse answers."""
        assert self.ingest is not None
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        self.metrics.refresh_assignment(self.ingest.consumer)
        if handled == 0:
            self._ping()

    def _ping(self) -> None:
        """An idle worker still knows whether ClickHouse answers (a busy one learns from its inserts)."""
        assert self.ingest is not None
        try:
            self.ingest.sink.client.command("SELECT 1")
            self.clickhouse_error = ""
        except Exception as exc:
            self.clickhouse_error = f"{type(exc).__name__}: {str(exc)[:200]}"

    def _age_batch(self) -> None:
        """Between two inserts (BatchIngest.between_writes): freeze the processed batch's
        survivors; a full collection every 10 min of load. Not after the step, while an
        insert runs: its context would be frozen alive and, cyclic, outlive it."""
        now = time.monotonic()
        self._age_heap(now, full=now - self._collected > 600)

    def _tend_heap(self, handled: int, now: float) -> None:
        if handled:
            self._last_batch = now
        elif self._last_batch > self._collected and now - self._last_batch > 10:  # idle: a full collection
            self._age_heap(now, full=True)
        # Freed batch memory goes back to the OS: after every batch while RSS is above
        # `trim_above_mb` (a trim takes 2-5 ms on a 1 GB worker; each 10k-event batch leaves
        # ~100 MB the allocator would keep), else when idle.
        trim_above = self.settings.trim_above_mb * 1024 * 1024
        if (not handled and now - self._trimmed > 10) or (handled and trim_above and _rss_bytes() > trim_above):
            self._trimmed = now
            self._trim()

    def _age_heap(self, now: float, full: bool) -> None:
        """Keep detector state out of the cyclic GC's full scans.

        The state of 100,000 live traces is millions of objects; a full collection over
        them took 0.6 s on a 2-core box (40k traces) and recurred under load (p99 1.3-1.5 s),
        a pause in every finding's latency. After each batch, collect (what is not frozen
        yet is the batch's survivors: cheap; this must include the oldest generation, where
        a batch's cyclic garbage such as the ClickHouse insert context with its rows is
        promoted while still in use) and freeze what survived: later collections skip it,
        and refcounting still frees it when a trace expires. `full`: unfreeze and collect
        everything, for cycles that die after being frozen (asyncio/faust internals); the
        worker does it when idle or every 10 minutes."""
        if full:
            gc.unfreeze()
            self._collected = now
        gc.collect()
        gc.freeze()
        self.heap_ages += 1

    def _trim(self) -> None:
        t = time.perf_counter()
        _malloc_trim()
        self.trims += 1
        self.trim_ms = round((time.perf_counter() - t) * 1000, 1)

    def _memory(self) -> dict:
        """Per-trace detector state and the process RSS (bench/bench_loop_memory.py). Read from
        the web thread while the pipeline runs: len() of a dict is safe under the GIL."""
        out: dict[str, Any] = {"rss_bytes": _rss_bytes(), "trims": self.trims, "last_trim_ms": self.trim_ms,
                               "heap_ages": self.heap_ages}
        for d in self.pipeline.detectors:
            if hasattr(d, "live_traces"):  # LoopDetector
                out["live_traces"] = d.live_traces
            elif isinstance(getattr(d, "traces", None), dict):  # ContractChecker
                out["contract_traces"] = len(d.traces)
        return out


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return 0


def warm_up(pipeline: Pipeline, client: Any, database: str, minutes: int, max_events: int,
            expected: Iterable[tuple[str, int]] = ()) -> int:
    """Feed the detectors the last `minutes` of stored event time (at most `max_events`).

    `expected`: the source partitions to read; one with nothing stored holds the watermark
    back as it did before the restart (Pipeline.warm)."""
    if minutes <= 0 or not pipeline.detectors:
        return 0
    from llmpulse.processors.pipeline import detector_cost
    from llmpulse.schemas.rows import row_to_event

    result = client.query(
        f"SELECT * FROM (SELECT * FROM {database}.events FINAL WHERE ts >= "
        f"(SELECT max(ts) FROM {database}.events) - INTERVAL {int(minutes)} MINUTE "
        f"ORDER BY ts DESC, event_id DESC LIMIT {int(max_events)}) ORDER BY ts, event_id"
    )
    # Where each partition had got to: the watermark resumes at the slowest (Pipeline.warm).
    partitions = client.query(
        f"SELECT kafka_topic, kafka_partition, toUnixTimestamp64Milli(max(ts)) FROM {database}.events "
        f"WHERE ts >= (SELECT max(ts) FROM {database}.events) - INTERVAL {int(minutes)} MINUTE "
        "GROUP BY kafka_topic, kafka_partition"
    ).result_rows
    def priced(row: dict) -> tuple:
        event = row_to_event(row)
        return event, detector_cost(event, row["price_usd"])

    progress = {(t, int(p)): int(ts) for t, p, ts in partitions}
    for key in expected:
        progress.setdefault(key, 0)
    return pipeline.warm(map(priced, result.named_results()), progress)


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
        consumer_auto_offset_reset="earliest",
        web_bind=s.worker_web_host,
        web_port=s.worker_web_port,
        datadir=str(s.state_dir / "faust"),  # not a folder in the current directory
    )
    runtime = WorkerRuntime(s, pipeline)

    @app.task
    async def ingest_events() -> None:
        await _retrying(app, runtime.settings.retry, "start-up", lambda: runtime.call(runtime.open))
        runtime.ready.set()
        backoff = Backoff(runtime.settings.retry)
        while not app.should_stop:
            try:
                await runtime.call(runtime.step)
                backoff.reset()
            except RetryLater as wait:  # the batch waits, its partitions paused, offsets kept
                await asyncio.sleep(wait.delay)
            except Exception as exc:  # consuming or rebuilding failed: nothing was taken
                delay = backoff.next_delay()
                log.warning("ingest step failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)

    if s.alertmanager_url:
        _wire_paging(app, s, runtime)
    wire_controls_audit(app, s, runtime)  # people's kill switches land in control_actions too

    register_health_pages(app, runtime, "; scrape /metrics")

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # Read-only SQL for `llmpulse sql` and reports, with a token, on the ClickHouse thread.
    register_query_endpoint(app, s, runtime.call, runtime.ready)

    @app.service
    class IngestCloser(faust.Service):
        async def on_stop(self) -> None:
            if runtime.ingest is not None:
                await runtime.call(runtime.ingest.close)

    app.llmpulse_runtime = runtime  # type: ignore[attr-defined]
    return app


def register_health_pages(app: faust.App, runtime: Any, stats_hint: str = "") -> None:
    """/stats/, /healthz and /readyz of any runtime with stats(), readiness() and started_at
    (this worker's, and a scaled role's: processors/runtime/scaled_app.py)."""

    @app.page("/stats/")
    async def stats(web: Any, request: Any) -> Any:
        # Error texts (last_error) may quote what a batch held: this machine only, like /query/;
        # other hosts scrape /metrics, whose labels come from fixed sets.
        if not is_local_peer(request.remote):
            return web.json({"error": f"/stats/ answers this machine only{stats_hint}"}, status=403)
        return web.json(runtime.stats())

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        """Liveness: the event loop answers."""
        return web.json({"live": True, "uptime_seconds": round(time.time() - runtime.started_at, 1)})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        """Readiness: 503 with the failing check while starting, stalled or without partitions."""
        body = runtime.readiness()
        return web.json(body, status=200 if body["ready"] else 503)


async def _retrying(app: faust.App, config: RetryConfig, what: str, fn: Callable[[], Any]) -> None:
    """Run `fn` until it succeeds (ClickHouse or the broker may come up after the worker)."""
    backoff = Backoff(config)
    while not app.should_stop:
        try:
            await fn()
            return
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay)


def _wire_paging(app: faust.App, s: Settings, runtime: WorkerRuntime) -> None:
    """`llm.findings` -> Alertmanager: a low-volume topic, so a plain per-message faust agent."""
    from datetime import timedelta

    from llmpulse.processors.runtime.notify import AlertmanagerNotifier
    from llmpulse.schemas.findings import decode_finding

    hold = timedelta(minutes=15)
    notifier = AlertmanagerNotifier(s.alertmanager_url, hold=hold, grafana_url=s.grafana_url, retry=s.retry)
    findings_topic = app.topic(s.findings_topic, partitions=1)

    @app.agent(findings_topic)
    async def page(stream: faust.StreamT) -> None:
        async for batch in stream.take(500, within=0.2):
            await asyncio.get_running_loop().run_in_executor(None, notifier.notify, [decode_finding(v) for v in batch])

    @app.timer(interval=hold.total_seconds() / 3)
    async def keep_firing() -> None:
        await asyncio.get_running_loop().run_in_executor(None, notifier.refresh)

    runtime.notifier = notifier


def ensure_pipeline_topics(s: Settings) -> None:
    ensure_topics(s.kafka_bootstrap, {s.events_topic: s.topic_partitions, s.dlq_topic: 1, s.findings_topic: 1,
                                      s.controls_topic: 1}, configs={s.controls_topic: CONTROLS_TOPIC_CONFIG})


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (batches come and go; detector state stays)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    wait_for_broker(settings.kafka_bootstrap, settings.kafka_wait_seconds)
    ensure_pipeline_topics(settings)
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    if not worker.stdout.isatty():
        worker.spinner = None  # its cursor escapes would land in a log file
    worker.execute_from_commandline()
