from __future__ import annotations

from datetime import datetime, timezone

import pytest

from llmpulse.processors.budgets import BudgetsConfig, BudgetTracker, period_bounds
from llmpulse.schemas.contract import Output

MIN = 60_000


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() * 1000)


DAY0 = ms("2025-11-03T00:00:00")
_n = 0


def ev(ts: int, tenant: str = "acme", workflow: str = "support-bot", model: str = "gpt-4o",
       response_model: str = "") -> Output:
    global _n
    _n += 1
    return Output(event_id=f"e{_n}", ts=ts, trace_id=f"t{_n}", workflow=workflow, tenant=tenant,
                  model=model, response_model=response_model, status="ok", latency_ms=1.0)


def tracker(limit: float = 50.0, period: str = "day", **scope) -> BudgetTracker:
    scope = scope or {"tenant": "acme", "workflow": "support-bot"}
    # Burn-rate off (needs an impossible amount of data) unless a test turns it on.
    return BudgetTracker.from_config([{"scope": scope, "period": period, "limit_usd": limit}],
                                     min_elapsed_ms=10**15)


def test_thresholds_fire_once_each_at_the_crossing_event():
    t = tracker(limit=50)
    fired = []
    for i in range(60):  # $1 per minute
        e = ev(DAY0 + i * MIN)
        for f in t.process(e, 1.0):
            fired.append((i, f))
    assert [(i, f.evidence["threshold_pct"], f.severity) for i, f in fired] == [
        (24, 50, "low"),  # spend reaches $25 on the 25th event
        (39, 80, "medium"),  # $40
        (49, 100, "critical"),  # $50
    ]
    f50 = fired[0][1]
    assert f50.kind == "budget_threshold" and f50.value == pytest.approx(25.0) and f50.threshold == 25.0
    assert (f50.tenant, f50.workflow, f50.model) == ("acme", "support-bot", "")
    assert f50.event_ts == DAY0 + 24 * MIN == f50.detected_at
    assert f50.evidence["period"] == "2025-11-03"
    assert len({f.finding_id for _, f in fired}) == 3


def test_one_event_jumping_two_thresholds_emits_both_in_order():
    t = tracker(limit=10)
    assert t.process(ev(DAY0), 4.0) == []
    found = t.process(ev(DAY0 + MIN), 5.0)  # 40 % -> 90 %
    assert [f.evidence["threshold_pct"] for f in found] == [50, 80]


def test_new_period_starts_fresh_with_new_ids_and_replay_gives_same_ids():
    def run():
        t = tracker(limit=10)
        return t.process(ev(DAY0 + 3_600_000), 6.0) + t.process(ev(DAY0 + 86_400_000 + 60_000), 6.0)

    first = run()
    assert [f.evidence["period"] for f in first] == ["2025-11-03", "2025-11-04"]
    assert first[0].finding_id != first[1].finding_id
    assert [f.finding_id for f in run()] == [f.finding_id for f in first]


def test_scope_matching():
    t = tracker(limit=10)
    assert t.process(ev(DAY0, workflow="other"), 100.0) == []
    assert t.process(ev(DAY0, tenant="globex"), 100.0) == []
    assert len(t.process(ev(DAY0), 6.0)) == 1

    by_model = tracker(limit=10, model="gpt-4o")
    assert len(by_model.process(ev(DAY0, model="gpt-4o-mini", response_model="gpt-4o"), 6.0)) == 1
    assert by_model.process(ev(DAY0, model="gpt-4o-mini"), 6.0) == []

    fleet = BudgetTracker.from_config([{"period": "day", "limit_usd": 10}])
    assert len(fleet.process(ev(DAY0, tenant="anyone", workflow="any"), 6.0)) == 1


def test_unpriced_and_zero_cost_add_nothing():
    t = tracker(limit=1)
    assert t.process(ev(DAY0), None) == []
    assert t.process(ev(DAY0), 0.0) == []
    assert t.rules[0].current is None


def test_month_period_bounds_and_rollover():
    assert period_bounds("month", ms("2025-12-31T23:59:59")) == (
        "2025-12", ms("2025-12-01T00:00:00"), ms("2026-01-01T00:00:00"))
    assert period_bounds("day", ms("2025-12-31T23:59:59"))[0] == "2025-12-31"
    t = tracker(limit=100, period="month")
    assert t.process(ev(ms("2025-11-30T23:00:00")), 30.0) == []
    assert t.process(ev(ms("2025-12-01T01:00:00")), 30.0) == []  # new month: $30 only
    found = t.process(ev(ms("2025-12-15T00:00:00")), 30.0)
    assert [(f.evidence["period"], f.evidence["threshold_pct"]) for f in found] == [("2025-12", 50)]


def test_late_events_count_in_their_own_period_and_old_ones_are_dropped():
    t = tracker(limit=10)
    t.process(ev(DAY0 + 86_400_000), 1.0)  # day 2 opens
    late = t.process(ev(DAY0 + 1000), 6.0)  # day 1 event arriving late
    assert [f.evidence["period"] for f in late] == ["2025-11-03"]
    t.process(ev(DAY0 + 2 * 86_400_000), 1.0)  # day 3: day 1 is no longer kept
    assert t.process(ev(DAY0 + 2000), 100.0) == []
    assert t.late_dropped == 1


