"""A condition opened by a sequential test on a key too quiet for the window tests clears on
its own evidence, so a later incident of the same kind (or one a token spike would hold back)
on that key is found; and a change does not claim a spike that began before it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmpulse.processors.anomalies import AnomalyDetector
from llmpulse.processors.anomalies.stats import median, p95_and_median, quantile
from llmpulse.schemas.contract import Change

from tests.unit.test_anomalies_evidence import MIN, T0, calls, clock, run


def _burst(m: int, *starts: int) -> float:
    return 0.3 if any(s <= m < s + 10 for s in starts) else 0.01


def test_second_error_burst_on_a_ten_call_key_is_found_too():
    # 10 calls/min never fills a minute window (min_calls 20): the first burst's condition
    # opens on the CUSUM and used to stay open all day, silencing the second burst.
    for seed in range(3):
        found = run(calls(10, 200, seed, error=lambda m: _burst(m, 80, 150), rate_noise=0.0))
        errs = [f for f in found if f.kind == "error_rate_spike"]
        assert len(errs) == 2, (seed, [(f.kind, (f.event_ts - T0) // MIN) for f in found])
        assert 80 * MIN <= errs[0].event_ts - T0 <= 92 * MIN and 150 * MIN <= errs[1].event_ts - T0 <= 162 * MIN


def test_open_condition_on_a_quiet_key_resolves_when_the_calls_are_normal_again():
    det = AnomalyDetector(clock=clock)
    out = []
    for e in sorted(calls(10, 130, 5, error=lambda m: _burst(m, 80), rate_noise=0.0), key=lambda e: (e.ts, e.event_id)):
        out += det.process(e, e.cost_usd)
    out += det.flush()
    opened = [f for f in out if f.kind == "error_rate_spike" and f.status == "open"]
    resolved = [f for f in out if f.kind == "error_rate_spike" and f.status == "resolved"]
    assert len(opened) == 1 and [f.finding_id for f in resolved] == [opened[0].finding_id]
    assert resolved[0].evidence["resolved_reason"] == "cleared"
    assert resolved[0].event_ts - T0 <= 100 * MIN  # within ~10 minutes of the burst's end


def test_latency_regression_that_began_before_a_change_is_its_own_finding():
    # 30 calls/min; latency x3 from minute 80, a prompt edit at minute 84: the change must not
    # be blamed for the latency (nor swallow the key's own finding).
    evs = calls(30, 110, 3, lat=lambda m: 3.0 if 80 <= m < 95 else 1.0)
    ch = Change(event_id="chg", ts=T0 + 84 * MIN + 5_000, trace_id="deploy", tenant="acme", workflow="wf",
                change_kind="prompt_edit", description="benign edit")
    det, found = AnomalyDetector(clock=clock), []
    for e in sorted(evs + [ch], key=lambda e: (e.ts, e.event_id)):
        found += det.process(e, getattr(e, "cost_usd", None))
    found = [f for f in found + det.flush() if f.status == "open"]
    kinds = [f.kind for f in found]
    assert "latency_regression" in kinds, kinds
    assert not any(f.kind == "regression_after_change" and "latency" in f.title for f in found), found


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=300))
def test_p95_and_median_from_one_sort_equal_the_two_statistics(xs):
    assert p95_and_median(xs) == (quantile(xs, 0.95), median(xs))
