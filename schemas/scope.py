"""The repartition record: what the per-trace stage hands the scope stage (`llm.scope`).

With several workers (README "Scaling out"), `llm.events` is split by trace; budgets,
anomalies, governance and change/eval regressions need every call of a scope in one place.
The trace stage publishes one `ScopeRecord` per stored event, keyed by the event's scope
(`scope_key`: the tenant), its findings for the policies, plus one progress record per scope partition and batch: the scope stage's
watermark is the slowest *source* partition's event time, as on a single worker, so a
record that took another route through Kafka is never "late".

msgpack (msgspec), array-like: ~20 bytes for an event the scope detectors only clock
(tool calls, decisions, prompts without a model), the event itself without its free text
for those they read. Detectors receive the same contract types as on a single worker.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import msgspec

from llmpulse.schemas.contract import BaseEvent, Event
from llmpulse.schemas.findings import Finding

# Event kinds the scope detectors read whole (AnomalyDetector.EVENT_TYPES, budgets: output,
# governance: change and output); others travel as their event time only.
READ_WHOLE = frozenset({"output", "prompt", "eval", "change"})
# Free text no scope detector reads: left out of the record (it is in the row already).
_DROPPED = {"messages": [], "content": "", "params": {}, "tools_offered": [], "comment": "",
            "attributes": {}, "description": ""}


class ScopeRecord(msgspec.Struct, array_like=True, omit_defaults=True):
    source: int  # partition of the events topic the event came from
    ts: int  # event time (ms); for a progress record: the source partition's highest so far
    event_type: str = ""  # "" = progress record
    event_id: str = ""  # orders events of equal time as on a single worker
    event: Union[Event, None] = None  # READ_WHOLE kinds only
    cost: Union[float, None] = None  # the cost detectors count (pipeline.detector_cost)
    # A finding of the trace stage (loops, contracts) for the scope stage's policies; such a
    # record says nothing of its source's progress.
    finding: Union[Finding, None] = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ScopeRecord)


def record_for(event: BaseEvent, source: int, cost: float | None) -> ScopeRecord:
    if event.event_type not in READ_WHOLE:
        return ScopeRecord(source, event.ts, event.event_type, event.event_id)
    fields = {k: v for k, v in _DROPPED.items() if k in event.__struct_fields__}
    return ScopeRecord(source, event.ts, event.event_type, event.event_id,
                       msgspec.structs.replace(event, **fields), cost)


class Clocked(NamedTuple):
    """An event the scope detectors only clock: what `Pipeline.detect` feeds them of it."""

    ts: int
    event_id: str
    event_type: str


def detector_input(record: ScopeRecord) -> BaseEvent | Clocked | None:
    """What the scope stage feeds the detectors (None: a progress record)."""
    if record.event is not None:
        return record.event
    return Clocked(record.ts, record.event_id, record.event_type) if record.event_type else None


def forwarded(finding: Finding) -> ScopeRecord:
    return ScopeRecord(-1, finding.event_ts, finding=finding)


def progress(source: int, ts: int) -> ScopeRecord:
    return ScopeRecord(source, ts)


def encode(record: ScopeRecord) -> bytes:
    return _encoder.encode(record)


def decode(raw: bytes) -> ScopeRecord:
    return _decoder.decode(raw)


def scope_key(event: BaseEvent | Finding, by_tenant: bool) -> str:
    """The record's Kafka key: the tenant. Everything scope-keyed is within one tenant: anomaly
    keys (tenant, workflow, model) and their grouping (a tenant gone silent as a whole is one
    traffic_drop), changes and their attribution (tenant, workflow; a change without a workflow
    covers the tenant's), eval streams, governance's keys, budgets naming a tenant. A budget
    over several tenants needs all spend in one place: `by_tenant` False puts every record
    under one key (the scope stage then runs on one partition). Never empty: librdkafka
    spreads empty keys at random."""
    return (event.tenant or "*") if by_tenant else "*"


class ScopeState(msgspec.Struct, array_like=True):
    """A scope partition's state beyond the replay window, on the compacted state topic (key: the
    scope partition), committed in the scope stage's transaction with its offsets: `offset` is
    the scope partition's committed offset it belongs to. Budgets only: their spend covers a day
    or a month, the detectors' state rebuilds from the replay."""

    offset: int
    budgets: list[tuple[str, int, float, int, bool, Union[int, None], Union[int, None]]]


_state_decoder = msgspec.msgpack.Decoder(ScopeState)


def encode_state(state: ScopeState) -> bytes:
    return _encoder.encode(state)


def decode_state(raw: bytes) -> ScopeState:
    return _state_decoder.decode(raw)
