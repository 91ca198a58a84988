"""Timers: silence is a signal. Every key seen is judged each time the watermark passes a
half minute, whether or not any of its events arrive (the detector's `advance` drives it).

What is counted. Calls of one trace are not independent, and neither are traces that start
together: a batch job or a fan-out starts several within seconds, then nothing for a while.
So each half minute is counted in two units: distinct traces, and arrival clusters (trace
starts more than `traffic_cluster_gap_ms` after the key's previous one open a new cluster).
On Poisson traffic, traces are the sharper unit; on bursty traffic clusters are: at bursts
of 6, traces vary 11x more than a Poisson's, clusters hardly more.

Each unit feeds quasi-Poisson CUSUMs of "traffic fell to `drop_design_left` of its expected
level" against "as expected", the evidence divided by that unit's own dispersion (variance /
mean of the key's recent minutes, as the key shows it: bounded only by
`traffic_max_dispersion`, a guard against a broken history). The unit a key is judged on is
the one whose expected count per dispersion is the highest (the most evidence per silent
half minute); the other still runs, for partial drops that thin traces but not clusters.
The alarm threshold is not a minimum volume but a false-alarm rate: by Wald's bound a
CUSUM's mean run between false alarms is at least e^h steps, so h = ln(half minutes per day
x `false_alarm_key_days`). A Poisson key at 12 calls/min that goes silent alarms after three
empty half minutes; one at 1 call/min after ~15 minutes; one at 300 calls/min at the first.

When a key alarms, its siblings are looked at over the same span: a whole workflow (every
model of it) or a whole tenant (every workflow) that went silent together is one finding.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from llmpulse.processors.anomalies.config import AnomalyConfig
from llmpulse.processors.anomalies.stats import binom_sf, poisson_cdf

HALF = 30_000
HALVES_PER_DAY = 2 * 24 * 60
TRACES, CLUSTERS = 1, 2  # positions in a history entry (calls, traces, clusters) and in `recent`
# A sibling is silent too when its units over the alarm's span are this improbable at its
# own expected level, and carries on when they are this improbable for a drop.
SIBLING_P = 0.01
# A partial-drop design is run on a unit only up to this dispersion. Beyond it the lower tail
# of compound counts (a half minute with two bursts where four are usual) is far heavier than
# the quasi-Poisson scaling allows, and such a unit hardly sees a partial drop anyway; the
# outage design keeps running, its empty halves bounded by the key's own (Level.empty_nats).
PARTIAL_MAX_DISPERSION = 3.0
# Empty halves run together (bursty traffic) when this improbable for independent ones (expected_level).
RUNS_P = 0.01
# Halves a trace id is remembered for (DropTimer.arrivals): longer than an agent trace's calls spread.
SEEN_HALVES = 20
# How late a closed minute's traffic joins the level (learn_counts).
COUNTS_DELAY_MS = 15 * 60_000
# How long a drop CUSUM's run past h / 2 keeps the key's level from learning (DropTimer.holds_learning).
LEARN_HOLD_MS = 15 * 60_000


class Level(NamedTuple):
    """A key's expected traffic: traces per minute, and per unit (traces, clusters) the
    expected count per minute and its dispersion; `best` is the unit most telling of a
    silence (TRACES or CLUSTERS); `empty_nats`: -ln of the share of the history's half
    minutes with no trace (inf when none was empty); `run_nats`: -ln of the chance that the
    half after an empty one is empty too."""

    per_min: float
    units: tuple[tuple[float, float], tuple[float, float]]
    best: int
    empty_nats: float = math.inf
    run_nats: float = math.inf  # the same for an empty half right after an empty one

    def unit(self, u: int) -> tuple[float, float]:
        return self.units[u - 1]


@dataclass(slots=True)
class DropTimer:
    """One key's traffic CUSUMs (one per unit and design level) and the recent half minutes."""

    s: list = field(default_factory=list)  # log-likelihood ratio per (unit, design), nats
    starts: list = field(default_factory=list)  # start of the first half of each one's run
    since: int = 0  # run start of the CUSUM that alarmed last
    crossed: tuple = (TRACES, 0.0)  # its unit and design level
    last_start: int = -(1 << 62)  # newest trace start counted: where the next cluster is judged from
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # (half start, traces, clusters)
    # Trace ids of the newest SEEN_HALVES half minutes: a trace is counted in the half it first
    # shows in, not again in each half its later calls land in.
    seen: deque = field(default_factory=lambda: deque(maxlen=SEEN_HALVES))

    def reset(self) -> None:
        self.s, self.starts = [], []

    @property
    def statistic(self) -> float:
        return max(self.s, default=0.0)

    def holds_learning(self, h: float, end: int) -> bool:
        """Is a drop under way that the key's level must not learn? A statistic past h / 2
        whose run began at most `LEARN_HOLD_MS` before `end`. A run that has sat past h / 2
        longer without crossing is not the start of an outage (those cross within minutes
        where the hold matters): with the level frozen, traffic that had really fallen a little
        (the diurnal curve, a slow afternoon) kept the statistic up and the level frozen: a
        bursty 8-traces/min key's partial-drop CUSUM sat at 9-13 nats for 10+ minutes and
        paged three false traffic_drops in a day."""
        return any(x >= h / 2 and end - t <= LEARN_HOLD_MS for x, t in zip(self.s, self.starts))

    def arrivals(self, traces: dict[str, int]) -> dict[str, int]:
        """The traces of one half minute (id -> start) not seen in the halves before it: the
        arrivals. An agent trace's later calls land seconds to a minute after its first; counted
        again in every half they reach, a burst filled the halves after it and the key's
        silences read as rarer than they are (a burst every ~40 s, counted as ~2.6 clusters a
        minute where 1.6 bursts came, paged after 6 silent minutes: every few key-days)."""
        new = {t: ts for t, ts in traces.items() if not any(t in s for s in self.seen)}
        self.seen.append(set(traces))
        return new

    def count(self, starts: Iterable[int], gap: int) -> int:
        """Clusters in one half minute's trace starts (event time, ms): a start more than
        `gap` after the newest start before it opens one, and a cluster that carries on from
        the half before counts here too. Without that, a busy stretch whose starts never
        paused for `gap` (21 traces in a half minute of a bursty key) was one cluster in its
        first half and zero in the next: a half full of traffic fed the cluster CUSUMs as a
        silent one, and a key at 8 traces a minute paged traffic_drop. Called once per half,
        in order, when its bucket is final, so a stream and a backtest count the same."""
        n, last = 0, self.last_start
        for i, t in enumerate(sorted(starts)):
            if t - last > gap or i == 0:
                n += 1
            last = max(last, t)
        self.last_start = last
        return n

    def minute(self, minute: int) -> tuple[int, int, int, int]:
        """(traces arrived, clusters, empty halves, empty halves right after an empty half) of
        the minute starting at `minute`, both halves fed."""
        tr = cl = zeros = runs = 0
        prev = None
        for half, t, c in list(self.recent)[-3:]:
            if minute <= half < minute + 2 * HALF:
                tr, cl, zeros = tr + t, cl + c, zeros + (t == 0)
                runs += t == 0 and prev == 0
            prev = t
        return tr, cl, zeros, runs

    def low_since(self, per_min: float, low: float, end: int) -> int:
        """Start of the run of half minutes before `end` each under `low` of the level: where
        the drop began, as this key saw it (the CUSUM's own run may start earlier, on noise)."""
        since = end - HALF  # the half minute that decided, at least
        for half, k, _ in reversed(self.recent):
            if half >= end:
                continue  # timed in the same close, after the alarm
            if k > low * per_min / 2:
                break
            since = min(since, half)
        return since

    def count_since(self, since: int, end: int, unit: int = TRACES) -> int:
        return sum(e[unit] for e in self.recent if since <= e[0] < end)


