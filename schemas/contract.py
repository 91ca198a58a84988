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
EVENT_TYPES = ("prompt", "tool_call", "output", "eval", "change")

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
    change_kind: Literal["model_swap", "prompt_edit", "config", "rollback"]
    description: str = ""
    from_value: str = ""
    to_value: str = ""
    actor: str = ""

    def __post_init__(self) -> None:
        # A change is a deploy marker, not part of a trace; `workflow` names the
        # affected workflow and may be empty for a fleet-wide change.
        if isinstance(self.ts, datetime):
            self.ts = int(self.ts.astimezone(timezone.utc).timestamp() * 1000)
        if not MIN_TS_MS <= self.ts <= MAX_TS_MS:
            raise ValueError(f"ts {self.ts} is not epoch milliseconds between 2000 and 2100")


Event = Union[Prompt, ToolCall, Output, Eval, Change]
EVENT_CLASSES: dict[str, type[BaseEvent]] = {
    "prompt": Prompt,
    "tool_call": ToolCall,
    "output": Output,
    "eval": Eval,
    "change": Change,
}

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
