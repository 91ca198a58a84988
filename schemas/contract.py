"""Event contract v1: the single source of truth for the wire format.

The JSON Schema (`event.v1.schema.json`) is generated from these types and the
ClickHouse DDL is checked against them by a test. Field names follow the
OpenTelemetry GenAI conventions where one exists.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal, Union

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION = "1"
EVENT_TYPES = ("prompt", "tool_call", "output", "eval", "change", "decision")

# Event time outside this window is a producer bug (seconds instead of ms, a zero clock).
MIN_TS_MS = 946_684_800_000  # 2000-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01

EventId = Annotated[str, Meta(min_length=1, max_length=64)]
AwareDatetime = Annotated[datetime, Meta(tz=True)]
NonNegInt = Annotated[int, Meta(ge=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]


class Message(Struct, forbid_unknown_fields=True, omit_defaults=True):
    role: str
    content: str = ""


class Usage(Struct, forbid_unknown_fields=True, omit_defaults=True):
    input_tokens: NonNegInt = 0  # total, cached included
    output_tokens: NonNegInt = 0  # reasoning included
    cache_read_tokens: NonNegInt = 0
    cache_write_tokens: NonNegInt = 0
    reasoning_tokens: NonNegInt = 0


class BaseEvent(
    Struct,
    tag_field="event_type",
    forbid_unknown_fields=True,
    omit_defaults=True,
    kw_only=True,
):
    event_id: EventId
    ts: Union[int, AwareDatetime]
    schema_version: Literal["1"] = SCHEMA_VERSION
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str = ""
    tenant: str = "default"
    app: str = ""
    workflow: str = ""
    environment: str = ""
    user_id: str = ""
    session_id: str = ""
    provider: str = ""
    model: str = ""
    prompt_version: str = ""
    attributes: dict[str, str] = {}

    def __post_init__(self) -> None:
        self._normalise_ts()
        if not self.trace_id:
            raise ValueError(f"trace_id is required on {self.event_type} events")
        if not self.workflow:
            raise ValueError(f"workflow is required on {self.event_type} events")

    def _normalise_ts(self) -> None:
        # Event time becomes epoch milliseconds once, at the edge.
        if isinstance(self.ts, datetime):
            self.ts = int(self.ts.astimezone(timezone.utc).timestamp() * 1000)
        if not MIN_TS_MS <= self.ts <= MAX_TS_MS:
            raise ValueError(f"ts {self.ts} is not epoch milliseconds between 2000 and 2100")

    @property
    def event_type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class Prompt(BaseEvent, tag="prompt"):
    messages: list[Message] = []
    tools_offered: list[str] = []
    params: dict = {}


class ToolCall(BaseEvent, tag="tool_call"):
    tool_name: Annotated[str, Meta(min_length=1)]
    tool_call_id: str = ""
    arguments: Union[dict, str] = {}
    status: Literal["ok", "error", "timeout"] = "ok"
    duration_ms: Union[NonNegFloat, None] = None
    result: str = ""
    side_effect: Literal["", "read", "write", "irreversible"] = ""
    approved_by: str = ""


class Output(BaseEvent, tag="output"):
    status: Literal["ok", "error", "refusal", "timeout", "filtered"]
    latency_ms: NonNegFloat
    finish_reason: str = ""
    response_model: str = ""
    content: str = ""
    ttft_ms: Union[NonNegFloat, None] = None
    error_type: str = ""
    usage: Union[Usage, None] = None
    cost_usd: Union[NonNegFloat, None] = None


class Eval(BaseEvent, tag="eval"):
    eval_name: Annotated[str, Meta(min_length=1)]
    score: Union[float, None] = None
    passed: Union[bool, None] = None
    evaluator: str = ""
    target_span_id: str = ""
    comment: str = ""


class Change(BaseEvent, tag="change"):
    """A deploy marker. `eval_gate` is not a change but the decision of `llmpulse gate` on one
    (candidate in `to_value`, baseline in `from_value`, its result in `gate_result`); a change
    that went live after a gate names it in `gate_id` (processors/governance.py checks both)."""

    change_kind: Literal["model_swap", "prompt_edit", "config", "rollback", "tool_permission", "eval_gate"]
    description: str = ""
    from_value: str = ""
    to_value: str = ""
    actor: str = ""
    approved_by: str = ""  # who approved it (a person; several separated by commas)
    gate_result: Literal["", "pass", "fail", "insufficient"] = ""
    gate_id: str = ""  # event_id of the eval_gate decision this change went live on

    def __post_init__(self) -> None:
        # A change is a deploy marker, not part of a trace; `workflow` names the
        # affected workflow and may be empty for a fleet-wide change.
        if isinstance(self.ts, datetime):
            self.ts = int(self.ts.astimezone(timezone.utc).timestamp() * 1000)
        if not MIN_TS_MS <= self.ts <= MAX_TS_MS:
            raise ValueError(f"ts {self.ts} is not epoch milliseconds between 2000 and 2100")


class Decision(BaseEvent, tag="decision"):
    """A kill-switch decision the SDK enforced (or, in dry_run, would have): a model or tool
    call refused, routed or held for approval (ingest/enforce.py; actions: schemas/controls.py).
    Repeats of one decision within the SDK's aggregation window are one event: `ts` is the
    first, `last_decision_ts` the last, `decision_count` how many."""

    decision: Literal["deny", "route", "needs_approval"]
    checked: Literal["model", "tool"]
    control_kind: str  # the action's kind (schemas/controls.py KINDS), or "fail_closed"
    control_mode: Literal["enforce", "dry_run"] = "enforce"
    action_id: str = ""  # joins control_actions; empty for fail_closed
    tool_name: str = ""
    side_effect: Literal["", "read", "write", "irreversible"] = ""
    route_to: str = ""  # the model used instead (route, or the contract's fallback model)
    fallback: Literal["", "model", "reply"] = ""  # the contract's fallback the SDK handed the app
    reason: str = ""
    decision_count: Annotated[int, Meta(ge=1, le=2**32 - 1)] = 1  # UInt32 in the store
    last_decision_ts: Union[Annotated[int, Meta(ge=MIN_TS_MS, le=MAX_TS_MS)], None] = None


Event = Union[Prompt, ToolCall, Output, Eval, Change, Decision]
EVENT_CLASSES: dict[str, type[BaseEvent]] = {
    "prompt": Prompt,
    "tool_call": ToolCall,
    "output": Output,
    "eval": Eval,
    "change": Change,
    "decision": Decision,
}

# -- Redaction scope: which strings may carry a secret, said once ------------------------------
# The SDK hook (ingest/redaction_hook.py) and the worker (processors/redaction.py) both walk
# FREE_TEXT. It is derived from the types above: every field whose type can hold a str (plain,
# in a list, in a dict, or in a nested struct such as Message), minus Literal enums (the decoder
# admits only their words) and NOT_SCANNED. A new str field is scanned as text unless it is
# named below.
#
# Ids the SDK or a tracer generates, which key deduplication (event_id), joins (trace, span,
# tool call) and the redaction scope itself (tenant picks the policy and the hash key): a
# placeholder there would merge distinct events or traces.
NOT_SCANNED = frozenset(
    {"event_id", "trace_id", "span_id", "parent_span_id", "target_span_id", "tool_call_id", "tenant", "gate_id", "action_id"}
)
# Names an app chooses (who, which model, tool, prompt or evaluator): scanned for secrets, since
# a token pasted as a user id must not pass, but not under the PII policy: an e-mail as user_id
# is the app's deliberate key, and masking it would merge every user into one "[EMAIL]".
# Pseudonymise such ids in the app (e.g. an HMAC) if they must not be stored.
NAME_FIELDS = frozenset(
    {"app", "workflow", "environment", "user_id", "session_id", "provider", "model", "prompt_version",
     "response_model", "finish_reason", "tool_name", "tools_offered", "approved_by", "eval_name",
     "evaluator", "actor", "role", "control_kind", "route_to"}
)
Scan = Literal["text", "name"]  # text: secrets and PII per policy; name: secrets only
# Per field: how to scan it, or for a list of structs (prompt messages) how to scan each subfield.
FieldScan = Union[Scan, dict[str, Scan]]


def _holds_str(t: msgspec.inspect.Type) -> bool:
    mi = msgspec.inspect
    if isinstance(t, (mi.StrType, mi.AnyType, mi.DictType)):
        return True
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return _holds_str(t.item_type)
    if isinstance(t, mi.UnionType):
        return any(_holds_str(u) for u in t.types)
    if isinstance(t, mi.StructType):
        return any(_holds_str(f.type) for f in t.fields)
    return False  # numbers, bools, datetimes, Literal enums


def _scan_fields(cls: type) -> dict[str, FieldScan]:
    out: dict[str, FieldScan] = {}
    for f in msgspec.inspect.type_info(cls).fields:
        if f.name in NOT_SCANNED or not _holds_str(f.type):
            continue
        t = f.type
        item = t.item_type if isinstance(t, msgspec.inspect.ListType) else None
        if isinstance(item, msgspec.inspect.StructType):
            out[f.name] = _scan_fields(item.cls)  # type: ignore[assignment]
        else:
            out[f.name] = "name" if f.name in NAME_FIELDS else "text"
    return out


FREE_TEXT: dict[str, dict[str, FieldScan]] = {name: _scan_fields(cls) for name, cls in EVENT_CLASSES.items()}

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def decode_event(raw: bytes) -> Event:
    """Strict decode; raises msgspec errors (unknown fields included)."""
    return _decoder.decode(raw)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def json_schema() -> dict:
    """JSON Schema of the v1 contract, as committed in event.v1.schema.json."""
    return msgspec.json.schema(Event)
