"""Pure mapping from OpenTelemetry GenAI spans to llmpulse contract events (v1).

No I/O and no OpenTelemetry import: the in-process exporter and the OTLP gateway
both convert their spans to `OtelSpan` and call `map_spans`. The table of what
maps to what is in OTEL.md beside this file.

Event ids are derived from (trace id, span id, kind, index), so exporting the
same span twice (an OTLP client retrying after a 503) yields the same ids and
the storage layer deduplicates them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import msgspec

from llmpulse.ingest import otel_content as content
from llmpulse.ingest.otel_workflow import WorkflowResolver, own_names
from llmpulse.schemas.contract import Event

INFERENCE_OPS = frozenset({"chat", "text_completion", "generate_content", "completion", "responses"})
EMBEDDING_OPS = frozenset({"embeddings", "embedding"})
TOOL_OPS = frozenset({"execute_tool"})
AGENT_OPS = frozenset({"invoke_agent", "create_agent", "invoke_workflow"})
EVAL_EVENT = "gen_ai.evaluation.result"
# Output attribute: the tools the model asked for, comma-separated (captured content only).
TOOL_CALLS_ATTR = "llmpulse.tool_calls"

# OpenInference span kinds → GenAI operation names.
_OPENINFERENCE_OPS = {"LLM": "chat", "EMBEDDING": "embeddings", "TOOL": "execute_tool", "AGENT": "invoke_agent"}
# OpenLLMetry's `llm.request.type`.
_LLM_REQUEST_TYPES = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
# traceloop-sdk's decorators (@workflow, @agent, @tool) mark their spans with `traceloop.span.kind`.
_TRACELOOP_KINDS = {"tool": "execute_tool", "agent": "invoke_agent", "workflow": "invoke_workflow"}
_TRACELOOP_PROPS = "traceloop.association.properties."

# Finish reasons that mean the provider's filter stopped the answer (OpenAI, Azure, Gemini).
_FILTERED = frozenset({"content_filter", "content_filtered", "safety", "prohibited_content", "blocklist", "spii"})

_PASS_LABELS = frozenset({"pass", "passed", "correct", "relevant", "true", "yes", "good", "faithful"})
_FAIL_LABELS = frozenset({"fail", "failed", "incorrect", "not_relevant", "irrelevant", "false", "no", "bad", "unfaithful"})

# Request parameters copied into Prompt.params (contract name ← attribute).
_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "max_tokens": "gen_ai.request.max_tokens",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "stop_sequences": "gen_ai.request.stop_sequences",
    "seed": "gen_ai.request.seed",
    "choice_count": "gen_ai.request.choice.count",
    "stream": "gen_ai.request.stream",  # OpenLLMetry: gen_ai.is_streaming / llm.is_streaming (below)
    "reasoning_level": "gen_ai.request.reasoning.level",
    "output_type": "gen_ai.output.type",
}
# Span attributes kept (as strings) in the event's `attributes` map.
_KEEP = (
    "gen_ai.operation.name", "gen_ai.agent.id", "gen_ai.response.id", "gen_ai.conversation.id",
    "gen_ai.prompt.name", "gen_ai.tool.type", "gen_ai.data_source.id", "server.address",
)


@dataclass
class OtelEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class OtelSpan:
    """The parts of a span the mapping reads; ids are lowercase hex."""

    name: str
    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    parent_span_id: str = ""
    kind: str = "INTERNAL"
    status_code: str = "UNSET"  # UNSET | OK | ERROR
    status_message: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[OtelEvent] = ()
    resource: Mapping[str, Any] = field(default_factory=dict)
    scope_name: str = ""


@dataclass
class MapDefaults:
    """Fields the span cannot tell; span/resource attributes override them."""

    tenant: str = "default"
    environment: str = ""
    app: str = ""
    # False: every event gets `tenant`, whatever `llmpulse.tenant` the span or resource claims
    # (the gateway, for callers whose key names their tenant).
    tenant_from_attributes: bool = True


# -- small helpers -----------------------------------------------------------
def event_id(trace_id: str, span_id: str, kind: str, index: int = 0) -> str:
    return hashlib.blake2b(f"{trace_id}:{span_id}:{kind}:{index}".encode(), digest_size=16).hexdigest()


def _ms(ns: int) -> int:
    return int(ns) // 1_000_000


def _first(attrs: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "":
            return v
    return None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        n = int(float(value)) if isinstance(value, (str, float)) else int(value)
    except (TypeError, ValueError, OverflowError):  # "abc", NaN, "1e309"
        return None
    return n if n >= 0 else None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None  # NaN and infinities have no JSON form


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _json_object(value: Any) -> dict:
    """A JSON object held in a string attribute, else {} (never raises: only fallbacks read it)."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _json_value(value: Any) -> Any:
    # Attribute values must be JSON-friendly in the event dict.
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def operation(span: OtelSpan) -> str:
    """The GenAI operation of a span ('' when it is not a GenAI span)."""
    a = span.attributes
    op = a.get("gen_ai.operation.name")
    if op:
        return str(op)
    oi = a.get("openinference.span.kind")
    if oi:
        return _OPENINFERENCE_OPS.get(str(oi).upper(), "")
    if a.get("llm.request.type") and _first(a, "gen_ai.system", "gen_ai.provider.name"):
        return _LLM_REQUEST_TYPES.get(str(a["llm.request.type"]), "")
    if a.get("traceloop.span.kind"):
        return _TRACELOOP_KINDS.get(str(a["traceloop.span.kind"]), "")
    if span.name == EVAL_EVENT:
        return "evaluation"
    head = span.name.split(" ", 1)[0]
    if head in INFERENCE_OPS | TOOL_OPS | AGENT_OPS and any(k.startswith("gen_ai.") for k in a):
        return head
    return ""


