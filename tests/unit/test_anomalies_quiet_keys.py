"""Quiet and bursty keys on traffic nobody tuned on (issue 13, post-freeze round 2 misses).

Each test pins one root cause found by tracing the detector on the stress days: the error
dispersion of a quiet bursty key, the cluster count of a busy stretch, runs of empty half
minutes on agent keys, the level's learning of a bursty key's empty minutes, and a drop
statistic that held the level frozen."""

from __future__ import annotations

import random

from llmpulse.processors.anomalies import AnomalyConfig, AnomalyDetector
from llmpulse.processors.anomalies.stats import dispersion
from llmpulse.processors.anomalies.timers import COUNTS_DELAY_MS, DropTimer, LEARN_HOLD_MS, expected_level, learn_counts
from llmpulse.processors.anomalies.windows import History
from llmpulse.schemas.contract import Output

MIN = 60_000
T0 = 1_772_409_600_000

# t3/wf11/claude-sonnet-4-5 of stress day 9311 before its error burst: sixty minutes of a
# bursty agent key (1-58 calls a minute), 6 errors in ~1,000 calls, binomial by eye.
QUIET_BURSTY_ERRORS = [
    (0, 6), (0, 22), (0, 35), (0, 4), (0, 29), (0, 36), (0, 53), (1, 4), (0, 20), (0, 28), (0, 58), (0, 10),
    (0, 8), (0, 27), (0, 57), (0, 4), (0, 3), (0, 1), (0, 10), (0, 5), (0, 1), (1, 14), (0, 15), (0, 18),
    (0, 7), (0, 9), (0, 43), (0, 16), (0, 1), (1, 3), (0, 20), (0, 18), (0, 10), (0, 1), (0, 3), (0, 7),
    (0, 4), (0, 41), (0, 9), (0, 9), (0, 37), (0, 1), (0, 36), (0, 6), (0, 1), (0, 32), (0, 43), (1, 16),
    (0, 24), (0, 32), (0, 3), (0, 11), (0, 11), (0, 20), (0, 3), (1, 1), (1, 35), (0, 16), (0, 1), (0, 8)]


def clock() -> int:
    return 7


def out(ts: int, trace: str, status: str = "ok", model: str = "m") -> Output:
    return Output(event_id=f"e-{trace}-{ts}", ts=ts, trace_id=trace, tenant="acme", workflow="wf", model=model,
                  status=status, latency_ms=800.0)


def run(events: list, det: AnomalyDetector | None = None) -> list:
    det = det or AnomalyDetector(clock=clock)
    found = []
    for e in sorted(events, key=lambda e: (e.ts, e.event_id)):
        found += det.process(e, None)
    return found + det.flush()


def test_one_error_in_a_one_call_minute_is_not_a_moving_rate():
    # Old: 2.91 (the (1, 1) minute alone adds 153 to chi2), which divided the key's error CUSUM
    # by 2.9: a 33x burst was found after 708 s.
    p0 = (sum(k for k, _ in QUIET_BURSTY_ERRORS) + 0.5) / (sum(n for _, n in QUIET_BURSTY_ERRORS) + 1)
    assert dispersion(QUIET_BURSTY_ERRORS, p0, 3.0) < 1.2
    # A rate that really moves still shows: minutes of 100 calls at 0.5 % and 10 % in turn.
    rng = random.Random(3)
    moving = [(sum(rng.random() < (0.005 if i % 2 else 0.10) for _ in range(100)), 100) for i in range(60)]
    q0 = sum(k for k, _ in moving) / sum(n for _, n in moving)
    assert dispersion(moving, q0, 8.0) > 1.5


def test_a_quiet_bursty_key_with_rare_errors_finds_an_error_burst_in_minutes():
    # ~8 traces/min in bursts of ~4, 1 % errors; then 20 % errors for 12 minutes. The same
    # evidence on a binomial history: found within ~6 minutes, not at the burst's end.
    rng = random.Random(11)
    events, t, i = [], T0, 0
    burst_start = T0 + 150 * MIN
    while t < T0 + 170 * MIN:
        t += int(rng.expovariate(2.0 / MIN))
        for _ in range(1 + int(rng.expovariate(1 / 3.0))):
            ts = t + rng.randrange(5_000)
            p = 0.2 if burst_start <= ts < burst_start + 12 * MIN else 0.01
            events.append(out(ts, f"t{i}", "error" if rng.random() < p else "ok"))
            i += 1
    found = [f for f in run(events) if f.kind == "error_rate_spike" and f.status == "open"]
    assert found and burst_start <= found[0].event_ts <= burst_start + 6 * MIN
    assert all(f.event_ts >= burst_start for f in found)


def test_a_cluster_carrying_on_into_the_next_half_minute_counts_there():
    # A busy stretch with a start every 2 s: one cluster, but every half minute of it holds
    # traffic; counted as zero clusters there, it fed the cluster CUSUMs as silence.
    timer = DropTimer()
    halves = [[T0 + h * 30_000 + s * 2_000 for s in range(15)] for h in range(4)]
    assert [timer.count(starts, 5_000) for starts in halves] == [1, 1, 1, 1]
    assert timer.count([], 5_000) == 0
    assert timer.count([T0 + 4 * 30_000 + 20_000, T0 + 4 * 30_000 + 29_000], 5_000) == 2


