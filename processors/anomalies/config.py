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
    # traffic_drop: calls <= base * (1 - drop) and P(traces <= observed | Poisson) <= alpha
    traffic_drop: float = 0.6
    traffic_min_expected: float = 30.0  # median calls/min below this: not tested
    traffic_sigma: float = 0.15  # per-minute lognormal volume sigma assumed at least (as rate_sigma)
    traffic_max_sigma: float = 0.3  # cap on the per-minute volume sigma learned from the history
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
    # ... and the same sequential test per key for error and refusal rates, call by call: an
    # incident that starts mid-minute on a key with ~40 calls/min was paged >2 min late by
    # minute windows alone. Design rate max(base + shift, the window threshold): it is there
    # for large spikes (the windows keep the small ones); flaky minutes (rate x2.5-4) drift
    # down against it. Stable keys peaked at 14.6 nats over 5 benchmark days (20.7 with a
    # 0.15 shift). 0 disables.
    rate_cusum_shift: float = 0.35
    rate_cusum_h: float = 20.0
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

