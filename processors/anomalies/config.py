"""Anomaly thresholds (`AnomalyConfig`; per-workflow overrides take the same names) and the
constants every module shares: the window length and which statuses count as what."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

ERROR_STATUSES = frozenset({"error", "timeout"})  # count toward error_rate_spike
REFUSAL_STATUSES = frozenset({"refusal", "filtered"})  # count toward refusal_spike
W = 60_000  # window length, ms: the whole design (TTD, baselines) assumes one minute
H = W // 2  # events are kept in half-minute buckets: minute windows and the early looks between


@dataclass(frozen=True)
class AnomalyConfig:
    allowed_lateness_ms: int = 30_000  # how long a window waits for out-of-order events
    history_windows: int = 60  # baseline memory, windows
    min_history: int = 15  # windows of history before a metric is tested
    min_calls: int = 20  # calls in a window before rates/latency/cost are tested
    clear_windows: int = 2  # consecutive normal windows before `resolved`
    max_open_windows: int = 60  # then the new level is accepted and the baseline relearned
    key_ttl_ms: int = 6 * 3_600_000  # idle keys are forgotten
    alpha: float = 1e-6  # tail probability for rate tests (many keys x minutes are tested)
    # Rates vary from minute to minute more than a binomial allows (a flaky upstream minute,
    # retries of one failing request): each key's dispersion, Pearson chi2/df of its history
    # windows against the pooled rate, widens its tests (quasi-binomial), between 1 and this.
    max_dispersion: float = 3.0
    # ... and, in the far tail where a variance ratio cannot see it, the rate of a minute is
    # the baseline times a lognormal factor of this sigma (at least; more when the history's
    # dispersion says so): a 3-sigma flaky minute is not an incident.
    rate_sigma: float = 0.3
    # A window over the rate threshold whose plain binomial tail is below this is not learned
    # into the baseline, even when it does not page (too few calls, or not significant yet).
    learn_alpha: float = 1e-3
    # error_rate_spike / refusal_spike: observed >= max(base + delta, base * ratio) and p <= alpha
    rate_min_delta: float = 0.08
    rate_min_ratio: float = 2.5
    # latency_regression (p95 of ok calls), cost_spike, token_spike (mean per ok call)
    latency_ratio: float = 1.7
    latency_log_z: float = 0.0  # > 0: also p95 >= median x exp(this x robust sd of log p95)
    latency_exceed_p0: float = 0.08  # share of calls above the baseline p95 expected by chance (5% + noise)
    # ... and the window's median this many robust SDs (of the history's log p50) above the
    # history's: a provider's slow minute (x1.6, 13 of 31 calls past the old p95) moves every
    # call a little, a regression moves them a lot. 0 disables.
    latency_p50_z: float = 3.5
    cost_ratio: float = 1.5
    token_ratio: float = 1.8
    robust_z: float = 5.0
    # cost_spike is not raised when tokens/call rose by at least this share of the cost rise
    cost_explained_share: float = 0.7
    # traffic_drop (processors/anomalies/timers.py): a Poisson CUSUM per key of distinct traces
    # per half minute, one designed for each traffic level left in drop_design_left (an outage,
    # a partial drop), the threshold set by the false-alarm rate: h = ln(half minutes a day x
    # false_alarm_key_days), ~13.7 nats. An open drop holds while a minute is under
    # (1 - traffic_drop) of the level.
    traffic_drop: float = 0.6
    drop_design_left: tuple[float, ...] = (0.05, 0.3)
    # Counted per unit, traces and arrival clusters (a trace starting more than this after the
    # key's previous one opens a cluster: a batch job's burst is one), each divided by the
    # dispersion (variance / mean) the key's history shows; the cap only guards a broken history.
    traffic_cluster_gap_ms: int = 5_000
    traffic_max_dispersion: float = 50.0
    # Every sequential test (traffic, error and refusal rates, latency) is set to at most one
    # false alarm per this many key-days of stable traffic (Wald: mean run >= e^h steps).
    false_alarm_key_days: float = 300.0
    # eval_regression
    min_evals: int = 20
    min_eval_history: int = 100
    eval_min_drop: float = 0.15
    eval_alpha: float = 1e-6  # ~7k eval windows a day x 3 spans: a binomial null reached 4e-6 once in 4 seeds
    eval_max_span: int = 3
    # ... and a Bernoulli CUSUM per eval stream, judged per eval in event-time order: it
    # alarms within ~1.5 minutes on a 0.3 drop at 30 evals/min, where minute windows at
    # eval_alpha need 2-3. Log-likelihood ratio of base - shift against base, divided by the
    # history's dispersion; alarm at eval_cusum_h nats (~e^14 evals between false alarms
    # on a stable stream). 0 disables.
    eval_cusum_shift: float = 0.25
    eval_cusum_h: float = 14.0
    # ... and the same sequential test per key for error and refusal rates, call by call, on
    # keys of any volume (1 call/min too): evidence pools over minutes instead of waiting for
    # min_calls in one. Design rate max(base + shift, the window threshold); the threshold
    # is set by the false-alarm rate, h = ln(calls a day x false_alarm_key_days) (15.3 nats at
    # 10 calls/min, 18.7 at 300), never under rate_cusum_h (0 disables). An alarm needs
    # rate_cusum_min_hits errors (three calls do not page anyone) in rate_cusum_min_calls
    # calls at a rate over the window test's threshold (a run starts on an error: a lucky
    # few calls must not decide).
    rate_cusum_shift: float = 0.35
    rate_cusum_shift_low: float = 0.12  # ... and a second CUSUM for moderate rises (0 disables)
    rate_cusum_h: float = 14.0
    rate_cusum_min_hits: int = 4
    rate_cusum_min_calls: int = 10  # ... in a run of at least this many calls (traces, for latency)
    # latency_regression, sequentially too: each trace's ok calls (its median, so one trace
    # is one observation) over the baseline p95 of the key's recent calls, a Bernoulli CUSUM
    # of latency_exceed_p0 against latency_cusum_p1, threshold as for rates. A provider's
    # slow minute (x1.6: ~40 % of calls past the old p95) drifts down against 0.9. Calls
    # whose tokens are over token_ratio x the baseline are left out (a longer prompt is
    # token_spike's). 0 disables.
    latency_cusum_p1: float = 0.9
    latency_samples: int = 1_000  # recent ok latencies kept for the baseline p95
    # regression_after_change
    before_windows: int = 30
    change_windows: int = 60
    change_min_calls: int = 50
    change_ratio: float = 1.3  # cost/call, p95 latency
    change_z: float = 4.0  # Welch z of the mean for cost/latency
    change_rate_delta: float = 0.05
    change_eval_drop: float = 0.1
    max_latency_samples: int = 5_000  # per window; beyond, p95 uses the first ones

    def merged(self, override: Mapping[str, Any]) -> "AnomalyConfig":
        unknown = set(override) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown anomaly settings: {sorted(unknown)}")
        return dataclasses.replace(self, **override)

