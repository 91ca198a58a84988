"""Validation: raw Kafka bytes -> a contract event, or a dead letter with its reason.

Pure and deterministic; the worker and `llmpulse backtest` both call `validate`.
Unknown fields are not an error: they are split off into `extra` (kept as JSON in
ClickHouse) so producers on a newer contract never lose data.

A valid event is one the store takes: whatever passes here must encode into a row
(`schemas/rows.py`) and insert into `events`, or one message would stop ingestion.
`Limits` holds those bounds; each `Invalid` reason names the limit that was hit.
"""

from __future__ import annotations

import re
from array import array
from datetime import datetime, timezone
from decimal import Decimal
from itertools import accumulate
from operator import attrgetter
from typing import Any, NamedTuple, Union

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmpulse.schemas.contract import EVENT_CLASSES, Event, Message, Usage, decode_event

MAX_REASON = 500

# The integers the row encoder (orjson) can write into the JSON columns (params, arguments,
# extra); the top of the range is also that of the UInt64 token columns.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1

# Free text: large by nature, bounded by `max_string_bytes`. Every other string field of
# the contract is an identifier or a label (tenant, workflow, model, trace_id, ...) and
# bounded by `max_label_bytes` (tests/unit/test_validate.py checks this against the DDL).
FREE_TEXT_FIELDS = frozenset({"content", "result", "comment", "description", "from_value", "to_value"})


