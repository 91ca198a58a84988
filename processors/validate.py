"""Validation: raw Kafka bytes -> a contract event, or a dead letter with its reason.

Pure and deterministic; the worker and `llmpulse backtest` both call `validate`.
Unknown fields are not an error: they are split off into `extra` (kept as JSON in
ClickHouse) so producers on a newer contract never lose data.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import msgspec
import orjson

from llmpulse.schemas.contract import EVENT_CLASSES, Event, Message, Usage, decode_event

MAX_REASON = 500


class Valid(NamedTuple):
    event: Event
    extra: dict[str, Any]  # unknown fields, kept verbatim


class Invalid(NamedTuple):
    reason: str


Result = Union[Valid, Invalid]

# Nested structs whose unknown keys we also keep (dotted path in `extra`).
_NESTED = {"usage": Usage, "messages": Message}
_KNOWN = {name: set(cls.__struct_fields__) | {"event_type"} for name, cls in EVENT_CLASSES.items()}
_convert_type = Event


def validate(raw: bytes) -> Result:
    """Fast path: one strict typed decode. Slow path only when fields are unknown."""
    try:
        return Valid(decode_event(raw), {})
    except msgspec.ValidationError as exc:
        if "unknown field" not in str(exc):
            return Invalid(_reason(exc))
    except msgspec.DecodeError as exc:
        return Invalid(_reason(exc, prefix="malformed JSON: "))
    return _validate_with_extras(raw)


def _validate_with_extras(raw: bytes) -> Result:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid(_reason(exc, prefix="malformed JSON: "))
    if not isinstance(obj, dict):
        return Invalid("expected a JSON object")
    known = _KNOWN.get(obj.get("event_type"))  # type: ignore[arg-type]
    if known is None:
        return Invalid(f"event_type must be one of {sorted(_KNOWN)}, got {obj.get('event_type')!r}")
    extra = {k: obj.pop(k) for k in list(obj) if k not in known}
    for key, cls in _NESTED.items():
        _split_nested(obj, key, set(cls.__struct_fields__), extra)
    try:
        return Valid(msgspec.convert(obj, _convert_type), extra)
    except msgspec.ValidationError as exc:
        return Invalid(_reason(exc))


def _split_nested(obj: dict, key: str, fields: set[str], extra: dict) -> None:
    value = obj.get(key)
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for k in [k for k in item if k not in fields]:
            path = f"{key}.{k}" if not isinstance(value, list) else f"{key}[{i}].{k}"
            extra[path] = item.pop(k)


def _reason(exc: Exception, prefix: str = "") -> str:
    return (prefix + str(exc))[:MAX_REASON]
