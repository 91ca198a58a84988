"""`llmpulse backtest FILE`: the stream's processors over a JSONL file, findings out.

The same Pipeline object the worker runs (validate, redact, price, detectors, policies),
fed the file's lines in file order as if they arrived from Kafka, in batches. Event time
drives every detector, so yesterday's traffic gives the findings it gave live.

With `policies:` configured, it also gives the control actions the worker would have
taken, and what each would have saved (`savings`): a second pass over the file counts the
calls that came after the action, in event time, within its scope and before it ended
(lifted or expired), that it would have refused, rerouted or held for approval, and the
dollars of the refused model calls, deciding as the SDK does (ingest/enforce.py): a halt or a
pause refuses model and tool calls, block_spend model calls, disable_tool calls of its tool,
route_model reroutes calls of its model, require_approval holds write/irreversible tool calls
(or calls of its tool) made without `approved_by`. A model call is an `output` event (it
carries the price); a halt that refused any call cut its loop short.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from llmpulse.processors.pipeline import BatchResult, Pipeline, RawMessage, detector_cost
from llmpulse.processors.validate import Invalid, validate
from llmpulse.schemas.contract import BaseEvent, Output, ToolCall
from llmpulse.schemas.controls import SCOPE_FIELDS, ControlAction
from llmpulse.schemas.findings import Finding

BATCH = 5_000


def read_messages(path: Path, topic: str = "backtest") -> Iterator[list[RawMessage]]:
    batch: list[RawMessage] = []
    with open(path, "rb") as f:
        for offset, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            batch.append(RawMessage(line, topic, 0, offset))
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


@dataclass
class Run:
    findings: list[Finding] = field(default_factory=list)
    actions: list[ControlAction] = field(default_factory=list)  # every record: new, lifted, expired
    counts: Counter = field(default_factory=Counter)


def run(pipeline: Pipeline, path: Path, progress=None) -> Run:
    """Findings, control actions and counts of rows, dead letters, findings and actions."""
    out = Run()
    try:
        for batch in read_messages(path):
            result = _run_batch(pipeline, batch)
            out.findings.extend(result.findings)
            out.actions.extend(result.actions)
            out.counts["events"] += len(result.rows)
            out.counts["dead_letters"] += len(result.dead_letters)
            if progress is not None:
                progress(len(batch))
            del result  # not kept alive into the next batch's collection
    finally:
        gc.unfreeze()  # the caller's heap as it was (tests run backtests in-process)
    at_end = pipeline.flush()  # close what is still open at the end of the file
    out.findings.extend(at_end)
    if pipeline.policies is not None:
        out.actions.extend(pipeline.policies.evaluate(at_end))
    out.counts["findings"] = len(out.findings)
    out.counts["actions"] = sum(a.state == "active" for a in out.actions)
    return out


def _run_batch(pipeline: Pipeline, batch: list[RawMessage]) -> BatchResult:
    """As the worker does (processors/runtime/worker.py): no cyclic-GC pass inside a batch.
    Before it, what earlier batches left (detector state, once their results are dropped)
    is collected and frozen, so later passes skip it."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return pipeline.run(batch)
    finally:
        gc.enable()


def backtest(pipeline: Pipeline, path: Path, progress=None) -> tuple[list[Finding], Counter]:
    """Returns the findings and counts of rows, dead letters and findings."""
    r = run(pipeline, path, progress)
    return r.findings, r.counts


# -- what the actions would have saved ------------------------------------------------------

@dataclass
class Saving:
    """What one action would have done to the calls that came after it."""

    action: ControlAction
    ended_at: int | None  # lifted or expired at (event time); None: still active at the end
    model_calls_refused: int = 0
    usd_refused: float = 0.0
    tool_calls_refused: int = 0
    model_calls_rerouted: int = 0
    tool_calls_held: int = 0  # held for an approval
    traces: set[str] = field(default_factory=set)  # traces it touched

    @property
    def loop_cut_short(self) -> bool:
        return self.action.kind == "halt_trace" and bool(self.model_calls_refused or self.tool_calls_refused)


