"""Validation admits only what the store takes, and names the limit a message broke.

Each class below once stopped ingestion: the message passed validation and then failed
the row encoding or the ClickHouse insert, so its batch was retried forever.
"""

from __future__ import annotations

import re
import sys
import time
import uuid

import orjson
import pytest
from pydantic import ValidationError

from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.processors.validate import DEFAULT_LIMITS, FREE_TEXT_FIELDS, Invalid, Limits, Valid, _plan, validate
from llmpulse.schemas.contract import EVENT_CLASSES
from llmpulse.schemas.rows import EVENT_COLUMNS, event_row
from llmpulse.settings import Settings

NOW = 1_795_000_000_000  # 2026-11-17T09:46:40Z
DAY = 86_400_000
BASE = {"event_id": "e1", "ts": NOW, "trace_id": "t1", "workflow": "support-bot"}
PROMPT = {**BASE, "event_type": "prompt"}
OUTPUT = {**BASE, "event_type": "output", "status": "ok", "latency_ms": 12.5}


def nested(depth: int, lists: bool = False) -> bytes:
    """A JSON object `depth` containers deep, as text (json.dumps cannot build 10,000 levels);
    `lists`: arrays inside the outer object, 2 bytes a level."""
    if lists:
        return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    return b'{"a":' * depth + b"1" + b"}" * depth


def with_field(event: dict, name: bytes, value: bytes) -> bytes:
    return orjson.dumps(event)[:-1] + b',"' + name + b'":' + value + b"}"


def invalid(raw: bytes, *parts: str, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None) -> str:
    result = validate(raw, limits, now_ms)
    assert isinstance(result, Invalid), result
    for part in parts:
        assert part in result.reason, result.reason
    return result.reason


@pytest.fixture(scope="module")
def store(chdb_client):
    """An events table of its own; returns a function that inserts one valid result."""
    from llmpulse.schemas.store import migrate

    db = f"validate_{uuid.uuid4().hex[:8]}"
    migrate(chdb_client, db, 36500)  # the tests' fixed event times must outlive the TTL

    def insert(result: Valid) -> None:
        row = event_row(result.event, result.extra, "llm.events", 0, 0)
        chdb_client.insert(f"{db}.events", [row], column_names=EVENT_COLUMNS)

    return insert


# -- nesting ---------------------------------------------------------------------------
@pytest.mark.parametrize("field", [b"params", b"unknown_field"])
@pytest.mark.parametrize("depth", [65, 255, 300, 10_000, 400_000])
def test_values_nested_too_deep_are_invalid_with_their_depth_and_field(field: bytes, depth: int) -> None:
    raw = with_field(PROMPT, field, nested(depth, lists=depth > 100_000))
    assert len(raw) < DEFAULT_LIMITS.max_event_bytes
    invalid(raw, f"nesting depth {depth} > max_depth 64 in field {field.decode()}")


@pytest.mark.parametrize("depth", [65, 300, 10_000])
def test_deep_tool_arguments_and_unknown_keys_of_messages_are_invalid(depth: int) -> None:
    call = {**BASE, "event_type": "tool_call", "tool_name": "search"}
    invalid(with_field(call, b"arguments", nested(depth, lists=True)), f"nesting depth {depth} > max_depth 64 in field arguments")
    message = b'[{"role":"user","content":"hi","meta":' + nested(depth) + b"}]"
    invalid(with_field(PROMPT, b"messages", message), "nesting depth", "> max_depth 64")


def test_nesting_at_the_limit_is_valid_and_stored(store) -> None:
    for field in (b"params", b"unknown_field"):
        result = validate(with_field(PROMPT, field, nested(64)))
        assert isinstance(result, Valid), result
        store(result)
    invalid(with_field(PROMPT, b"params", nested(9)), "nesting depth 9 > max_depth 8", limits=Limits(max_depth=8))


