"""Budgets: spend per scope and UTC period against a limit, in event time.

Config (`budgets:` in the llmpulse YAML)::

    budgets:
      - scope: {tenant: acme, workflow: support-bot}   # any subset of tenant/workflow/model
        period: day                                    # day | month (UTC)
        limit_usd: 50

Each rule and period is a small state machine, fed (event, cost_usd):

    below 50 % --> 50 % fired --> 80 % fired --> 100 % fired      (`budget_threshold`)
       any state before 100 %: burn rate checked, fires at most once   (`budget_burn_rate`)

A new period starts a fresh machine. One event that jumps several thresholds emits each
of them, lowest first. Finding ids are (kind, rule, period[, pct]), so a replay or a
restarted worker emits the same ids.

Burn rate: the spend of the trailing event-time hour (ending at the latest event seen
for the rule) as a rate, projected over the rest of the period, on top of the spend so
far. To keep one early expensive call from projecting nonsense, it needs
`min_elapsed_ms` of data in the period (first to latest event) and `min_window_events`
priced events in the window; the window is shorter than an hour only while the
period's data is. It is not raised once 100 % has fired (that finding says more).

`cost_usd` None (unpriced) adds nothing. Events for a period older than the previous
one are counted in `late_dropped` and ignored, which bounds the state. Every event fed
counts: duplicates (same event_id, whatever else differs, however long after) never get
here, the pipeline drops them first (processors/dedup.py). State is in memory: after a
restart, `seed()` each rule's spend so far (ClickHouse has it) before feeding.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, model_validator

from llmpulse.schemas.findings import Finding, Severity, finding_id

THRESHOLDS: tuple[tuple[int, Severity], ...] = ((50, "low"), (80, "medium"), (100, "critical"))
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


# --- configuration -------------------------------------------------------------------


class BudgetScope(BaseModel):
    """Which spend counts; a field left out matches everything. `model` matches the
    request `model` or the `response_model`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str | None = None
    workflow: str | None = None
    model: str | None = None


class BudgetRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: BudgetScope = BudgetScope()  # empty: all spend
    period: Literal["day", "month"]
    limit_usd: PositiveFloat
    name: str = ""  # optional stable name; default derived from scope and period

    @property
    def rule_id(self) -> str:
        if self.name:
            return self.name
        parts = [f"{k}={v}" for k, v in self.scope.model_dump().items() if v is not None]
        return ",".join(parts or ["all"]) + f"/{self.period}"


