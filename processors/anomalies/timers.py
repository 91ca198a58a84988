"""Timers: silence is a signal. Every key seen is judged each time the watermark passes a
half minute, whether or not any of its events arrive (the detector's `advance` drives it).

Each key's distinct traces per half minute feed a Poisson CUSUM of "traffic fell to
`drop_design_left` of its expected level" against "traffic as expected". The expected level
is the mean of the key's recent non-anomalous minutes (the history follows the diurnal
curve within the hour); its minute-to-minute dispersion (variance / mean, bursty arrivals
and volume noise) divides the evidence, a quasi-Poisson test. The alarm threshold is not a
minimum volume but a false-alarm rate: by Wald's bound a CUSUM's mean run between false
alarms is at least e^h steps, so h = ln(half minutes per day x `false_alarm_key_days`).
A key at 12 calls/min that goes silent alarms after three empty half minutes; one at
1 call/min after ~15 minutes of silence; one at 300 calls/min at the first half minute.

When a key alarms, its siblings are looked at over the same span: a whole workflow (every
model of it) or a whole tenant (every workflow) that went silent together is one finding.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from llmpulse.processors.anomalies.config import AnomalyConfig
from llmpulse.processors.anomalies.stats import poisson_cdf

HALF = 30_000
HALVES_PER_DAY = 2 * 24 * 60
# A sibling is silent too when its traces over the alarm's span are this improbable at its
# own expected level, and carries on when they are this improbable for a drop.
SIBLING_P = 0.01


@dataclass(slots=True)
class DropTimer:
    """One key's traffic CUSUMs (one per design level) and the recent half minutes fed."""

    s: list = field(default_factory=list)  # log-likelihood ratio per design, nats
    starts: list = field(default_factory=list)  # start of the first half of each one's run
    since: int = 0  # run start of the design that alarmed last
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # (half start, traces)

    def reset(self) -> None:
        self.s, self.starts = [], []

    @property
    def statistic(self) -> float:
        return max(self.s, default=0.0)

    def low_since(self, per_min: float, low: float, end: int) -> int:
        """Start of the run of half minutes before `end` each under `low` of the level: where
        the drop began, as this key saw it (the CUSUM's own run may start earlier, on noise)."""
        since = end - HALF  # the half minute that decided, at least
        for half, k in reversed(self.recent):
            if half >= end:
                continue  # timed in the same close, after the alarm
            if k > low * per_min / 2:
                break
            since = min(since, half)
        return since

    def count_since(self, since: int, end: int) -> int:
        return sum(k for half, k in self.recent if since <= half < end)


def expected_level(counts: deque, cfg: AnomalyConfig) -> tuple[float, float] | None:
    """(traces per minute, dispersion) from the history's (calls, traces) minutes, or None
    before `min_history` minutes or with no traffic at all."""
    if len(counts) < cfg.min_history:
        return None
    ts = [t for _, t in counts]
    mean = sum(ts) / len(ts)
    if mean <= 0:
        return None
    var = sum((t - mean) ** 2 for t in ts) / (len(ts) - 1)
    # Only the dispersion beyond two standard errors of a Poisson's (var/mean ~ 1 +- sqrt(2/df)):
    # sampling noise alone must not slow every key down.
    phi = var / mean - 2.0 * math.sqrt(2.0 / (len(ts) - 1))
    return mean, min(cfg.traffic_max_dispersion, max(1.0, phi))


def drop_threshold(cfg: AnomalyConfig) -> float:
    """One threshold for the designs: they are nested (a stretch quiet enough to cross the
    outage design has nearly crossed the partial one), so their false alarms are nearly the
    same stretches, not independent ones to share the rate among."""
    return math.log(HALVES_PER_DAY * cfg.false_alarm_key_days)


def feed(timer: DropTimer, half: int, traces: int, per_min: float, phi: float, cfg: AnomalyConfig) -> int | None:
    """Add one half minute. Returns the event time of the alarm, the end of the half minute
    in which a statistic crossed the threshold (the caller resets), else None. Not the
    interpolated crossing inside it: that moves with every call of the baseline, and a
    stream whose watermark lets an event land a little later than a backtest's would stamp
    the same finding a few ms apart."""
    lam = per_min / 2
    if not timer.s:
        timer.s, timer.starts = [0.0] * len(cfg.drop_design_left), [half] * len(cfg.drop_design_left)
    h = drop_threshold(cfg)
    crossed: int | None = None
    for i, r in enumerate(cfg.drop_design_left):
        s = timer.s[i] + (traces * math.log(r) + lam * (1 - r)) / phi
        if s <= 0:
            timer.s[i], timer.starts[i] = 0.0, half + HALF
            continue
        timer.s[i] = s
        if s >= h and crossed is None:
            crossed, timer.since = half + HALF, timer.starts[i]
    return crossed


def silent_since(timer: DropTimer, since: int, end: int, per_min: float, phi: float, low: float) -> bool | None:
    """Did this key also go (nearly) silent over [since, end)? True: its traces there are
    improbably few for a Poisson at its level; False: improbably many for one at `low` of
    it (it carries on); None: too little volume over the span to tell either way. Counts
    are divided by the key's dispersion (bursty arrivals leave quiet stretches by chance)."""
    k = timer.count_since(since, end) / phi
    lam = per_min * (end - since) / 60_000 / phi
    if poisson_cdf(int(k), lam) <= SIBLING_P:
        return True
    if k >= 1 and 1.0 - poisson_cdf(math.ceil(k) - 1, lam * low) <= SIBLING_P:
        return False
    return None


def hold_state(traces: int, per_min: float, cfg: AnomalyConfig) -> str:
    """A closed minute while a drop is open: still down (anomalous), back (normal), between."""
    if traces <= per_min * (1 - cfg.traffic_drop):
        return "anomalous"
    return "normal" if traces >= max(1.0, 0.7 * per_min) else "elevated"


def severity(left: float) -> str:
    drop = 1 - left
    return "critical" if drop >= 0.95 else "high" if drop >= 0.8 else "medium"
