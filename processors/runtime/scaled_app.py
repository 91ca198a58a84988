"""`llmpulse worker` with `scale.role` process | writer | all: the faust app around the stages.

As the single worker, faust runs the lifecycle and the web endpoints (/healthz, /readyz,
/stats/, /metrics, and on the writer /query/); each stage steps on a thread of its own, since
librdkafka handles and chDB are blocking (processors/runtime/scaled.py has the topology).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import faust

from llmpulse.kafka.local import wait_for_broker
from llmpulse.kafka.topics import topic_partitions
from llmpulse.processors.runtime.metrics import CONTENT_TYPE, ScaledMetrics
from llmpulse.processors.runtime.retry import Backoff
from llmpulse.processors.runtime.query_endpoint import register_query_endpoint
from llmpulse.settings import Settings


class ScaledRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.role = settings.scale.role
        self.started_at = time.time()
        self.stages: dict[str, Any] = {}  # name -> Stage | RowsWriter, once built
        self.threads: dict[str, ThreadPoolExecutor] = {}
        self.ready = asyncio.Event()  # the store is open (writer); for /query/
        self.notifier: Any = None
        self.start_error = ""

    async def call(self, fn: Callable[..., Any], *args: Any, thread: str = "writer") -> Any:
        pool = self.threads.setdefault(thread, ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread))
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def build(self, name: str) -> Any:
        from llmpulse.processors.runtime import scaled

        s = self.settings
        if name == "trace":
            return scaled.TraceStage(s)
        if name == "scope":
            return scaled.ScopeStage(s, topic_partitions(s.kafka_bootstrap, s.events_topic))
        from llmpulse.schemas.store import connect, migrate

        client = connect(s.dsn, s.clickhouse_user, s.clickhouse_password.get_secret_value())
        migrate(client, s.database, s.retention_days, s.clickhouse_cluster)
        return scaled.RowsWriter(s, scaled.WriterSink(client, s.database))

    def readiness(self) -> dict:
        """Ready once every stage has its share of the partitions, none included: a standby
        member of a group with more members than partitions is ready to take over."""
        names = stage_names(self.role)
        checks = {}
        for name in names:
            st = self.stages.get(name)
            ok = st is not None and st.joined
            if st is None:
                detail = "starting"
            elif not ok:
                detail = "joining the group"
            else:
                n = len(getattr(st, "assignment", ())) if name != "writer" else -1
                detail = "joined" if n < 0 else f"{n} partitions" + (" (standby)" if n == 0 else "")
            checks[name] = {"ok": ok, "detail": self.start_error or detail}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    def stats(self) -> dict:
        out: dict[str, Any] = {"ready": self.readiness()["ready"], "role": self.role, "started_at": self.started_at}
        for name, st in self.stages.items():
            out[name] = st.describe()
        if "writer" in self.stages:  # the single worker's names, for tools that read them
            out["inserted"] = self.stages["writer"].stats["inserted"]
        return out


def stage_names(role: str) -> list[str]:
    return {"process": ["trace", "scope"], "writer": ["writer"], "all": ["trace", "scope", "writer"]}[role]


def build_scaled_app(settings: Settings) -> faust.App:
    s = settings
    instance = s.scale.instance or str(s.worker_web_port)
    app = faust.App(
        f"{s.worker_id}-{s.scale.role}", broker=f"kafka://{s.kafka_bootstrap}", store="memory://",
        value_serializer="raw", key_serializer="raw", web_bind=s.worker_web_host, web_port=s.worker_web_port,
        datadir=str(s.state_dir / "faust" / f"{s.scale.role}-{instance}"),
    )
    (s.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    runtime = ScaledRuntime(s)

    def stage_task(name: str) -> None:
        async def run() -> None:
            backoff = Backoff(s.retry)
            while not app.should_stop and name not in runtime.stages:
                try:
                    runtime.stages[name] = await runtime.call(runtime.build, name, thread=name)
                except Exception as exc:
                    runtime.start_error = f"{name}: {type(exc).__name__}: {str(exc)[:200]}"
                    await asyncio.sleep(backoff.next_delay())
            runtime.start_error = ""
            if name == "writer":
                runtime.ready.set()
            stage = runtime.stages.get(name)
            backoff.reset()
            while stage is not None and not app.should_stop:
                try:
                    await runtime.call(stage.step, thread=name)
                    backoff.reset()
                except Exception:  # logged by the stage; its batch is aborted or kept
                    await asyncio.sleep(backoff.next_delay())

        run.__name__ = run.__qualname__ = f"llmpulse_{name}_stage"
        app.task(run)

    for name in stage_names(s.scale.role):
        stage_task(name)

    from llmpulse.processors.runtime.worker import register_health_pages

    if "writer" in stage_names(s.scale.role):
        if s.alertmanager_url:
            from llmpulse.processors.runtime.worker import _wire_paging

            _wire_paging(app, s, runtime)  # type: ignore[arg-type]
        register_query_endpoint(app, s, runtime.call, runtime.ready)

    register_health_pages(app, runtime, "; scrape /metrics")
    metrics = ScaledMetrics(runtime)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @app.service
    class StageCloser(faust.Service):
        async def on_stop(self) -> None:
            for name, stage in list(runtime.stages.items()):
                await runtime.call(stage.close, thread=name)

    app.llmpulse_runtime = runtime  # type: ignore[attr-defined]
    return app


def run_scaled(settings: Settings, loglevel: str = "warning") -> None:
    from llmpulse.kafka.topics import ensure_topics
    from llmpulse.processors.runtime.worker import ensure_pipeline_topics

    s = settings
    wait_for_broker(s.kafka_bootstrap, s.kafka_wait_seconds)
    ensure_pipeline_topics(s)
    ensure_topics(s.kafka_bootstrap, {s.scale.scope_topic: s.scale.scope_partitions,
                                      s.scale.rows_topic: s.topic_partitions})
    worker = faust.Worker(build_scaled_app(settings), loglevel=loglevel, quiet=True)
    if not worker.stdout.isatty():
        worker.spinner = None
    worker.execute_from_commandline()