class Limits(BaseModel):
    """What one event may carry: the bounds of the store, of the row encoder and of sane event time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One Kafka message: the SDK's producer cap (message.max.bytes); bounds the work one
    # event costs downstream and the size of its dead-letter copy.
    max_event_bytes: int = Field(1_000_000, ge=1024)
    # Nesting of an untyped JSON value (params, arguments, unknown fields); the row
    # encoder (orjson) gives up at 254 levels, the `extra` object adds one; the gateway admits 32.
    max_depth: int = Field(64, ge=1, le=200)
    # Any one string, free text included (content, result, messages, params, attributes).
    max_string_bytes: int = Field(1_000_000, ge=64)
    # Identifier and label fields: sort key, bloom-filter indexes and LowCardinality
    # dictionaries hold them, for every part and in every query's memory.
    max_label_bytes: int = Field(1024, ge=64)
    # Per-field overrides of the two above, by contract field name (e.g. {"content": 200000}).
    max_field_bytes: dict[str, int] = Field(default_factory=dict)
    # How far event time may run ahead of the wall clock: producer clock skew, not more;
    # a future ts would push the detectors' event-time clocks and windows ahead.
    max_future_seconds: float = Field(300.0, ge=0)
    # How far behind: older rows are dropped by the table TTL right after the insert.
    # None: no bound here; Pipeline.from_settings fills in `retention_days`.
    max_age_days: float | None = Field(None, gt=0)

    @field_validator("max_field_bytes")
    @classmethod
    def _known_string_fields(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(v) - _STRING_FIELDS)
        if unknown:
            raise ValueError(f"max_field_bytes: {unknown} are not string fields of the contract; "
                             f"known: {sorted(_STRING_FIELDS)}")
        small = sorted(k for k, n in v.items() if n < 1)
        if small:
            raise ValueError(f"max_field_bytes: {small} must be at least 1 byte")
        return v


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


def _field_kinds() -> dict[str, dict[str, str]]:
    """Per event type, the fields that hold strings and how: derived from the contract's types.

    str: a string; strlist: a list of strings; strmap: str -> str; structs: a list of
    structs of strings (messages); json: an untyped JSON value (maybe a string).
    """
    ti = msgspec.inspect
    kinds: dict[str, dict[str, str]] = {}
    for etype, cls in EVENT_CLASSES.items():
        out: dict[str, str] = {}
        for f in ti.type_info(cls).fields:
            t = f.type
            if isinstance(t, ti.StrType):
                out[f.name] = "str"
            elif isinstance(t, ti.ListType) and isinstance(t.item_type, ti.StrType):
                out[f.name] = "strlist"
            elif isinstance(t, ti.ListType) and isinstance(t.item_type, ti.StructType):
                out[f.name] = "structs"
            elif isinstance(t, ti.DictType) and isinstance(t.value_type, ti.StrType):
                out[f.name] = "strmap"
            elif isinstance(t, ti.DictType) or (
                isinstance(t, ti.UnionType) and any(isinstance(u, ti.DictType) for u in t.types)
            ):
                out[f.name] = "json"
        kinds[etype] = out
    return kinds


_KINDS = _field_kinds()
# Strings the contract already bounds (in characters, up to 4 UTF-8 bytes each), e.g. event_id.
_MAX_CHARS = {f.name: f.type.max_length for cls in EVENT_CLASSES.values() for f in msgspec.inspect.type_info(cls).fields
              if isinstance(f.type, msgspec.inspect.StrType) and f.type.max_length is not None}
_STRING_FIELDS = frozenset(name for fields in _KINDS.values() for name in fields)
_JSON_FIELDS = {etype: tuple(n for n, k in fields.items() if k == "json") for etype, fields in _KINDS.items()}


def _counter_fields() -> dict[str, tuple[tuple[str, tuple[str, ...]], ...]]:
    """Per event type, the integers of nested structs (usage): UInt64 columns, which the
    contract bounds below only (msgspec takes no bound past int64)."""
    ti = msgspec.inspect
    out = {}
    for etype, cls in EVENT_CLASSES.items():
        found = []
        for f in ti.type_info(cls).fields:
            types = f.type.types if isinstance(f.type, ti.UnionType) else (f.type,)
            for t in types:
                if isinstance(t, ti.StructType):
                    ints = tuple(g.name for g in t.fields if isinstance(g.type, ti.IntType))
                    if ints:
                        found.append((f.name, ints))
        out[etype] = tuple(found)
    return out


_COUNTERS = _counter_fields()


class _TypePlan(NamedTuple):
    json_fields: tuple[str, ...]  # untyped JSON values: nesting and integers checked always
    counters: tuple[tuple[str, tuple[str, ...]], ...]  # UInt64 integers of nested structs
    strings: list[tuple[int, str, str, str]]  # (limit, field, kind, limit name) by limit, if an event can exceed it
    smallest: int  # no string check in an event up to this size
    by_field: dict[str, tuple[int, str]]  # field -> (limit, limit name), of `strings`
    # The plain string fields of `strings` by limit, read at once: (limit, getter of a tuple)
    quick: tuple[tuple[int, Any], ...]
    others: list[tuple[int, str, str, str]]  # the rest of `strings`: containers of strings


class _Plan(NamedTuple):
    """What a Limits instance means per event class, worked out once."""

    by_class: dict[type, _TypePlan]
    future_ms: float
    age_ms: float | None


# Plans by Limits instance (kept alive here, so an id is never reused); Limits is frozen.
_PLANS: dict[int, tuple[Limits, _Plan]] = {}


def _plan(limits: Limits) -> _Plan:
    found = _PLANS.get(id(limits))
    if found is not None:
        return found[1]
    by_class: dict[type, _TypePlan] = {}
    for etype, fields in _KINDS.items():
        checks = []
        for name, kind in fields.items():
            if name in limits.max_field_bytes:
                limit, label = limits.max_field_bytes[name], f"max_field_bytes[{name}]"
            elif kind == "str" and name not in FREE_TEXT_FIELDS:
                limit, label = limits.max_label_bytes, "max_label_bytes"
            else:
                limit, label = limits.max_string_bytes, "max_string_bytes"
            if limit < limits.max_event_bytes and not 4 * _MAX_CHARS.get(name, limit) <= limit:
                checks.append((limit, name, kind, label))  # else the event size or the contract holds it
        checks.sort()
        plain: dict[int, list[str]] = {}
        for limit, name, kind, _ in checks:
            if kind == "str":
                plain.setdefault(limit, []).append(name)
        quick = tuple((limit, attrgetter(*names, names[0])) for limit, names in sorted(plain.items()))
        by_class[EVENT_CLASSES[etype]] = _TypePlan(
            _JSON_FIELDS[etype], _COUNTERS[etype], checks, checks[0][0] if checks else limits.max_event_bytes,
            {name: (limit, label) for limit, name, _, label in checks}, quick,
            [c for c in checks if c[2] != "str"])
    age = None if limits.max_age_days is None else limits.max_age_days * 86_400_000
    plan = _Plan(by_class, limits.max_future_seconds * 1000, age)
    if len(_PLANS) >= 64:  # a process builds a handful; tests may build many
        _PLANS.clear()
    _PLANS[id(limits)] = (limits, plan)
    return plan


DEFAULT_LIMITS = Limits()


def validate(raw: bytes, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None) -> Result:
    """Fast path: one strict typed decode. Slow path only when fields are unknown.

    `now_ms` is the wall clock (epoch ms) the event time is bounded against; None skips
    those bounds.
    """
    try:
        size = len(raw)
    except TypeError:  # a Kafka message without a value (a tombstone) has None
        return Invalid(f"no message value ({type(raw).__name__})")
    if size > limits.max_event_bytes:
        return Invalid(f"event size {size} bytes > max_event_bytes {limits.max_event_bytes}")
    try:
        event: Event = decode_event(raw)
        extra: dict[str, Any] = {}
    except msgspec.ValidationError as exc:
        if "unknown field" not in str(exc):
            return Invalid(_reason(exc))
        result = _validate_with_extras(raw, limits)
        if isinstance(result, Invalid):
            return result
        event, extra = result
    except msgspec.DecodeError as exc:
        return Invalid(_reason(exc, prefix="malformed JSON: "))
    except RecursionError:  # the decoder recurses per nesting level
        return Invalid(_too_deep(raw, limits))
    reason = _check(event, extra, size, limits, now_ms)
    return Valid(event, extra) if reason is None else Invalid(reason)


def _validate_with_extras(raw: bytes, limits: Limits) -> Result:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            return Invalid(_too_deep(raw, limits))
        return Invalid(_reason(exc, prefix="malformed JSON: "))
    if not isinstance(obj, dict):
        return Invalid("expected a JSON object")
    etype = obj.get("event_type")  # the last one, if the key is repeated: anything at all
    known = _KNOWN.get(etype) if isinstance(etype, str) else None
    if known is None:
        got = repr(etype[:100]) if isinstance(etype, str) else type(etype).__name__
        return Invalid(f"event_type must be one of {sorted(_KNOWN)}, got {got}")
    extra = {k: obj.pop(k) for k in list(obj) if k not in known}
    for key, cls in _NESTED.items():
        _split_nested(obj, key, set(cls.__struct_fields__), extra)
    try:
        return Valid(msgspec.convert(obj, _convert_type), extra)
    except msgspec.ValidationError as exc:
        return Invalid(_reason(exc))
    except RecursionError:
        return Invalid(_too_deep(raw, limits))


def _split_nested(obj: dict, key: str, fields: set[str], extra: dict) -> None:
    value = obj.get(key)
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for k in [k for k in item if k not in fields]:
            path = f"{key}.{k}" if not isinstance(value, list) else f"{key}[{i}].{k}"
            extra[path] = item.pop(k)


# -- limits of a decoded event ---------------------------------------------------------
def _check(event: Event, extra: dict[str, Any], size: int, limits: Limits, now_ms: int | None) -> str | None:
    """The first limit a decoded event breaks, as a reason; None if it breaks none."""
    cached = _PLANS.get(id(limits))
    by_class, future_ms, age_ms = cached[1] if cached is not None else _plan(limits)
    if now_ms is not None:
        ts = event.ts
        if ts - now_ms > future_ms:
            return (f"ts {_iso(ts)} is ahead of the clock by {_span(ts - now_ms)} "
                    f"(max_future_seconds {limits.max_future_seconds:g})")
        if age_ms is not None and now_ms - ts > age_ms:
            return (f"ts {_iso(ts)} is older than retention: {_span(now_ms - ts)} behind the clock "
                    f"(max_age_days {limits.max_age_days:g})")
    json_fields, counters, strings, smallest, by_field, quick, others = by_class[type(event)]
    for name, ints in counters:
        struct = getattr(event, name)
        if struct is not None:
            for f in ints:
                if getattr(struct, f) > _INT_MAX:
                    return f"{name}.{f} {_short_int(getattr(struct, f))} out of range 0..2^64-1"
    for name in json_fields:
        value = getattr(event, name)
        if value and type(value) is not str:
            found = by_field.get(name)
            limit, label = found if found is not None and found[0] < size else (None, "")
            reason = _check_json(value, name, limits.max_depth, limit, label)
            if reason:
                return reason
    if extra:
        limit = limits.max_string_bytes if limits.max_string_bytes < size else None
        for name, value in extra.items():
            if limit is not None and _utf8_len(name, limit) > limit:
                return _string_reason("an unknown field's name", _utf8_len(name, None), "max_string_bytes", limit)
            if type(value) is dict or type(value) is list:
                reason = _check_json(value, name, limits.max_depth, limit, "max_string_bytes")
            else:
                reason = _check_scalar(value, name, limit, "max_string_bytes")
            if reason:
                return reason
    if size > smallest:
        for limit, getter in quick:
            if limit >= size:
                break
            if 4 * max(map(len, getter(event))) > limit:  # maybe too long: the exact check decides
                return _check_strings(event, strings, size)
        return _check_strings(event, others, size) if others else None
    return None


def _check_json(value: dict | list, field: str, max_depth: int, str_limit: int | None, label: str) -> str | None:
    """Nesting, integers the row encoder cannot write and, given `str_limit`, string lengths; no recursion."""
    if str_limit is None:  # the common case, a flat object of small scalars, in one pass
        for x in (value.values() if type(value) is dict else value):
            t = type(x)
            if t is dict or t is list or (t is int and not _INT_MIN <= x <= _INT_MAX):
                break
        else:
            return None
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return _depth_reason(_nested_depth(value, None), max_depth, field)
        if type(node) is dict:
            if str_limit is not None:
                for k in node:
                    if _utf8_len(k, str_limit) > str_limit:
                        return _string_reason(f"a key in field {field}", _utf8_len(k, None), label, str_limit)
            items = node.values()
        else:
            items = node
        for x in items:
            t = type(x)
            if t is dict or t is list:
                stack.append((x, depth + 1))
            elif t is int:
                if not _INT_MIN <= x <= _INT_MAX:
                    return f"integer {_short_int(x)} in field {field} out of range -2^63..2^64-1"
            elif t is str and str_limit is not None and _utf8_len(x, str_limit) > str_limit:
                return _string_reason(f"a string in field {field}", _utf8_len(x, None), label, str_limit)
    return None


def _check_scalar(value: Any, field: str, max_str: int | None, label: str) -> str | None:
    if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
        return f"integer {_short_int(value)} in field {field} out of range -2^63..2^64-1"
    if type(value) is str and max_str is not None and _utf8_len(value, max_str) > max_str:
        return _string_reason(f"field {field}", _utf8_len(value, None), label, max_str)
    return None


def _check_strings(event: Event, checks: list[tuple[int, str, str, str]], size: int) -> str | None:
    for limit, name, kind, label in checks:
        if limit >= size:  # no string in an event of this size can be longer
            break
        value = getattr(event, name)
        if kind == "str":  # the common case inline: short enough whatever its characters
            n = len(value)
            if 4 * n > limit and (n > limit or (not value.isascii() and _utf8_len(value, None) > limit)):
                return _string_reason(f"field {name}", _utf8_len(value, None), label, limit)
        elif kind == "json" and isinstance(value, str):
            if _utf8_len(value, limit) > limit:
                return _string_reason(f"field {name}", _utf8_len(value, None), label, limit)
        elif kind == "strlist":
            for s in value:
                if _utf8_len(s, limit) > limit:
                    return _string_reason(f"an item of field {name}", _utf8_len(s, None), label, limit)
        elif kind == "strmap":
            for k, v in value.items():
                if _utf8_len(k, limit) > limit or _utf8_len(v, limit) > limit:
                    n = max(_utf8_len(k, None), _utf8_len(v, None))
                    return _string_reason(f"an entry of field {name}", n, label, limit)
        elif kind == "structs":
            for item in value:
                for f in item.__struct_fields__:
                    s = getattr(item, f)
                    if isinstance(s, str) and _utf8_len(s, limit) > limit:
                        return _string_reason(f"field {name}.{f}", _utf8_len(s, None), label, limit)
        # json values that are containers were checked by _check_json
    return None


# -- helpers ---------------------------------------------------------------------------
def _utf8_len(s: str, limit: int | None) -> int:
    """UTF-8 length of `s`, exact whenever it matters for `limit` (None: always exact)."""
    n = len(s)
    if s.isascii() or (limit is not None and (n > limit or 4 * n <= limit)):
        return n  # every character is 1..4 bytes: the answer is already known
    return len(s.encode("utf-8", "surrogatepass"))


def _nested_depth(value: Any, stop: int | None) -> int:
    """Containers nested in `value` (a scalar: 0, {} or []: 1); stops counting past `stop`."""
    best = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > best:
            best = depth
            if stop is not None and best > stop:
                return best
        for x in (node.values() if type(node) is dict else node):
            if type(x) is dict or type(x) is list:
                stack.append((x, depth + 1))
    return best


def _too_deep(raw: bytes, limits: Limits) -> str:
    """The reason for a document too deep to decode: its depth and the field that holds it."""
    depth, field = _raw_depth(raw)
    if depth <= limits.max_depth:  # the recursion limit was hit for another reason (a deep caller)
        return f"nesting depth {depth} in field {field} is too deep to decode here"
    return _depth_reason(depth, limits.max_depth, field)


# A JSON text reduced to its structure at C speed: each string becomes one quote, then only
# quotes and brackets are kept and mapped to depth steps (quote 0, opening +1, closing -1).
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_STEPS = bytes.maketrans(b'"[{]}', b"\x00\x01\x01\xff\xff")


def _raw_depth(raw: bytes) -> tuple[int, str]:
    """Deepest nesting of any top-level field's value in a JSON text, and that field; no decoding.

    Linear and without a Python loop per byte: a message at the size limit costs milliseconds.
    """
    strings = _STRING.findall(raw)
    skeleton = _STRING.sub(b'"', raw).translate(None, _NOT_STRUCTURE)
    profile = list(accumulate(array("b", skeleton.translate(_STEPS))))
    best = max(profile, default=0)
    if not skeleton or skeleton[0] != 0x7B:  # not a top-level object
        return max(best, 0), "(top level)"
    if best < 2:
        return 0, "?"
    deepest = profile.index(best)
    # The member holding the deepest point: the last token at depth 1 before it is its key.
    at = deepest - profile[deepest::-1].index(1)
    i = skeleton.count(b'"', 0, at + 1) - 1  # an unterminated string leaves a quote unmatched
    if skeleton[at] != 0x22 or not 0 <= i < len(strings):
        return best - 1, "?"
    return best - 1, strings[i][1:-1].decode("utf-8", "replace")[:64]


def _depth_reason(depth: int, max_depth: int, field: str) -> str:
    return _reason(f"nesting depth {depth} > max_depth {max_depth} in field {field}")


def _string_reason(what: str, n: int, label: str, limit: int) -> str:
    return _reason(f"{what} is {n} bytes > {label} {limit}")


def _short_int(x: int) -> str:
    return str(x) if -10**24 < x < 10**24 else f"{Decimal(x):.3e}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _span(ms: int) -> str:
    s = ms / 1000
    if s >= 2 * 86_400:
        return f"{s / 86_400:,.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def _reason(exc: Exception | str, prefix: str = "") -> str:
    return (prefix + str(exc))[:MAX_REASON]