def expected_level(counts: deque, cfg: AnomalyConfig) -> Level | None:
    """The expected level from the history's (calls, traces, clusters) minutes, or None
    before `min_history` minutes or with no traffic at all."""
    n = len(counts)
    if n < cfg.min_history:
        return None
    units = []
    for u in (TRACES, CLUSTERS):
        xs = [c[u] for c in counts]
        mean = sum(xs) / n
        var = sum((x - mean) ** 2 for x in xs) / (n - 1)
        # As the key shows it, at least a Poisson's; the bound only guards a broken history.
        units.append((mean, min(cfg.traffic_max_dispersion, max(1.0, var / mean)) if mean > 0 else math.inf))
    if units[0][0] <= 0:
        return None
    units[0] = (units[0][0], max(units[0][1], burst_dispersion(units[0][0], units[1][0], cfg)))
    best = CLUSTERS if units[1][0] / units[1][1] > units[0][0] / units[0][1] else TRACES
    zeros = sum(c[3] for c in counts)
    # An empty half minute is no stronger evidence than the key's own empty halves say (an
    # upper bound on their share: one more than seen), whatever a model of the counts claims.
    empty = math.log((2 * n + 1) / (zeros + 1)) if zeros else math.inf
    # Nor is the next one, and empty halves come in runs where traffic comes in bursts (an
    # agent's later calls fill the halves after a burst's; then nothing until the next): on a
    # bursty 8-traces/min key 21 % of the halves were empty but 45 % of those after an empty
    # one, so a silence's second and later halves are worth ~0.8 nats, not the 1.1-1.5 the
    # level or the share of empty halves said (6 silent minutes paged; they come every few
    # days there). Only where the history shows such runs (more than the share of empty
    # halves explains, at p <= RUNS_P): on Poisson traffic empty halves are independent and
    # the few runs an hour holds would only blur the bound. Estimated from the history's
    # runs, with the plain share as a prior worth two halves.
    runs = sum(c[4] for c in counts)
    share = (zeros + 1) / (2 * n + 1)
    run = empty
    if zeros and binom_sf(runs, zeros, share) <= RUNS_P:
        run = min(empty, -math.log((runs + 2 * share) / (zeros + 2)))
    return Level(units[0][0], (units[0], units[1]), best, empty, run)


