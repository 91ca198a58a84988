"""Workflow contracts: the authority of a workflow, checked per trace in event time.

Config (`contracts:` in the llmpulse YAML, workflow -> contract)::

    contracts:
      support-bot:
        allowed_tools: [search_kb, create_ticket, issue_refund]
        irreversible_tools: [issue_refund]   # must carry approved_by
        max_steps: 25                        # prompt + tool_call events per trace
        max_cost_usd: 2.0                    # per trace
        max_tokens: 200000                   # per trace, input + output
        output_schema: {type: object, required: [answer]}   # JSON Schema, optional
        owner: support-team@acme.example     # kill switches: who answers for it
        approvers: [alice, bob]              # who may approve its write/irreversible calls
        fallback: {model: gpt-4o-mini, reply: "Sorry, a person will get back to you."}
        fail_mode: closed                    # controls view stale: refuse (default: open)
      "*":                                   # optional: contract of undeclared workflows
        max_steps: 40

Defaults. A field a contract leaves out takes the built-in default; `null` disables a
limit. A workflow without a contract gets the `"*"` contract, else all defaults:

    allowed_tools       any tool
    irreversible_tools  none by name (a tool call with side_effect "irreversible" always
                        needs approved_by, contract or not)
    max_steps           50
    max_cost_usd        5.0
    max_tokens          1_000_000
    output_schema       none
    owner, approvers    none (approvers empty: anyone may approve)
    fallback            none
    fail_mode           open

The last four are read by the SDK's kill switches (ingest/enforce.py): the fallback the app
gets on a deny (the model to use instead, or a canned reply), and whether its checks refuse
(`closed`) or allow (`open`) while the SDK's view of `llm.controls` is stale.

Findings:
    unauthorized_tool               critical  once per trace and tool
    unapproved_irreversible_action  critical  once per tool call (each one is an act)
    runaway_steps / runaway_cost /  high      once per trace, at the event that crossed
    runaway_tokens                            the limit, wasted_usd = trace spend so far
    output_schema_violation         medium    once per output event (content that is JSON)

Out of order within a trace: whether a limit is crossed depends only on the totals, so a
runaway fires exactly once whatever the order. The crossing event is found in event time
among the events seen: the (max_steps+1)-th step by (ts, event_id), the output where the
time-ordered running cost or token sum passes the limit; wasted_usd is the spend of the
outputs that have arrived, up to that event's time. Duplicate deliveries (same event_id) count once.

State is bounded: a trace is forgotten after `idle_ms` of event time without events
(watermark = newest event time seen) and the least recently active goes beyond
`max_traces`. A forgotten trace that resumes starts from zero; its finding ids are the
same, so ClickHouse still keeps one row. Per-trace detail (hashes of the event ids
counted, outputs) stops at `max_events_per_trace`; past it a redelivery is counted
again and the arriving output is taken as the crossing one.
"""

from __future__ import annotations

import bisect
import json
import sys
from array import array
from collections import OrderedDict
from typing import Any

import jsonschema
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, model_validator

from llmpulse.schemas.findings import Finding, finding_id

DEFAULT_MAX_STEPS = 50
DEFAULT_MAX_COST_USD = 5.0
DEFAULT_MAX_TOKENS = 1_000_000
DEFAULT_KEY = "*"
MAX_ERROR_CHARS = 200


# --- configuration -------------------------------------------------------------------


