"""In-process OpenTelemetry exporter: GenAI spans → contract events → an EventSink.

    sink = KafkaPublisher(...)                      # or MemoryPublisher() in tests
    exporter = LlmpulseSpanExporter(sink, tenant="acme")
    provider.add_span_processor(exporter.tracker())  # optional: names known at span start
    provider.add_span_processor(BatchSpanProcessor(exporter))

Telemetry never breaks the host app: `export` catches everything and counts it.
The sink belongs to the app; `shutdown` flushes it but closes it only when asked.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from llmpulse.ingest.otel_mapping import MapDefaults, OtelEvent, OtelSpan, map_each, validate
from llmpulse.ingest.otel_workflow import WorkflowResolver, own_names
from llmpulse.ingest.publisher import EventSink

log = logging.getLogger("llmpulse.otel")


@dataclass
class ExporterStats:
    spans: int = 0  # spans received
    events: int = 0  # events accepted by the sink
    rejected: int = 0  # events the sink refused (queue full, hook drop)
    invalid: int = 0  # events that do not satisfy the contract (e.g. a zero clock)
    errors: int = 0  # unexpected failures while mapping a batch
    last_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x") if n else ""


def _status(span: ReadableSpan) -> tuple[str, str]:
    status = span.status
    return (status.status_code.name if status is not None else "UNSET"), (status.description or "" if status else "")


def from_readable(span: ReadableSpan) -> OtelSpan:
    """SDK span → the neutral form the mapping reads."""
    ctx = span.get_span_context()
    code, message = _status(span)
    scope = span.instrumentation_scope
    return OtelSpan(
        name=span.name,
        trace_id=_hex(ctx.trace_id, 32),
        span_id=_hex(ctx.span_id, 16),
        parent_span_id=_hex(span.parent.span_id, 16) if span.parent else "",
        start_ns=span.start_time or 0,
        end_ns=span.end_time or span.start_time or 0,
        kind=span.kind.name,
        status_code=code,
        status_message=message,
        attributes=dict(span.attributes or {}),
        events=[OtelEvent(e.name, e.timestamp or 0, dict(e.attributes or {})) for e in span.events],
        resource=dict(span.resource.attributes) if span.resource else {},
        scope_name=scope.name if scope else "",
    )


def publish_events(sink: EventSink, events: Sequence[Mapping[str, Any]], stats: ExporterStats) -> int:
    """Validate and publish; returns how many the sink refused (counted, never raised)."""
    published = rejected = invalid = 0
    for ev in events:
        reason = validate(dict(ev))
        if reason:
            invalid += 1
            stats.last_error = f"invalid: {reason}"
            continue
        if sink.publish(ev):
            published += 1
        else:
            rejected += 1
    stats.add(events=published, rejected=rejected, invalid=invalid)
    return rejected


class WorkflowTracker(SpanProcessor):
    """Records each span's parent and agent/workflow name when it *starts*.

    Parents start before their children, so a chat span exported long before its
    `invoke_agent` parent ends still gets the agent's workflow name.
    """

    def __init__(self, resolver: WorkflowResolver) -> None:
        self.resolver = resolver

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            ctx = span.get_span_context()
            wf, agent = own_names(span.attributes or {}, span.name)
            parent = _hex(span.parent.span_id, 16) if span.parent else ""
            self.resolver.observe(_hex(ctx.trace_id, 32), _hex(ctx.span_id, 16), parent, wf, agent)
        except Exception:  # never break span creation in the app
            log.debug("llmpulse: tracker failed", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class LlmpulseSpanExporter(SpanExporter):
    """Maps GenAI spans to contract events and publishes them through any EventSink."""

    def __init__(
        self,
        sink: EventSink,
        *,
        tenant: str = "default",
        environment: str = "",
        app: str = "",
        close_sink_on_shutdown: bool = False,
        resolver: WorkflowResolver | None = None,
    ) -> None:
        self.sink = sink
        self.defaults = MapDefaults(tenant=tenant, environment=environment, app=app)
        self.resolver = resolver or WorkflowResolver()
        self.stats = ExporterStats()
        self._close_sink = close_sink_on_shutdown
        self._shutdown = False

    def tracker(self) -> WorkflowTracker:
        """A span processor sharing this exporter's memory of workflow names."""
        return WorkflowTracker(self.resolver)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            self.stats.add(spans=len(spans))
            events: list[dict] = []
            for _, mapped in map_each([from_readable(s) for s in spans], self.resolver, self.defaults):
                if isinstance(mapped, Exception):  # one unmappable span (e.g. JSON nested too deep)
                    self.stats.add(errors=1)
                    self.stats.last_error = f"{type(mapped).__name__}: {mapped}"[:200]
                else:
                    events += mapped
            publish_events(self.sink, events, self.stats)
        except Exception as exc:  # never raise into the app's export thread
            self.stats.add(errors=1)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.debug("llmpulse: export failed", exc_info=True)
            return SpanExportResult.FAILURE
        # Refused events are counted by the sink (e.g. stats.queue_full); the
        # batch processor does not retry a FAILURE either, so report success.
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return self.sink.flush(timeout_millis / 1000) == 0
        except Exception:
            return False

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        try:
            if self._close_sink:
                self.sink.close()
            else:
                self.sink.flush()
        except Exception:
            log.debug("llmpulse: sink flush on shutdown failed", exc_info=True)