# -- common fields -------------------------------------------------------------
def service_name(resource: Mapping[str, Any]) -> str:
    """Resource `service.name`, '' for the SDK's placeholder (`unknown_service:python3`) that
    every app gets when it names no service: the configured `app` is better than that."""
    name = _str(resource.get("service.name"))
    return "" if name.startswith("unknown_service") else name


def claimed_tenant(span: OtelSpan) -> str:
    """The tenant the span names for itself: span attr `llmpulse.tenant` › resource attr ('' if none)."""
    return _str(_first(span.attributes, "llmpulse.tenant") or _first(span.resource, "llmpulse.tenant"))


def _common(span: OtelSpan, workflow: str, agent: str, defaults: MapDefaults) -> dict:
    a, r = span.attributes, span.resource
    # Lower case: old OpenLLMetry (0.40) sends gen_ai.system "OpenAI" / "Anthropic".
    provider = _str(_first(a, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")).lower()
    model = requested_model(a)
    attrs = {k: _str(a[k]) for k in _KEEP if a.get(k) not in (None, "")}
    attrs["otel.span_name"] = span.name
    if span.scope_name:
        attrs["otel.scope.name"] = span.scope_name
    if agent:
        attrs["gen_ai.agent.name"] = agent
    ev = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "tenant": (claimed_tenant(span) or defaults.tenant) if defaults.tenant_from_attributes else defaults.tenant,
        "app": service_name(r) or defaults.app,
        "workflow": workflow,
        "environment": _str(_first(r, "deployment.environment.name", "deployment.environment") or defaults.environment),
        "user_id": _str(_first(a, "user.id", "enduser.id", "gen_ai.user.id", _TRACELOOP_PROPS + "user_id")),
        "session_id": _str(_first(a, "session.id", "gen_ai.conversation.id", _TRACELOOP_PROPS + "session_id")),
        "provider": provider,
        "model": _str(model),
        "prompt_version": _str(_first(a, "gen_ai.prompt.version", "llm.prompt_template.version")),
        "attributes": attrs,
    }
    return {k: v for k, v in ev.items() if v not in ("", {})}


def requested_model(a: Mapping[str, Any]) -> str:
    """The model the app asked for, as GenAI-convention clients report it. OpenInference's
    `llm.model_name` is the (dated) response model; the request's is `llm.request.model_name`
    (anthropic 3.x) or the `model` in `llm.invocation_parameters` (openai)."""
    model = _first(a, "gen_ai.request.model", "llm.request.model_name")
    if model is None and "llm.invocation_parameters" in a:
        model = _json_object(a["llm.invocation_parameters"]).get("model")
    if not isinstance(model, str) or not model:
        model = _first(a, "llm.model_name", "gen_ai.response.model")
    return _str(model)


def _is_error(span: OtelSpan) -> bool:
    return span.status_code == "ERROR" or bool(span.attributes.get("error.type"))


def _error_type(span: OtelSpan) -> str:
    return _str(span.attributes.get("error.type")) or (span.status_message[:200] if span.status_code == "ERROR" else "")


def _failure_status(span: OtelSpan) -> str:
    text = f"{_error_type(span)} {span.status_message}".lower()
    return "timeout" if "timeout" in text or "timed out" in text else "error"


_USAGE_KEYS = {  # contract Usage field ← attributes, current names first
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"),
    "cache_read_tokens": ("gen_ai.usage.cache_read.input_tokens", "llm.token_count.prompt_details.cache_read",
                          "gen_ai.usage.cache_read_input_tokens",  # OpenLLMetry up to 0.53
                          "gen_ai.usage.details.cache_read_tokens"),  # pydantic-ai
    "cache_write_tokens": ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_write.input_tokens",
                           "llm.token_count.prompt_details.cache_write",
                           "gen_ai.usage.cache_creation_input_tokens",  # OpenLLMetry up to 0.53
                           "gen_ai.usage.details.cache_write_tokens"),  # pydantic-ai
    "reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens", "llm.token_count.completion_details.reasoning",
                         "gen_ai.usage.reasoning_tokens",  # OpenLLMetry from 0.55
                         "gen_ai.usage.details.reasoning_tokens"),  # pydantic-ai
}
_TOTAL_KEYS = ("llm.token_count.total", "gen_ai.usage.total_tokens", "llm.usage.total_tokens")