def agent_bursts(minutes: int, seed: int, model: str = "m") -> list[Output]:
    """~1.6 bursts/min of ~5 agent traces within 5 s, each trace 3 calls 8-20 s apart: halves
    after a burst are busy with its later calls, then nothing until the next (empty halves in
    runs, as on the stress days' bursty agent keys)."""
    rng = random.Random(seed)
    events, t, i = [], T0, 0
    while t < T0 + minutes * MIN:
        t += int(rng.expovariate(1.6 / MIN))
        n = 1
        while rng.random() > 1 / 5:
            n += 1
        for _ in range(n):
            ts = t + rng.randrange(5_000)
            for _step in range(3):
                ts += rng.randint(8_000, 20_000)
                events.append(out(ts, f"a{seed}-{i}", model=model))
            i += 1
    return events


def test_runs_of_empty_halves_bound_a_silence_evidence():
    # Traffic that pauses for a minute or two at a time (~6 calls/min when on): its empty
    # halves come in runs, and a silence's later halves are worth only what such runs say.
    rng = random.Random(5)
    events, t, off_until = [], T0, T0
    while t < T0 + 120 * MIN:
        t += int(rng.expovariate(6 / MIN))
        if t < off_until:
            continue
        if rng.random() < 0.05:
            off_until = t + rng.randint(60_000, 150_000)
        events.append(out(t, f"r{t}"))
    det = AnomalyDetector(clock=clock)
    run(events, det)
    lv = expected_level(next(iter(det._keys.values())).history.counts, AnomalyConfig())
    assert lv is not None and lv.run_nats < 0.8 * lv.empty_nats
    # Poisson traffic: empty halves are independent, the bound stays the plain share's.
    rng = random.Random(6)
    det = AnomalyDetector(clock=clock)
    t, events = T0, []
    while t < T0 + 120 * MIN:
        t += int(rng.expovariate(4 / MIN))
        events.append(out(t, f"p{t}"))
    run(events, det)
    lv = expected_level(next(iter(det._keys.values())).history.counts, AnomalyConfig())
    assert lv is not None and lv.run_nats == lv.empty_nats


def test_bursty_agent_keys_do_not_page_traffic_drops_over_a_long_day():
    # The three false traffic_drops of 9311's t3/wf11/claude-sonnet-4-5 (bursty, 2-4 calls a
    # trace, ~8 traces/min): its ordinary silences of 5-6 minutes.
    events = []
    for seed in (21, 22, 23):
        events += agent_bursts(14 * 60, seed, model=f"m{seed}")
    assert [f for f in run(events) if f.kind == "traffic_drop"] == []


def test_a_bursty_keys_empty_minutes_are_learned():
    # ~8 traces/min in bursts of 5: a fifth of its minutes are empty. A plain Poisson called
    # each "p = 3e-4, improbably quiet" and left it out: the level read ~10/min, and the key's
    # ordinary silences looked like drops.
    rng = random.Random(8)
    events, t, i = [], T0, 0
    while t < T0 + 180 * MIN:
        t += int(rng.expovariate(1.6 / MIN))
        n = 1
        while rng.random() > 1 / 5:
            n += 1
        for _ in range(n):
            events.append(out(t + rng.randrange(5_000), f"b{i}"))
            i += 1
    det = AnomalyDetector(clock=clock)
    run(events, det)
    counts = next(iter(det._keys.values())).history.counts
    sent = sum(1 for e in events if e.ts >= T0 + 120 * MIN) / 60
    assert any(c[1] == 0 for c in counts)
    assert expected_level(counts, AnomalyConfig()).per_min < 1.12 * sent


def test_a_drop_statistic_holds_learning_only_while_its_run_is_young():
    timer = DropTimer(s=[0.0, 0.0, 0.0, 9.0], starts=[0, 0, 0, T0])
    h = 13.7
    assert timer.holds_learning(h, T0 + 5 * MIN)
    assert not timer.holds_learning(h, T0 + LEARN_HOLD_MS + MIN)
    assert not DropTimer(s=[1.0, 0.0, 2.0, 3.0], starts=[T0] * 4).holds_learning(h, T0 + MIN)


def test_a_minutes_traffic_joins_the_level_late_and_not_when_a_drop_opens_on_it():
    # Learned at once, an outage's first minutes (before its statistic reached h / 2) taught
    # the level the outage: on 9311's t2/wf2 (bursty, ~0.5 nats a silent half) it was never paged.
    cfg = AnomalyConfig()
    h = History(cfg.history_windows)
    for m in range(cfg.min_history):
        learn_counts(h, T0 + m * MIN, (8, 8, 2, 0, 0), False, cfg)
    assert len(h.counts) == cfg.min_history  # no level yet: at once
    start = T0 + cfg.min_history * MIN
    for m in range(10):
        learn_counts(h, start + m * MIN, (0, 0, 0, 2, 1), False, cfg)
    assert len(h.counts) == cfg.min_history  # waiting
    learn_counts(h, start + 10 * MIN, None, True, cfg)  # a drop opened: its onset is not learned
    for m in range(11, 40):
        learn_counts(h, start + m * MIN, (8, 8, 2, 0, 0), False, cfg)
    assert all(c[1] == 8 for c in h.counts)
    assert len(h.counts) == cfg.min_history + 40 - 11 - COUNTS_DELAY_MS // MIN
