"""Budget state after a restart: each rule's spend so far, summed from ClickHouse.

BudgetTracker keeps spend in memory. A restarted worker calls `seed_budgets` once,
after migrations and before the first batch, so a budget does not forget the spend
of the period (and does not raise its 50/80/100 % findings a second time: `seed`
counts thresholds the spend already passes as fired, and they were emitted before,
with the same ids).

Order with the detector warm-up (`warm_up` in processors/runtime/worker.py, which replays the
last `warmup_minutes` of stored events through the detectors): seed AFTER it. `seed`
overwrites the period's spend with the full sum, so the warmed events are counted once
and the warm-up's burn-rate window and dedupe ids stay. Seeding first would add the
warmed events on top of a sum that already holds them (checked: $1.25 instead of $1.00).

Why this is exact with the ingest loop: the sink stores findings before events and
commits offsets after both, and `ClickHouseSink.unseen` drops re-delivered messages
whose rows are stored before the pipeline sees them. So every event counted in
ClickHouse is never fed to the tracker again, and every event fed after the seed is
not in ClickHouse yet.

Spend = sum(price_usd) of `output` rows under FINAL (what the pipeline fed the tracker:
unpriced rows add nothing), in the rule's scope (model matches `model` or
`response_model`, as in the tracker), for the UTC period holding `now_ms` and the one
before it (the tracker keeps that one for late events). `now_ms` is event time: pass
the wall clock for live traffic. The burn-rate window and whether `budget_burn_rate`
fired come from the warm-up, not from here (without a warm-up a repeat has the same
finding_id, so the `findings` table keeps one row).

No I/O import here: `client` is any clickhouse-connect client.
"""

from __future__ import annotations

from typing import Any

from llmpulse.processors.budgets import BudgetTracker, period_bounds


def seed_budgets(tracker: BudgetTracker, client: Any, database: str, now_ms: int) -> dict[str, float]:
    """Seed every rule's current (and previous) period; returns {rule_id: current spend}."""
    seeded: dict[str, float] = {}
    for st in tracker.rules:
        rule = st.rule
        _, cur_start, cur_end = period_bounds(rule.period, now_ms)
        _, prev_start, _ = period_bounds(rule.period, cur_start - 1)
        where = ["event_type = 'output'", "ts >= fromUnixTimestamp64Milli({lo:Int64})",
                 "ts < fromUnixTimestamp64Milli({hi:Int64})"]
        params: dict[str, Any] = {"lo": prev_start, "hi": cur_end, "mid": cur_start}
        scope = rule.scope
        if scope.tenant is not None:
            where.append("tenant = {tenant:String}")
            params["tenant"] = scope.tenant
        if scope.workflow is not None:
            where.append("workflow = {workflow:String}")
            params["workflow"] = scope.workflow
        if scope.model is not None:
            where.append("(model = {model:String} OR response_model = {model:String})")
            params["model"] = scope.model
        rows = client.query(
            "SELECT sumIf(price_usd, ts < fromUnixTimestamp64Milli({mid:Int64})), "
            "sumIf(price_usd, ts >= fromUnixTimestamp64Milli({mid:Int64})) "
            f"FROM {database}.events FINAL WHERE " + " AND ".join(where),
            parameters=params,
        ).result_rows
        previous, current = (float(v or 0.0) for v in rows[0]) if rows else (0.0, 0.0)
        # Previous period first: the tracker keeps it beside the current one only when
        # it is created before the current one.
        if previous:
            tracker.seed(st.rule_id, prev_start, previous)
        tracker.seed(st.rule_id, cur_start, current)
        seeded[st.rule_id] = current
    return seeded