def usage(attrs: Mapping[str, Any]) -> dict | None:
    """Contract Usage from current, deprecated and OpenInference token attributes."""
    u = {name: _int(_first(attrs, *keys)) for name, keys in _USAGE_KEYS.items()}
    total = _int(_first(attrs, *_TOTAL_KEYS))
    if total is not None:  # some producers only report a total and one side
        if u["input_tokens"] is None and u["output_tokens"] is not None:
            u["input_tokens"] = max(total - u["output_tokens"], 0)
        elif u["output_tokens"] is None and u["input_tokens"] is not None:
            u["output_tokens"] = max(total - u["input_tokens"], 0)
    if "gen_ai.usage.raw" in attrs:  # Logfire: the provider's own usage object, for what it has no attribute for
        _from_raw_usage(u, _json_object(attrs["gen_ai.usage.raw"]))
    if all(v is None for v in u.values()):
        return None
    # input_tokens includes cached tokens, so it is never below them; a producer that reports the
    # uncached part only (OpenLLMetry JS for Anthropic) is told by that, and corrected.
    cached = (u["cache_read_tokens"] or 0) + (u["cache_write_tokens"] or 0)
    if u["input_tokens"] is not None and u["input_tokens"] < cached:
        u["input_tokens"] += cached
    return {k: v for k, v in u.items() if v}


def _from_raw_usage(u: dict, raw: dict) -> None:
    """Fill the gaps from an OpenAI (chat or responses) or Anthropic usage object."""
    def detail(section: str, key: str) -> int | None:
        d = raw.get(section)
        return _int(d.get(key)) if isinstance(d, dict) else None

    found = {
        "reasoning_tokens": detail("completion_tokens_details", "reasoning_tokens")
        or detail("output_tokens_details", "reasoning_tokens"),
        "cache_read_tokens": detail("prompt_tokens_details", "cached_tokens") or detail("input_tokens_details", "cached_tokens")
        or _int(raw.get("cache_read_input_tokens")),
        "cache_write_tokens": _int(raw.get("cache_creation_input_tokens")),
    }
    for name, value in found.items():
        if u[name] is None and value is not None:
            u[name] = value