class BudgetsConfig(BaseModel):
    """The `budgets:` section (a list of rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[BudgetRule, ...] = ()

    @classmethod
    def from_config(cls, raw: list[dict[str, Any]] | None) -> BudgetsConfig:
        return cls(rules=tuple(BudgetRule.model_validate(r) for r in raw or []))

    @model_validator(mode="after")
    def _unique_ids(self) -> BudgetsConfig:
        # Finding ids derive from rule ids: two rules must not share one.
        ids = [r.rule_id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"budget rules share a scope and period (give them a `name`): {dupes}")
        return self


# --- state -----------------------------------------------------------------------------


class _Window:
    """Spend and event count of the trailing 60 event-time minutes, by minute bucket."""

    __slots__ = ("buckets", "head", "spend", "events")

    def __init__(self) -> None:
        self.buckets: dict[int, list] = {}  # minute -> [spend, events]
        self.head = -1  # newest minute seen
        self.spend = 0.0
        self.events = 0

    def add(self, minute: int, cost: float) -> None:
        if minute > self.head:
            self.head = minute
            for m in [m for m in self.buckets if m <= minute - 60]:
                spend, events = self.buckets.pop(m)
                self.spend -= spend
                self.events -= events
        elif minute <= self.head - 60:
            return  # older than the window: period total only
        bucket = self.buckets.get(minute)
        if bucket is None:
            bucket = self.buckets[minute] = [0.0, 0]
        bucket[0] += cost
        bucket[1] += 1
        self.spend += cost
        self.events += 1


class _Period:
    """State machine of one rule in one period."""

    __slots__ = ("key", "start_ms", "end_ms", "spend", "fired", "burn_fired", "first_ts", "last_ts", "window")

    def __init__(self, key: str, start_ms: int, end_ms: int):
        self.key, self.start_ms, self.end_ms = key, start_ms, end_ms
        self.spend = 0.0
        self.fired = 0  # how many of THRESHOLDS have fired (the machine's state)
        self.burn_fired = False
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.window = _Window()


def period_bounds(period: str, ts_ms: int) -> tuple[str, int, int]:
    """(key, start ms, end ms) of the UTC day or month holding `ts_ms`."""
    if period == "day":
        start = ts_ms - ts_ms % DAY_MS
        key = datetime.fromtimestamp(start / 1000, timezone.utc).strftime("%Y-%m-%d")
        return key, start, start + DAY_MS
    t = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
    first = datetime(t.year, t.month, 1, tzinfo=timezone.utc)
    nxt = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=timezone.utc)
    return first.strftime("%Y-%m"), int(first.timestamp() * 1000), int(nxt.timestamp() * 1000)


class _RuleState:
    __slots__ = ("rule", "rule_id", "current", "previous")

    def __init__(self, rule: BudgetRule):
        self.rule = rule
        self.rule_id = rule.rule_id
        self.current: _Period | None = None
        self.previous: _Period | None = None  # kept for late events

    def period_for(self, ts: int) -> _Period | None:
        cur = self.current
        if cur is not None and cur.start_ms <= ts < cur.end_ms:
            return cur
        prev = self.previous
        if prev is not None and prev.start_ms <= ts < prev.end_ms:
            return prev
        # Keep the current period and the one just before it, for late events.
        p = _Period(*period_bounds(self.rule.period, ts))
        if cur is None or ts >= cur.end_ms:
            self.previous = cur if cur is not None and cur.end_ms == p.start_ms else None
            self.current = p
            return p
        if prev is None and p.end_ms == cur.start_ms:
            self.previous = p
            return p
        return None  # older than the periods we keep

    def matches(self, event: Any) -> bool:
        s = self.rule.scope
        if s.tenant is not None and s.tenant != event.tenant:
            return False
        if s.workflow is not None and s.workflow != event.workflow:
            return False
        if s.model is not None and s.model != event.model and s.model != getattr(event, "response_model", ""):
            return False
        return True


# --- the processor ---------------------------------------------------------------------


class BudgetTracker:
    """Feed every priced event: `process(event, cost_usd)`; returns new findings.

        budgets = BudgetTracker.from_config(settings.budgets)
        findings = budgets.process(event, priced.cost_usd)
    """

    def __init__(
        self,
        rules: BudgetsConfig | list[BudgetRule] | tuple[BudgetRule, ...] = (),
        min_elapsed_ms: int = 15 * MINUTE_MS,
        min_window_events: int = 5,
    ):
        rules = rules.rules if isinstance(rules, BudgetsConfig) else tuple(rules)
        self.rules = [_RuleState(r) for r in rules]
        self.min_elapsed_ms = min_elapsed_ms
        self.min_window_events = min_window_events
        self.late_dropped = 0

    @classmethod
    def from_config(cls, raw: list[dict[str, Any]] | None, **kwargs: Any) -> BudgetTracker:
        return cls(BudgetsConfig.from_config(raw), **kwargs)

    def process(self, event: Any, cost_usd: float | None, detected_at: int | None = None) -> list[Finding]:
        if not cost_usd or not self.rules:  # None or 0: nothing to add, nothing can cross
            return []
        out: list[Finding] = []
        for st in self.rules:
            if st.matches(event):
                self._add(st, event, cost_usd, detected_at, out)
        return out

    def seed(self, rule_id: str, ts_ms: int, spend_usd: float) -> None:
        """Restore a period's spend after a restart (e.g. summed from ClickHouse for the
        rule's scope). Thresholds it already passes count as fired: they were emitted
        before, with the same ids. Call before feeding events of that period."""
        for st in self.rules:
            if st.rule_id == rule_id:
                p = st.period_for(ts_ms)
                if p is None:
                    return
                p.spend = spend_usd
                limit = st.rule.limit_usd
                p.fired = sum(spend_usd >= limit * pct / 100 for pct, _ in THRESHOLDS)
                return
        raise KeyError(f"no budget rule {rule_id!r}")

    def snapshot(self) -> list[tuple]:
        """What the periods kept know beyond a replay window: per rule, previous period first,
        (rule_id, period start ms, spend, thresholds fired, burn fired, first ts, last ts). The
        scaled scope stage commits it with its offsets (processors/runtime/scaled.py)."""
        out = []
        for st in self.rules:
            for p in (st.previous, st.current):
                if p is not None:
                    out.append((st.rule_id, p.start_ms, p.spend, p.fired, p.burn_fired, p.first_ts, p.last_ts))
        return out

    def restore(self, snapshot: list[tuple]) -> int:
        """Apply a `snapshot` taken at the point a replay has just brought this tracker to: the
        spend and what fired are the snapshot's (the replay saw only its window of them), the
        burn-rate window stays the replay's. Rules no longer configured are left out; returns
        the periods restored."""
        by_id = {st.rule_id: st for st in self.rules}
        n = 0
        for rule_id, start_ms, spend, fired, burn_fired, first_ts, last_ts in snapshot:
            st = by_id.get(rule_id)
            p = st.period_for(start_ms) if st is not None else None
            if p is None or p.start_ms != start_ms:
                continue  # a rule whose period changed with the config
            p.spend, p.fired, p.burn_fired = spend, min(int(fired), len(THRESHOLDS)), bool(burn_fired)
            if first_ts is not None:
                p.first_ts = first_ts if p.first_ts is None else min(first_ts, p.first_ts)
            if last_ts is not None:
                p.last_ts = last_ts if p.last_ts is None else max(last_ts, p.last_ts)
            n += 1
        return n

    def flush(self) -> list[Finding]:
        """End of a replay: findings fire at their crossing event, none is held back."""
        return []

    def advance(self, watermark_ms: int) -> list[Finding]:
        """Nothing is timed: a threshold fires at the event that crosses it."""
        return []

    def stats(self) -> dict[str, int]:
        return {"rules": len(self.rules), "late_dropped": self.late_dropped}

    def _add(self, st: _RuleState, event: Any, cost: float, detected_at: int | None, out: list[Finding]) -> None:
        ts = event.ts
        p = st.period_for(ts)
        if p is None:
            self.late_dropped += 1
            return
        p.spend += cost
        p.first_ts = ts if p.first_ts is None or ts < p.first_ts else p.first_ts
        p.last_ts = ts if p.last_ts is None or ts > p.last_ts else p.last_ts
        p.window.add(ts // MINUTE_MS, cost)
        limit = st.rule.limit_usd
        while p.fired < len(THRESHOLDS) and p.spend >= limit * THRESHOLDS[p.fired][0] / 100:
            out.append(self._threshold(st, p, event, detected_at))
            p.fired += 1
        if not p.burn_fired and p.fired < len(THRESHOLDS):
            f = self._burn(st, p, event, detected_at)
            if f is not None:
                p.burn_fired = True
                out.append(f)

    def _threshold(self, st: _RuleState, p: _Period, event: Any, detected_at: int | None) -> Finding:
        pct, severity = THRESHOLDS[p.fired]
        limit = st.rule.limit_usd
        return self._finding(
            st, event, detected_at,
            fid=finding_id("budget_threshold", st.rule_id, p.key, pct),
            kind="budget_threshold",
            severity=severity,
            title=f"Budget {st.rule_id} at {pct}% for {p.key}: ${p.spend:.2f} of ${limit:.2f}",
            value=p.spend,
            threshold=limit * pct / 100,
            evidence={"threshold_pct": pct, "spend_usd": p.spend, "limit_usd": limit, "period": p.key},
        )

    def _burn(self, st: _RuleState, p: _Period, event: Any, detected_at: int | None) -> Finding | None:
        w = p.window
        elapsed = p.last_ts - p.first_ts
        if elapsed < self.min_elapsed_ms or w.events < self.min_window_events:
            return None
        span_ms = min(HOUR_MS, elapsed)
        rate_per_ms = w.spend / span_ms
        projected = p.spend + rate_per_ms * max(0, p.end_ms - p.last_ts)
        limit = st.rule.limit_usd
        if projected <= limit:
            return None
        return self._finding(
            st, event, detected_at,
            fid=finding_id("budget_burn_rate", st.rule_id, p.key),
            kind="budget_burn_rate",
            severity="high",
            title=f"Budget {st.rule_id} on course for ${projected:.2f} of ${limit:.2f} in {p.key}",
            value=projected,
            threshold=limit,
            evidence={
                "rate_usd_per_hour": rate_per_ms * HOUR_MS,
                "window_spend_usd": w.spend,
                "window_minutes": span_ms / MINUTE_MS,
                "window_events": w.events,
                "spend_usd": p.spend,
                "limit_usd": limit,
                "projected_usd": projected,
                "period": p.key,
            },
        )

    @staticmethod
    def _finding(st: _RuleState, event: Any, detected_at: int | None, *, fid: str, evidence: dict, **kw: Any) -> Finding:
        s = st.rule.scope
        evidence = {**evidence, "rule": st.rule_id, "event_id": event.event_id}
        return Finding(
            finding_id=fid,
            detected_at=event.ts if detected_at is None else detected_at,
            event_ts=event.ts,
            tenant=s.tenant or "",
            workflow=s.workflow or "",
            model=s.model or "",
            evidence=evidence,
            **kw,
        )
