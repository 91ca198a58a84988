"""Kill switches in the app: answer "may this trace call this model / tool?" locally.

    with pub.trace("support-bot", tenant="acme", user_id="u1") as t:
        v = t.check_model("gpt-4o")          # never raises, never waits
        if not v.allowed:
            return v.reply                   # the contract's canned reply ("" if none)
        resp = llm.chat(model=v.model, ...)  # v.model: the model to call (routed or as asked)

        t.require_tool("issue_refund", side_effect="irreversible")   # raises Halted instead

    @guard_tool("issue_refund", side_effect="irreversible")   # checks in the current trace
    def issue_refund(order): ...

Outcomes: allow; deny (halt_trace, pause_workflow, block_spend for models, disable_tool for
tools; or fail_closed); route (route_model: call `v.model` instead); needs_approval
(require_approval, until a person's `approve` for the trace arrives; approvers named by the
contract, when it names any). When several actions match, the strongest decides, in that
order; an action in `dry_run` never changes the answer, its would-be decision is published
with control_mode "dry_run".

Staleness: while the reader's view is stale (ingest/controls.py), a workflow whose contract
says `fail_mode: closed` is denied every call; `open` (the default) keeps enforcing what the
view last knew and allows the rest.

Every non-allow decision is published as a `decision` event on llm.events. The first of a
kind (trace, target, outcome, action) goes out at once; repeats within `aggregate_s` are
counted and go out as one event with `decision_count`, from the reader's thread.

A check costs a dict lookup when nothing changed: answers are cached per trace and target
and dropped when the view's generation moves, the staleness flips or a matched action expires.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, TypeVar

from llmpulse.schemas.controls import SCOPE_FIELDS, ControlAction

if TYPE_CHECKING:
    from llmpulse.ingest.controls import ControlState
    from llmpulse.processors.contracts import ContractsConfig, WorkflowContract
    from llmpulse.ingest.publisher import Trace

log = logging.getLogger("llmpulse.sdk.enforce")

Outcome = Literal["allow", "deny", "route", "needs_approval"]
MAX_CACHED_PER_TRACE = 256  # distinct targets a trace keeps answers for
_FOREVER = 1 << 62


class Verdict:
    """The answer to one check. `allowed` is true for allow and route; `model` is the model to
    call; `reply` the contract's canned reply on a deny."""

    __slots__ = ("outcome", "model", "action", "reason", "reply", "approved_by")

    def __init__(self, outcome: Outcome, model: str = "", action: ControlAction | None = None,
                 reason: str = "", reply: str = "", approved_by: str = "") -> None:
        self.outcome, self.model, self.action, self.reason = outcome, model, action, reason
        self.reply, self.approved_by = reply, approved_by

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow" or self.outcome == "route"

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        who = f", action={self.action.action_id}" if self.action is not None else ""
        return f"Verdict({self.outcome!r}, model={self.model!r}{who}, reason={self.reason!r})"


class Halted(Exception):
    """Raised by `require_model` / `require_tool` / `guard_tool` when a kill switch refuses the
    call: the only exception the SDK raises into the app."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(verdict.reason or verdict.outcome)

    @property
    def reply(self) -> str:
        return self.verdict.reply


class ApprovalRequired(Halted):
    """A tool call that needs a person's approval (`llmpulse control approve`)."""


ALLOW = Verdict("allow")


class View(Protocol):
    """What the enforcer reads: the reader (Kafka) or a fixed state (tests, MemoryPublisher)."""

    state: "ControlState"

    def stale(self, now: float | None = None) -> bool: ...
    def age_s(self) -> float | None: ...


class FixedView:
    """A view that is what it is told: for MemoryPublisher and tests of instrumented code."""

    def __init__(self, state: "ControlState", stale: bool = False) -> None:
        self.state = state
        self.is_stale = stale

    def stale(self, now: float | None = None) -> bool:
        return self.is_stale

    def age_s(self) -> float | None:
        return None if self.is_stale else 0.0


# -- the decision ------------------------------------------------------------------------------

# A record to publish: (action or None for fail_closed, outcome, mode, kind, route_to)
_Record = tuple[ControlAction | None, str, str, str, str]


class _Scope:
    """A trace's side of every lookup, computed once per trace."""

    __slots__ = ("tenant", "workflow", "user_id", "trace_id", "contract", "cache", "approvals")

    def __init__(self, common: dict, contract: WorkflowContract) -> None:
        self.tenant = str(common.get("tenant") or "default")
        self.workflow = str(common.get("workflow") or "")
        self.user_id = str(common.get("user_id") or "")
        self.trace_id = str(common.get("trace_id") or "")
        self.contract = contract
        self.cache: dict[tuple, tuple] = {}
        self.approvals: dict[str, str] = {}  # tool -> approver, for the tool_call event


