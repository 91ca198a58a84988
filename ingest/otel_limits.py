"""Is a span, or an event mapped from it, within the bounds the pipeline can store?

Pure functions over the mapping's `OtelSpan` and event dicts. Each returns `None` or a
`Violation`: a short reason code (for counters) and a detail naming the attribute or
field (for OTLP's `partial_success.error_message`).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple, Optional, Protocol

import orjson

from llmpulse.ingest.otel_mapping import OtelSpan

# Reason codes, as counted in the gateway's stats.
VALUE_TOO_LARGE = "value_too_large"
TOO_DEEP = "too_deep"
EVENT_TOO_LARGE = "event_too_large"
INVALID = "invalid"  # the mapped event does not satisfy the contract
MAPPING_FAILED = "mapping_failed"
SINK_REFUSED = "sink_refused"


class Limits(Protocol):
    max_value_bytes: int
    max_event_bytes: int
    max_depth: int


class Violation(NamedTuple):
    reason: str
    detail: str


def _utf8_len(s: str, limit: int) -> int:
    # Every character is 1-4 bytes: encode only when the answer is not already known.
    n = len(s)
    if n > limit or 4 * n <= limit:
        return n
    return len(s.encode("utf-8", "surrogatepass"))


def _walk(value: Any, path: str, depth: int = 1) -> Iterator[tuple[Any, str, int]]:
    """(leaf or container, path, depth) for every node, without recursion."""
    stack = [(value, path, depth)]
    while stack:
        v, p, d = stack.pop()
        yield v, p, d
        if isinstance(v, Mapping):
            stack.extend((x, f"{p}.{k}", d + 1) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{p}[{i}]", d + 1) for i, x in enumerate(v))


def _check_value(value: Any, path: str, limits: Limits, sizes: bool = True) -> Optional[Violation]:
    for v, p, d in _walk(value, path):
        if d > limits.max_depth:
            return Violation(TOO_DEEP, f"{path} is nested deeper than {limits.max_depth} levels")
        if sizes and isinstance(v, (str, bytes)):
            size = _utf8_len(v, limits.max_value_bytes) if isinstance(v, str) else len(v)
            if size > limits.max_value_bytes:
                return Violation(VALUE_TOO_LARGE, f"{p} is {size} bytes, over the limit of {limits.max_value_bytes}")
    return None


def span_violation(span: OtelSpan, limits: Limits) -> Optional[Violation]:
    """The first attribute (of the span or its events) past a limit, if any."""
    for key, value in span.attributes.items():
        found = _check_value(value, f"attribute {key}", limits)
        if found:
            return found
    for ev in span.events:
        for key, value in ev.attributes.items():
            found = _check_value(value, f"event {ev.name} attribute {key}", limits)
            if found:
                return found
    if len(span.status_message) > limits.max_value_bytes:
        return Violation(VALUE_TOO_LARGE, f"status message is over {limits.max_value_bytes} bytes")
    return None


def event_violation(event: Mapping[str, Any], limits: Limits) -> Optional[Violation]:
    """Nesting (JSON parsed out of attributes, e.g. tool-call arguments) and encoded size."""
    kind = event.get("event_type", "event")
    for field in ("params", "arguments", "messages", "attributes", "usage"):
        if field in event:
            found = _check_value(event[field], f"{kind}.{field}", limits, sizes=False)  # size: below
            if found:
                return found
    try:
        size = len(orjson.dumps(event))
    except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. an integer past 64 bits
        return Violation(INVALID, f"{kind} cannot be encoded: {exc}"[:200])
    if size > limits.max_event_bytes:
        return Violation(EVENT_TOO_LARGE, f"{kind} event is {size} bytes, over the limit of {limits.max_event_bytes}")
    return None


__all__ = ["Violation", "span_violation", "event_violation", "VALUE_TOO_LARGE", "TOO_DEEP", "EVENT_TOO_LARGE",
           "INVALID", "MAPPING_FAILED", "SINK_REFUSED"]