def test_no_recursion_error_escapes_even_from_a_deep_call_stack() -> None:
    raw = with_field(PROMPT, b"params", nested(10_000))
    reasons = []

    def descend(n: int) -> None:
        if n:
            descend(n - 1)
        else:
            reasons.append(validate(raw))

    descend(sys.getrecursionlimit() - 60)  # what is left of the stack is far below 10,000 levels
    assert isinstance(reasons[0], Invalid) and "nesting depth 10000" in reasons[0].reason


def test_garbage_at_any_depth_is_invalid_not_an_exception() -> None:
    deep_prompt = orjson.dumps(PROMPT)[:-1] + b',"params":{"a":' + b"[" * 3000
    for raw in (b"[" * 500_000, b'{"a":' * 200_000, b"{" * 100 + b"\xff\xfe", b'"' + b"\\" * 1000,
                deep_prompt, deep_prompt + b'"unterminated \\', deep_prompt + b'"\\"' + b"{" * 2000,
                b'{"event_type":"prompt","gpu":"\\"' + b"[" * 3000):
        assert isinstance(validate(raw), Invalid)
    assert validate(None) == Invalid("no message value (NoneType)")  # type: ignore[arg-type]  (a tombstone)


# -- integers and floats ------------------------------------------------------------------
def test_token_counts_must_fit_the_uint64_columns(store) -> None:
    store(validate(orjson.dumps({**OUTPUT, "usage": {"input_tokens": 2**64 - 1, "reasoning_tokens": 2**63}})))
    invalid(with_field(OUTPUT, b"usage", b'{"input_tokens":18446744073709551616}'),
            "usage.input_tokens 18446744073709551616 out of range 0..2^64-1")
    raw = with_field(OUTPUT, b"usage", b'{"output_tokens":1000000000000000000000000000000}')
    invalid(raw, "usage.output_tokens 1.000e+30 out of range 0..2^64-1")
    invalid(orjson.dumps({**OUTPUT, "usage": {"input_tokens": 1e30}}), "input_tokens")
    invalid(orjson.dumps({**OUTPUT, "usage": {"cache_read_tokens": -1}}), "cache_read_tokens")


@pytest.mark.parametrize("field", [b"params", b"unknown_field"])
@pytest.mark.parametrize("number", [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 40])
def test_integers_the_json_columns_cannot_hold_are_invalid(field: bytes, number: bytes) -> None:
    raw = with_field(PROMPT, field, b'{"a":[1,{"b":' + number + b"}]}")
    if field == b"unknown_field":
        # The unknown-field path parses such numbers as floats, which the column holds.
        assert isinstance(validate(raw), Valid)
    else:
        invalid(raw, "in field params out of range -2^63..2^64-1")


def test_integers_at_the_edges_of_the_json_columns_are_stored(store) -> None:
    raw = with_field(PROMPT, b"params", b'{"a":[18446744073709551615,-9223372036854775808]}')
    result = validate(raw)
    assert isinstance(result, Valid), result
    store(result)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_numbers_are_invalid_wherever_they_appear(literal: bytes) -> None:
    invalid(orjson.dumps(OUTPUT)[:-1].replace(b"12.5", literal) + b"}")
    invalid(with_field({**BASE, "event_type": "eval", "eval_name": "x"}, b"score", literal))
    invalid(with_field(PROMPT, b"params", b'{"t":' + literal + b"}"))
    invalid(with_field(PROMPT, b"unknown_field", literal))


# -- sizes -------------------------------------------------------------------------------
def test_an_event_past_max_event_bytes_is_invalid_before_it_is_parsed() -> None:
    raw = orjson.dumps({**OUTPUT, "content": "x" * 1_000_000})
    invalid(raw, f"event size {len(raw)} bytes > max_event_bytes 1000000")
    assert isinstance(validate(raw, Limits(max_event_bytes=2_000_000, max_string_bytes=2_000_000)), Valid)


def test_label_fields_are_bounded_in_utf8_bytes_not_characters(store) -> None:
    invalid(orjson.dumps({**PROMPT, "workflow": "w" * 1025}), "field workflow is 1025 bytes > max_label_bytes 1024")
    invalid(orjson.dumps({**PROMPT, "model": "é" * 513}), "field model is 1026 bytes > max_label_bytes 1024")
    ok = validate(orjson.dumps({**PROMPT, "model": "é" * 512, "tenant": "t" * 1024}))
    assert isinstance(ok, Valid), ok
    store(ok)
    big_text = validate(orjson.dumps({**OUTPUT, "content": "€" * 300_000}))  # free text: max_string_bytes
    assert isinstance(big_text, Valid), big_text
    store(big_text)