class Fallback(BaseModel):
    """What a workflow does when a call is denied: another model, or a canned reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = ""
    reply: str = ""

    @model_validator(mode="after")
    def _some(self) -> "Fallback":
        if not self.model and not self.reply:
            raise ValueError("fallback needs a model or a reply")
        return self


class WorkflowContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_tools: tuple[str, ...] | None = None  # None: any tool
    irreversible_tools: tuple[str, ...] = ()
    max_steps: PositiveInt | None = DEFAULT_MAX_STEPS
    max_cost_usd: PositiveFloat | None = DEFAULT_MAX_COST_USD
    max_tokens: PositiveInt | None = DEFAULT_MAX_TOKENS
    output_schema: dict[str, Any] | None = None
    owner: str = ""
    approvers: tuple[str, ...] = ()
    fallback: Fallback | None = None
    fail_mode: Literal["open", "closed"] = "open"

    @model_validator(mode="after")
    def _check(self) -> WorkflowContract:
        # Fail at start-up, not on the first output: a broken schema or a contract that
        # names an irreversible tool it does not allow.
        if self.output_schema is not None:
            try:
                jsonschema.validators.validator_for(self.output_schema).check_schema(self.output_schema)
            except jsonschema.exceptions.SchemaError as exc:
                raise ValueError(f"output_schema is not a valid JSON Schema: {exc.message}") from None
        if self.allowed_tools is not None:
            missing = sorted(set(self.irreversible_tools) - set(self.allowed_tools))
            if missing:
                raise ValueError(f"irreversible_tools not in allowed_tools: {missing}")
        return self


class ContractsConfig(BaseModel):
    """The `contracts:` section: workflow name -> contract; `"*"` for the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contracts: dict[str, WorkflowContract] = {}
    default: WorkflowContract = WorkflowContract()

    def for_workflow(self, workflow: str) -> WorkflowContract:
        return self.contracts.get(workflow, self.default)

    @classmethod
    def from_config(cls, raw: dict[str, dict[str, Any]] | None) -> ContractsConfig:
        raw = dict(raw or {})
        default = raw.pop(DEFAULT_KEY, None)
        return cls(
            contracts={wf: WorkflowContract.model_validate(c or {}) for wf, c in raw.items()},
            default=WorkflowContract.model_validate(default or {}),
        )


class _Compiled:
    """A contract ready for the hot path: sets, and a built schema validator."""

    __slots__ = ("allowed", "irreversible", "max_steps", "max_cost", "max_tokens", "validator")

    def __init__(self, c: WorkflowContract):
        self.allowed = None if c.allowed_tools is None else frozenset(c.allowed_tools)
        self.irreversible = frozenset(c.irreversible_tools)
        self.max_steps, self.max_cost, self.max_tokens = c.max_steps, c.max_cost_usd, c.max_tokens
        self.validator = None
        if c.output_schema is not None:
            self.validator = jsonschema.validators.validator_for(c.output_schema)(c.output_schema)


# --- per-trace state -------------------------------------------------------------------


class _Trace:
    __slots__ = ("tenant", "workflow", "trace_id", "last_ts", "ids", "top_step", "n_steps",
                 "outputs", "cost", "tokens", "fired", "truncated")

    def __init__(self, tenant: str, workflow: str, trace_id: str):
        self.tenant, self.workflow, self.trace_id = sys.intern(tenant), sys.intern(workflow), trace_id
        self.last_ts = 0  # newest event time in the trace
        # Hashes of the event ids counted, sorted: 8 bytes each finds a redelivery
        # (100,000 live traces must fit in the worker).
        self.ids = array("q")
        # The latest step by (ts, event_id): when the (max_steps+1)-th step arrives, it is
        # the crossing one, whatever the arrival order.
        self.top_step: tuple[int, str] | None = None
        self.n_steps = 0
        self.outputs: list[tuple[int, str, float, int]] = []  # (ts, id, cost, tokens), sorted
        self.cost = 0.0
        self.tokens = 0
        self.fired: tuple[str, ...] = ()  # runaway kinds and unauthorized tools already raised
        self.truncated = False  # detail lists hit the cap: fall back to arrival order

    def add_id(self, event_id: str, cap: int) -> bool:
        """Count `event_id` once: False if it was counted before (a redelivery)."""
        h = hash(event_id)
        ids = self.ids
        i = bisect.bisect_left(ids, h)
        if i < len(ids) and ids[i] == h:
            return False
        if len(ids) < cap:
            ids.insert(i, h)
        else:
            self.truncated = True
        return True

    def spend_until(self, ts: int) -> float:
        if self.truncated:
            return self.cost
        return sum(o[2] for o in self.outputs if o[0] <= ts)


# --- the processor ---------------------------------------------------------------------