def _finish_reasons(attrs: Mapping[str, Any]) -> list[str]:
    raw = _first(attrs, "gen_ai.response.finish_reasons", "llm.finish_reason", "llm.response.finish_reason",
                 "anthropic.message.stop_reason")  # the last: the anthropic TypeScript SDK's own spans
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.startswith("[") else [raw]
        except (ValueError, RecursionError):
            raw = [raw]
    if not isinstance(raw, (list, tuple)):  # a number or a bool is no finish reason
        raw = []
    reasons = [str(r) for r in raw if r and isinstance(r, (str, int, float)) and not isinstance(r, bool)]
    return reasons or content.output_finish_reasons(attrs)


def _params(attrs: Mapping[str, Any]) -> dict:
    params = {name: _json_value(attrs[key]) for name, key in _PARAMS.items() if attrs.get(key) is not None}
    streaming = _first(attrs, "gen_ai.is_streaming", "llm.is_streaming")  # OpenLLMetry
    if "stream" not in params and isinstance(streaming, bool):
        params["stream"] = streaming
    raw = attrs.get("llm.invocation_parameters")  # OpenInference: one JSON object
    if isinstance(raw, str):
        try:
            extra = json.loads(raw)
            if isinstance(extra, dict):
                params = {**extra, **params}
        except ValueError:
            pass
    return params


# -- per-kind mappers ----------------------------------------------------------
def _logfire_stream(span: OtelSpan) -> str:
    """Logfire traces a streamed call as two spans: the request (it ends when the stream is
    handed to the app, with no response yet) and a zero-length log span "streaming response …
    took {duration}s" that carries the response. 'open' / 'done' for those, '' otherwise."""
    a = span.attributes
    if a.get("logfire.span_type") == "log" and "duration" in a:
        return "done"
    if (span.scope_name.startswith("logfire.") and not _is_error(span)
            and "gen_ai.response.id" not in a and usage(a) is None):
        return "open"
    return ""


def _inference(span: OtelSpan, common: dict, op: str) -> list[dict]:
    a = span.attributes
    events: list[dict] = []
    stream = _logfire_stream(span)
    if op not in EMBEDDING_OPS and stream != "done":  # embeddings have no conversation to show
        prompt = {
            **common,
            "event_type": "prompt",
            "event_id": event_id(span.trace_id, span.span_id, "prompt"),
            "ts": _ms(span.start_ns),
            "messages": content.input_messages(a, span.events),
            "tools_offered": content.tool_names(a),
            "params": _params(a),
        }
        events.append({k: v for k, v in prompt.items() if v not in ([], {})})
    if stream == "open":
        return events  # its output is the "streaming response" span

    reasons = _finish_reasons(a)
    if _is_error(span):
        status = _failure_status(span)
    elif any(r in _FILTERED for r in reasons):
        status = "filtered"
    elif "refusal" in reasons or content.has_refusal(a):  # Anthropic's stop_reason `refusal`
        status = "refusal"
    else:
        status = "ok"
    outputs = content.output_messages(a, span.events)
    ttft_ms = _ttft_ms(span)
    output = {
        **common,
        "event_type": "output",
        "event_id": event_id(span.trace_id, span.span_id, "output"),
        "ts": _ms(span.end_ns),
        "status": status,
        "latency_ms": _latency_ms(span, stream),
        "finish_reason": reasons[0] if reasons else "",
        "response_model": _str(_first(a, "gen_ai.response.model", "llm.response.model_name", "llm.model_name")),
        "content": "\n".join(m["content"] for m in outputs if m.get("content")),
        "ttft_ms": ttft_ms,
        "error_type": _error_type(span) if status in ("error", "timeout") else "",
        "usage": usage(a),
        "cost_usd": _cost(a),
    }
    extra = {}
    if len(reasons) > 1:
        extra["gen_ai.response.finish_reasons"] = ",".join(reasons)
    called = content.output_tool_calls(a)
    if called:  # the contract's output has no tool-call field; the tool_call events come from tool spans
        extra[TOOL_CALLS_ATTR] = ",".join(called)
    if extra:
        output["attributes"] = {**output.get("attributes", {}), **extra}
    events.append({k: v for k, v in output.items() if v not in ("", None)})
    return events


