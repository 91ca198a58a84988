"""Fuzzing validate(): it never raises, and every event it admits is one the store takes.

Inputs are arbitrary bytes and contract-shaped JSON built from the contract's own types
(msgspec.inspect), with hostile values mixed in: deep nesting, integers past 64 bits,
long and odd strings (lone surrogates, invalid UTF-8), NaN and infinities, duplicate keys,
unknown fields at every level and values of the wrong type. Every Valid result is encoded
as a row and inserted into a real events table (chDB); an insert that fails is a bug in
validation, whichever input it was.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpulse.processors.validate import MAX_REASON, Invalid, Limits, Valid, validate
from llmpulse.schemas.contract import EVENT_CLASSES
from llmpulse.schemas.rows import EVENT_COLUMNS, event_row
from llmpulse.traffic import TrafficGenerator

NOW = time.time_ns() // 1_000_000  # the wall clock: the table's TTL counts from it too
DAY = 86_400_000
# The defaults, and tight limits so that every bound is crossed often in few examples.
LIMITS = [
    Limits(max_age_days=30),
    Limits(max_event_bytes=16_384, max_string_bytes=2_000, max_label_bytes=100, max_depth=6, max_future_seconds=5,
           max_age_days=1, max_field_bytes={"content": 500, "tool_name": 10}),
]
FUZZ = settings(max_examples=2500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- JSON text with what json.dumps would not write: duplicate keys, 10,000 levels ----------
class Obj(NamedTuple):
    pairs: list[tuple[str, Any]]  # keys may repeat


class Deep(NamedTuple):
    depth: int
    lists: bool


def dump(v: Any, ascii_only: bool) -> str:
    if isinstance(v, Obj):
        return "{" + ",".join(f"{dump(k, ascii_only)}:{dump(x, ascii_only)}" for k, x in v.pairs) + "}"
    if isinstance(v, Deep):
        return "[" * v.depth + "]" * v.depth if v.lists else '{"k":' * v.depth + "0" + "}" * v.depth
    if isinstance(v, list):
        return "[" + ",".join(dump(x, ascii_only) for x in v) + "]"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return json.dumps(v, ensure_ascii=ascii_only)  # NaN, Infinity and lone surrogates included


# -- strategies ----------------------------------------------------------------------------
odd_text = st.one_of(
    st.text(max_size=12),
    st.text(max_size=12),
    st.sampled_from(["", "\x00", "é" * 60, "\u202e", "\ufeff", "{[\"\\", "😀", "\U0010ffff"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "€", "😀"]), st.sampled_from([99, 101, 499, 501, 2_001, 5_000])),
    st.text(st.characters(exclude_categories=()), max_size=6),  # lone surrogates, controls
)
huge_int = st.one_of(
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2), st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2),
    st.integers(min_value=-(10**60), max_value=10**60), st.sampled_from([10**30, 2**64, 10**300]),
)
odd_float = st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 5e-324]))
deep = st.builds(Deep, st.sampled_from([2, 5, 6, 7, 63, 64, 65, 254, 255, 300, 1_000, 1_025, 10_000]), st.booleans())
scalar = st.one_of(st.none(), st.booleans(), st.integers(-1000, 10**6), huge_int, odd_float, odd_text)
json_value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.builds(Obj, st.lists(st.tuples(odd_text, inner), max_size=4))),
    max_leaves=12,
) | deep
hostile = st.one_of(json_value, deep, huge_int, odd_float, odd_text)

ts_valid = st.integers(min_value=NOW - 2 * DAY, max_value=NOW + 4_000)
ts_any = st.one_of(
    ts_valid,
    st.integers(min_value=NOW - 40 * DAY, max_value=NOW + DAY),
    st.integers(min_value=0, max_value=2**70),
    ts_valid.map(lambda ms: datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()),
    st.sampled_from(["2099-01-01T00:00:00Z", "2000-01-01T00:00:00+14:00", "2100-01-01T00:00:00Z", "yesterday"]),
)


def for_type(t: msgspec.inspect.Type) -> st.SearchStrategy:
    """A value the contract type admits, most of the time, with odd content."""
    mi = msgspec.inspect
    if isinstance(t, mi.StrType):
        base = odd_text.filter(lambda s: len(s) >= (t.min_length or 0))
        return base.map(lambda s: s[: t.max_length]) if t.max_length else base
    if isinstance(t, mi.IntType):  # within the contract's bounds, around the store's
        lo = t.ge if t.ge is not None else -(2**70)
        return st.one_of(st.integers(min_value=lo, max_value=max(10**6, lo + 10**6)), huge_int.filter(lambda n: n >= lo),
                         st.sampled_from([2**64 - 1, 2**64, 10**30]))
    if isinstance(t, mi.FloatType):
        return st.one_of(st.floats(min_value=t.ge or 0.0, allow_nan=False, allow_infinity=False), odd_float)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of([for_type(u) for u in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(for_type(t.item_type), max_size=3)
    if isinstance(t, mi.DictType) and isinstance(t.value_type, mi.StrType):
        return st.builds(Obj, st.lists(st.tuples(odd_text, odd_text), max_size=3))
    if isinstance(t, mi.DictType):
        return st.builds(Obj, st.lists(st.tuples(odd_text, json_value), max_size=3))
    if isinstance(t, mi.StructType):  # every field typed: the struct is valid unless its content is odd
        return st.fixed_dictionaries({}, optional={f.name: for_type(f.type) for f in t.fields}).map(
            lambda d: Obj(list(d.items())))
    return json_value


# Per event type, each contract field with a strategy for a value of its type (built once);
# fields that are not plain strings (numbers, containers, structs) drawn three times as often.
FIELDS = {etype: [(f.name, ts_any if f.name == "ts" else for_type(f.type))
                  for f in msgspec.inspect.type_info(cls).fields
                  for _ in range(1 if isinstance(f.type, msgspec.inspect.StrType) else 3)]
          for etype, cls in EVENT_CLASSES.items()}
# Realistic events of every type to start from, dated within the tightest max_age.
_TRAFFIC = list(TrafficGenerator(seed=9).events(40))
TEMPLATES = {etype: [{**e, "ts": NOW - 3_600_000} for e in _TRAFFIC if e["event_type"] == etype][:20]
             for etype in EVENT_CLASSES}
TEMPLATES["change"] = [{"event_id": "chg-1", "event_type": "change", "ts": NOW - 60_000, "change_kind": "model_swap",
                        "workflow": "support-bot", "from_value": "gpt-4o", "to_value": "gpt-4.1", "actor": "ci"}]
TEMPLATES["decision"] = [{"event_id": "dec-1", "event_type": "decision", "ts": NOW - 60_000, "trace_id": "t-1",
                          "workflow": "support-bot", "decision": "deny", "checked": "model", "model": "gpt-4o",
                          "control_kind": "pause_workflow", "action_id": "a1", "reason": "paused by alice",
                          "decision_count": 3, "last_decision_ts": NOW - 50_000}]
MUTATIONS = ["typed"] * 4 + ["number"] * 2 + ["hostile", "unknown", "nested_unknown", "drop", "duplicate"]


def _numeric_paths(cls: type) -> list[tuple[str, ...]]:
    """Paths to every number of an event type, struct members included (usage.input_tokens)."""
    mi = msgspec.inspect
    out = []
    for f in mi.type_info(cls).fields:
        for t in f.type.types if isinstance(f.type, mi.UnionType) else (f.type,):
            if isinstance(t, (mi.IntType, mi.FloatType)) and f.name != "ts":
                out.append((f.name,))
            elif isinstance(t, mi.StructType):
                out += [(f.name, g.name) for g in t.fields if isinstance(g.type, (mi.IntType, mi.FloatType))]
    return sorted(set(out))


NUMBERS = {etype: _numeric_paths(cls) for etype, cls in EVENT_CLASSES.items()}
any_number = st.one_of(st.integers(0, 10**6), huge_int, odd_float, st.sampled_from([2**64 - 1, 2**64, 10**30]))


@st.composite
def contract_event(draw) -> Obj:
    """A realistic event of a random type with 1-3 changes drawn from the contract's fields."""
    etype = draw(st.sampled_from(sorted(EVENT_CLASSES)))
    pairs = list(draw(st.sampled_from(TEMPLATES[etype])).items())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        if kind in ("typed", "hostile"):
            name, typed = draw(st.sampled_from(FIELDS[etype]))
            value = draw(typed if kind == "typed" else hostile)
            pairs = [(k, v) for k, v in pairs if k != name] + [(name, value)]
        elif kind == "number" and NUMBERS[etype]:
            path = draw(st.sampled_from(NUMBERS[etype]))
            value = draw(any_number)
            if len(path) == 2:  # a struct member: merged into the struct the event has, if any
                inner = dict(pairs).get(path[0])
                inner = dict(inner) if isinstance(inner, dict) else {}
                value = {**inner, path[1]: value}
            pairs = [(k, v) for k, v in pairs if k != path[0]] + [(path[0], value)]
        elif kind == "unknown":
            pairs.append((draw(st.one_of(odd_text, st.sampled_from(["gpu", "usage.x", "messages"]))), draw(json_value)))
        elif kind == "nested_unknown":  # unknown keys inside usage or a message: kept in `extra`
            where = "usage" if etype == "output" else "messages"
            inner = Obj([("input_tokens", 3), (draw(odd_text), draw(json_value))])
            pairs.append((where, inner if where == "usage" else [Obj([("role", "user"), (draw(odd_text), draw(json_value))])]))
        elif kind == "drop" and pairs:
            pairs.pop(draw(st.integers(0, len(pairs) - 1)))
        elif kind == "duplicate" and pairs:
            key = draw(st.sampled_from([k for k, _ in pairs]))
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(st.one_of(json_value, ts_any))))
    return Obj(pairs)