class ContractChecker:
    """Feed every event with its price: `process(event, cost_usd)`; returns new findings.

        checker = ContractChecker.from_config(settings.contracts)
        findings = checker.process(event, cost_usd)   # prompt / tool_call / output
    """

    def __init__(
        self,
        config: ContractsConfig | None = None,
        idle_ms: int = 3_600_000,
        max_traces: int = 100_000,
        max_events_per_trace: int = 10_000,
    ):
        config = config or ContractsConfig()
        self.contracts = {wf: _Compiled(c) for wf, c in config.contracts.items()}
        self.default = _Compiled(config.default)
        self.idle_ms = idle_ms
        self.max_traces = max_traces
        self.max_events_per_trace = max_events_per_trace
        self.traces: OrderedDict[tuple[str, str], _Trace] = OrderedDict()  # least recent first
        self.watermark = 0  # newest event time seen
        self.evicted = 0

    @classmethod
    def from_config(cls, raw: dict[str, dict[str, Any]] | None, **kwargs: Any) -> ContractChecker:
        return cls(ContractsConfig.from_config(raw), **kwargs)

    def process(self, event: Any, cost_usd: float | None = None, detected_at: int | None = None) -> list[Finding]:
        kind = event.event_type
        if kind not in ("prompt", "tool_call", "output"):
            return []
        if event.ts > self.watermark:
            self.watermark = event.ts
        tr = self._trace(event)
        if not tr.add_id(event.event_id, self.max_events_per_trace):
            return []  # redelivery: already counted
        if event.ts > tr.last_ts:
            tr.last_ts = event.ts
        c = self.contracts.get(event.workflow, self.default)
        out: list[Finding] = []
        at = event.ts if detected_at is None else detected_at
        if kind == "output":
            self._output(tr, c, event, cost_usd, at, out)
        else:
            if kind == "tool_call":
                self._tool(tr, c, event, at, out)
            self._step(tr, c, event, at, out)
        self.advance()
        return out

    def advance(self, watermark: int | None = None) -> list[Finding]:
        """Forget traces idle for `idle_ms` of event time (default: newest event seen);
        cap their number. Nothing is pending, so no findings: the list keeps the
        detector interface (`process`, `advance`, `flush`) of loops and anomalies."""
        limit = (self.watermark if watermark is None else watermark) - self.idle_ms
        traces = self.traces
        while traces:
            tr = next(iter(traces.values()))
            if tr.last_ts >= limit and len(traces) <= self.max_traces:
                break
            traces.popitem(last=False)
            self.evicted += 1
        return []

    def flush(self) -> list[Finding]:
        """End of a replay: every finding fires at its crossing event, none is held back."""
        return []

    def stats(self) -> dict[str, int]:
        return {"traces": len(self.traces), "evicted": self.evicted}

    # Checks ---------------------------------------------------------------------------

    def _trace(self, event: Any) -> _Trace:
        key = (event.tenant, event.trace_id)
        tr = self.traces.get(key)
        if tr is None:
            tr = self.traces[key] = _Trace(event.tenant, event.workflow, event.trace_id)
        else:
            self.traces.move_to_end(key)
        return tr

    def _tool(self, tr: _Trace, c: _Compiled, ev: Any, at: int, out: list[Finding]) -> None:
        tool = ev.tool_name
        if c.allowed is not None and tool not in c.allowed and ("tool:" + tool) not in tr.fired:
            tr.fired += ("tool:" + tool,)
            out.append(self._finding(
                tr, ev, at, "unauthorized_tool", "critical", (tool,),
                f"Tool {tool!r} is not allowed in workflow {ev.workflow!r}",
                evidence={"tool_name": tool, "allowed_tools": sorted(c.allowed)},
            ))
        if (tool in c.irreversible or ev.side_effect == "irreversible") and not ev.approved_by:
            out.append(self._finding(
                tr, ev, at, "unapproved_irreversible_action", "critical", (ev.event_id,),
                f"Irreversible tool {tool!r} ran without approval",
                evidence={"tool_name": tool, "tool_call_id": ev.tool_call_id,
                          "side_effect": ev.side_effect, "status": ev.status},
            ))

    def _step(self, tr: _Trace, c: _Compiled, ev: Any, at: int, out: list[Finding]) -> None:
        tr.n_steps += 1
        limit = c.max_steps
        if "runaway_steps" in tr.fired:
            return
        step = (ev.ts, ev.event_id)
        if tr.top_step is None or step > tr.top_step:
            tr.top_step = step
        if limit is None or tr.n_steps <= limit:
            return
        tr.fired += ("runaway_steps",)
        ts, eid = tr.top_step
        tr.top_step = None  # no longer needed
        out.append(self._runaway(tr, ev, at, "runaway_steps", ts, eid, tr.n_steps, limit))

    def _output(self, tr: _Trace, c: _Compiled, ev: Any, cost: float | None, at: int, out: list[Finding]) -> None:
        usage = ev.usage
        tokens = usage.input_tokens + usage.output_tokens if usage is not None else 0
        cost = cost or 0.0
        tr.cost += cost
        tr.tokens += tokens
        if len(tr.outputs) < self.max_events_per_trace:
            bisect.insort(tr.outputs, (ev.ts, ev.event_id, cost, tokens))
        else:
            tr.truncated = True
        for kind, limit, total, col in (
            ("runaway_cost", c.max_cost, tr.cost, 2),
            ("runaway_tokens", c.max_tokens, tr.tokens, 3),
        ):
            if limit is not None and total > limit and kind not in tr.fired:
                tr.fired += (kind,)
                ts, eid = self._crossing(tr, ev, col, limit)
                out.append(self._runaway(tr, ev, at, kind, ts, eid, total, limit))
        if c.validator is not None and ev.content:
            self._schema(tr, c, ev, at, out)

    @staticmethod
    def _crossing(tr: _Trace, ev: Any, col: int, limit: float) -> tuple[int, str]:
        # The output, in event time, where the running sum first passes the limit.
        if not tr.truncated:
            running = 0
            for o in tr.outputs:
                running += o[col]
                if running > limit:
                    return o[0], o[1]
        return ev.ts, ev.event_id

    def _runaway(self, tr: _Trace, ev: Any, at: int, kind: str, ts: int, eid: str,
                 total: float, limit: float) -> Finding:
        what = {"runaway_steps": "steps", "runaway_cost": "USD", "runaway_tokens": "tokens"}[kind]
        f = self._finding(
            tr, ev, at, kind, "high", (),
            f"Trace {tr.trace_id} ran past its limit of {limit:g} {what}",
            evidence={"event_id": eid, "limit": limit, "total_so_far": total,
                      "steps": tr.n_steps, "tokens": tr.tokens, "cost_usd": tr.cost},
            value=float(total), threshold=float(limit), wasted_usd=tr.spend_until(ts),
        )
        f.event_ts = ts  # the crossing event, which may have arrived before this one
        return f

    def _schema(self, tr: _Trace, c: _Compiled, ev: Any, at: int, out: list[Finding]) -> None:
        text = ev.content.lstrip()
        if not text or text[0] not in "{[":
            return  # not JSON: the schema applies to structured outputs only
        try:
            doc = json.loads(text)
        except ValueError:
            return
        if c.validator.is_valid(doc):
            return  # the common case, cheaper than collecting errors
        err = jsonschema.exceptions.best_match(c.validator.iter_errors(doc))
        # Evidence names where and which rule failed, never the value (it may be secret).
        out.append(self._finding(
            tr, ev, at, "output_schema_violation", "medium", (ev.event_id,),
            f"Output does not match the {ev.workflow!r} schema at {err.json_path}",
            evidence={"json_path": err.json_path, "validator": str(err.validator),
                      "schema_path": "/".join(str(p) for p in err.schema_path)[:MAX_ERROR_CHARS]},
        ))

    @staticmethod
    def _finding(tr: _Trace, ev: Any, at: int, kind: str, severity: Any, scope: tuple,
                 title: str, evidence: dict, **kw: Any) -> Finding:
        evidence.setdefault("event_id", ev.event_id)
        return Finding(
            finding_id=finding_id(kind, tr.tenant, tr.trace_id, *scope),
            detected_at=at,
            event_ts=ev.ts,
            kind=kind,
            severity=severity,
            tenant=tr.tenant,
            workflow=tr.workflow,
            model=getattr(ev, "response_model", "") or ev.model,
            trace_id=tr.trace_id,
            title=title,
            evidence=evidence,
            **kw,
        )