def _latency_ms(span: OtelSpan, stream: str) -> float:
    if stream == "done":  # a zero-length log span: the call took `duration` seconds
        seconds = _float(span.attributes.get("duration"))
        if seconds is not None and seconds >= 0:
            return seconds * 1000
    return max(span.end_ns - span.start_ns, 0) / 1e6


# Span events a streaming call records at its first chunk (OpenInference; OpenLLMetry, one per chunk).
_FIRST_CHUNK_EVENTS = frozenset({"First Token Stream Event", "gen_ai.content.completion.chunk", "llm.content.completion.chunk"})


def _ttft_ms(span: OtelSpan) -> float | None:
    ttft_s = _float(span.attributes.get("gen_ai.response.time_to_first_chunk"))
    if ttft_s is not None:
        return ttft_s * 1000 if ttft_s >= 0 else None
    first = min((e.time_ns for e in span.events if e.name in _FIRST_CHUNK_EVENTS and e.time_ns), default=None)
    if first is None or not span.start_ns <= first <= span.end_ns:
        return None
    return (first - span.start_ns) / 1e6


def _cost(attrs: Mapping[str, Any]) -> float | None:
    # pydantic-ai's own price of the call (USD); the worker's price wins where it knows the model.
    cost = _float(attrs.get("operation.cost"))
    return cost if cost is not None and cost >= 0 else None


def _text(value: Any) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    return json.dumps(_json_value(value), default=str)


def _arguments(value: Any) -> dict | str | None:
    # The contract takes a dict or a string: a JSON object becomes a dict, the rest stays text.
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return _text(value)


def _tool_arguments(a: Mapping[str, Any]) -> dict | str | None:
    found = _first(a, "gen_ai.tool.call.arguments", "tool_arguments", "tool.parameters", "input.value")
    if found is None and "traceloop.entity.input" in a:
        # traceloop-sdk records the call as {"args": [...], "kwargs": {...}}: keyword calls give the kwargs.
        call = _json_object(a["traceloop.entity.input"])
        if not call.get("args") and isinstance(call.get("kwargs"), dict):
            return call["kwargs"]
        found = a["traceloop.entity.input"]
    return _arguments(found)


def _tool_call(span: OtelSpan, common: dict) -> list[dict]:
    a = span.attributes
    name = _first(a, "gen_ai.tool.name", "tool.name", "traceloop.entity.name")
    if not name and span.name.startswith("execute_tool "):
        name = span.name[len("execute_tool "):]
    ev = {
        **common,
        "event_type": "tool_call",
        "event_id": event_id(span.trace_id, span.span_id, "tool_call"),
        "ts": _ms(span.end_ns),
        "tool_name": _str(name) or span.name or "unknown",
        "tool_call_id": _str(_first(a, "gen_ai.tool.call.id", "tool_call.id")),
        # pydantic-ai 1.x: tool_arguments / tool_response
        "arguments": _tool_arguments(a),
        "status": _failure_status(span) if _is_error(span) else "ok",
        "duration_ms": max(span.end_ns - span.start_ns, 0) / 1e6,
        "result": _text(_first(a, "gen_ai.tool.call.result", "tool_response", "output.value", "traceloop.entity.output")),
    }
    return [{k: v for k, v in ev.items() if v not in ("", None)}]


