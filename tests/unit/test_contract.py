"""The contract is the single source of truth: schema file, DDL and row mapping derive from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import orjson
import pytest

from llmpulse.processors.validate import Invalid, Valid, validate
from llmpulse.schemas.contract import EVENT_CLASSES, Usage, json_schema
from llmpulse.schemas.rows import EVENT_COLUMNS, USAGE_COLUMNS, event_row
from llmpulse.schemas.store import migration_files
from llmpulse.traffic import MALFORMED, TrafficGenerator

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BASE = {"event_id": "e1", "ts": 1_795_000_000_000, "trace_id": "t1", "workflow": "support-bot"}


def test_committed_json_schema_matches_the_contract() -> None:
    committed = json.loads((SCHEMAS / "event.v1.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), "regenerate schemas/event.v1.schema.json"


def test_every_contract_field_has_a_column_in_the_ddl() -> None:
    migrations = dict(migration_files())
    ddl = migrations["0001_events"].split("CREATE TABLE IF NOT EXISTS {db}.dead_letters")[0]
    columns = set(re.findall(r"^\s{4}(\w+)\s+\S", ddl, re.M))
    for sql in migrations.values():
        columns |= set(re.findall(r"ALTER TABLE \{db\}\.events ADD COLUMN IF NOT EXISTS (\w+)", sql))
    fields = {f for cls in EVENT_CLASSES.values() for f in cls.__struct_fields__} - {"usage"}
    fields |= set(Usage.__struct_fields__) | {"event_type"}
    assert fields <= columns, fields - columns
    assert set(EVENT_COLUMNS) <= columns
    assert fields <= set(EVENT_COLUMNS)


def test_generated_traffic_validates_against_decoder_and_json_schema() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    for event in TrafficGenerator(seed=3).events(50):
        assert isinstance(validate(orjson.dumps(event)), Valid), event
        validator.validate(event)


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_messages_are_invalid_with_a_reason(raw: bytes) -> None:
    result = validate(raw)
    assert isinstance(result, Invalid) and result.reason


@pytest.mark.parametrize(
    "patch, reason",
    [
        ({"ts": "2026-11-28T10:00:00"}, "timezone"),
        ({"ts": 1_795_000_000}, "epoch milliseconds"),  # seconds, not ms
        ({"trace_id": ""}, "trace_id is required"),
        ({"status": "great"}, "status"),
        ({"latency_ms": "fast"}, "latency_ms"),
        ({"event_id": "x" * 65}, "event_id"),
        ({"usage": {"input_tokens": -1}}, "input_tokens"),
    ],
)
def test_schema_violations_name_the_problem(patch: dict, reason: str) -> None:
    event = {**BASE, "event_type": "output", "status": "ok", "latency_ms": 10.0, **patch}
    result = validate(orjson.dumps(event))
    assert isinstance(result, Invalid)
    assert reason in result.reason


def test_rfc3339_with_offset_and_epoch_ms_give_the_same_event_time() -> None:
    a = validate(orjson.dumps({**BASE, "event_type": "prompt", "ts": "2026-11-18T09:46:40+01:00"}))
    b = validate(orjson.dumps({**BASE, "event_type": "prompt", "ts": 1_794_991_600_000}))
    assert isinstance(a, Valid) and isinstance(b, Valid)
    assert a.event.ts == b.event.ts == 1_794_991_600_000


def test_unknown_fields_are_kept_not_rejected() -> None:
    event = {**BASE, "event_type": "output", "status": "ok", "latency_ms": 1.0, "gpu": "h100",
             "usage": {"input_tokens": 5, "audio_tokens": 2}, "messages": [{"role": "user", "content": "x", "name": "bob"}]}
    result = validate(orjson.dumps(event))
    assert isinstance(result, Valid)
    assert result.extra == {"gpu": "h100", "usage.audio_tokens": 2, "messages": [{"role": "user", "content": "x", "name": "bob"}]}
    assert result.event.usage.input_tokens == 5


def test_change_events_need_no_trace() -> None:
    result = validate(orjson.dumps({"event_id": "c1", "event_type": "change", "ts": BASE["ts"],
                                    "change_kind": "model_swap", "workflow": "support-bot"}))
    assert isinstance(result, Valid)


def test_row_mapping_puts_usage_and_json_fields_in_their_columns() -> None:
    event = {**BASE, "event_type": "tool_call", "tool_name": "search", "arguments": {"q": "refund"}, "status": "error"}
    row = event_row(validate(orjson.dumps(event)).event, {}, "llm.events", 2, 41)
    named = dict(zip(EVENT_COLUMNS, row))
    assert named["arguments"] == '{"q":"refund"}' and named["status"] == "error"
    assert (named["kafka_topic"], named["kafka_partition"], named["kafka_offset"]) == ("llm.events", 2, 41)
    out = {**BASE, "event_type": "output", "status": "ok", "latency_ms": 3.0,
           "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_tokens": 60, "reasoning_tokens": 5}}
    named = dict(zip(EVENT_COLUMNS, event_row(validate(orjson.dumps(out)).event, {}, "t", 0, 0)))
    assert [named[c] for c in USAGE_COLUMNS] == [100, 20, 60, 0, 5]


def test_stored_rows_turn_back_into_the_same_events(chdb_client) -> None:
    from llmpulse.schemas.rows import row_to_event
    from llmpulse.schemas.store import migrate

    client = chdb_client
    migrate(client, "rt", 3650)  # the generator's event times must outlive the TTL
    events = [validate(orjson.dumps(e)).event for e in TrafficGenerator(seed=4).events(20)]
    client.insert("rt.events", [event_row(e, {}, "t", 0, i) for i, e in enumerate(events)], column_names=EVENT_COLUMNS)
    stored = client.query("SELECT * FROM rt.events ORDER BY kafka_offset").named_results()
    assert [row_to_event(r) for r in stored] == events
