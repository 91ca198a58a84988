"""OTLP/HTTP trace receiver: spans from any language → contract events → an EventSink.

`POST /v1/traces` with `application/x-protobuf` or `application/json`, optionally
gzip/deflate encoded. Responses follow OTLP/HTTP:
- 200 + ExportTraceServiceResponse (partial_success names spans we could not map),
- 400 malformed payload or compression (permanent: the client must not retry),
- 413 body (compressed or not) larger than `max_body_bytes`,
- 415 unsupported content type or encoding,
- 503 + Retry-After when the sink's queue is full or holds more than `max_pending`
  events (transient: OTLP exporters retry; event ids are deterministic, so
  events already published from a retried request deduplicate downstream).

`serve()` blocks (for `llmpulse otlp-gateway`); `GatewayThread` runs the same app
in a background thread for tests and embedding.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from llmpulse.ingest.otel_exporter import ExporterStats, publish_events
from llmpulse.ingest.otel_mapping import MapDefaults, map_spans
from llmpulse.ingest.otel_otlp import PayloadError, encode_response, iter_spans, parse_request
from llmpulse.ingest.otel_workflow import WorkflowResolver
from llmpulse.ingest.publisher import EventSink

log = logging.getLogger("llmpulse.otlp")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DEFAULT_MAX_BODY = 4 * 1024 * 1024  # the OTel Collector's default request limit is in this range


@dataclass
class GatewayConfig:
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_pending: int = 100_000  # sink.pending() at or above this → 503
    retry_after_s: int = 2
    tenant: str = "default"
    environment: str = ""


@dataclass
class GatewayStats(ExporterStats):
    requests: int = 0
    too_large: int = 0
    malformed: int = 0
    throttled: int = 0


class _TooLarge(Exception):
    pass


def _sink_overloaded(sink: Any, max_pending: int) -> bool:
    pending = getattr(sink, "pending", None)
    if callable(pending):
        try:
            return pending() >= max_pending
        except Exception:
            return False
    return False


def _queue_full_count(sink: Any) -> int:
    stats = getattr(sink, "stats", None)
    return int(getattr(stats, "queue_full", 0) or 0)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    # Bounded inflate: a small gzip bomb must not expand past the size limit.
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}[encoding]
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise PayloadError(f"bad {encoding} body: {exc}") from exc
    if len(out) > limit or d.unconsumed_tail:
        raise _TooLarge()
    if not d.eof:
        raise PayloadError(f"truncated {encoding} body")
    return out


async def _read_limited(request: web.Request, limit: int) -> bytes:
    # Stop reading as soon as the limit is passed; a chunked body has no length to check up front.
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)


class OtlpGateway:
    """The request handler and its state; one per sink."""

    def __init__(self, sink: EventSink, config: GatewayConfig | None = None, resolver: WorkflowResolver | None = None) -> None:
        self.sink = sink
        self.config = config or GatewayConfig()
        self.defaults = MapDefaults(tenant=self.config.tenant, environment=self.config.environment)
        self.resolver = resolver or WorkflowResolver()
        self.stats = GatewayStats()
        self._throttled_until = 0.0  # after a full queue, refuse cheaply for a while

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/traces", self.handle_traces)
        app.router.add_get("/healthz", self.handle_health)
        return app

    # -- responses -------------------------------------------------------------
    def _busy(self) -> web.Response:
        self.stats.add(throttled=1)
        return web.Response(status=503, text="sink queue is full, retry later",
                            headers={"Retry-After": str(self.config.retry_after_s)})

    @staticmethod
    def _error(status: int, message: str, json_body: bool) -> web.Response:
        # OTLP/HTTP error bodies are a google.rpc.Status; plain text is accepted by clients too.
        if json_body:
            return web.json_response({"code": status, "message": message}, status=status)
        return web.Response(status=status, text=message)

    # -- handlers --------------------------------------------------------------
    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "overloaded": self._overloaded()})

    def _overloaded(self) -> bool:
        return time.monotonic() < self._throttled_until or _sink_overloaded(self.sink, self.config.max_pending)

    async def handle_traces(self, request: web.Request) -> web.Response:
        self.stats.add(requests=1)
        ctype = (request.content_type or "").lower()
        if ctype not in (PROTOBUF, "application/protobuf", JSON):
            return web.Response(status=415, text=f"unsupported content type {ctype!r}")
        json_body = ctype == JSON
        if self._overloaded():  # refuse before reading the body: cheapest back-pressure
            return self._busy()
        encoding = request.headers.get("Content-Encoding", "identity").lower().strip()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            return web.Response(status=415, text=f"unsupported content encoding {encoding!r}")

        limit = self.config.max_body_bytes
        try:
            if request.content_length is not None and request.content_length > limit:
                raise _TooLarge()
            body = await _read_limited(request, limit)
            if encoding != "identity":
                body = _decompress(body, encoding, limit)
            req = parse_request(body, json_body)
        except _TooLarge:
            self.stats.add(too_large=1)
            return self._error(413, f"body larger than {limit} bytes", json_body)
        except PayloadError as exc:
            self.stats.add(malformed=1)
            return self._error(400, f"malformed OTLP payload: {exc}", json_body)

        # Mapping is CPU work: keep the event loop free for other clients.
        loop = asyncio.get_running_loop()
        try:
            busy, rejected_spans, message = await loop.run_in_executor(None, self._ingest, req)
        except Exception as exc:  # a mapping bug must not take the gateway down
            self.stats.add(errors=1)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.exception("llmpulse: OTLP request failed")
            return self._error(500, "internal error", json_body)
        if busy:
            return self._busy()
        body = encode_response(rejected_spans, message, json_body)
        return web.Response(status=200, body=body, content_type=JSON if json_body else PROTOBUF)

    def _ingest(self, req: Any) -> tuple[bool, int, str]:
        spans = list(iter_spans(req))
        self.stats.add(spans=len(spans))
        events = map_spans(spans, self.resolver, self.defaults)
        invalid_before = self.stats.invalid
        full_before = _queue_full_count(self.sink)
        publish_events(self.sink, events, self.stats)
        if _queue_full_count(self.sink) > full_before:
            self._throttled_until = time.monotonic() + self.config.retry_after_s
            return True, 0, ""
        invalid = self.stats.invalid - invalid_before
        message = f"{invalid} events did not satisfy the llmpulse contract" if invalid else ""
        return False, 0, message


def create_app(sink: EventSink, config: GatewayConfig | None = None) -> web.Application:
    return OtlpGateway(sink, config).app()


def serve(
    sink: EventSink,
    host: str = "0.0.0.0",
    port: int = 4318,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    **config: Any,
) -> None:
    """Run the gateway until SIGINT/SIGTERM (blocking). Extra keywords: GatewayConfig fields."""
    app = create_app(sink, GatewayConfig(max_body_bytes=max_body_bytes, **config))
    # We inflate bodies ourselves, with the size limit applied after inflation.
    web.run_app(app, host=host, port=port, print=None, access_log=None, auto_decompress=False)


@dataclass
class GatewayThread:
    """The gateway on its own event loop in a daemon thread (tests, embedding)."""

    sink: EventSink
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    config: GatewayConfig = field(default_factory=GatewayConfig)

    def __post_init__(self) -> None:
        self.gateway = OtlpGateway(self.sink, self.config)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmpulse-otlp", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "GatewayThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.gateway.app(), access_log=None, auto_decompress=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> "GatewayThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
