"""OTLP/HTTP trace receiver: spans from any language → contract events → an EventSink.

`POST /v1/traces` with `application/x-protobuf` or `application/json`, optionally
gzip/deflate encoded, with an API key (`Authorization: Bearer <key>` or `x-api-key`).
Responses follow OTLP/HTTP:
- 200 + ExportTraceServiceResponse; spans we did not publish (past a size or nesting
  limit, not mappable, refused by the sink) are counted in `partial_success.rejected_spans`
  with the reasons in `error_message`. Never a silent drop.
- 400 malformed payload or compression (permanent: the client must not retry),
- 401 no key or an unknown one (permanent),
- 413 body (compressed or not) larger than `max_body_bytes`,
- 415 unsupported content type or encoding,
- 429 + Retry-After past the key's rate limit (transient: clients retry after it),
- 503 + Retry-After when the sink's queue is full or holds more than `max_pending`
  events (transient: OTLP exporters retry; event ids are deterministic, so
  events already published from a retried request deduplicate downstream).

The tenant comes from the key; only a `trusted` key (a collector forwarding many
tenants) lets the spans' `llmpulse.tenant` choose it. Config: `otel_gateway_config.py`.

`serve()` blocks (for `llmpulse otlp-gateway`); `GatewayThread` runs the same app
in a background thread for tests and embedding.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import web

from llmpulse.ingest import otel_limits as lim
from llmpulse.ingest.otel_auth import Caller, KeyRing, anonymous_caller, presented_key, retry_after_header
from llmpulse.ingest.otel_exporter import ExporterStats
from llmpulse.ingest.otel_gateway_config import DEFAULT_MAX_BODY, GatewayConfig, KeyConfigError
from llmpulse.ingest.otel_mapping import MapDefaults, OtelSpan, claimed_tenant, map_each
from llmpulse.ingest.otel_otlp import PayloadError, encode_response, iter_spans, parse_request
from llmpulse.ingest.otel_workflow import WorkflowResolver
from llmpulse.ingest.publisher import EventSink
from llmpulse.processors.validate import DEFAULT_LIMITS, Limits

log = logging.getLogger("llmpulse.otlp")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_ERROR_MESSAGE = 1000  # partial_success.error_message

__all__ = ["DEFAULT_MAX_BODY", "GatewayConfig", "GatewayStats", "GatewayThread", "KeyConfigError", "OtlpGateway",
           "create_app", "serve"]


@dataclass
class GatewayStats(ExporterStats):
    requests: int = 0
    too_large: int = 0
    malformed: int = 0
    throttled: int = 0  # 503: the sink is full
    unauthorized: int = 0  # 401
    rate_limited: int = 0  # 429
    rejected_spans: int = 0  # reported in partial_success
    tenant_overridden: int = 0  # spans whose llmpulse.tenant named another tenant than their key's
    rejected_by_reason: dict = field(default_factory=dict)

    def reject(self, reasons: Counter) -> None:
        with self._lock:
            self.rejected_spans += sum(reasons.values())
            for r, n in reasons.items():
                self.rejected_by_reason[r] = self.rejected_by_reason.get(r, 0) + n

    def count_key(self, caller: Caller, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(caller.stats, k, getattr(caller.stats, k) + v)

    def snapshot(self) -> dict:
        with self._lock:
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class _Outcome:
    busy: bool = False
    rejected: Counter = field(default_factory=Counter)
    details: dict = field(default_factory=dict)  # reason → the first span's detail

    def reject(self, span: OtelSpan, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self.details.setdefault(reason, f"span {span.name[:80]!r}: {detail}")

    def message(self) -> str:
        if not self.rejected:
            return ""
        total = sum(self.rejected.values())
        parts = [f"{r} x{n} ({self.details[r]})" for r, n in self.rejected.most_common()]
        return f"{total} spans rejected: " + "; ".join(parts)[:MAX_ERROR_MESSAGE]


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


def _sink_error(sink: Any) -> str:
    stats = getattr(sink, "stats", None)
    return str(getattr(stats, "last_error", "") or "the sink refused the event")[:200]


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


def _span_count(req: Any) -> int:
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def ssl_context(config: GatewayConfig) -> Optional[ssl.SSLContext]:
    if config.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
    return ctx


class OtlpGateway:
    """The request handler and its state; one per sink.

    Raises KeyConfigError when there are no keys and `allow_unauthenticated` is not set,
    or when the keys cannot be loaded: the gateway never starts open by accident.
    `limits` are validation's (the `limits:` section), so the gateway refuses at the door
    what the worker would dead-letter.
    """

    def __init__(self, sink: EventSink, config: GatewayConfig | None = None, resolver: WorkflowResolver | None = None,
                 limits: Limits | None = None, controls: Any = None) -> None:
        self.sink = sink
        self.controls = controls  # a view of llm.controls to serve at /v1/controls (ingest/controls_http.py)
        self.config = config or GatewayConfig()
        self.limits = limits or DEFAULT_LIMITS
        self.keys = KeyRing(self.config)
        self.config.check_startable(len(self.keys))
        self.anonymous = anonymous_caller(self.config) if self.config.allow_unauthenticated else None
        self.resolver = resolver or WorkflowResolver()
        self.stats = GatewayStats()
        self._throttled_until = 0.0  # after a full queue, refuse cheaply for a while

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/traces", self.handle_traces)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/stats", self.handle_stats)
        if self.controls is not None:
            from llmpulse.ingest.controls_http import ControlsEndpoint

            ControlsEndpoint(self, self.controls).register(app)
        return app

    # -- responses -------------------------------------------------------------
    def _busy(self) -> web.Response:
        self.stats.add(throttled=1)
        return web.Response(status=503, text="sink queue is full, retry later",
                            headers={"Retry-After": str(self.config.retry_after_s)})

    def _limited(self, caller: Caller, wait_s: float, json_body: bool) -> web.Response:
        self.stats.add(rate_limited=1)
        self.stats.count_key(caller, rate_limited=1)
        resp = self._error(429, f"rate limit of key {caller.id!r} exceeded, retry later", json_body)
        resp.headers["Retry-After"] = retry_after_header(wait_s)
        return resp

    @staticmethod
    def _error(status: int, message: str, json_body: bool) -> web.Response:
        # OTLP/HTTP error bodies are a google.rpc.Status; plain text is accepted by clients too.
        if json_body:
            return web.json_response({"code": status, "message": message}, status=status)
        return web.Response(status=status, text=message)

    def _authenticate(self, request: web.Request) -> Optional[Caller]:
        key = presented_key(request.headers)
        if not key:
            return self.anonymous
        return self.keys.lookup(key)

    def _unauthorized(self, request: web.Request, json_body: bool) -> web.Response:
        self.stats.add(unauthorized=1)
        what = "unknown API key" if presented_key(request.headers) else "API key required"
        resp = self._error(401, f"{what} (Authorization: Bearer <key>, or x-api-key)", json_body)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="llmpulse-otlp"'
        return resp

    # -- handlers --------------------------------------------------------------
    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "overloaded": self._overloaded()})

    async def handle_stats(self, request: web.Request) -> web.Response:
        """Totals for any key; per-key counts of the caller's own tenant, or of all for a trusted key."""
        caller = self._authenticate(request)
        if caller is None:
            return self._unauthorized(request, True)
        out = self.stats.snapshot()
        out["keys_loaded"] = len(self.keys)
        out["key_reloads"], out["key_reload_errors"] = self.keys.reloads, self.keys.reload_errors
        out["keys"] = {i: vars(c.stats) for i, c in self.keys.callers().items()
                       if caller.trusted or c.tenant == caller.tenant}
        return web.json_response(out)

    def _overloaded(self) -> bool:
        return time.monotonic() < self._throttled_until or _sink_overloaded(self.sink, self.config.max_pending)

    async def handle_traces(self, request: web.Request) -> web.Response:
        self.stats.add(requests=1)
        ctype = (request.content_type or "").lower()
        json_body = ctype == JSON
        caller = self._authenticate(request)  # first: an unknown caller learns nothing else
        if caller is None:
            return self._unauthorized(request, json_body)
        self.stats.count_key(caller, requests=1)
        bucket = caller.bucket
        if bucket is not None:  # refuse before reading the body when the bucket is short
            # (of spans: as many as the caller's last request had, the best guess of this one's)
            wait = bucket.take(1) if bucket.limit.unit == "requests" else bucket.wait(caller.last_spans)
            if wait:
                return self._limited(caller, wait, json_body)
        if ctype not in (PROTOBUF, "application/protobuf", JSON):
            return web.Response(status=415, text=f"unsupported content type {ctype!r}")
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

        n_spans = _span_count(req)
        caller.last_spans = max(n_spans, 1)
        if bucket is not None and bucket.limit.unit == "spans" and n_spans:
            wait = bucket.take(n_spans)
            if wait:
                return self._limited(caller, wait, json_body)

        # Mapping is CPU work: keep the event loop free for other clients.
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(None, self._ingest, req, caller)
        except Exception as exc:  # a mapping bug must not take the gateway down
            self.stats.add(errors=1)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.exception("llmpulse: OTLP request failed")
            return self._error(500, "internal error", json_body)
        if outcome.busy:
            return self._busy()
        body = encode_response(sum(outcome.rejected.values()), outcome.message(), json_body)
        return web.Response(status=200, body=body, content_type=JSON if json_body else PROTOBUF)

    # -- mapping and publishing (executor thread) ---------------------------------
    def _check(self, span: OtelSpan, events: list[dict] | Exception, now_ms: int) -> Optional[lim.Violation]:
        limits = self.limits
        found = lim.span_violation(span, limits)
        if found:
            return found
        if isinstance(events, RecursionError):
            return lim.Violation(lim.TOO_DEEP, "an attribute's JSON is nested too deep to parse")
        if isinstance(events, Exception):
            return lim.Violation(lim.MAPPING_FAILED, f"{type(events).__name__}: {events}"[:200])
        for ev in events:
            found = lim.event_violation(ev, limits, now_ms)
            if found:
                return found
        return None

    def _ingest(self, req: Any, caller: Caller) -> _Outcome:
        spans = list(iter_spans(req))
        self.stats.add(spans=len(spans))
        self.stats.count_key(caller, spans=len(spans))
        defaults = MapDefaults(tenant=caller.tenant, environment=self.config.environment,
                               tenant_from_attributes=caller.trusted)
        out = _Outcome()
        overridden = published = refused = invalid = 0
        full_before = _queue_full_count(self.sink)
        now_ms = int(time.time() * 1000)
        for span, events in map_each(spans, self.resolver, defaults):
            found = self._check(span, events, now_ms)
            if found:
                out.reject(span, found.reason, found.detail)
                invalid += 1
                continue
            assert not isinstance(events, Exception)
            if not events:
                continue
            if not caller.trusted and claimed_tenant(span) not in ("", caller.tenant):
                overridden += 1
            sent = 0
            for ev in events:
                if self.sink.publish(ev):
                    sent += 1
                elif _queue_full_count(self.sink) > full_before:
                    break
            published += sent
            if _queue_full_count(self.sink) > full_before:
                self._throttled_until = time.monotonic() + self.config.retry_after_s
                out.busy = True
                break
            if sent < len(events):
                refused += len(events) - sent
                out.reject(span, lim.SINK_REFUSED, _sink_error(self.sink))
        self.stats.add(events=published, rejected=refused, invalid=invalid, tenant_overridden=overridden)
        self.stats.count_key(caller, tenant_overridden=overridden)
        if not out.busy and out.rejected:
            self.stats.reject(out.rejected)
            self.stats.count_key(caller, rejected_spans=sum(out.rejected.values()))
            self.stats.last_error = out.message()[:200]
        return out


