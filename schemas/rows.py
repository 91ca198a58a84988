"""Events <-> ClickHouse rows, by column name, in one place. Pure: no ClickHouse client here.

Every table's insert columns live in this module; the DDL in `migrations/` is checked
against them by tests/unit/test_contract.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from llmpulse.schemas.contract import EVENT_CLASSES, BaseEvent
from llmpulse.schemas.controls import ControlAction
from llmpulse.schemas.findings import Finding

# -- events -> rows -------------------------------------------------------------
# Column order of the insert; every contract field maps to one column (checked by a test).
EVENT_COLUMNS = [
    "event_id", "event_type", "ts", "schema_version", "trace_id", "span_id", "parent_span_id",
    "tenant", "app", "workflow", "environment", "user_id", "session_id", "provider", "model",
    "prompt_version", "attributes",
    "messages", "tools_offered", "params",
    "tool_name", "tool_call_id", "arguments", "status", "duration_ms", "result", "side_effect", "approved_by",
    "finish_reason", "response_model", "content", "latency_ms", "ttft_ms", "error_type",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd",
    "price_usd", "price_source", "price_version",
    "eval_name", "score", "passed", "evaluator", "target_span_id", "comment",
    "change_kind", "description", "from_value", "to_value", "actor", "gate_result", "gate_id", "retention_days",
    "decision", "checked", "control_kind", "control_mode", "action_id", "route_to", "fallback", "reason",
    "decision_count", "last_decision_ts",
    "extra", "kafka_topic", "kafka_partition", "kafka_offset",
]
USAGE_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
_JSON_COLUMNS = {"messages", "params", "arguments"}
_DEFAULTS: dict[str, Any] = {c: "" for c in EVENT_COLUMNS}
_DEFAULTS.update({"attributes": {}, "tools_offered": [], "duration_ms": None, "latency_ms": None,
                  "ttft_ms": None, "cost_usd": None, "price_usd": None, "score": None, "passed": None,
                  "retention_days": 0,
                  "decision_count": 0, "last_decision_ts": None,
                  **{c: 0 for c in USAGE_COLUMNS}})
# Per event type: which contract fields it carries, in EVENT_COLUMNS positions.
_FIELDS_BY_TYPE = {
    name: [(EVENT_COLUMNS.index(f), f) for f in cls.__struct_fields__ if f in EVENT_COLUMNS]
    for name, cls in EVENT_CLASSES.items()
}
_TEMPLATE = [_DEFAULTS[c] for c in EVENT_COLUMNS]
_I_TOPIC = EVENT_COLUMNS.index("kafka_topic")
_encode_structs = msgspec.json.Encoder().encode  # prompt messages: what orjson with to_builtins writes, 2x faster


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=_builtins).decode()


def _row_builder(etype: str) -> Any:
    """One function per event type that returns the whole row as one list display: the
    worker builds a row per event, and a template copy plus a loop of setattr-like
    assignments cost three times as much (bench_worker's spine). Generated from
    EVENT_COLUMNS and the contract, so the two cannot drift apart."""
    fields = dict((name, i) for i, name in _FIELDS_BY_TYPE[etype])
    cells = []
    for i, column in enumerate(EVENT_COLUMNS):
        if column == "event_type":
            cells.append(repr(etype))
        elif column in fields:
            if column == "messages":
                cells.append("_encode_structs(e.messages).decode()")
            elif column in _JSON_COLUMNS:
                cells.append(f"_json_text(e.{column})")
            else:
                cells.append(f"e.{column}")
        elif column in USAGE_COLUMNS and "usage" in EVENT_CLASSES[etype].__struct_fields__:
            cells.append(f"(u.{column} if u is not None else 0)")
        elif column == "extra":
            cells.append("(extra if extra.__class__ is str else orjson.dumps(extra).decode()) if extra else ''")
        elif column in ("price_usd", "price_source", "price_version"):
            k = ("price_usd", "price_source", "price_version").index(column)
            cells.append(f"(price[{k}] if price is not None else {_DEFAULTS[column]!r})")
        elif column in ("kafka_topic", "kafka_partition", "kafka_offset"):
            cells.append(column.removeprefix("kafka_"))
        elif column == "retention_days":
            cells.append("retention_days or 0")
        else:
            cells.append(f"_D{i}")
    body = ",\n        ".join(cells)
    src = (f"def row(e, extra, topic, partition, offset, price, retention_days):\n"
           f"    u = getattr(e, 'usage', None)\n"
           f"    return [\n        {body},\n    ]\n")
    env = {"_encode_structs": _encode_structs, "_json_text": _json_text, "orjson": orjson,
           **{f"_D{i}": v for i, v in enumerate(_TEMPLATE)}}
    exec(compile(src, f"<event_row {etype}>", "exec"), env)
    return env["row"]


_BUILDERS = {etype: _row_builder(etype) for etype in EVENT_CLASSES}


def event_row(event: BaseEvent, extra: dict | str, topic: str, partition: int, offset: int,
              price: tuple[float | None, str, str] | None = None, retention_days: int = 0) -> list:
    """One insert row; `ts` stays epoch ms (DateTime64(3) takes integer ticks).

    `extra` is the unknown fields (dict, or already JSON); `price` is (usd, source, version);
    `retention_days` the workflow's own row TTL (0: the table's, processors/governance.py).
    """
    return _BUILDERS[event.event_type](event, extra, topic, partition, offset, price, retention_days)


def row_source(row: list) -> tuple[str, int, int]:
    """The Kafka (topic, partition, offset) an event row came from."""
    return row[_I_TOPIC], row[_I_TOPIC + 1], row[_I_TOPIC + 2]


def _builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


DEAD_LETTER_COLUMNS = ["received_at", "reason", "size_bytes", "kafka_topic", "kafka_partition", "kafka_offset"]



# -- rows -> events (warming detectors up from what is stored) ---------------------
def row_to_event(row: dict[str, Any]) -> BaseEvent:
    """Rebuild the (redacted) contract event a stored row came from."""
    cls = EVENT_CLASSES[row["event_type"]]
    fields: dict[str, Any] = {"event_type": row["event_type"], "ts": _epoch_ms(row["ts"])}
    for name in cls.__struct_fields__:
        if name in ("ts", "usage") or name not in row:
            continue
        value = row[name]
        if name == "last_decision_ts" and value is not None:
            value = _epoch_ms(value)
        if name in _JSON_COLUMNS and isinstance(value, str):
            value = orjson.loads(value) if value[:1] in ("{", "[") else value
        if value is not None and value != "" or name in ("messages",):
            fields[name] = value
    if "usage" in cls.__struct_fields__ and any(row.get(c) for c in USAGE_COLUMNS):
        fields["usage"] = {c: row[c] for c in USAGE_COLUMNS if row.get(c)}
    if isinstance(fields.get("messages"), str):
        fields.pop("messages")
    return msgspec.convert(fields, cls)


def _epoch_ms(ts: Any) -> int:
    from datetime import timezone

    if isinstance(ts, int):
        return ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return int(ts.timestamp() * 1000)


# -- findings -> rows -------------------------------------------------------------
FINDING_COLUMNS = [
    "finding_id", "detected_at", "event_ts", "kind", "severity", "status", "tenant", "workflow", "model",
    "trace_id", "title", "value", "threshold", "evidence", "wasted_usd",
]


def finding_row(f: Finding) -> list:
    return [f.finding_id, f.detected_at, f.event_ts, f.kind, f.severity, f.status, f.tenant, f.workflow, f.model,
            f.trace_id, f.title, f.value, f.threshold, orjson.dumps(f.evidence).decode(), f.wasted_usd]


# -- control actions -> rows (every action, lift and expiry is one row) ---------------
CONTROL_ACTION_COLUMNS = [
    "action_id", "kind", "state", "mode", "source", "actor", "finding_id", "policy", "reason",
    "tenant", "workflow", "model", "tool", "user_id", "trace_id", "route_to",
    "created_at", "updated_at", "expires_at", "ended_by", "ended_reason",
]


def control_action_row(a: ControlAction) -> list:
    return [getattr(a, c) for c in CONTROL_ACTION_COLUMNS]
