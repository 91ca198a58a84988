"""The processing pipeline over a batch of raw messages; no I/O, same code in stream and backtest.

raw bytes -> validate -> (stages: redact, price, detect ...) -> rows for ClickHouse,
dead letters with reasons, findings. State lives in the stage objects, explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Sequence

from llmpulse.processors.validate import Invalid, validate
from llmpulse.schemas.contract import BaseEvent
from llmpulse.schemas.findings import Finding
from llmpulse.schemas.store import event_row


class RawMessage(NamedTuple):
    value: bytes
    topic: str
    partition: int
    offset: int


class DeadLetter(NamedTuple):
    message: RawMessage
    reason: str


class Stage(Protocol):
    """A processor over valid events, in arrival order. Returns findings (possibly none)."""

    def process(self, event: BaseEvent, row: list) -> list[Finding]: ...


@dataclass
class BatchResult:
    rows: list[list] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Pipeline:
    stages: Sequence[Stage] = ()

    def run(self, messages: Sequence[RawMessage]) -> BatchResult:
        out = BatchResult()
        for msg in messages:
            result = validate(msg.value)
            if isinstance(result, Invalid):
                out.dead_letters.append(DeadLetter(msg, result.reason))
                continue
            row = event_row(result.event, result.extra, msg.topic, msg.partition, msg.offset)
            for stage in self.stages:
                out.findings.extend(stage.process(result.event, row))
            out.rows.append(row)
        return out