def test_per_field_and_free_text_limits_reach_into_every_container() -> None:
    limits = Limits(max_string_bytes=1000, max_field_bytes={"content": 100, "tool_name": 20})
    long = "y" * 1001
    invalid(orjson.dumps({**OUTPUT, "content": "x" * 101}), "field content is 101 bytes > max_field_bytes[content] 100",
            limits=limits)
    invalid(orjson.dumps({**BASE, "event_type": "tool_call", "tool_name": "t" * 21}), "max_field_bytes[tool_name] 20",
            limits=limits)
    for event, where in [
        ({**PROMPT, "messages": [{"role": "user", "content": long}]}, "field messages.content"),
        ({**PROMPT, "tools_offered": ["a", long]}, "an item of field tools_offered"),
        ({**PROMPT, "attributes": {"k": long}}, "an entry of field attributes"),
        ({**PROMPT, "params": {"a": [{"b": long}]}}, "a string in field params"),
        ({**PROMPT, "params": {long: 1}}, "a key in field params"),
        ({**BASE, "event_type": "tool_call", "tool_name": "t", "arguments": long}, "field arguments"),
        ({**PROMPT, "gpu": {"model": long}}, "a string in field gpu"),
        ({**PROMPT, "gpu": long}, "field gpu"),
        ({**PROMPT, long: 1}, "an unknown field's name"),
    ]:
        invalid(orjson.dumps(event), where, "> max_string_bytes 1000", limits=limits)


def test_every_label_column_of_the_store_gets_the_label_limit() -> None:
    """Sort key, bloom-filter indexes and LowCardinality columns hold identifiers and labels:
    any contract string field stored there must not count as free text."""
    from llmpulse.schemas.store import migration_files

    ddl = dict(migration_files())["0001_events"].split("CREATE TABLE IF NOT EXISTS {db}.dead_letters")[0]
    labels = set(re.findall(r"^\s{4}(\w+)\s+LowCardinality\(String\)", ddl, re.M))
    labels |= set(re.findall(r"INDEX \w+ (\w+) TYPE", ddl))
    labels |= {c.strip() for c in re.search(r"ORDER BY \(([^)]*)\)", ddl).group(1).split(",")}
    limits = Limits(max_label_bytes=100)
    for etype, cls in EVENT_CLASSES.items():
        by_field = _plan(limits).by_class[cls].by_field
        for name in labels & set(cls.__struct_fields__):
            if name in by_field:  # Literal enums and event_id are bounded by the contract
                assert by_field[name] == (100, "max_label_bytes"), (etype, name)
    assert not labels & FREE_TEXT_FIELDS


# -- event time against the wall clock --------------------------------------------------------
def test_event_time_may_run_ahead_of_the_clock_by_max_future_only() -> None:
    at = orjson.dumps({**PROMPT, "ts": NOW + 300_000})
    assert isinstance(validate(at, now_ms=NOW), Valid)
    invalid(orjson.dumps({**PROMPT, "ts": NOW + 300_001}), "ahead of the clock by 5.0 min (max_future_seconds 300)",
            now_ms=NOW)
    reason = invalid(orjson.dumps({**PROMPT, "ts": "2099-01-01T00:00:00Z"}), now_ms=NOW)
    assert reason == "ts 2099-01-01T00:00:00.000Z is ahead of the clock by 26,342 days (max_future_seconds 300)"
    invalid(orjson.dumps({**PROMPT, "ts": NOW + 3_600_000}), "ahead of the clock by 60.0 min (max_future_seconds 1800)",
            limits=Limits(max_future_seconds=1800), now_ms=NOW)


