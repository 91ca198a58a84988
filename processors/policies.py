"""Policies: findings become control actions automatically. Pure, no I/O.

Config (`policies:` in the llmpulse YAML)::

    policies:
      defaults: enforce          # off | dry_run | enforce: adopt the built-in rules (one line)
      lift_on_resolve: true      # a resolved finding lifts the action it caused
      rules:                     # yours, tried before the defaults
        - name: pause-refunds
          findings: [unauthorized_tool]    # finding kinds; a trailing * matches a prefix
          min_severity: critical           # this severity or worse (default: any)
          workflows: [support-bot]         # default: every workflow
          action: pause_workflow           # or `none`: no action for these findings
          for: 1h                          # 45s, 30m, 2h, 1d; `period`: until a budget period ends
          mode: dry_run                    # enforce | dry_run (default: the defaults' mode, else enforce)

Built-in rules (`defaults:`), in the order they are tried:

    halt-loops         tool_loop, cycle_loop, no_progress, runaway_*   halt_trace        1h
    block-spend        budget_threshold at 100 % (severity critical)   block_spend       until the period ends
    fallback-model     error_rate_spike, latency_regression            route_model       30m, to the
                                                                                         workflow's fallback
    approve-after-irreversible  unapproved_irreversible_action         require_approval  24h

Which rule acts: rules naming the finding's workflow first, then your global rules, then
the defaults; the first that matches the finding's kind and severity decides (so a rule
with `action: none` for one workflow switches a default off there). One finding makes at
most one action, and one scope at most one active action of a kind: a finding repeated
under the same id, or another finding on a scope already acted on, adds nothing.

Every automatic action has an `expires_at` (created_at + `for`, or the budget period's
end). `advance(watermark)` emits the `expired` record of each action whose expiry the
event-time watermark passed; a `resolved` finding emits the `lifted` record of the
action it caused (when lift_on_resolve). A finding that caused an action, or met one in
force on its scope, says so in `evidence["control_action"]` (its row and its page show it). Action ids derive from (rule, finding id), so a
replay emits the same ids. created_at is the finding's `detected_at` (event time in a
backtest). A finding whose kind gives no scope for the action (a halt without a trace,
a route with no declared fallback) is counted in `skipped`, not acted on.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Any, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmpulse.processors.contracts import DEFAULT_KEY, ContractsConfig
from llmpulse.schemas.contract import MAX_TS_MS
from llmpulse.schemas.controls import ControlAction, ControlError, expire, lift, new_action, parse_duration
from llmpulse.schemas.findings import SEVERITIES, Finding


ActionKind = Literal["halt_trace", "pause_workflow", "disable_tool", "route_model", "require_approval",
                     "block_spend", "none"]
Mode = Literal["enforce", "dry_run"]
PERIOD = "period"
_RANK = {s: i for i, s in enumerate(reversed(SEVERITIES))}  # info 0 .. critical 4
MAX_REMEMBERED = 200_000  # finding ids acted on, kept so a repeat never acts twice


# --- configuration -------------------------------------------------------------------


class PolicyRule(BaseModel):
    """One rule: findings of these kinds (and at least this severity) -> this action."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = ""
    findings: tuple[str, ...] = Field(min_length=1)  # kinds (not `on:`, which YAML reads as true)
    min_severity: Literal["critical", "high", "medium", "low", "info"] = "info"
    workflows: tuple[str, ...] = ()
    action: ActionKind
    duration: str = Field("1h", alias="for")
    mode: Mode | None = None
    lift_on_resolve: bool | None = None  # None: the section's lift_on_resolve
    per_tenant: bool = True  # pause_workflow / disable_tool / require_approval: only the finding's tenant
    route_to: str = ""  # route_model: else the workflow's declared fallback model

    @field_validator("findings")
    @classmethod
    def _kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [k for k in v if not k or "*" in k[:-1]]
        if bad:
            raise ValueError(f"finding kinds {bad}: a kind, or a prefix ending in * (runaway_*)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "PolicyRule":
        if self.duration == PERIOD:
            if self.action != "block_spend":
                raise ValueError(f"rule {self.label!r}: `for: period` only fits block_spend (a budget's period)")
        else:
            parse_duration(self.duration)
        if self.route_to and self.action != "route_model":
            raise ValueError(f"rule {self.label!r}: route_to only fits action route_model")
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.action}<-{','.join(self.findings)}"

    def matches(self, f: Finding) -> bool:
        if self.workflows and f.workflow not in self.workflows:
            return False
        if _RANK[f.severity] < _RANK[self.min_severity]:
            return False
        return any(fnmatchcase(f.kind, k) for k in self.findings)


DEFAULT_RULES: tuple[PolicyRule, ...] = (
    PolicyRule(name="halt-loops", findings=("tool_loop", "cycle_loop", "no_progress", "runaway_*"),
               action="halt_trace", duration="1h"),
    PolicyRule(name="block-spend", findings=("budget_threshold",), min_severity="critical", action="block_spend",
               duration=PERIOD),
    PolicyRule(name="fallback-model", findings=("error_rate_spike", "latency_regression"), action="route_model",
               duration="30m"),
    PolicyRule(name="approve-after-irreversible", findings=("unapproved_irreversible_action",),
               action="require_approval", duration="24h"),
)


