"""One line to send an existing app's LLM calls to llmpulse:

    import llmpulse.ingest
    llmpulse.ingest.instrument(tenant="acme", app="support-bot")   # openai and anthropic
    # or only one client library:
    llmpulse.ingest.instrument_openai(...); llmpulse.ingest.instrument_anthropic(...)

It turns on the official OpenTelemetry GenAI instrumentations
(`opentelemetry-instrumentation-genai-openai`, `-genai-anthropic`; `pip install
'llmpulse[instrument]'`) and routes their spans through `LlmpulseSpanExporter` (a batch span
processor, off the app's thread) to Kafka, or to any `EventSink`. The app's code is unchanged.

Telemetry never breaks the app: a missing package is one warning and that library is left
alone; nothing here raises into the caller. The OpenTelemetry imports are local because the
OTel SDK is an optional extra and `llmpulse.ingest` must import without it.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from llmpulse.ingest.publisher import EventSink, KafkaPublisher

log = logging.getLogger("llmpulse.instrument")

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# The official instrumentations' switch for prompt/completion content: read from the
# environment when they start. SPAN_ONLY puts the content on the spans, where we read it.
CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# library → (client module, [(instrumentation module, instrumentor class)], pip name), newest first.
_OFFICIAL = {
    "openai": ("openai", [("opentelemetry.instrumentation.genai.openai", "OpenAIInstrumentor"),
                          ("opentelemetry.instrumentation.openai_v2", "OpenAIInstrumentor")],
               "opentelemetry-instrumentation-genai-openai"),
    "anthropic": ("anthropic", [("opentelemetry.instrumentation.genai.anthropic", "AnthropicInstrumentor")],
                  "opentelemetry-instrumentation-genai-anthropic"),
}


@dataclass
class Instrumentation:
    """What `instrument()` turned on; `shutdown()` turns it off and flushes what is pending."""

    exporter: Any = None  # LlmpulseSpanExporter (stats in .exporter.stats)
    tracer_provider: Any = None
    libraries: list[str] = field(default_factory=list)  # instrumented, e.g. ["openai", "anthropic"]
    skipped: dict[str, str] = field(default_factory=dict)  # library → why not
    _instrumentors: list[Any] = field(default_factory=list, repr=False)
    _owns_provider: bool = field(default=False, repr=False)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export the spans that ended so far and wait for the sink's deliveries."""
        if self.tracer_provider is None:
            return True
        try:
            return bool(self.tracer_provider.force_flush(int(timeout_s * 1000)))
        except Exception:
            log.debug("llmpulse: flush failed", exc_info=True)
            return False

    def shutdown(self) -> None:
        for inst in self._instrumentors:
            try:
                inst.uninstrument()
            except Exception:
                log.debug("llmpulse: uninstrument failed", exc_info=True)
        self._instrumentors.clear()
        self.flush()
        if self._owns_provider and self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # also shuts the exporter down (flushing its sink)
        elif self.exporter is not None:
            self.exporter.shutdown()
        self.libraries = []


def _sdk_provider(given: Any) -> tuple[Any, bool]:
    """The tracer provider to use: the caller's, else the app's global SDK provider (so its own
    exporters keep working), else a new one of ours. Returns (provider, whether we own it)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if given is not None:
        return given, False
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current, False
    return TracerProvider(), True


def _instrumentor(library: str) -> tuple[Any, str]:
    """(instrumentor, '') or (None, the reason it cannot be had)."""
    client, candidates, pip_name = _OFFICIAL[library]
    try:
        importlib.import_module(client)
    except ImportError:
        return None, f"the {client} client is not installed"
    for module, cls in candidates:
        try:
            return getattr(importlib.import_module(module), cls)(), ""
        except ImportError:
            continue
        except Exception as exc:  # a broken install: say so, never raise into the app
            return None, f"{module} failed to load: {type(exc).__name__}: {exc}"
    return None, f"{pip_name} is not installed (pip install 'llmpulse[instrument]')"


def instrument(
    sink: EventSink | str | None = None,
    *,
    libraries: Iterable[str] | None = None,
    tenant: str = "default",
    app: str = "",
    environment: str = "",
    topic: str = "llm.events",
    capture_content: bool | None = None,
    tracer_provider: Any = None,
) -> Instrumentation:
    """Instrument the installed client libraries and send their calls to llmpulse.

    `sink`: an `EventSink` (a `KafkaPublisher`, a `MemoryPublisher` in tests) or Kafka bootstrap
    servers (default 127.0.0.1:9092; events go to `topic`). `capture_content`: True puts prompts
    and completions on the spans (redacted by the publisher before they leave the app), False
    keeps them off, None leaves the instrumentations' own setting (`CONTENT_ENV`, off by default).
    `libraries` (default: all of `openai`, `anthropic`): one named here that cannot be
    instrumented is skipped with a warning; by default the ones not installed are skipped quietly.
    """
    explicit = libraries is not None
    libraries = list(_OFFICIAL) if libraries is None else list(libraries)
    result = Instrumentation()
    try:
        from llmpulse.ingest.otel_exporter import LlmpulseSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("llmpulse.instrument: OpenTelemetry SDK missing (%s); pip install 'llmpulse[instrument]'", exc)
        result.skipped = {lib: "opentelemetry-sdk is not installed" for lib in libraries}
        return result
    try:
        if capture_content is not None:
            os.environ[CONTENT_ENV] = "SPAN_ONLY" if capture_content else "NO_CONTENT"
        owns_sink = not hasattr(sink, "publish")
        pub = KafkaPublisher(sink or DEFAULT_BOOTSTRAP, topic) if owns_sink else sink
        result.exporter = LlmpulseSpanExporter(pub, tenant=tenant, app=app, environment=environment,
                                               close_sink_on_shutdown=owns_sink)
        result.tracer_provider, result._owns_provider = _sdk_provider(tracer_provider)
        result.tracer_provider.add_span_processor(result.exporter.tracker())
        result.tracer_provider.add_span_processor(BatchSpanProcessor(result.exporter))
        for lib in libraries:
            if lib not in _OFFICIAL:
                result.skipped[lib] = f"unknown library (known: {', '.join(_OFFICIAL)})"
                log.warning("llmpulse.instrument: %s: %s", lib, result.skipped[lib])
                continue
            inst, why = _instrumentor(lib)
            if inst is None:
                result.skipped[lib] = why
                (log.warning if explicit else log.info)("llmpulse.instrument: %s skipped: %s", lib, why)
                continue
            if inst.is_instrumented_by_opentelemetry:  # instrumentors are process-wide: the latest call wins
                inst.uninstrument()
            inst.instrument(tracer_provider=result.tracer_provider)
            if not inst.is_instrumented_by_opentelemetry:  # it refused, e.g. a client version it does not support
                result.skipped[lib] = "the instrumentation declined (client version out of its range?)"
                log.warning("llmpulse.instrument: %s skipped: %s", lib, result.skipped[lib])
                continue
            result._instrumentors.append(inst)
            result.libraries.append(lib)
    except Exception as exc:  # telemetry must not stop the app from starting
        log.warning("llmpulse.instrument failed: %s: %s", type(exc).__name__, exc)
        result.skipped.setdefault("*", f"{type(exc).__name__}: {exc}")
    return result


def instrument_openai(sink: EventSink | str | None = None, **options: Any) -> Instrumentation:
    """`instrument()` for the openai client only."""
    return instrument(sink, libraries=["openai"], **options)


def instrument_anthropic(sink: EventSink | str | None = None, **options: Any) -> Instrumentation:
    """`instrument()` for the anthropic client only."""
    return instrument(sink, libraries=["anthropic"], **options)
