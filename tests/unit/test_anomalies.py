"""Anomaly detection: windows, baselines, lifecycle, lateness, changes, evals, replay."""

from __future__ import annotations

import random

import msgspec
import pytest

from llmpulse.processors.anomalies import AnomalyConfig, AnomalyDetector, binom_sf, poisson_cdf
from llmpulse.schemas.contract import Change, Eval, Message, Output, Prompt, Usage

MIN = 60_000
T0 = 1_772_409_600_000  # a minute boundary


def clock() -> int:
    return 7


def traffic(minutes: int, rate: int = 60, seed: int = 1, start: int = T0, model: str = "m", workflow: str = "wf",
            effect=None) -> list:
    """Steady, noisy calls for one key; `effect(minute_index)` returns overrides for that minute."""
    rng = random.Random(seed)
    events = []
    for m in range(minutes):
        eff = {"error": 0.01, "refusal": 0.01, "lat": 1.0, "tokens": 1.0, "cost": 1.0, "rate": 1.0, "evals": 0.9}
        eff.update(effect(m) if effect else {})
        n = max(0, int(rng.gauss(rate * eff["rate"], (rate * eff["rate"]) ** 0.5)))
        for i in range(n):
            ts = start + m * MIN + rng.randrange(MIN)
            r = rng.random()
            status = "error" if r < eff["error"] else "refusal" if r < eff["error"] + eff["refusal"] else "ok"
            tokens = int(1000 * eff["tokens"] * rng.lognormvariate(0, 0.3))
            events.append(Output(
                event_id=f"{seed}-{model}-{m}-{i}", ts=ts, trace_id=f"tr-{seed}-{m}-{i}", tenant="acme",
                workflow=workflow, model=model, status=status,
                latency_ms=1000 * eff["lat"] * rng.lognormvariate(0, 0.3),
                usage=Usage(input_tokens=tokens, output_tokens=100) if status == "ok" else None,
                cost_usd=tokens * 1e-5 * eff["cost"] if status == "ok" else None,
            ))
            if status == "ok" and rng.random() < 0.5:
                events.append(Eval(event_id=f"ev-{seed}-{model}-{m}-{i}", ts=ts + 1000, trace_id=f"tr-{seed}-{m}-{i}",
                                   tenant="acme", workflow=workflow, eval_name="faithful",
                                   passed=rng.random() < eff["evals"]))
    return sorted(events, key=lambda e: (e.ts, e.event_id))


def run(events, det: AnomalyDetector | None = None) -> list:
    det = det or AnomalyDetector(clock=clock)
    out = []
    for e in events:
        out += det.process(e, getattr(e, "cost_usd", None))
    return out + det.flush()


def spike(kind_key: str, value: float, start: int = 60, length: int = 10):
    return lambda m: {kind_key: value} if start <= m < start + length else {}


def test_statistics_helpers():
    assert binom_sf(0, 10, 0.1) == 1.0
    assert binom_sf(3, 10, 0.5) == pytest.approx(0.9453125)
    assert poisson_cdf(2, 2.0) == pytest.approx(0.6766764, rel=1e-6)


def test_quiet_traffic_raises_nothing():
    assert run(traffic(180)) == []


def test_a_quiet_key_is_watched_but_a_few_errors_do_not_page():
    # 5 calls/min: evidence pools over minutes. Every call failing for 10 minutes pages (it
    # used to be below min_calls a minute, unwatched); a few errors in a row do not.
    opened = [f for f in run(traffic(120, rate=5, effect=spike("error", 1.0))) if f.status == "open"]
    assert [f.kind for f in opened] == ["error_rate_spike"]
    assert T0 + 60 * MIN < opened[0].event_ts <= T0 + 65 * MIN
    assert run(traffic(120, rate=5, effect=spike("error", 0.4, length=1))) == []