def windows(actions: Iterable[ControlAction]) -> list[Saving]:
    """Each action once, with when it ended (its lift or expiry record, else its expires_at)."""
    started: dict[str, Saving] = {}
    for a in actions:
        if a.state == "active":
            started[a.action_id] = Saving(a, a.expires_at)
        elif a.action_id in started:
            started[a.action_id].ended_at = a.updated_at
    return list(started.values())


def _value(event: BaseEvent, name: str) -> str:
    if name == "tool":
        return getattr(event, "tool_name", "")
    return getattr(event, name, "") or ""


def _in_scope(a: ControlAction, event: BaseEvent) -> bool:
    """As the SDK matches a check (ingest/enforce.py): "" is any; `model` is the requested model."""
    for name in SCOPE_FIELDS:
        want = getattr(a, name)
        if not want:
            continue
        if name == "tool":
            if not isinstance(event, ToolCall) or event.tool_name != want:
                return False
        elif _value(event, name) != want:
            return False
    return True


def apply(s: Saving, event: BaseEvent, cost: float | None) -> None:
    """Count what the action would have done to this call (it is in the action's window)."""
    a, kind = s.action, s.action.kind
    if not _in_scope(a, event):
        return
    model_call, tool_call = isinstance(event, Output), isinstance(event, ToolCall)
    if kind in ("halt_trace", "pause_workflow", "block_spend") and model_call:
        s.model_calls_refused += 1
        s.usd_refused += cost or 0.0
    elif kind in ("halt_trace", "pause_workflow", "disable_tool") and tool_call:
        s.tool_calls_refused += 1
    elif kind == "route_model" and model_call:
        s.model_calls_rerouted += 1
    elif (kind == "require_approval" and tool_call and not event.approved_by  # type: ignore[union-attr]
          and (a.tool or event.side_effect in ("write", "irreversible"))):  # type: ignore[union-attr]
        s.tool_calls_held += 1
    else:
        return
    s.traces.add(event.trace_id)


def savings(pipeline: Pipeline, path: Path, actions: Iterable[ControlAction]) -> list[Saving]:
    """Second pass over the file: each action against the calls after it, within its window."""
    out = windows(actions)
    by_trace: dict[str, list[Saving]] = {}
    others: list[Saving] = []
    for s in out:
        (by_trace.setdefault(s.action.trace_id, []) if s.action.trace_id else others).append(s)
    if not out:
        return out
    seen: set[str] = set()  # the pipeline's dedup: an event id counts once
    now_ms = time.time_ns() // 1_000_000
    for batch in read_messages(path):
        for msg in batch:
            r = validate(msg.value, pipeline.limits, now_ms)
            if isinstance(r, Invalid) or r.event.event_id in seen:
                continue
            event = r.event
            seen.add(event.event_id)
            if not isinstance(event, (Output, ToolCall)):
                continue
            cost = None
            if isinstance(event, Output):
                price = pipeline.pricer.price(event).cost_usd if pipeline.pricer is not None else None
                cost = detector_cost(event, price)
            for s in (*by_trace.get(event.trace_id, ()), *others):
                if s.action.created_at < event.ts and (s.ended_at is None or event.ts < s.ended_at):
                    apply(s, event, cost)
    return out


def summarize(items: list[Saving]) -> list[list]:
    """Per policy and kind: actions, loops cut short, calls and dollars refused, rerouted, held."""
    rows: dict[tuple[str, str, str], list] = {}
    for s in items:
        a = s.action
        r = rows.setdefault((a.policy or a.actor, a.kind, a.mode), [0, 0, 0, 0.0, 0, 0, 0])
        r[0] += 1
        r[1] += s.loop_cut_short
        r[2] += s.model_calls_refused
        r[3] += s.usd_refused
        r[4] += s.tool_calls_refused
        r[5] += s.model_calls_rerouted
        r[6] += s.tool_calls_held
    return [[*k, v[0], v[1], v[2], round(v[3], 4), v[4], v[5], v[6]] for k, v in sorted(rows.items())]


SUMMARY_COLUMNS = ["policy", "action", "mode", "actions", "loops cut short", "model calls refused", "usd refused",
                   "tool calls refused", "calls rerouted", "tool calls held for approval"]
