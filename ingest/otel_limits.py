"""Is a span, and every event mapped from it, within the bounds the pipeline stores?

The bounds are validation's `Limits` (`processors/validate.py`, the `limits:` section):
the gateway applies them at the door, so a client learns in `partial_success` what the
worker would otherwise dead-letter. Each check returns `None` or a `Violation`: a short
reason code (for counters) and a detail naming the attribute or field (for the message).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple, Optional

import orjson

from llmpulse.ingest.otel_mapping import OtelSpan
from llmpulse.processors.validate import Invalid, Limits, validate

# Reason codes, as counted in the gateway's stats.
VALUE_TOO_LARGE = "value_too_large"
TOO_DEEP = "too_deep"
EVENT_TOO_LARGE = "event_too_large"
TS_OUT_OF_BOUNDS = "ts_out_of_bounds"
INVALID = "invalid"  # any other way a mapped event fails the contract
MAPPING_FAILED = "mapping_failed"
SINK_REFUSED = "sink_refused"

# Validation names the limit it hit; that name gives the code.
_BY_LIMIT = (("max_event_bytes", EVENT_TOO_LARGE), ("max_depth", TOO_DEEP), ("too deep", TOO_DEEP),
             ("max_string_bytes", VALUE_TOO_LARGE), ("max_label_bytes", VALUE_TOO_LARGE),
             ("max_field_bytes", VALUE_TOO_LARGE), ("max_future_seconds", TS_OUT_OF_BOUNDS),
             ("max_age_days", TS_OUT_OF_BOUNDS))


class Violation(NamedTuple):
    reason: str
    detail: str


def _utf8_len(s: str, limit: int) -> int:
    # Every character is 1-4 bytes: encode only when the answer is not already known.
    n = len(s)
    if n > limit or 4 * n <= limit:
        return n
    return len(s.encode("utf-8", "surrogatepass"))


def _walk(value: Any, path: str) -> Iterator[tuple[Any, str, int]]:
    """(node, path, depth) for every node of a value, without recursion."""
    stack = [(value, path, 1)]
    while stack:
        v, p, d = stack.pop()
        yield v, p, d
        if isinstance(v, Mapping):
            stack.extend((x, f"{p}.{k}", d + 1) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{p}[{i}]", d + 1) for i, x in enumerate(v))


def _check_value(value: Any, path: str, limits: Limits) -> Optional[Violation]:
    for v, p, d in _walk(value, path):
        if d > limits.max_depth:
            return Violation(TOO_DEEP, f"{path} is nested deeper than max_depth {limits.max_depth}")
        if isinstance(v, (str, bytes)):
            size = _utf8_len(v, limits.max_string_bytes) if isinstance(v, str) else len(v)
            if size > limits.max_string_bytes:
                return Violation(VALUE_TOO_LARGE, f"{p} is {size} bytes > max_string_bytes {limits.max_string_bytes}")
    return None


def span_violation(span: OtelSpan, limits: Limits) -> Optional[Violation]:
    """The first attribute (of the span or its events) past a limit, before anything is parsed out of it."""
    for key, value in span.attributes.items():
        found = _check_value(value, f"attribute {key}", limits)
        if found:
            return found
    for ev in span.events:
        for key, value in ev.attributes.items():
            found = _check_value(value, f"event {ev.name} attribute {key}", limits)
            if found:
                return found
    return None


def event_violation(event: Mapping[str, Any], limits: Limits, now_ms: int | None) -> Optional[Violation]:
    """What validation (the worker's, the same code) says of the encoded event."""
    kind = event.get("event_type", "event")
    try:
        raw = orjson.dumps(event)
    except (TypeError, orjson.JSONEncodeError) as exc:  # nested past orjson's 254 levels, an integer past 64 bits
        for name, value in event.items():
            if isinstance(value, (dict, list)) and any(d > limits.max_depth for _, _, d in _walk(value, name)):
                return Violation(TOO_DEEP, f"{kind}.{name} is nested deeper than max_depth {limits.max_depth}")
        return Violation(INVALID, f"{kind} cannot be encoded: {exc}"[:200])
    result = validate(raw, limits, now_ms)
    if not isinstance(result, Invalid):
        return None
    code = next((c for name, c in _BY_LIMIT if name in result.reason), INVALID)
    return Violation(code, f"{kind}: {result.reason}"[:300])


__all__ = ["Violation", "span_violation", "event_violation", "VALUE_TOO_LARGE", "TOO_DEEP", "EVENT_TOO_LARGE",
           "TS_OUT_OF_BOUNDS", "INVALID", "MAPPING_FAILED", "SINK_REFUSED"]