def test_error_spike_opens_once_and_resolves_once():
    out = run(traffic(120, effect=spike("error", 0.4)))
    assert [(f.kind, f.status) for f in out] == [("error_rate_spike", "open"), ("error_rate_spike", "resolved")]
    opened, resolved = out
    assert opened.finding_id == resolved.finding_id
    assert T0 + 60 * MIN < opened.event_ts <= T0 + 62 * MIN  # within two minutes of the start
    assert T0 + 70 * MIN < resolved.event_ts <= T0 + 74 * MIN
    assert opened.tenant == "acme" and opened.workflow == "wf" and opened.model == "m"
    assert opened.severity in ("high", "critical") and opened.evidence["baseline"] < 0.05
    assert opened.evidence["window_end"] == opened.event_ts


@pytest.mark.parametrize(
    "kind, key, value",
    [("refusal_spike", "refusal", 0.35), ("latency_regression", "lat", 2.5), ("token_spike", "tokens", 4.0),
     ("cost_spike", "cost", 3.0), ("traffic_drop", "rate", 0.05)],
)
def test_each_spike_kind_opens_once_and_resolves(kind, key, value):
    out = run(traffic(120, effect=spike(key, value)))
    assert [(f.kind, f.status) for f in out] == [(kind, "open"), (kind, "resolved")]
    assert T0 + 60 * MIN < out[0].event_ts <= T0 + 62 * MIN


def test_token_spike_is_not_also_a_cost_spike():
    # More tokens cost more: one finding (token_spike), not two.
    out = run(traffic(120, effect=lambda m: {"tokens": 4.0, "cost": 1.0} if 60 <= m < 70 else {}))
    assert {f.kind for f in out} == {"token_spike"}