class PoliciesConfig(BaseModel):
    """The `policies:` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Literal["off", "dry_run", "enforce"] = "off"
    lift_on_resolve: bool = True
    rules: tuple[PolicyRule, ...] = ()

    @field_validator("defaults", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _unique_names(self) -> "PoliciesConfig":
        names = [r.name for r in self.rules if r.name]
        dup = sorted({n for n in names if names.count(n) > 1} | ({n for n in names} & {r.name for r in DEFAULT_RULES}
                                                                  if self.defaults != "off" else set()))
        if dup:
            raise ValueError(f"policy rule names must be unique (action ids derive from them): {dup}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.rules) or self.defaults != "off"


# --- the engine ------------------------------------------------------------------------


def period_end_ms(period: str) -> int | None:
    """End of a budget period key ('2026-12-03' a UTC day, '2026-12' a UTC month)."""
    try:
        if len(period) == 10:
            start = datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            return int(start.timestamp() * 1000) + 86_400_000
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return int(nxt.timestamp() * 1000)


class Policies:
    """Findings in, control actions out (new, lifted, expired), in the order they happen.

        policies = Policies.from_config(settings.policies, settings.contracts)  # fallbacks from contracts
        actions = policies.evaluate(findings)      # per batch, the batch's findings
        actions += policies.advance(watermark_ms)  # expiries the watermark passed
    """

    def __init__(self, config: PoliciesConfig | None = None, fallbacks: Mapping[str, str] | None = None) -> None:
        self.config = config or PoliciesConfig()
        self.fallbacks = dict(fallbacks or {})  # workflow -> declared fallback model
        c = self.config
        mode = "enforce" if c.defaults == "off" else c.defaults  # of rules that name none
        own = sorted(c.rules, key=lambda r: not r.workflows)  # workflow rules first, stable otherwise
        rules = own + (list(DEFAULT_RULES) if c.defaults != "off" else [])
        self.rules: tuple[PolicyRule, ...] = tuple(r if r.mode else r.model_copy(update={"mode": mode}) for r in rules)
        self._active: dict[tuple[str, str], ControlAction] = {}  # (kind, scope) -> active action
        self._keys: dict[str, tuple[str, str]] = {}  # action id -> its key in _active
        self._by_finding: dict[str, ControlAction] = {}  # finding id -> the active action it caused
        self._lifts: dict[str, bool] = {}  # action id -> lift on resolve
        self._expiry: list[tuple[int, str]] = []  # heap of (expires_at, action id)
        self._acted: OrderedDict[str, None] = OrderedDict()  # finding ids acted on (bounded)
        self.stats = {"actions": 0, "lifted": 0, "expired": 0, "skipped": 0, "deduplicated": 0}

    @classmethod
    def from_config(cls, raw: PoliciesConfig | Mapping[str, Any] | None,
                    contracts: Mapping[str, Mapping[str, Any]] | None = None) -> "Policies":
        config = raw if isinstance(raw, PoliciesConfig) else PoliciesConfig.model_validate(raw or {})
        return cls(config, fallbacks=declared_fallbacks(contracts or {}))

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    @property
    def active(self) -> list[ControlAction]:
        return list(self._active.values())

    def evaluate(self, findings: Iterable[Finding]) -> list[ControlAction]:
        out: list[ControlAction] = []
        for f in findings:
            if f.status == "resolved":
                lifted = self._lift(f)
                if lifted is not None:
                    out.append(lifted)
                continue
            if f.finding_id in self._acted:
                self.stats["deduplicated"] += 1
                if f.finding_id in self._by_finding:
                    note(f, self._by_finding[f.finding_id])
                continue
            rule = next((r for r in self.rules if r.matches(f)), None)
            if rule is None or rule.action == "none":
                continue
            action = self._action(rule, f)
            if action is None:
                self.stats["skipped"] += 1
                continue
            self._remember(f.finding_id)
            key = (action.kind, scope_of(action))
            if key in self._active:
                self.stats["deduplicated"] += 1  # already acted on this scope: one action
                note(f, self._active[key])
                continue
            self._start(action, rule.lift_on_resolve if rule.lift_on_resolve is not None else self.config.lift_on_resolve)
            note(f, action)
            out.append(action)
        return out

    def advance(self, watermark_ms: int) -> list[ControlAction]:
        """The `expired` records of active actions whose expires_at is at or before the watermark."""
        out: list[ControlAction] = []
        heap = self._expiry
        while heap and heap[0][0] <= watermark_ms:
            _, aid = heapq.heappop(heap)
            action = self._end(aid)
            if action is not None:
                self.stats["expired"] += 1
                out.append(expire(action))
        return out

    def restore(self, actions: Iterable[ControlAction]) -> int:
        """Active policy actions read back from the store after a restart: expiry, lifts and
        deduplication go on as before. Returns how many were restored."""
        lifts = {r.label: r.lift_on_resolve for r in self.rules}
        n = 0
        for a in actions:
            if a.state != "active" or not a.finding_id:
                continue
            self._remember(a.finding_id)
            lift = lifts.get(a.policy)
            self._start(a, self.config.lift_on_resolve if lift is None else lift, count=False)
            n += 1
        return n

    # -- internals ------------------------------------------------------------------------
    def _start(self, action: ControlAction, lift: bool, count: bool = True) -> None:
        key = (action.kind, scope_of(action))
        self._active[key] = action
        self._keys[action.action_id] = key
        self._by_finding[action.finding_id] = action
        self._lifts[action.action_id] = lift
        if action.expires_at is not None:
            heapq.heappush(self._expiry, (action.expires_at, action.action_id))
        if count:
            self.stats["actions"] += 1

    def _end(self, aid: str) -> ControlAction | None:
        key = self._keys.pop(aid, None)
        if key is None:
            return None  # lifted before its expiry came up
        a = self._active.pop(key)
        self._by_finding.pop(a.finding_id, None)
        self._lifts.pop(aid, None)
        return a

    def _lift(self, f: Finding) -> ControlAction | None:
        action = self._by_finding.get(f.finding_id)
        if action is None or not self._lifts.get(action.action_id, False):
            return None
        self._end(action.action_id)
        self.stats["lifted"] += 1
        return lift(action, by=f"policy {action.policy}", reason=f"{f.kind} resolved", at=f.detected_at)

    def _remember(self, fid: str) -> None:
        self._acted[fid] = None
        if len(self._acted) > MAX_REMEMBERED:
            self._acted.popitem(last=False)

    def _action(self, rule: PolicyRule, f: Finding) -> ControlAction | None:
        scope = _scope(rule, f, self.fallbacks)
        if scope is None:
            return None
        created = f.detected_at
        if rule.duration == PERIOD:
            end = period_end_ms(str(f.evidence.get("period", "")))
            if end is None or end <= created:
                return None
        else:
            end = min(created + parse_duration(rule.duration), MAX_TS_MS)  # `for: 36500d`: the contract's last instant
        try:
            return new_action(rule.action, reason=f"{f.kind}: {f.title}"[:500] if f.title else f.kind, at=created,
                              finding_id=f.finding_id, policy=rule.label, expires_at=end, mode=rule.mode or "enforce",
                              **scope)
        except ControlError:  # a scope the contract refuses (an over-long id, a budget over all spend)
            return None


def note(f: Finding, a: ControlAction) -> None:
    """The finding says which action it caused (or found in force on its scope): its row, its
    page (processors/runtime/notify.py) and the findings topic carry it."""
    scope = {k: getattr(a, k) for k in ("tenant", "workflow", "model", "tool", "user_id", "trace_id", "route_to")
             if getattr(a, k)}
    f.evidence = {**f.evidence, "control_action": {
        "action_id": a.action_id, "kind": a.kind, "mode": a.mode, "policy": a.policy, "expires_at": a.expires_at,
        "scope": scope, "caused_by_this_finding": a.finding_id == f.finding_id}}


def _tool_of(f: Finding) -> str:
    return str(f.evidence.get("tool_name") or f.evidence.get("tool") or "")


def _scope(rule: PolicyRule, f: Finding, fallbacks: Mapping[str, str]) -> dict[str, str] | None:
    """The scope fields of the action `rule` takes on `f`, or None when `f` gives no scope for it."""
    tenant = f.tenant if rule.per_tenant else ""
    kind = rule.action
    if kind == "halt_trace":
        return {"tenant": f.tenant, "workflow": f.workflow, "trace_id": f.trace_id} if f.trace_id else None
    if kind == "block_spend":  # the budget's own scope; "" = any
        return {"tenant": f.tenant, "workflow": f.workflow, "model": f.model,
                "user_id": str(f.evidence.get("user_id", ""))}
    if not f.workflow:
        return None
    if kind == "pause_workflow" or kind == "require_approval":
        return {"tenant": tenant, "workflow": f.workflow}
    if kind == "disable_tool":
        tool = _tool_of(f)
        return {"tenant": tenant, "workflow": f.workflow, "tool": tool} if tool else None
    if kind == "route_model":
        target = rule.route_to or fallbacks.get(f.workflow) or fallbacks.get(DEFAULT_KEY, "")
        if not f.model or not target or target == f.model:
            return None
        return {"tenant": tenant, "workflow": f.workflow, "model": f.model, "route_to": target}
    raise AssertionError(kind)


def scope_of(a: ControlAction) -> str:
    """What makes two actions of a kind the same switch (dedupe key, beside the kind)."""
    return "\x1f".join((a.tenant, a.workflow, a.model, a.tool, a.user_id, a.trace_id))


def declared_fallbacks(contracts: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """workflow -> the fallback model its contract declares (`fallback: {model: ...}`);
    key "*": that of the contract of undeclared workflows."""
    config = ContractsConfig.from_config(dict(contracts))
    out = {wf: c.fallback.model for wf, c in config.contracts.items() if c.fallback and c.fallback.model}
    if config.default.fallback and config.default.fallback.model:
        out[DEFAULT_KEY] = config.default.fallback.model
    return out