contract_bytes = st.builds(lambda obj, ascii_only: dump(obj, ascii_only).encode("utf-8", "surrogatepass"),
                           contract_event(), st.booleans())
def _fuzz(raw: bytes, how: str, at: float, byte: int) -> bytes:
    pos = int(at * len(raw))  # anywhere, deep inside 10,000 levels too
    return {"keep": raw, "cut": raw[:pos], "flip": raw[:pos] + bytes([byte]) + raw[pos + 1:]}[how]


fuzzed_bytes = st.builds(  # some truncated or with one byte replaced
    _fuzz, contract_bytes, st.sampled_from(["keep"] * 6 + ["cut", "flip"]), st.floats(0, 1), st.integers(0, 255))


# -- the property ---------------------------------------------------------------------------------
class Admitted(NamedTuple):
    raw: bytes
    row: list


def _validate_never_raises(raw: bytes, limits: Limits, admitted: list[Admitted], counts: dict) -> None:
    result = validate(raw, limits, NOW)
    if isinstance(result, Invalid):
        assert isinstance(result.reason, str) and 0 < len(result.reason) <= MAX_REASON
        counts["invalid"] += 1
        return
    assert isinstance(result, Valid)
    counts["valid"] += 1
    # The row encoding runs here, so a failure shrinks to a minimal input.
    row = event_row(result.event, result.extra, "llm.events", 0, len(admitted))
    orjson.dumps(result.extra)  # the redaction stage serialises unknown fields too
    admitted.append(Admitted(raw, row))