def test_burn_rate_fires_once_after_enough_data():
    # $1 a minute = $60/hour against $50/day: on course for ~$1400 after 15 minutes of data.
    t = BudgetTracker.from_config([{"scope": {"tenant": "acme"}, "period": "day", "limit_usd": 50}])
    burns = []
    for i in range(40):
        burns += [(i, f) for f in t.process(ev(DAY0 + i * MIN), 1.0) if f.kind == "budget_burn_rate"]
    assert len(burns) == 1
    i, f = burns[0]
    assert i == 15  # first event with 15 minutes of data behind it
    # 16 dollars over 15 minutes, projected over the 23h45m left, plus the 16 spent.
    assert f.evidence["rate_usd_per_hour"] == pytest.approx(16 * 4)
    assert f.value == pytest.approx(16 + 64 * 23.75)
    assert f.severity == "high" and f.threshold == 50


def test_burn_rate_ignores_a_single_spike_and_a_sustainable_rate():
    t = BudgetTracker.from_config([{"period": "day", "limit_usd": 50}])
    spike = t.process(ev(DAY0), 20.0) + t.process(ev(DAY0 + 20 * MIN), 0.01)  # 2 events only
    assert [f.kind for f in spike] == []
    slow = BudgetTracker.from_config([{"period": "day", "limit_usd": 50}])
    found = []
    for i in range(120):  # $0.02 a minute = $28.80 a day
        found += slow.process(ev(DAY0 + i * MIN), 0.02)
    assert found == []


def test_burn_rate_uses_trailing_hour_only():
    # A busy first hour then a quiet one: the rate is the quiet hour's.
    t = BudgetTracker.from_config([{"period": "day", "limit_usd": 1000}], min_elapsed_ms=15 * MIN)
    for i in range(0, 60, 10):
        t.process(ev(DAY0 + i * MIN), 0.001)
    period = t.rules[0].current
    for i in range(61, 180):
        t.process(ev(DAY0 + i * MIN), 0.001)
    assert period.window.events == 60 and period.window.spend == pytest.approx(0.06)


def test_burn_rate_not_raised_after_limit_reached():
    t = BudgetTracker.from_config([{"period": "day", "limit_usd": 5}])
    kinds = []
    for i in range(30):
        kinds += [f.kind for f in t.process(ev(DAY0 + i * MIN), 1.0)]
    assert kinds.count("budget_threshold") == 3 and "budget_burn_rate" not in kinds


def test_config_validation():
    with pytest.raises(ValueError):
        BudgetsConfig.from_config([{"period": "week", "limit_usd": 1}])
    with pytest.raises(ValueError):
        BudgetsConfig.from_config([{"scope": {"team": "x"}, "period": "day", "limit_usd": 1}])
    with pytest.raises(ValueError, match="share a scope"):
        BudgetsConfig.from_config([{"period": "day", "limit_usd": 1}, {"period": "day", "limit_usd": 2}])
    named = BudgetsConfig.from_config([{"period": "day", "limit_usd": 1},
                                       {"period": "day", "limit_usd": 2, "name": "hard-cap"}])
    assert [r.rule_id for r in named.rules] == ["all/day", "hard-cap"]


