"""Event-time anomaly detection per (tenant, workflow, model), plus changes and evals.

Pure and I/O-free; the faust agent and `llmpulse backtest` run the same code:

    det = AnomalyDetector(AnomalyConfig(), overrides={"summarize": {"min_calls": 50}})
    findings = det.process(event, cost_usd)   # closes windows the watermark has passed
    findings += det.advance(event_time_ms)    # idle input: event time moved on anyway
    findings += det.flush()                   # end of a replay: close complete windows

Windows. Output events are counted in one-minute tumbling windows of event time per
(tenant, workflow, model). The watermark is the highest event time seen minus
`allowed_lateness_ms`; a window closes (once, for every live key, empty or not)
when the watermark passes its end. Events older than the last closed window are
dropped and counted in `late_dropped`. Findings are stamped with the window end
as `event_ts`, so a replay in any order within the lateness gives the same
findings with the same ids. Events are kept in half-minute buckets so that the
minute ending half way into the open one is tested too (an "early look", which
may only open a condition): an incident that began late in a minute is not left
waiting for the next full window.

Baselines. Each metric keeps the last `history_windows` windows that were not
themselves anomalous (an incident must not teach the baseline that it is
normal). Rates (errors, refusals) use the pooled rate of that history and an
exact binomial tail test; latency p95, cost/call and tokens/call use
median + z * 1.4826 * MAD with a minimum ratio over the median; traffic uses the
median count with a Poisson/MAD scale. Nothing is tested before
`min_history` windows nor on windows under `min_calls` calls (three calls do not
page anyone). A condition that stays anomalous for `max_open_windows` is accepted
as the new normal: the finding resolves and the baseline is relearned.

Sequential tests. Error and refusal rates per key and eval pass rates per stream
also feed a Bernoulli CUSUM, call by call (eval by eval) in event-time order as
the watermark passes each half minute: a spike is opened at the event that makes
it certain, seconds after it began, rather than at a window end. Error and refusal
CUSUMs run only on keys whose minutes carry `min_calls`, and page only once their
run has `min_calls` calls at a rate over the window test's threshold.

Lifecycle. A condition opens one finding (id from kind, scope and the opening
window), stays open without repeats, and emits one `resolved` row after
`clear_windows` consecutive normal windows.

Changes. A `change` event becomes active when its minute closes: keys of a
swapped model get fresh baselines; per-key spikes in that workflow during the next
`change_windows` minutes are attributed to the change (one
`regression_after_change` naming it, not a spike per key); and the workflow's
cost/call, latency, error/refusal rates and eval pass rate after the change are
compared with the `before_windows` minutes before it. The next change on the
workflow resolves the finding.

Evals. Pass rate per (tenant, workflow, eval_name) per minute against a pooled
baseline; the newest 1-3 minutes are pooled until `min_evals` evals; and the CUSUM.

All thresholds are in `AnomalyConfig`; per-workflow overrides take the same names.
See processors/DETECTORS.md. Modules: `config` (thresholds), `stats`, `windows` (buckets,
histories, per-key state), `verdicts` (one per metric), `changes` (change and eval comparison),
`lifecycle` (open, hold, resolve), `detector` (feeding, watermark, closes, sequential tests).
"""

from __future__ import annotations


from llmpulse.processors.anomalies.config import ERROR_STATUSES, REFUSAL_STATUSES, AnomalyConfig
from llmpulse.processors.anomalies.detector import AnomalyDetector
from llmpulse.processors.anomalies.stats import (
    binom_cdf, binom_sf, binom_sf_mixed, dispersion, mad, median, poisson_cdf, poisson_cdf_mixed, quantile,
)

__all__ = ["ERROR_STATUSES", "REFUSAL_STATUSES", "AnomalyConfig", "AnomalyDetector", "binom_cdf", "binom_sf", "binom_sf_mixed", "dispersion", "mad",
           "median", "poisson_cdf", "poisson_cdf_mixed", "quantile"]