_MODEL_ORDER = (("halt_trace", "deny"), ("pause_workflow", "deny"), ("block_spend", "deny"), ("route_model", "route"))
_TOOL_ORDER = (("halt_trace", "deny"), ("pause_workflow", "deny"), ("disable_tool", "deny"))  # then approvals
_TOOL = SCOPE_FIELDS.index("tool")


def _find(state: "ControlState", kind: str, vals: tuple, skip_unset: int | None = None) -> list[ControlAction]:
    """Active actions of `kind` whose scope covers `vals` (the call's value per SCOPE_FIELDS):
    one lookup per scope shape that exists (an unset field matches any value). `skip_unset`:
    a field whose being unset does not match."""
    out: list[ControlAction] = []
    for shape in state.shapes.get(kind, ()):
        if skip_unset is not None and not shape[skip_unset]:
            continue
        key = [kind]
        for v, on in zip(vals, shape):
            if on and not v:
                break  # the action names a value this call has not got
            key.append(v if on else "")
        else:
            out += state.at(tuple(key))  # type: ignore[arg-type]
    return out


class _NoContract:
    """What a workflow without a contract enforces: `WorkflowContract()`'s defaults, without
    importing pydantic and jsonschema into the app (tests/unit/test_enforce.py compares them)."""

    irreversible_tools: tuple[str, ...] = ()
    owner = ""
    approvers: tuple[str, ...] = ()
    fallback = None
    fail_mode = "open"


class _NoContracts:
    def for_workflow(self, workflow: str) -> _NoContract:
        return _NO_CONTRACT


_NO_CONTRACT = _NoContract()