def create_app(sink: EventSink, config: GatewayConfig | None = None, limits: Limits | None = None) -> web.Application:
    return OtlpGateway(sink, config, limits=limits).app()


def serve(sink: EventSink, config: GatewayConfig, limits: Limits | None = None, controls: Any = None) -> None:
    """Run the gateway until SIGINT/SIGTERM (blocking); SIGHUP re-reads the keys file.

    Raises KeyConfigError (before binding) when the keys are missing or bad."""
    gateway = OtlpGateway(sink, config, limits=limits, controls=controls)
    app = gateway.app()

    async def on_hup(_app: web.Application) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gateway.keys.reload)
        except (NotImplementedError, RuntimeError, AttributeError):  # no SIGHUP (Windows), not main thread
            pass

    app.on_startup.append(on_hup)
    log.warning("llmpulse: OTLP gateway on %s://%s:%d, %d API keys%s", "https" if config.tls else "http",
                config.host, config.port, len(gateway.keys),
                ", requests without a key accepted" if config.allow_unauthenticated else "")
    # We inflate bodies ourselves, with the size limit applied after inflation.
    web.run_app(app, host=config.host, port=config.port, ssl_context=ssl_context(config),
                print=None, access_log=None, auto_decompress=False)


@dataclass
class GatewayThread:
    """The gateway on its own event loop in a daemon thread (tests, embedding)."""

    sink: EventSink
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    config: GatewayConfig = field(default_factory=GatewayConfig)
    limits: Optional[Limits] = None  # validation's; default DEFAULT_LIMITS
    controls: Any = None  # a view of llm.controls to serve at /v1/controls

    def __post_init__(self) -> None:
        self.gateway = OtlpGateway(self.sink, self.config, limits=self.limits, controls=self.controls)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmpulse-otlp", daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.config.tls else 'http'}://{self.host}:{self.port}"

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
        await web.SockSite(self._runner, sock, ssl_context=ssl_context(self.config)).start()

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


def preflight(config: GatewayConfig) -> None:
    """What the gateway would refuse to start with, checked before anything else is opened."""
    config.check_startable(len(KeyRing(config)))