def _insert_all(client, db: str, admitted: list[Admitted]) -> list[tuple[bytes, str]]:
    """Insert in blocks; a block that fails is retried row by row to name the inputs."""
    failed = []
    for i in range(0, len(admitted), 500):
        block = admitted[i:i + 500]
        try:
            client.insert(f"{db}.events", [a.row for a in block], column_names=EVENT_COLUMNS)
            continue
        except Exception:  # noqa: BLE001 - the rows are tried one by one below
            pass
        for a in block:
            try:
                client.insert(f"{db}.events", [a.row], column_names=EVENT_COLUMNS)
            except Exception as exc:  # noqa: BLE001 - reported with the input
                failed.append((a.raw[:300], f"{type(exc).__name__}: {str(exc)[:200]}"))
    return failed


@pytest.fixture(scope="module")
def fuzz_db(chdb_client) -> str:
    from llmpulse.schemas.store import migrate

    db = f"fuzz_{uuid.uuid4().hex[:8]}"
    migrate(chdb_client, db, 30)
    return db


def test_contract_shaped_input_never_raises_and_every_valid_event_is_stored(chdb_client, fuzz_db) -> None:
    admitted: list[Admitted] = []
    counts = [{"valid": 0, "invalid": 0} for _ in LIMITS]

    @FUZZ
    @given(raw=fuzzed_bytes)
    def prop(raw: bytes) -> None:
        for limits, count in zip(LIMITS, counts):  # one input against each set of limits
            _validate_never_raises(raw, limits, admitted, count)

    prop()
    # The generator must reach both sides of the bounds, or the insert check proves little.
    for count in counts:
        assert count["valid"] >= 0.2 * sum(count.values()), counts
        assert count["invalid"] >= 0.2 * sum(count.values()), counts
    assert _insert_all(chdb_client, fuzz_db, admitted) == []


@settings(max_examples=1000, deadline=None, database=None)
@given(raw=st.one_of(st.binary(max_size=400), st.binary(max_size=40).map(lambda b: b * 2000)))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    for limits in LIMITS:
        result = validate(raw, limits, NOW)
        assert isinstance(result, (Valid, Invalid))