def _eval(span: OtelSpan, common: dict, attrs: Mapping[str, Any], time_ns: int, index: int, target: str) -> dict | None:
    name = _first(attrs, "gen_ai.evaluation.name")
    if not name:
        return None
    label = _str(attrs.get("gen_ai.evaluation.score.label"))
    passed = True if label.lower() in _PASS_LABELS else False if label.lower() in _FAIL_LABELS else None
    extra = {k: _str(attrs[k]) for k in ("gen_ai.evaluation.score.label", "gen_ai.response.id") if attrs.get(k)}
    ev = {
        **common,
        "event_type": "eval",
        "event_id": event_id(span.trace_id, span.span_id, "eval", index),
        "ts": _ms(time_ns),
        "eval_name": _str(name),
        "score": _float(attrs.get("gen_ai.evaluation.score.value")),
        "passed": passed,
        "target_span_id": target,
        "comment": _str(attrs.get("gen_ai.evaluation.explanation")),
        "attributes": {**common.get("attributes", {}), **extra},
    }
    return {k: v for k, v in ev.items() if v not in ("", None)}


def _evals(span: OtelSpan, common: dict) -> list[dict]:
    out = []
    for i, e in enumerate(span.events):
        if e.name == EVAL_EVENT:
            ev = _eval(span, common, e.attributes, e.time_ns or span.end_ns, i, span.span_id)
            if ev:
                out.append(ev)
    return out


# -- entry points --------------------------------------------------------------
def map_span(span: OtelSpan, workflow: str, agent: str = "", defaults: MapDefaults | None = None) -> list[dict]:
    """Contract event dicts for one span, given its resolved workflow (and nearest agent)."""
    defaults = defaults or MapDefaults()
    op = operation(span)
    has_evals = any(e.name == EVAL_EVENT for e in span.events)
    if not op and not has_evals:
        return []
    common = _common(span, workflow, agent, defaults)
    events: list[dict] = []
    if op in INFERENCE_OPS or op in EMBEDDING_OPS:
        events += _inference(span, common, op)
    elif op in TOOL_OPS:
        events += _tool_call(span, common)
    elif op == "evaluation":  # an evaluation emitted as its own zero-length span
        ev = _eval(span, common, span.attributes, span.end_ns, 0, span.parent_span_id)
        events += [ev] if ev else []
    # Agent/workflow spans only name the trace; their usage totals would double count.
    return events + _evals(span, common)


def map_each(
    spans: Iterable[OtelSpan],
    resolver: WorkflowResolver | None = None,
    defaults: MapDefaults | None = None,
) -> list[tuple[OtelSpan, list[dict] | Exception]]:
    """Map a batch span by span: (span, its events) or (span, the exception mapping it raised),
    for the spans that can give events. One bad span does not cost the others theirs.
    Every span is observed first, so order within the batch does not matter."""
    spans = list(spans)
    resolver = resolver or WorkflowResolver()
    for s in spans:
        wf, agent = own_names(s.attributes, s.name)
        resolver.observe(s.trace_id, s.span_id, s.parent_span_id, wf, agent)
    out: list[tuple[OtelSpan, list[dict] | Exception]] = []
    for s in spans:
        if not operation(s) and not s.events:
            continue  # cheap skip for HTTP/DB spans
        fallback = service_name(s.resource) or (defaults.app if defaults else "")
        try:
            workflow, agent = resolver.resolve(s.trace_id, s.span_id, fallback)
            out.append((s, map_span(s, workflow, agent, defaults)))
        except Exception as exc:  # e.g. JSON nested too deep to parse: this span's failure only
            out.append((s, exc))
    return out


def map_spans(
    spans: Iterable[OtelSpan],
    resolver: WorkflowResolver | None = None,
    defaults: MapDefaults | None = None,
) -> list[dict]:
    """Map a batch into one list of events; raises what the first failing span raised."""
    out: list[dict] = []
    for _, events in map_each(spans, resolver, defaults):
        if isinstance(events, Exception):
            raise events
        out += events
    return out


def validate(event: dict) -> str:
    """'' when the event satisfies contract v1, else the reason (for counting, never raised)."""
    try:
        msgspec.convert(event, Event)
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        return str(exc)[:200]
    return ""