def test_late_events_within_lateness_are_counted_and_later_ones_dropped():
    events = traffic(90, effect=spike("error", 0.5, start=60, length=5))
    in_order = run(events)
    # Deliver every error of the spike 25 s late (allowed lateness is 30 s).
    late = sorted(events, key=lambda e: (e.ts + (25_000 if getattr(e, "status", "") == "error" and e.ts >= T0 + 60 * MIN else 0), e.event_id))
    det = AnomalyDetector(clock=clock)
    assert run(late, det) == in_order
    assert det.late_dropped == 0
    # Ten minutes late: its window is closed and judged; the event is counted as dropped.
    det = AnomalyDetector(clock=clock)
    stray = Output(event_id="stray", ts=T0 + 30 * MIN, trace_id="x", workflow="wf", model="m", status="ok",
                   latency_ms=1.0)
    run(events[: len(events) // 2] + [stray], det)
    assert det.late_dropped == 1


def test_replay_gives_identical_findings():
    events = traffic(120, effect=spike("error", 0.4)) + traffic(120, seed=2, model="m2", effect=spike("lat", 3.0, 80))
    events.sort(key=lambda e: (e.ts, e.event_id))
    first, second = run(events), run(list(events))
    assert first == second and len(first) == 4
    rng = random.Random(5)  # arrival jitter within the allowed lateness: same findings
    jittered = sorted(events, key=lambda e: e.ts + rng.uniform(0, 20_000))
    assert run(jittered) == first


def test_regression_after_change_names_the_change_instead_of_a_spike():
    change = Change(event_id="deploy-7", ts=T0 + 60 * MIN + 5_000, workflow="wf", tenant="acme",
                    change_kind="prompt_edit", description="shorter system prompt")
    events = traffic(100, effect=lambda m: {"refusal": 0.3} if m >= 60 else {}) + [change]
    events.sort(key=lambda e: (e.ts, e.event_id))
    out = run(events)
    opened = [f for f in out if f.status == "open"]
    assert [f.kind for f in opened] == ["regression_after_change"]
    f = opened[0]
    assert f.evidence["change_event_id"] == "deploy-7" and T0 + 60 * MIN < f.event_ts <= T0 + 62 * MIN
    assert "refusal_rate" in f.title


def test_a_cusum_alarm_waits_for_the_change_it_belongs_to():
    # 120 calls/min, refusals to 50 % two seconds after a prompt edit: the CUSUM is sure within
    # seconds, before the change's minute closes (when changes activate). It must not page a
    # bare refusal_spike: the finding is the change's, from the CUSUM's evidence.
    change = Change(event_id="deploy-8", ts=T0 + 60 * MIN + 2_000, workflow="wf", tenant="acme",
                    change_kind="prompt_edit", description="stricter system prompt")
    events = traffic(100, rate=120, effect=lambda m: {"refusal": 0.5} if m >= 60 else {}) + [change]
    events.sort(key=lambda e: (e.ts, e.event_id))
    opened = [f for f in run(events) if f.status == "open"]
    assert [f.kind for f in opened] == ["regression_after_change"]
    assert opened[0].evidence["change_event_id"] == "deploy-8"
    assert opened[0].evidence["metrics"][0]["method"] == "cusum"
    assert T0 + 60 * MIN < opened[0].event_ts < T0 + 61 * MIN


def test_benign_change_and_rollback_raise_nothing():
    events = traffic(120) + [
        Change(event_id="c1", ts=T0 + 50 * MIN, workflow="wf", tenant="acme", change_kind="config"),
        Change(event_id="c2", ts=T0 + 80 * MIN, workflow="wf", tenant="acme", change_kind="rollback"),
    ]
    assert run(sorted(events, key=lambda e: (e.ts, e.event_id))) == []


def test_model_swap_moves_traffic_without_a_traffic_drop():
    swap_at = T0 + 60 * MIN
    old = [e for e in traffic(120) if e.ts < swap_at]
    new = [e for e in traffic(120, seed=3, model="m-new") if e.ts >= swap_at]
    change = Change(event_id="swap", ts=swap_at, workflow="wf", tenant="acme", change_kind="model_swap",
                    from_value="m", to_value="m-new")
    assert run(sorted(old + new + [change], key=lambda e: (e.ts, e.event_id))) == []


def test_eval_regression():
    out = run(traffic(120, effect=spike("evals", 0.4)))
    kinds = [(f.kind, f.status) for f in out]
    assert kinds == [("eval_regression", "open"), ("eval_regression", "resolved")]
    assert out[0].evidence["eval_name"] == "faithful"


def test_per_workflow_override():
    events = traffic(120, effect=spike("error", 0.4))
    det = AnomalyDetector(clock=clock, overrides={"wf": {"rate_min_delta": 0.6}})
    assert run(events, det) == []
    with pytest.raises(ValueError):
        AnomalyDetector(overrides={"wf": {"no_such_setting": 1}})


def test_lasting_shift_is_accepted_as_the_new_normal():
    cfg = AnomalyConfig(max_open_windows=20)
    out = run(traffic(160, effect=lambda m: {"lat": 2.5} if m >= 60 else {}), AnomalyDetector(cfg, clock=clock))
    assert [(f.kind, f.status) for f in out] == [("latency_regression", "open"), ("latency_regression", "resolved")]
    assert out[1].evidence["resolved_reason"].startswith("baseline relearned")


def test_mixed_binomial_tail_is_wider_than_binomial():
    from llmpulse.processors.anomalies import binom_sf_mixed, dispersion

    assert binom_sf_mixed(10, 82, 0.013, 0.0) == pytest.approx(binom_sf(10, 82, 0.013))
    # 10 errors in 82 calls against 1.3%: "impossible" for a binomial, a flaky minute with a rate
    # that moves by a lognormal factor (sigma 0.3) from minute to minute.
    assert binom_sf(10, 82, 0.013) < 1e-6 < binom_sf_mixed(10, 82, 0.013, 0.3)
    # A real incident (25% errors on 40 calls) stays far beyond either.
    assert binom_sf_mixed(10, 40, 0.013, 0.3) < 1e-6
    assert dispersion([(1, 100)] * 30, 0.01, 8.0) == 1.0  # no spread: binomial
    assert dispersion([(0, 100), (6, 100)] * 15, 0.03, 8.0) > 2.0


def test_flaky_minutes_do_not_page():
    # The error rate moves by a lognormal factor each minute (sigma 0.45): no finding, 6 hours.
    rng = random.Random(5)
    noise = [0.01 * rng.lognormvariate(0, 0.45) for _ in range(360)]
    assert [f for f in run(traffic(360, rate=80, seed=3, effect=lambda m: {"error": noise[m]}))
            if f.kind == "error_rate_spike"] == []


def test_a_slow_provider_minute_is_not_a_latency_regression():
    # Every minute runs at a random provider speed (lognormal sigma 0.12); minute 70 at x1.7.
    # Its p95 and the calls past the old p95 look like a regression, its median moves only
    # 3.3 robust SDs of the history's minute medians: not a regression of the bulk of calls.
    rng = random.Random(4)
    speed = [rng.lognormvariate(0, 0.12) for _ in range(120)]
    events = traffic(120, rate=30, seed=4, effect=lambda m: {"lat": 1.7 if m == 70 else speed[m]})
    assert run(events) == []
    without_gate = [f for f in run(events, AnomalyDetector(AnomalyConfig(latency_p50_z=0), clock=clock))
                    if f.status == "open"]
    assert [f.kind for f in without_gate] == ["latency_regression"]
    assert without_gate[0].evidence["p50_robust_z"] < AnomalyConfig().latency_p50_z
    # A regression (x2.2 for 10 minutes) on the same noisy key is found within its second minute.
    opened = [f for f in run(traffic(120, rate=30, seed=4, effect=lambda m: {"lat": 2.2 if 70 <= m < 80 else speed[m]}))
              if f.status == "open"]
    assert [f.kind for f in opened] == ["latency_regression"]
    assert T0 + 70 * MIN < opened[0].event_ts <= T0 + 72 * MIN


def test_incident_minutes_are_not_learned_into_the_baseline():
    # An agent-like key: a refusal ends the trace, so calls fall under min_calls for the first
    # minutes of the incident. Those minutes are not tested, and must not be learned either
    # (they would raise the pooled rate and the dispersion until the incident looks normal).
    def effect(m):
        if 60 <= m < 63:
            return {"refusal": 0.5, "rate": 0.5}
        if 63 <= m < 80:
            return {"refusal": 0.5}
        return {}

    events = traffic(120, rate=26, seed=4, effect=effect)
    out = run(events, AnomalyDetector(AnomalyConfig(rate_cusum_h=0), clock=clock))  # minute windows only
    opened = [f for f in out if f.status == "open"]
    assert [f.kind for f in opened] == ["refusal_spike"]
    assert T0 + 63 * MIN < opened[0].event_ts <= T0 + 65 * MIN
    # The call-by-call CUSUM needs no full window: it opens in the thin minutes, once its run
    # has rate_cusum_min_calls calls (~13 a minute here).
    opened = [f for f in run(events) if f.status == "open"]
    assert [f.kind for f in opened] == ["refusal_spike"]
    assert T0 + 60 * MIN < opened[0].event_ts < T0 + 62 * MIN
    assert opened[0].evidence["calls"] >= AnomalyConfig().rate_cusum_min_calls
    assert opened[0].evidence["method"] == "cusum"


def test_dispersion_ignores_small_count_noise():
    from llmpulse.processors.anomalies import dispersion

    # ~0.5 expected refusals a window: a few windows with 2-3 are chance, not a moving rate.
    hist = [(0, 60)] * 50 + [(1, 60)] * 6 + [(3, 60), (2, 60), (3, 60), (2, 60)]
    assert dispersion(hist, 0.0065, 8.0) < 1.2
    # Large counts that really move from window to window still widen the test.
    assert dispersion([(10, 400), (40, 400)] * 20, 0.0625, 8.0) > 3.0


def test_change_followed_by_a_slow_minute_is_not_a_regression():
    # Latency moves by a per-minute provider factor (sigma 0.12); the two minutes after a benign
    # prompt edit happen to be 1.4x slow. Per call that is "z = 10"; against the before side's
    # minute-to-minute spread it is noise.
    rng = random.Random(11)
    factors = [rng.lognormvariate(0, 0.12) for _ in range(120)]
    change = Change(event_id="c1", ts=T0 + 60 * MIN + 5_000, workflow="wf", tenant="acme", change_kind="prompt_edit")
    events = traffic(120, rate=80, seed=6, effect=lambda m: {"lat": 1.4 if m in (60, 61) else factors[m]}) + [change]
    out = run(sorted(events, key=lambda e: (e.ts, e.event_id)))
    assert [f for f in out if f.kind == "regression_after_change"] == []


def test_one_thin_minute_is_not_a_traffic_drop_but_an_outage_is():
    # Volume moves by a lognormal factor per minute (sigma 0.15). A minute at 0.45x (a 3-sigma
    # quiet minute drawing a low count: 11 calls against ~45, "p = 1e-8" for a plain Poisson) is
    # not an outage; 8 minutes at 0.08x are.
    rng = random.Random(9)
    noise = [rng.lognormvariate(0, 0.15) for _ in range(160)]
    thin = traffic(120, rate=45, seed=8, effect=lambda m: {"rate": 0.45 if m == 80 else noise[m]})
    assert [f for f in run(thin) if f.kind == "traffic_drop"] == []
    outage = traffic(120, rate=45, seed=8, effect=lambda m: {"rate": 0.08 if 80 <= m < 88 else noise[m]})
    opened = [f for f in run(outage) if f.kind == "traffic_drop" and f.status == "open"]
    assert len(opened) == 1 and T0 + 80 * MIN < opened[0].event_ts <= T0 + 82 * MIN


def test_eval_drop_is_seen_in_a_thin_first_minute_and_not_learned():
    # The first incident minute has only ~12 evals (under min_evals): it is tested alone at
    # a Bonferroni price, and, failing or not, it is not learned into the baseline.
    out = run(traffic(120, effect=lambda m: {"evals": 0.15, "rate": 0.4} if m == 60 else
                      {"evals": 0.15} if 60 < m < 70 else {}))
    opened = [f for f in out if f.status == "open"]
    assert [f.kind for f in opened] == ["eval_regression"]
    assert opened[0].event_ts == T0 + 61 * MIN


def test_spike_starting_late_in_a_minute_opens_at_the_early_look():
    # Errors jump 58 s into minute 60: that minute is normal traffic. The window from
    # 60:30 to 61:30 sees it half a minute before minute 61 closes, with the severity of the
    # newest half minute (all incident), not of the diluted window.
    start = T0 + 60 * MIN + 58_000
    events = [msgspec.structs.replace(e, status="error", usage=None, cost_usd=None)
              if isinstance(e, Output) and e.ts >= start and e.status == "ok" and int(e.event_id.rsplit("-", 1)[1]) % 2
              else e for e in traffic(90, rate=120)]
    windows_only = AnomalyDetector(AnomalyConfig(rate_cusum_h=0), clock=clock)
    opened = [f for f in run(events, windows_only) if f.status == "open"]
    assert [f.kind for f in opened] == ["error_rate_spike"]
    assert opened[0].event_ts == T0 + 61 * MIN + 30_000
    assert opened[0].evidence["window_start"] == T0 + 60 * MIN + 30_000
    assert opened[0].severity in ("high", "critical")


def test_rate_spike_is_caught_by_the_cusum_at_the_crossing_call():
    # The same jump (to ~50 % errors at 120 calls/min): the CUSUM is stamped with the call at
    # which it decided (threshold crossed, min_calls seen), seconds after the jump.
    start = T0 + 60 * MIN + 58_000
    events = [msgspec.structs.replace(e, status="error", usage=None, cost_usd=None)
              if isinstance(e, Output) and e.ts >= start and e.status == "ok" and int(e.event_id.rsplit("-", 1)[1]) % 2
              else e for e in traffic(90, rate=120)]
    out = run(events)
    opened = [f for f in out if f.status == "open"]
    assert [f.kind for f in opened] == ["error_rate_spike"]
    f = opened[0]
    assert any(isinstance(e, Output) and e.ts == f.event_ts for e in events)  # a call's own time
    assert start < f.event_ts < start + 25_000  # the early look above needed 32 s
    cfg = AnomalyConfig()  # a lucky few calls do not page: a run of rate_cusum_min_calls, rate_cusum_min_hits errors
    assert f.evidence["calls"] >= cfg.rate_cusum_min_calls and f.evidence["count"] >= cfg.rate_cusum_min_hits
    assert f.evidence["count"] >= 0.3 * f.evidence["calls"]
    assert f.evidence["method"] == "cusum" and f.evidence["statistic"] >= f.evidence["threshold_nats"]
    assert f.severity in ("high", "critical")


def test_eval_drop_is_caught_by_the_cusum_at_the_crossing_eval():
    # ~27 evals/min; pass rate 0.9 -> 0.55 from minute 60: the CUSUM alarms on an eval
    # (not at a window end) within ~1.5 minutes, before two minute windows could.
    out = run(traffic(90, effect=spike("evals", 0.55, length=20)))
    opened = [f for f in out if f.status == "open"]
    assert [f.kind for f in opened] == ["eval_regression"]
    f = opened[0]
    assert f.evidence["method"] == "cusum" and f.evidence["statistic"] >= 14
    assert f.event_ts % 30_000 != 0  # an eval's time
    assert T0 + 60 * MIN < f.event_ts <= T0 + 61 * MIN + 30_000
    assert f.evidence["failures"] >= 10 and f.evidence["baseline"] > 0.85


def test_cusum_stays_quiet_on_a_stable_stream():
    out = run(traffic(600, rate=120, seed=5))
    assert [f for f in out if f.kind == "eval_regression"] == []


def test_traffic_drop_is_counted_when_calls_start():
    # Slow calls (75 s): after new calls stop, outputs of the calls in flight keep landing for
    # more than a minute. Prompts show the drop at once; outputs alone see it a minute later.
    rng = random.Random(5)
    prompts, outputs = [], []
    for m in range(100):
        for i in range(max(0, int(rng.gauss(60, 8))) if not 60 <= m < 70 else 2):
            ts = T0 + m * MIN + rng.randrange(MIN)
            base = {"trace_id": f"tr-{m}-{i}", "tenant": "acme", "workflow": "wf", "model": "m"}
            prompts.append(Prompt(event_id=f"p-{m}-{i}", ts=ts, messages=[Message("user", "hi")], **base))
            outputs.append(Output(event_id=f"o-{m}-{i}", ts=ts + 75_000, status="ok", latency_ms=75_000.0, **base))
    outputs = [o for o in outputs if o.ts < T0 + 100 * MIN]  # the data ends for both at once

    def opened(events):
        found = [f for f in run(sorted(events, key=lambda e: (e.ts, e.event_id))) if f.status == "open"]
        assert [f.kind for f in found] == ["traffic_drop"]
        return found[0]

    by_start = opened(prompts + outputs)
    assert by_start.evidence["metric"] == "traces_started_per_minute"
    assert T0 + 60 * MIN < by_start.event_ts <= T0 + 61 * MIN
    by_end = opened(outputs)
    assert by_end.evidence["metric"] == "traces_per_minute"
    assert by_end.event_ts >= by_start.event_ts + MIN


def test_partial_outage_starting_inside_a_minute_is_seen_within_two_minutes():
    # 45 calls/min, down to a quarter 20 s into a minute: the silence timer adds up the
    # half minutes from there on, whatever the minute boundaries.
    rng = random.Random(1)
    start = T0 + 60 * MIN + 20_000
    events = []
    for m in range(100):
        for i in range(max(0, int(rng.gauss(45, 7)))):
            ts = T0 + m * MIN + rng.randrange(MIN)
            if start <= ts < T0 + 70 * MIN and rng.random() > 0.25:
                continue
            events.append(Output(event_id=f"o-{m}-{i}", ts=ts, trace_id=f"t-{m}-{i}", tenant="acme", workflow="wf",
                                 model="m", status="ok", latency_ms=900.0))
    opened = [f for f in run(sorted(events, key=lambda e: (e.ts, e.event_id))) if f.status == "open"]
    assert [f.kind for f in opened] == ["traffic_drop"]
    assert opened[0].evidence["method"] == "cusum" and opened[0].model == "m"
    assert opened[0].event_ts - start <= 2 * MIN