class Enforcer:
    """Decides checks from a View, publishes the decisions through `sink` (aggregated)."""

    def __init__(self, view: View, sink: Any, contracts: ContractsConfig | None = None,
                 aggregate_s: float = 5.0) -> None:
        self.view = view
        self.sink = sink
        self.contracts: Any = contracts if contracts is not None else _NoContracts()
        self.aggregate_ms = int(aggregate_s * 1000)
        self._pending: dict[tuple, list] = {}  # aggregation key -> [event, start, repeats, last, first repeat]
        self._lock = threading.Lock()
        self.stats = {"checks": 0, "denied": 0, "routed": 0, "needs_approval": 0, "dry_run": 0,
                      "fail_closed": 0, "stale_allowed": 0, "events": 0}

    # -- public -------------------------------------------------------------------------------
    def scope(self, trace: "Trace") -> _Scope:
        sc = trace.__dict__.get("_controls_scope")
        if sc is None:
            sc = _Scope(trace.common, self.contracts.for_workflow(str(trace.common.get("workflow") or "")))
            trace._controls_scope = sc
        return sc

    def check_model(self, trace: "Trace", model: str) -> Verdict:
        try:
            return self._check(trace, ("m", model), model, "", "")
        except Exception as exc:  # a bug here must not stop the app: allow, and say so
            log.warning("llmpulse: model check failed, allowing: %s", exc)
            return Verdict("allow", model)

    def check_tool(self, trace: "Trace", tool: str, side_effect: str | None = None) -> Verdict:
        try:
            sc = self.scope(trace)
            if side_effect is None:
                side_effect = "irreversible" if tool in sc.contract.irreversible_tools else ""
            return self._check(trace, ("t", tool, side_effect), "", tool, side_effect)
        except Exception as exc:
            log.warning("llmpulse: tool check failed, allowing: %s", exc)
            return ALLOW

    # -- the hot path ---------------------------------------------------------------------------
    def _check(self, trace: "Trace", ckey: tuple, model: str, tool: str, side_effect: str) -> Verdict:
        self.stats["checks"] += 1
        sc = self.scope(trace)
        stale = self.view.stale()
        state = self.view.state
        gen = state.generation
        now = time.time_ns() // 1_000_000
        hit = sc.cache.get(ckey)
        if hit is not None and hit[0] == gen and hit[1] == stale and now < hit[2]:
            verdict, records = hit[3], hit[4]
        else:
            if stale and sc.contract.fail_mode == "closed":
                verdict, records, until = self._fail_closed(sc, model)
            elif tool:
                verdict, records, until = self._decide_tool(sc, state, tool, side_effect, now)
            else:
                verdict, records, until = self._decide_model(sc, state, model, now)
            if stale and verdict.outcome == "allow":
                self.stats["stale_allowed"] += 1
            if len(sc.cache) >= MAX_CACHED_PER_TRACE:
                sc.cache.clear()
            sc.cache[ckey] = (gen, stale, until, verdict, records)
        if verdict.approved_by:
            sc.approvals[tool] = verdict.approved_by
        for r in records:
            self._record(trace, sc, r, model, tool, side_effect, now)
        return verdict

    def _fail_closed(self, sc: _Scope, model: str) -> tuple[Verdict, list[_Record], int]:
        age = self.view.age_s()
        why = "controls not read yet" if age is None else f"controls view stale for {age:.0f}s"
        reason = f"{why}; workflow {sc.workflow!r} fails closed"
        fb = sc.contract.fallback
        v = Verdict("deny", model, None, reason, fb.reply if fb else "")
        return v, [(None, "deny", "enforce", "fail_closed", "")], _FOREVER

    def _decide_model(self, sc: _Scope, state: "ControlState", model: str, now: int):
        kinds = state.kinds
        if not kinds:
            return (Verdict("allow", model), [], _FOREVER) if model else (ALLOW, [], _FOREVER)
        vals = (sc.tenant, sc.workflow, model, "", sc.user_id, sc.trace_id)
        cands = [(outcome, _find(state, kind, vals)) for kind, outcome in _MODEL_ORDER if kind in kinds]
        return self._settle(sc, cands, model, now)

    def _decide_tool(self, sc: _Scope, state: "ControlState", tool: str, side_effect: str, now: int):
        kinds = state.kinds
        if not kinds:
            return ALLOW, [], _FOREVER
        vals = (sc.tenant, sc.workflow, "", tool, sc.user_id, sc.trace_id)
        cands = [(outcome, _find(state, kind, vals)) for kind, outcome in _TOOL_ORDER if kind in kinds]
        if "require_approval" in kinds:
            # Without a tool named, it holds the calls with a side effect that cannot be taken back.
            need = _find(state, "require_approval", vals,
                         skip_unset=_TOOL if side_effect not in ("write", "irreversible") else None)
            if need:
                grant = self._approval(sc, state, vals, now)
                if grant is not None:
                    verdict, records, until = self._settle(sc, cands, "", now)
                    until = min([until, *(a.expires_at for a in (*need, grant) if a.expires_at is not None)])
                    if verdict.outcome == "allow":
                        verdict = Verdict("allow", "", grant, "approved by " + grant.actor, approved_by=grant.actor)
                    return verdict, records, until
            cands.append(("needs_approval", need))
        return self._settle(sc, cands, "", now)

    def _approval(self, sc: _Scope, state: "ControlState", vals: tuple, now: int) -> ControlAction | None:
        if "approve" not in state.kinds or not sc.trace_id:
            return None
        approvers = sc.contract.approvers
        for a in _find(state, "approve", vals):
            if a.mode == "enforce" and _live(a, now) and (not approvers or a.actor in approvers):
                return a
        return None

    def _settle(self, sc: _Scope, cands: list[tuple[str, list[ControlAction]]], model: str, now: int):
        """The strongest enforced match decides; a stronger dry-run match is recorded as such."""
        until = _FOREVER
        records: list[_Record] = []
        would: tuple[str, ControlAction] | None = None
        for outcome, found in cands:
            for a in found:
                if not _live(a, now):
                    continue
                if a.expires_at is not None and a.expires_at < until:
                    until = a.expires_at
                if a.mode == "dry_run":
                    if would is None:
                        would = (outcome, a)
                    continue
                if would is not None:
                    records.append((would[1], would[0], "dry_run", would[1].kind, would[1].route_to))
                records.append((a, outcome, "enforce", a.kind, a.route_to))
                return self._verdict(sc, outcome, a, model), records, until
        if would is not None:
            records.append((would[1], would[0], "dry_run", would[1].kind, would[1].route_to))
        return (Verdict("allow", model) if model else ALLOW), records, until

    @staticmethod
    def _verdict(sc: _Scope, outcome: str, a: ControlAction, model: str) -> Verdict:
        if outcome == "route":
            return Verdict("route", a.route_to, a, f"routed to {a.route_to}: {a.reason}")
        fb = sc.contract.fallback
        who = a.actor if a.source == "person" else f"policy {a.policy or a.finding_id}"
        what = "needs approval" if outcome == "needs_approval" else a.kind.replace("_", " ")
        return Verdict(outcome, model, a, f"{what} by {who}: {a.reason}", fb.reply if fb else "")  # type: ignore[arg-type]

    # -- decision events ----------------------------------------------------------------------
    def _record(self, trace: "Trace", sc: _Scope, r: _Record, model: str, tool: str, side_effect: str,
                now: int) -> None:
        action, outcome, mode, kind, route_to = r
        stat = "dry_run" if mode == "dry_run" else ("fail_closed" if kind == "fail_closed" else
                                                   {"deny": "denied", "route": "routed"}.get(outcome, outcome))
        self.stats[stat] += 1
        key = (sc.trace_id, model, tool, outcome, mode, action.action_id if action is not None else kind)
        with self._lock:
            entry = self._pending.get(key)
            if entry is not None:
                if not entry[2]:
                    entry[4] = now
                entry[2] += 1
                entry[3] = now
                return
            event = self._event(trace, sc, r, model, tool, side_effect)
            self._pending[key] = [event, now, 0, now, now]  # event, window start, repeats, last, first repeat
        self._publish(dict(event, ts=now))

    @staticmethod
    def _event(trace: "Trace", sc: _Scope, r: _Record, model: str, tool: str, side_effect: str) -> dict:
        action, outcome, mode, kind, route_to = r
        fb = sc.contract.fallback
        event = {**trace.common, "event_type": "decision", "decision": outcome, "checked": "tool" if tool else "model",
                 "control_kind": kind, "control_mode": mode}
        if action is not None:
            event["action_id"] = action.action_id
            event["reason"] = action.reason
        else:
            event["reason"] = "controls view stale; the workflow fails closed"
        if model:
            event["model"] = model
        if tool:
            event["tool_name"] = tool
            if side_effect:
                event["side_effect"] = side_effect
        if route_to:
            event["route_to"] = route_to
            if fb is not None and fb.model == route_to:
                event["fallback"] = "model"
        elif outcome == "deny" and mode == "enforce" and fb is not None and fb.reply:
            event["fallback"] = "reply"
        return event

    def flush(self, force: bool = False) -> int:
        """Publish the counted repeats whose window has passed (all of them with force)."""
        now = time.time_ns() // 1_000_000
        out = []
        with self._lock:
            for key, entry in list(self._pending.items()):
                if force or now - entry[1] >= self.aggregate_ms:
                    del self._pending[key]
                    if entry[2]:
                        out.append(entry)
        for event, _start, count, last, first in out:
            # The repeats after the first (already published): their count, first and last time.
            self._publish(dict(event, ts=first, decision_count=count, last_decision_ts=max(last, first)))
        return len(out)

    def _publish(self, event: dict) -> None:
        event.pop("event_id", None)
        self.stats["events"] += 1
        self.sink.publish(event)