def test_event_time_may_lag_the_clock_by_max_age_only() -> None:
    limits = Limits(max_age_days=90)
    assert isinstance(validate(orjson.dumps({**PROMPT, "ts": NOW - 90 * DAY}), limits, NOW), Valid)
    invalid(orjson.dumps({**PROMPT, "ts": NOW - 90 * DAY - 1}), "older than retention", "(max_age_days 90)",
            limits=limits, now_ms=NOW)
    invalid(orjson.dumps({**PROMPT, "ts": "2000-01-01T00:00:00Z"}), "ts 2000-01-01T00:00:00.000Z is older than retention: "
            "9,818 days behind the clock", limits=limits, now_ms=NOW)
    change = {"event_id": "c1", "event_type": "change", "ts": NOW - 91 * DAY, "change_kind": "config", "workflow": "w"}
    invalid(orjson.dumps(change), "older than retention", limits=limits, now_ms=NOW)
    assert isinstance(validate(orjson.dumps({**PROMPT, "ts": NOW - 3000 * DAY}), now_ms=NOW), Valid)  # max_age None


def test_without_a_clock_only_the_contracts_format_bounds_apply() -> None:
    assert isinstance(validate(orjson.dumps({**PROMPT, "ts": "2099-01-01T00:00:00Z"})), Valid)
    invalid(orjson.dumps({**PROMPT, "ts": "2100-01-02T00:00:00Z"}), "between 2000 and 2100")


def test_the_pipeline_bounds_event_time_by_the_wall_clock_and_the_retention() -> None:
    now = time.time_ns() // 1_000_000
    events = [{**PROMPT, "event_id": "now", "ts": now}, {**PROMPT, "event_id": "future", "ts": "2099-01-01T00:00:00Z"},
              {**PROMPT, "event_id": "old", "ts": now - 31 * DAY}]
    messages = [RawMessage(orjson.dumps(e), "llm.events", 0, i) for i, e in enumerate(events)]
    for replay in (False, True):  # a backtest is bounded like the stream
        pipeline = Pipeline.from_settings(Settings(retention_days=30, stages=[]), replay=replay)
        assert pipeline.limits.max_age_days == 30
        out = pipeline.run(messages)
        assert [row[0] for row in out.rows] == ["now"]
        reasons = [d.reason for d in out.dead_letters]
        assert "ahead of the clock" in reasons[0] and "older than retention" in reasons[1], reasons
    configured = Pipeline.from_settings(Settings(retention_days=30, limits=Limits(max_age_days=400)))
    assert configured.limits.max_age_days == 400


# -- configuration ----------------------------------------------------------------------------
def test_limits_are_validated_at_load(monkeypatch) -> None:
    with pytest.raises(ValidationError, match="max_dept"):
        Limits(max_dept=10)
    with pytest.raises(ValidationError, match="not string fields of the contract"):
        Limits(max_field_bytes={"contnet": 10})
    with pytest.raises(ValidationError, match="max_depth"):
        Limits(max_depth=300)  # past what the row encoder can write
    monkeypatch.setenv("LLMPULSE_LIMITS__MAX_FUTURE_SECONDS", "60")
    assert Settings().limits.max_future_seconds == 60


def test_a_copied_limits_gets_its_own_plan() -> None:
    loose = Limits(max_label_bytes=2048)
    raw = orjson.dumps({**PROMPT, "workflow": "w" * 1500})
    assert isinstance(validate(raw, loose), Valid)
    invalid(raw, "max_label_bytes 1000", limits=loose.model_copy(update={"max_label_bytes": 1000}))


# -- found by fuzzing ---------------------------------------------------------------------------
@pytest.mark.parametrize("last", [b"[1]", b"{}", b"[" * 1000 + b"]" * 1000, b"null", b'"x' + b"y" * 10_000 + b'"'])
def test_a_repeated_event_type_of_any_type_is_invalid(last: bytes) -> None:
    """The unknown-field path sees the last of repeated keys: it may be anything, even unhashable."""
    raw = orjson.dumps(PROMPT)[:-1] + b',"gpu":1,"event_type":' + last + b"}"
    reason = invalid(raw, "event_type must be one of")
    assert len(reason) < 200