def learn_counts(h, minute: int, entry: tuple | None, dropping: bool, cfg: AnomalyConfig) -> None:
    """Learn a closed minute's traffic (`entry`, None when it is not to be learned) into the
    level, COUNTS_DELAY_MS late once the key has a level: with hindsight, the minutes a drop
    opens on are not learned. Learned at once, an outage's first minutes taught the level the
    outage before its statistic reached h / 2 (where learning stops): a bursty key whose empty
    halves come in runs gains ~0.5 nats a silent half, so its level fell and its empty share
    rose under the outage, which was then never paged (9311's t2/wf2, 18 silent minutes).
    `dropping`: a traffic drop is open on the key: the minutes waiting are its onset."""
    if dropping:
        h.counts_pending.clear()
    if entry is not None:
        if len(h.counts) < cfg.min_history:
            h.counts.append(entry)  # no level yet: nothing to judge a drop against
        else:
            h.counts_pending.append((minute, entry))
    while h.counts_pending and h.counts_pending[0][0] <= minute - COUNTS_DELAY_MS:
        h.counts.append(h.counts_pending.popleft()[1])


def burst_dispersion(traces: float, clusters: float, cfg: AnomalyConfig) -> float:
    """A floor under the trace counts' dispersion on a bursty key. Sixty minute counts, each
    the sum of two or three bursts of geometric size, understate it (3.5-6 seen where bursts
    of 4-6 give 7-11): a few large bursts decide a variance. Clusters give it from every
    burst: for Poisson bursts of mean size B, traces have variance / mean 2B - 1. A key is
    bursty when it has fewer clusters than Poisson traces at its rate would make (3/4 of
    them); above ~3 traces per gap Poisson traces chain into clusters too, and the minute
    counts hold enough bursts for the variance to tell."""
    rate_gap = traces * cfg.traffic_cluster_gap_ms / 60_000
    if clusters <= 0 or rate_gap > 3.0 or clusters >= 0.75 * traces * math.exp(-rate_gap):
        return 1.0
    return 2.0 * traces / clusters - 1.0


def drop_threshold(cfg: AnomalyConfig) -> float:
    """One threshold for every CUSUM of a key: they are nested (a stretch quiet enough to
    cross the outage design has nearly crossed the partial one; a stretch without traces is
    one without clusters), so their false alarms are nearly the same stretches, not
    independent ones to share the rate among."""
    return math.log(HALVES_PER_DAY * cfg.false_alarm_key_days)


def feed(timer: DropTimer, half: int, counts: tuple[int, int], level: Level, cfg: AnomalyConfig) -> int | None:
    """Add one half minute's (traces, clusters). Returns the event time of the alarm, the end
    of the half minute in which a statistic crossed the threshold (the caller resets), else
    None. Not the interpolated crossing inside it: that moves with every call of the
    baseline, and a stream whose watermark lets an event land a little later than a
    backtest's would stamp the same finding a few ms apart."""
    designs = cfg.drop_design_left
    if not timer.s:
        timer.s, timer.starts = [0.0] * (2 * len(designs)), [half] * (2 * len(designs))
    h = drop_threshold(cfg)
    crossed: int | None = None
    for u, k in ((TRACES, counts[0]), (CLUSTERS, counts[1])):
        per_min, phi = level.unit(u)
        if not per_min > 0 or math.isinf(phi):
            continue
        lam = per_min / 2
        for i, r in enumerate(designs):
            j = (u - 1) * len(designs) + i
            if phi > PARTIAL_MAX_DISPERSION and r > min(designs):
                continue  # see PARTIAL_MAX_DISPERSION
            step = (k * math.log(r) + lam * (1 - r)) / phi
            if counts[0] == 0:
                after_empty = len(timer.recent) >= 2 and timer.recent[-2][1] == 0
                step = min(step, (1 - r) * (level.run_nats if after_empty else level.empty_nats))
            s = timer.s[j] + step
            if s <= 0:
                timer.s[j], timer.starts[j] = 0.0, half + HALF
                continue
            timer.s[j] = s
            if s >= h and crossed is None:
                crossed, timer.since, timer.crossed = half + HALF, timer.starts[j], (u, r)
    return crossed


def silent_since(timer: DropTimer, since: int, end: int, level: Level, low: float) -> bool | None:
    """Did this key also go (nearly) silent over [since, end)? True: its count there (in its
    most telling unit) is improbably low for a Poisson at its level; False: improbably high
    for one at `low` of it (it carries on); None: too little volume over the span to tell
    either way. Counts are divided by the unit's dispersion (bursty arrivals leave quiet
    stretches by chance)."""
    per_min, phi = level.unit(level.best)
    k = timer.count_since(since, end, level.best) / phi
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