def _live(a: ControlAction, now: int) -> bool:
    return a.expires_at is None or now < a.expires_at


# -- the current trace, for decorators ------------------------------------------------------

current_trace: contextvars.ContextVar["Trace | None"] = contextvars.ContextVar("llmpulse_trace", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def guard_tool(name: str, side_effect: str | None = None) -> Callable[[F], F]:
    """Check the tool in the current trace (`with pub.trace(...)`) before each call; raises
    Halted (ApprovalRequired) when refused. Outside a trace the call runs unchecked."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            trace = current_trace.get()
            if trace is not None:
                trace.require_tool(name, side_effect=side_effect)
            return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def raise_for(verdict: Verdict) -> Verdict:
    if verdict.outcome == "needs_approval":
        raise ApprovalRequired(verdict)
    if not verdict.allowed:
        raise Halted(verdict)
    return verdict


# -- wiring (KafkaPublisher, MemoryPublisher) -------------------------------------------------

def start_enforcer(sink: Any, bootstrap: str, topic: str, config: Any,
                   contracts: ContractsConfig | None) -> Enforcer:
    """A reader of `topic` and an enforcer publishing through `sink`; waits up to the config's
    startup_wait_s for the first full read (an app started during a pause comes up paused)."""
    from llmpulse.ingest.controls import ControlsReader
    from llmpulse.ingest.controls_defaults import DEFAULTS

    config = DEFAULTS if config is True else config
    reader = ControlsReader(bootstrap, topic, config)
    enforcer = Enforcer(reader, sink, contracts, config.aggregate_s)
    reader.on_tick.append(enforcer.flush)
    if config.startup_wait_s and not reader.wait_ready(config.startup_wait_s):
        log.warning("llmpulse: kill switches not read from %s within %.1fs (%s); fail_mode applies until they are",
                    topic, config.startup_wait_s, reader.last_error or "no answer")
    return enforcer


def close_enforcer(enforcer: Enforcer) -> None:
    """Publish the counted repeats, stop the reader (before the producer's last flush)."""
    try:
        close = getattr(enforcer.view, "close", None)
        if close is not None:
            close()
        enforcer.flush(force=True)
    except Exception as exc:
        log.debug("closing the enforcer: %s", exc)