def test_the_tracker_counts_what_it_is_fed_duplicates_are_dropped_before_it():
    """The issue's false page: a duplicate re-sent after more than 100,000 other events (and
    with a new ts) raised 80 % and 100 %. The tracker keeps no id memory; the Deduper in
    front of it (as in the pipeline) drops the duplicate however much traffic came between."""
    from llmpulse.processors.dedup import DedupConfig, Deduper, MemoryIdStore

    store = MemoryIdStore()
    deduper = Deduper(DedupConfig(expected_ids=50_000), store.lookup, primed=True)
    t = tracker(limit=10, tenant="acme")

    def feed(events: list[Output], costs: list[float]) -> list:
        fresh = deduper.split([e.event_id for e in events])
        store.record(e.event_id for e, keep in zip(events, fresh) if keep)
        return [f for e, c, keep in zip(events, costs, fresh) if keep for f in t.process(e, c)]

    first = ev(DAY0)
    assert [f.evidence["threshold_pct"] for f in feed([first], [7.0])] == [50]
    others = [ev(DAY0 + 1 + i // 100, tenant="other") for i in range(200_000)]
    for i in range(0, len(others), 10_000):
        feed(others[i:i + 10_000], [0.01] * 10_000)
    again = Output(**{**{f: getattr(first, f) for f in first.__struct_fields__}, "ts": DAY0 + 3_600_000})
    assert feed([again, again], [7.0, 7.0]) == []  # stored before, and twice in its batch
    assert deduper.stats["duplicates_stored"] == 1 and deduper.stats["duplicates_in_batch"] == 1
    # Meanwhile the filter filled three generations and hit its memory bound.
    assert deduper.stats["rotations"] == 2 and deduper.stats["saturated"] == 1
    assert [f.evidence["threshold_pct"] for f in feed([ev(DAY0 + 2)], [1.0])] == [80]


def test_seed_after_restart_does_not_refire_passed_thresholds():
    t = tracker(limit=10)
    t.seed("tenant=acme,workflow=support-bot/day", DAY0 + 5_000, 8.5)  # 85 %: 50 and 80 fired before
    found = t.process(ev(DAY0 + 10_000), 2.0)
    assert [f.evidence["threshold_pct"] for f in found] == [100]
    assert found[0].value == pytest.approx(10.5)
    with pytest.raises(KeyError):
        t.seed("nope", DAY0, 1.0)


# --- snapshot and restore: a takeover that replays only a window (processors/runtime/scaled.py) --

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402


def _key(f) -> tuple:
    return (f.finding_id, f.kind, round(f.value, 6), f.event_ts)


@hsettings(max_examples=150, deadline=None)
@given(gaps=st.lists(st.integers(0, 40 * MIN), min_size=2, max_size=120),
       costs=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=120, max_size=120),
       cut=st.floats(0.01, 0.99), limit=st.floats(5.0, 80.0), period=st.sampled_from(["day", "month"]))
def test_a_window_replay_plus_the_snapshot_goes_on_as_the_tracker_that_saw_everything(gaps, costs, cut, limit, period):
    rules = [{"scope": {"tenant": "acme"}, "period": period, "limit_usd": limit},
             {"period": "day", "limit_usd": limit / 2, "name": "all/day"}]
    ts, events = DAY0 + 20 * 3_600_000, []  # 20:00: the traffic crosses midnight
    for g, c in zip(gaps, costs):
        ts += g
        events.append((ev(ts), c))
    k = max(1, int(len(events) * cut))
    whole = BudgetTracker.from_config(rules)
    for e, c in events[:k]:
        whole.process(e, c)
    snap = whole.snapshot()
    taken = BudgetTracker.from_config(rules)
    head = events[k - 1][0].ts
    for e, c in events[:k]:  # the replay: the trailing hour's window only
        if e.ts >= head - 61 * MIN:
            taken.process(e, c)
    taken.restore(snap)
    assert taken.snapshot() == snap
    after_whole = [_key(f) for e, c in events[k:] for f in whole.process(e, c)]
    after_taken = [_key(f) for e, c in events[k:] for f in taken.process(e, c)]
    assert after_taken == after_whole


def test_without_the_snapshot_a_window_replay_forgets_the_periods_spend():
    """Why the scaled scope stage commits it: 30 $1 events, a replay of the last 5, then 20 more.
    The tracker that saw everything fires 80 % and 100 %; the window alone fires 50 % again."""
    rules = [{"scope": {"tenant": "acme"}, "period": "day", "limit_usd": 50}]
    events = [ev(DAY0 + i * MIN) for i in range(50)]
    whole = BudgetTracker.from_config(rules)
    for e in events[:30]:
        whole.process(e, 1.0)
    window, restored = BudgetTracker.from_config(rules), BudgetTracker.from_config(rules)
    for e in events[25:30]:
        window.process(e, 1.0)
        restored.process(e, 1.0)
    assert restored.restore(whole.snapshot()) == 1
    pct = lambda t: [f.evidence.get("threshold_pct") for e in events[30:] for f in t.process(e, 1.0)
                     if f.kind == "budget_threshold"]
    assert pct(whole) == pct(restored) == [80, 100]
    assert pct(window) == [50]


def test_a_snapshot_of_a_rule_no_longer_configured_is_left_out():
    old = BudgetTracker.from_config([{"period": "day", "limit_usd": 10, "name": "gone"}])
    old.process(ev(DAY0), 4.0)
    new = BudgetTracker.from_config([{"period": "day", "limit_usd": 10, "name": "kept"}])
    assert new.restore(old.snapshot()) == 0 and new.snapshot() == []


def test_a_burn_rate_that_fired_before_the_window_is_not_raised_again_after_a_restore():
    rules = [{"scope": {"tenant": "acme"}, "period": "day", "limit_usd": 100}]
    t0 = DAY0 + 3_600_000
    early = [(ev(t0 + i * MIN), 3.0) for i in range(20)]  # $60 in 20 min: on course for far more
    quiet = [(ev(t0 + 20 * MIN + i * 10 * MIN), 0.01) for i in range(18)]  # 3 hours of cents
    burst = [(ev(t0 + 200 * MIN + i * MIN), 2.0) for i in range(10)]
    whole = BudgetTracker.from_config(rules)
    kinds = [f.kind for e, c in early + quiet for f in whole.process(e, c)]
    assert kinds.count("budget_burn_rate") == 1
    taken = BudgetTracker.from_config(rules)
    head = quiet[-1][0].ts
    assert [f for e, c in early + quiet if e.ts >= head - 61 * MIN for f in taken.process(e, c)] == []
    taken.restore(whole.snapshot())
    after = lambda t: sorted(f.kind for e, c in burst for f in t.process(e, c))
    assert after(whole) == after(taken) == ["budget_threshold"]  # 80 %, no second burn-rate page
