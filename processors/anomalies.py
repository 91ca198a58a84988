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
See processors/DETECTORS.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import msgspec

from llmpulse.schemas.contract import Change, Eval, Output, Prompt
from llmpulse.schemas.findings import Finding, finding_id

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


# ------------------------------------------------------------------------ statistics


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def mad(xs: list[float], med: float) -> float:
    return median([abs(x - med) for x in xs])


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]  # nearest rank


def _log_pmf(i: int, n: int, lp: float, lq: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k), X ~ Binomial(n, p); exact, summing until terms vanish."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        t = math.exp(_log_pmf(i, n, lp, lq))
        total += t
        if i > n * p and t < total * 1e-12:
            break
    return min(1.0, total)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k)."""
    if k >= n or p <= 0.0:
        return 1.0
    if k < 0 or p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, -1, -1):
        t = math.exp(_log_pmf(i, n, lp, lq))
        total += t
        if i < n * p and t < total * 1e-12:
            break
    return min(1.0, total)


def poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k), X ~ Poisson(lam)."""
    if k < 0:
        return 0.0
    if lam <= 0:
        return 1.0
    total = 0.0
    for i in range(k, -1, -1):
        t = math.exp(i * math.log(lam) - lam - math.lgamma(i + 1))
        total += t
        if i < lam and t < total * 1e-12:
            break
    return min(1.0, total)


class Moments(msgspec.Struct):
    """Count, sum and sum of squares: enough for a mean and a Welch test."""

    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.s += x
        self.ss += x * x

    def merge(self, o: "Moments") -> None:
        self.n += o.n
        self.s += o.s
        self.ss += o.ss

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n else 0.0

    @property
    def var(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.ss - self.s * self.s / self.n) / (self.n - 1))


def dispersion(hist: Any, p0: float, cap: float) -> float:
    """Pearson chi2 / df of per-window counts (k, n) against the pooled rate p0, less two of
    its standard errors.

    1 for binomial counts; above 1 when the rate itself moves between windows. At a fraction
    of an expected count per window the statistic is heavy-tailed (one window with three
    refusals at an expected 0.4 adds 20 to chi2), so only the dispersion it shows beyond
    two standard errors (Var of a term ~ 2 + 1/expected) is used. Clamped to [1, cap] so
    that a quiet history never makes the test sharper than binomial."""
    var1 = p0 * (1 - p0)
    if var1 <= 0:
        return 1.0
    chi = 0.0
    var = 0.0
    m = 0
    for k, n in hist:
        if n:
            chi += (k - n * p0) ** 2 / (n * var1)
            var += 2.0 + 1.0 / (n * var1)
            m += 1
    if m <= 1:
        return 1.0
    return min(cap, max(1.0, (chi - 2.0 * math.sqrt(var)) / (m - 1)))


def quasi(k: int, n: int, phi: float) -> tuple[int, int]:
    """Counts scaled by the dispersion: a quasi-binomial test as a binomial on k/phi of n/phi."""
    if phi <= 1.0:
        return k, n
    return int(k / phi), max(1, round(n / phi))


# Gauss-Hermite nodes and weights for E[f(Z)], Z ~ N(0, 1) (5 points, probabilists' form).
_GH = ((0.0, 0.5333333333), (1.3556261800, 0.2220759220), (-1.3556261800, 0.2220759220),
       (2.8569700139, 0.0112574113), (-2.8569700139, 0.0112574113))


def binom_sf_mixed(k: int, n: int, p: float, sigma: float) -> float:
    """P(X >= k) when X ~ Binomial(n, p * exp(sigma * Z)), Z ~ N(0, 1): a rate that moves
    from window to window. sigma = 0 is the plain binomial tail."""
    if sigma <= 0:
        return binom_sf(k, n, p)
    return min(1.0, sum(w * binom_sf(k, n, min(0.999, p * math.exp(sigma * z))) for z, w in _GH))


def poisson_cdf_mixed(k: int, lam: float, sigma: float) -> float:
    """P(X <= k) when X ~ Poisson(lam * exp(sigma * Z)): traffic whose level moves per minute."""
    if sigma <= 0:
        return poisson_cdf(k, lam)
    return min(1.0, sum(w * poisson_cdf(k, lam * math.exp(sigma * z)) for z, w in _GH))


def welch_z(a: Moments, b: Moments) -> float:
    """(mean_a - mean_b) / standard error; large when a is really above b."""
    se = math.sqrt(a.var / max(a.n, 1) + b.var / max(b.n, 1))
    diff = a.mean - b.mean
    return diff / se if se > 0 else (math.inf if diff > 0 else 0.0)


# --------------------------------------------------------------------------- windows


@dataclass(slots=True)
class _Window:
    """One key, one minute. Per-call metrics use ok calls only: an error or timeout
    burst must not also read as a latency regression."""

    calls: int = 0
    traces: set[str] = field(default_factory=set)  # distinct traces: the independent unit of traffic
    # Prompts: calls as they start. A traffic drop shows there at once; outputs keep landing
    # from calls already in flight (a minute and more for slow models).
    starts: int = 0
    start_traces: set[str] = field(default_factory=set)
    errors: int = 0  # error + timeout
    refusals: int = 0  # refusal + filtered
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    cost: Moments = field(default_factory=Moments)
    tokens: Moments = field(default_factory=Moments)
    lat: Moments = field(default_factory=Moments)
    ev_pass: int = 0
    ev_total: int = 0

    def add_output(self, ev: Output, cost_usd: float | None, max_lat: int) -> None:
        self.calls += 1
        self.traces.add(ev.trace_id)
        if ev.status in ERROR_STATUSES:
            self.errors += 1
        elif ev.status in REFUSAL_STATUSES:
            self.refusals += 1
        else:
            self.ok += 1
            if len(self.latencies) < max_lat:
                self.latencies.append(ev.latency_ms)
            self.lat.add(ev.latency_ms)
            if cost_usd is not None:
                self.cost.add(cost_usd)
            if ev.usage is not None:
                self.tokens.add(ev.usage.input_tokens + ev.usage.output_tokens)

    def add_prompt(self, ev: Prompt) -> None:
        self.starts += 1
        self.start_traces.add(ev.trace_id)

    def traffic(self, by_starts: bool) -> tuple[int, int]:
        """(calls, distinct traces), counted when calls start (prompts) or end (outputs)."""
        return (self.starts, len(self.start_traces)) if by_starts else (self.calls, len(self.traces))

    def merge(self, o: "_Window", max_lat: int) -> None:
        self.calls += o.calls
        self.starts += o.starts
        self.errors += o.errors
        self.refusals += o.refusals
        self.ok += o.ok
        self.latencies.extend(o.latencies[: max(0, max_lat - len(self.latencies))])
        self.cost.merge(o.cost)
        self.tokens.merge(o.tokens)
        self.lat.merge(o.lat)
        self.ev_pass += o.ev_pass
        self.ev_total += o.ev_total


def _combined(a: _Window | None, b: _Window | None, max_lat: int) -> _Window:
    """A fresh window holding both halves (either may be missing)."""
    out = _Window()
    for part in (a, b):
        if part is not None:
            out.merge(part, max_lat)
            out.traces |= part.traces
            out.start_traces |= part.start_traces
    return out


def _pooled(hist: deque) -> tuple[float, int]:
    """Pooled rate of (k, n) windows, smoothed so an all-zero history is not exactly 0; and n."""
    n = sum(b for _, b in hist)
    return (sum(a for a, _ in hist) + 0.5) / (n + 1), n


def _state(bad: bool, clear: bool) -> str:
    return "anomalous" if bad else "normal" if clear else "elevated"


class Verdict(NamedTuple):
    # anomalous: opens/keeps a condition; elevated: not anomalous, not clear either (halfway
    # between baseline and threshold); normal: clear; insufficient: too little data to say;
    # explained: cost rise explained by tokens (token_spike speaks for it).
    state: str
    value: float = 0.0
    baseline: float = 0.0
    threshold: float = 0.0
    severity: str = "low"
    evidence: dict = {}


_INSUFFICIENT = Verdict("insufficient")
_SUSPECT = Verdict("insufficient", evidence={"suspect": True})  # too few calls to test, too odd to learn
ANOMALY_KINDS = ("traffic_drop", "error_rate_spike", "refusal_spike", "latency_regression", "cost_spike", "token_spike")
# Spikes a recent change explains: reported once as regression_after_change.
_CHANGE_COVERED = frozenset({"error_rate_spike", "refusal_spike", "latency_regression", "cost_spike", "token_spike", "eval_regression"})


@dataclass(slots=True)
class _Condition:
    finding: Finding | None  # None when attributed to a change (no own finding)
    windows: int = 1
    clear_streak: int = 0


@dataclass(slots=True)
class _History:
    """Recent non-anomalous windows of one scope, one deque per metric."""

    size: int
    counts: deque = field(init=False)  # (calls, distinct traces)
    errors: deque = field(init=False)  # (k, n)
    refusals: deque = field(init=False)
    p95: deque = field(init=False)
    p50: deque = field(init=False)
    cost: deque = field(init=False)
    tokens: deque = field(init=False)
    evals: deque = field(init=False)  # (passed, total)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in ("counts", "errors", "refusals", "p95", "p50", "cost", "tokens", "evals"):
            setattr(self, name, deque(maxlen=self.size))


@dataclass(slots=True)
class _Cusum:
    """Bernoulli CUSUM of one rate (failures, errors, refusals) in event-time order."""

    s: float = 0.0  # log-likelihood ratio, nats
    n: int = 0  # observations since the statistic left 0
    hits: int = 0  # ... of which hits
    since: int = 0  # event time of the first of them

    def reset(self) -> None:
        self.s, self.n, self.hits, self.since = 0.0, 0, 0, 0

    def feed(self, obs: list[tuple[int, str, bool]], p0: float, p1: float, phi: float, h: float,
             ready: Callable[["_Cusum"], bool] = lambda cs: True) -> int | None:
        """Add observations (ts, event_id, hit), sorted by (ts, id), under a hit rate p0 against
        p1 > p0, each worth 1/phi of its evidence. Returns the ts of the first one at which the
        statistic is >= h and `ready` agrees (the rest are not read: the caller resets), else None."""
        hit_llr, miss_llr = math.log(p1 / p0) / phi, math.log((1 - p1) / (1 - p0)) / phi
        for ts, _, hit in obs:
            s = self.s + (hit_llr if hit else miss_llr)
            if s <= 0:
                self.reset()
                continue
            if not self.n:
                self.since = ts
            self.n += 1
            self.hits += hit
            self.s = s
            if s >= h and ready(self):
                return ts
        return None


@dataclass(slots=True)
class _KeyState:
    tenant: str
    workflow: str
    model: str
    first_minute: int
    history: _History
    last_ts: int = 0
    windows: dict[int, _Window] = field(default_factory=dict)  # half-minute start -> bucket
    by_starts: bool = False  # traffic counted from prompts: the key's app sends them
    conds: dict[str, _Condition] = field(default_factory=dict)
    prev: tuple[int, int, int] = (0, 0, 0)  # the half minute taken last: (start, calls, traces)
    # Rate CUSUMs: half -> [(ts, event_id, status code)] until the watermark passes the half
    pending: dict[int, list] = field(default_factory=dict)
    fed: int = 0  # halves before this were fed to the CUSUMs
    cusums: dict[str, _Cusum] = field(default_factory=dict)  # kind -> CUSUM, made on first use

    def take(self, half: int) -> tuple[_Window | None, tuple[int, int, int] | None]:
        """Pop the bucket at `half`; also return the traffic of the half minute before it
        (None if not known), for the 90 s traffic test."""
        before = self.prev if self.prev[0] == half - H else None
        win = self.windows.pop(half, None)
        self.prev = (half, *win.traffic(self.by_starts)) if win is not None else (half, 0, 0)
        return win, before


@dataclass(slots=True)
class _EvalState:
    tenant: str
    workflow: str
    eval_name: str
    first_minute: int
    history: _History
    last_ts: int = 0
    # half-minute start -> [passed, total], kept for eval_max_span minutes (the spans tested)
    windows: dict[int, list[int]] = field(default_factory=dict)
    conds: dict[str, _Condition] = field(default_factory=dict)
    pending: dict[int, list] = field(default_factory=dict)  # half -> [(ts, event_id, failed)] for the CUSUM
    fed: int = 0  # halves before this were fed to the CUSUM
    cusum: _Cusum = field(default_factory=_Cusum)  # of failures


@dataclass(slots=True)
class _ChangeTracker:
    """One change on one (tenant, workflow): before/after comparison and attribution."""

    change: Change
    tenant: str
    workflow: str
    minute: int  # minute of the change; the tracker activates when it closes
    before: _Window | None = None  # set at activation, from the closed minutes before
    before_minutes: list = field(default_factory=list)  # per-minute _MinuteSummary of `before`
    after: _Window = field(default_factory=_Window)  # events at or after the change, as they arrive
    after_windows: int = 0
    active: bool = False
    finding: Finding | None = None
    attributed: list[str] = field(default_factory=list)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _sev_delta(delta: float) -> str:
    return "critical" if delta >= 0.4 else "high" if delta >= 0.2 else "medium" if delta >= 0.1 else "low"


def _sev_ratio(ratio: float) -> str:
    return "critical" if ratio >= 4 else "high" if ratio >= 2.5 else "medium" if ratio >= 1.75 else "low"


_SEV_RANK = {"critical": 4, "high": 3, "medium": 2, "low": 1, "info": 0}


def _newest_half_severity(kind: str, v: Verdict, half: _Window | None, cfg: AnomalyConfig) -> str:
    """An early look's window is half normal traffic when the incident began inside it: its
    magnitude understates the incident. Severity (which decides who is paged) follows the
    newest half minute when that has >= min_calls / 2 calls; it only ever raises it."""
    if half is None or half.calls < max(1, cfg.min_calls // 2) or not v.baseline:
        return v.severity
    if kind == "error_rate_spike":
        sev = _sev_delta(half.errors / half.calls - v.baseline)
    elif kind == "refusal_spike":
        sev = _sev_delta(half.refusals / half.calls - v.baseline)
    elif kind == "latency_regression" and half.latencies:
        sev = _sev_ratio(quantile(half.latencies, 0.95) / v.baseline)
    elif kind == "cost_spike" and half.cost.n:
        sev = _sev_ratio(half.cost.mean / v.baseline)
    elif kind == "token_spike" and half.tokens.n:
        sev = _sev_ratio(half.tokens.mean / v.baseline)
    else:  # traffic_drop: a quiet half minute is noisier than a quiet minute; keep the window's
        return v.severity
    return max(v.severity, sev, key=_SEV_RANK.__getitem__)


# ------------------------------------------------------------------------- detector


class AnomalyDetector:
    """Windows, baselines and lifecycles for every (tenant, workflow, model). One instance
    must see all events of the keys it owns (route by tenant/workflow, not by trace)."""

    EVENT_TYPES = frozenset({"output", "prompt", "eval", "change"})  # what `process` reads

    def __init__(
        self,
        config: AnomalyConfig | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], int] = _wall_ms,
    ) -> None:
        self.config = config or AnomalyConfig()
        self._per_workflow = {wf: self.config.merged(o) for wf, o in (overrides or {}).items()}
        self._clock = clock
        # Closed workflow minutes kept for the "before" side of a change comparison.
        self._wf_memory = max(c.before_windows for c in (self.config, *self._per_workflow.values())) + 2
        self._keys: dict[tuple[str, str, str], _KeyState] = {}
        self._evals: dict[tuple[str, str, str], _EvalState] = {}
        self._wf_minutes: dict[tuple[str, str], deque] = {}  # closed (minute, _Window) per workflow
        self._wf_open: dict[tuple[str, str], dict[int, _Window]] = {}
        self._trackers: dict[tuple[str, str], _ChangeTracker] = {}
        self._max_ts: int | None = None
        self._closed_until: int | None = None  # start of the oldest still-open minute
        self._looked_until: int = 0  # end of the last early look
        self.late_dropped = 0

    def config_for(self, workflow: str) -> AnomalyConfig:
        return self._per_workflow.get(workflow, self.config)

    # ------------------------------------------------------------------ feeding

    def process(self, event: Any, cost_usd: float | None = None) -> list[Finding]:
        ts = event.ts
        if self._closed_until is None:
            self._closed_until = (ts - self.config.allowed_lateness_ms) // W * W
        out: list[Finding] = []
        if isinstance(event, Change):
            out = self._add_change(event)  # a late change still counts: it activates at the next close
        elif ts < self._closed_until:
            self.late_dropped += 1  # its window is already closed and judged
        elif isinstance(event, Output):
            self._add_output(event, cost_usd, ts)
        elif isinstance(event, Prompt) and event.model:
            self._add_prompt(event)
        elif isinstance(event, Eval):
            self._add_eval(event, ts)
        return out + self._advance_to(ts)

    def advance(self, event_time_ms: int) -> list[Finding]:
        """Event time has reached `event_time_ms` without events (idle input)."""
        return self._advance_to(event_time_ms)

    def flush(self) -> list[Finding]:
        """End of a replay: close every minute that the data fully covers."""
        if self._max_ts is None:
            return []
        return self._close_until((self._max_ts + 1) // W * W)  # minutes ending at or before max_ts + 1

    def _advance_to(self, ts: int) -> list[Finding]:
        if self._max_ts is not None and ts <= self._max_ts:
            return []
        self._max_ts = ts
        return self._close_until(ts - self.config.allowed_lateness_ms)

    def _close_until(self, watermark: int) -> list[Finding]:
        """Close the minutes and take the early looks (half a minute into each open
        minute) that end at or before `watermark`, in event-time order."""
        out: list[Finding] = []
        while True:
            look = self._closed_until + H
            if self._looked_until < look <= watermark:
                out += self._early_look(look)
                self._looked_until = look
            elif self._closed_until + W <= watermark:
                out += self._close_minute(self._closed_until)
                self._closed_until += W
            else:
                return out

    def _bucket(self, ev: Output | Prompt, cfg: AnomalyConfig) -> tuple[_KeyState, _Window]:
        minute, half = ev.ts // W * W, ev.ts // H * H
        key = (ev.tenant, ev.workflow, ev.model)
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = _KeyState(ev.tenant, ev.workflow, ev.model, minute, _History(cfg.history_windows))
        ks.first_minute = min(ks.first_minute, minute)
        ks.last_ts = max(ks.last_ts, ev.ts)
        win = ks.windows.get(half)
        if win is None:
            win = ks.windows[half] = _Window()
        return ks, win

    def _add_prompt(self, ev: Prompt) -> None:
        ks, win = self._bucket(ev, self.config_for(ev.workflow))
        if not ks.by_starts:
            ks.by_starts = True
            ks.history.counts.clear()  # a baseline counted at call ends does not compare
        win.add_prompt(ev)

    def _add_output(self, ev: Output, cost_usd: float | None, ts: int) -> None:
        minute = ts // W * W
        cfg = self.config_for(ev.workflow)
        ks, win = self._bucket(ev, cfg)
        win.add_output(ev, cost_usd, cfg.max_latency_samples)
        half = ts // H * H
        if cfg.rate_cusum_h > 0 and half >= ks.fed:
            ks.pending.setdefault(half, []).append((ts, ev.event_id, ev.status))
        wf = self._wf_open.setdefault((ev.tenant, ev.workflow), {})
        wf.setdefault(minute, _Window()).add_output(ev, cost_usd, cfg.max_latency_samples)
        tr = self._trackers.get((ev.tenant, ev.workflow))
        if tr is not None and _after_change(ev, tr.change):
            tr.after.add_output(ev, cost_usd, 10 * cfg.max_latency_samples)

    def _add_eval(self, ev: Eval, ts: int) -> None:
        minute, half = ts // W * W, ts // H * H
        passed = ev.passed if ev.passed is not None else (ev.score >= 0.5 if ev.score is not None else None)
        if passed is None:
            return
        cfg = self.config_for(ev.workflow)
        key = (ev.tenant, ev.workflow, ev.eval_name)
        es = self._evals.get(key)
        if es is None:
            es = self._evals[key] = _EvalState(ev.tenant, ev.workflow, ev.eval_name, minute, _History(cfg.history_windows))
        es.first_minute = min(es.first_minute, minute)
        es.last_ts = max(es.last_ts, ev.ts)
        cell = es.windows.setdefault(half, [0, 0])
        cell[0] += int(passed)
        cell[1] += 1
        if cfg.eval_cusum_h > 0 and half >= es.fed:
            es.pending.setdefault(half, []).append((ev.ts, ev.event_id, not passed))
        wf = self._wf_open.setdefault((ev.tenant, ev.workflow), {}).setdefault(minute, _Window())
        wf.ev_pass += int(passed)
        wf.ev_total += 1
        tr = self._trackers.get((ev.tenant, ev.workflow))
        if tr is not None and ev.ts >= tr.change.ts:
            tr.after.ev_pass += int(passed)
            tr.after.ev_total += 1

    # ------------------------------------------------------------- minute close

    def _close_minute(self, minute: int) -> list[Finding]:
        end = minute + W
        out = self._activate_changes(minute)
        pending = self._pending_changes()
        for key in list(self._keys):
            ks = self._keys[key]
            if minute < ks.first_minute:
                continue
            cfg = self.config_for(ks.workflow)
            if ks.last_ts < end - cfg.key_ttl_ms and not ks.windows:
                out += self._drop_conditions(ks.conds, end, "key idle")
                del self._keys[key]
                continue
            out += self._rate_cusums(ks, minute + H, cfg, (ks.tenant, ks.workflow) in pending)
            # The second half stays for the early look that straddles the next minute.
            first, before = ks.take(minute)
            win = _combined(first, ks.windows.get(minute + H), cfg.max_latency_samples)
            out += self._close_key(ks, win, minute, cfg, before)
        for key in list(self._evals):
            es = self._evals[key]
            if minute < es.first_minute:
                continue
            cfg = self.config_for(es.workflow)
            if es.last_ts < end - cfg.key_ttl_ms and not es.windows:
                out += self._drop_conditions(es.conds, end, "key idle")
                del self._evals[key]
                continue
            out += self._eval_cusum(es, minute + H, cfg, (es.tenant, es.workflow) in pending)
            out += self._close_eval(es, minute, cfg)
        for wf_key, open_minutes in list(self._wf_open.items()):
            win = open_minutes.pop(minute, None)
            if win is not None:
                self._wf_minutes.setdefault(wf_key, deque(maxlen=self._wf_memory)).append((minute, win))
            if not open_minutes:
                del self._wf_open[wf_key]
        for tr in list(self._trackers.values()):
            out += self._evaluate_change(tr, minute)
        return out

    def _verdicts(self, win: _Window, ks: _KeyState, cfg: AnomalyConfig,
                  before: tuple[int, int, int] | None) -> dict[str, Verdict]:
        h = ks.history
        verdicts = {
            "traffic_drop": self._traffic(win, h, cfg, ks.by_starts, before),
            "error_rate_spike": self._rate(win.errors, win.calls, h.errors, cfg, "error_rate"),
            "refusal_spike": self._rate(win.refusals, win.calls, h.refusals, cfg, "refusal_rate"),
            "latency_regression": self._latency(win, h, cfg),
            "cost_spike": self._robust(win.cost.mean if win.cost.n >= cfg.min_calls else None, h.cost, cfg.cost_ratio, cfg, "cost_per_call_usd"),
            "token_spike": self._robust(win.tokens.mean if win.tokens.n >= cfg.min_calls else None, h.tokens, cfg.token_ratio, cfg, "tokens_per_call"),
        }
        cost, tok = verdicts["cost_spike"], verdicts["token_spike"]
        if cost.state == "anomalous" and tok.baseline > 0 and cost.baseline > 0:
            tok_ratio = tok.value / tok.baseline if tok.value else 0.0
            if tok_ratio - 1 >= cfg.cost_explained_share * (cost.value / cost.baseline - 1):
                verdicts["cost_spike"] = cost._replace(state="explained")  # token_spike covers it
        # Longer prompts take longer to prefill: while tokens/call is spiking, a slower p95 is
        # the same incident and token_spike pages for both.
        lat = verdicts["latency_regression"]
        if lat.state == "anomalous" and (tok.state == "anomalous" or "token_spike" in ks.conds):
            verdicts["latency_regression"] = lat._replace(state="explained")
        return verdicts

    def _early_look(self, end: int) -> list[Finding]:
        """The minute ending half a minute into the open one: may OPEN a condition early.

        Half a minute sooner for an incident that began late in a minute, whose first
        window is mostly normal traffic. Nothing is learned, kept open or resolved here:
        that stays with the minute windows. A workflow whose change has not activated
        yet waits for its minute, so a spike the change explains is attributed to it.
        """
        out: list[Finding] = []
        start = end - W
        pending = self._pending_changes()
        for ks in self._keys.values():
            cfg = self.config_for(ks.workflow)
            out += self._rate_cusums(ks, end - H, cfg, (ks.tenant, ks.workflow) in pending)
            (first, before), second = ks.take(start), ks.windows.get(end - H)
            if (first is None and second is None) or (ks.tenant, ks.workflow) in pending:
                continue
            verdicts = self._verdicts(_combined(first, second, cfg.max_latency_samples), ks, cfg, before)
            fresh = [(k, v) for k, v in verdicts.items() if v.state == "anomalous" and k not in ks.conds]
            if fresh:
                scope = {"tenant": ks.tenant, "workflow": ks.workflow, "model": ks.model}
                tracker = self._tracker_for(ks.tenant, ks.workflow, start, cfg)
                for kind, v in fresh:
                    v = v._replace(severity=_newest_half_severity(kind, v, second, cfg))
                    out += self._lifecycle(ks.conds, kind, v, scope, start, cfg, tracker, ks.history)
        for es in self._evals.values():
            out += self._eval_cusum(es, end - H, self.config_for(es.workflow), (es.tenant, es.workflow) in pending)
            if "eval_regression" in es.conds or (es.tenant, es.workflow) in pending:
                continue
            cfg = self.config_for(es.workflow)
            v = self._eval_verdict(es, end, cfg)
            if v.state == "anomalous":
                p, t = es.windows.get(end - H, (0, 0))
                if t >= max(1, cfg.min_evals // 2):  # severity follows the newest half (see below)
                    v = v._replace(severity=max(v.severity, _sev_delta(v.baseline - p / t), key=_SEV_RANK.__getitem__))
                scope = {"tenant": es.tenant, "workflow": es.workflow, "model": "", "eval_name": es.eval_name}
                tracker = self._tracker_for(es.tenant, es.workflow, start, cfg)
                out += self._lifecycle(es.conds, "eval_regression", v, scope, start, cfg, tracker, es.history)
        return out

    def _pending_changes(self) -> set[tuple[str, str]]:
        """Workflows with a change that has not activated yet (its minute is still open)."""
        return {(t.tenant, t.workflow) for t in self._trackers.values() if not t.active}

    def _close_key(self, ks: _KeyState, win: _Window, minute: int, cfg: AnomalyConfig,
                   before: tuple[int, int, int] | None) -> list[Finding]:
        h = ks.history
        verdicts = self._verdicts(win, ks, cfg, before)
        scope = {"tenant": ks.tenant, "workflow": ks.workflow, "model": ks.model}
        tracker = self._tracker_for(ks.tenant, ks.workflow, minute, cfg)
        out: list[Finding] = []
        for kind, v in verdicts.items():
            out += self._lifecycle(ks.conds, kind, v, scope, minute, cfg, tracker, h)
        # Learn from what was not anomalous.
        flagged = {k for k, v in verdicts.items()
                   if v.state in ("anomalous", "explained") or v.evidence.get("suspect")} | set(ks.conds)
        if "traffic_drop" not in flagged:
            h.counts.append(win.traffic(ks.by_starts))
        if win.calls:
            if "error_rate_spike" not in flagged:
                h.errors.append((win.errors, win.calls))
            if "refusal_spike" not in flagged:
                h.refusals.append((win.refusals, win.calls))
        if win.ok >= cfg.min_calls and win.latencies and "latency_regression" not in flagged:
            h.p95.append(quantile(win.latencies, 0.95))
            h.p50.append(quantile(win.latencies, 0.5))
        if win.cost.n >= cfg.min_calls and "cost_spike" not in flagged:
            h.cost.append(win.cost.mean)
        if win.tokens.n >= cfg.min_calls and "token_spike" not in flagged:
            h.tokens.append(win.tokens.mean)
        return out

    def _eval_verdict(self, es: _EvalState, end: int, cfg: AnomalyConfig) -> Verdict:
        """Pass rate of the newest 1..eval_max_span minutes before `end` (those with >= min_evals
        evals); the most significant drop wins, its p-value paying for the extra looks (Bonferroni)."""
        h = es.history.evals
        p0, hist_total = _pooled(h)
        if len(h) < cfg.min_history or hist_total < cfg.min_eval_history:
            return _INSUFFICIENT
        spans: list[tuple[float, int, int]] = []
        phi = dispersion(h, p0, cfg.max_dispersion)
        passed = total = 0
        looks = cfg.eval_max_span + 1  # the newest minute alone with >= min_evals / 2 is one more look
        for i in range(cfg.eval_max_span):
            for half in (end - (i + 1) * W, end - (i + 1) * W + H):
                p, t = es.windows.get(half, (0, 0))
                passed, total = passed + p, total + t
            if total >= cfg.min_evals or (i == 0 and total >= max(1, cfg.min_evals // 2)):
                # lower tail of passes = upper tail of failures, widened by the dispersion
                fk, fn = quasi(total - passed, total, phi)
                spans.append((binom_sf(fk, fn, 1 - p0) * looks, passed, total))
        if not spans:
            return _INSUFFICIENT
        pval, passed, total = min(spans)
        rate = passed / total
        bad = p0 - rate >= cfg.eval_min_drop and pval <= cfg.eval_alpha
        return Verdict(
            _state(bad, rate >= p0 - cfg.eval_min_drop / 2), rate, p0, p0 - cfg.eval_min_drop, _sev_delta(p0 - rate),
            {"metric": "eval_pass_rate", "eval_name": es.eval_name, "observed": round(rate, 4),
             "baseline": round(p0, 4), "baseline_method": f"pooled pass rate of {len(h)} windows",
             "dispersion": round(phi, 3), "evals": total, "p_value": pval},
        )

    def _eval_cusum(self, es: _EvalState, half: int, cfg: AnomalyConfig, held: bool) -> list[Finding]:
        """Feed the CUSUM the evals of a half minute the watermark has passed, in (ts, id) order.

        An alarm opens eval_regression stamped with the eval that crossed the threshold.
        `held`: a change on the workflow has not activated yet: keep adding up, alarm once
        the alarm can be attributed to it."""
        es.fed = max(es.fed, half + H)
        evals = es.pending.pop(half, None)
        if not evals:
            return []
        h = es.history.evals
        p0, hist_total = _pooled(h)
        cs = es.cusum
        if "eval_regression" in es.conds or len(h) < cfg.min_history or hist_total < cfg.min_eval_history:
            cs.reset()
            return []
        p1 = max(0.01, p0 - cfg.eval_cusum_shift)
        phi = dispersion(h, p0, cfg.max_dispersion)
        ts = cs.feed(sorted(evals), 1 - p0, 1 - p1, phi, cfg.eval_cusum_h, lambda c: not held)  # as failure rates
        if ts is None:
            return []
        rate = 1 - cs.hits / cs.n
        v = Verdict("anomalous", rate, p0, p1, _sev_delta(p0 - rate),
                    {"metric": "eval_pass_rate", "eval_name": es.eval_name, "method": "cusum",
                     "observed": round(rate, 4), "baseline": round(p0, 4), "design_rate": round(p1, 4),
                     "baseline_method": f"pooled pass rate of {len(h)} windows", "dispersion": round(phi, 3),
                     "evals": cs.n, "failures": cs.hits, "run_start_ts": cs.since,
                     "statistic": round(cs.s, 3), "threshold_nats": cfg.eval_cusum_h})
        cs.reset()
        scope = {"tenant": es.tenant, "workflow": es.workflow, "model": "", "eval_name": es.eval_name}
        start = ts - W  # the finding is stamped with the crossing eval (window_end = ts)
        tracker = self._tracker_for(es.tenant, es.workflow, ts // W * W, cfg)
        return self._lifecycle(es.conds, "eval_regression", v, scope, start, cfg, tracker, es.history)

    _RATE_STATUSES = (("error_rate_spike", "errors", "error_rate", ERROR_STATUSES),
                      ("refusal_spike", "refusals", "refusal_rate", REFUSAL_STATUSES))

    def _rate_cusums(self, ks: _KeyState, half: int, cfg: AnomalyConfig, held: bool) -> list[Finding]:
        """Feed a key's error and refusal CUSUMs the calls of a half minute the watermark has
        passed; an alarm opens the spike stamped with the call that crossed the threshold.
        `held` as for evals."""
        ks.fed = max(ks.fed, half + H)
        calls = ks.pending.pop(half, None)
        if not calls:
            return []
        calls.sort()
        out: list[Finding] = []
        for kind, hist_name, metric, statuses in self._RATE_STATUSES:
            hist = getattr(ks.history, hist_name)
            cs = ks.cusums.get(kind)
            p0, hn = _pooled(hist)
            # Only keys whose minutes usually carry min_calls: three calls do not page anyone.
            if kind in ks.conds or len(hist) < cfg.min_history or hn < cfg.min_calls * len(hist):
                if cs is not None:
                    cs.reset()
                continue
            cs = cs or ks.cusums.setdefault(kind, _Cusum())
            thr = max(p0 + cfg.rate_min_delta, p0 * cfg.rate_min_ratio)  # as the window test
            p1 = min(0.99, max(thr, p0 + cfg.rate_cusum_shift))
            phi = dispersion(hist, p0, cfg.max_dispersion)
            # A handful of calls does not page, nor strong evidence of a rise too small to page.
            ts = cs.feed([(t, i, st in statuses) for t, i, st in calls], p0, p1, phi, cfg.rate_cusum_h,
                         lambda c: not held and c.n >= cfg.min_calls and c.hits >= thr * c.n)
            if ts is None:
                continue
            rate = cs.hits / cs.n
            v = Verdict("anomalous", rate, p0, p1, _sev_delta(rate - p0),
                        {"metric": metric, "method": "cusum", "observed": round(rate, 4), "baseline": round(p0, 5),
                         "design_rate": round(p1, 4), "dispersion": round(phi, 3),
                         "baseline_method": f"pooled rate of {len(hist)} windows ({hn} calls)",
                         "calls": cs.n, "count": cs.hits, "run_start_ts": cs.since,
                         "statistic": round(cs.s, 3), "threshold_nats": cfg.rate_cusum_h})
            cs.reset()
            scope = {"tenant": ks.tenant, "workflow": ks.workflow, "model": ks.model}
            tracker = self._tracker_for(ks.tenant, ks.workflow, ts // W * W, cfg)
            out += self._lifecycle(ks.conds, kind, v, scope, ts - W, cfg, tracker, ks.history)
        return out

    def _close_eval(self, es: _EvalState, minute: int, cfg: AnomalyConfig) -> list[Finding]:
        end = minute + W
        a, b = es.windows.get(minute, (0, 0)), es.windows.get(minute + H, (0, 0))
        cell = (a[0] + b[0], a[1] + b[1])
        v = self._eval_verdict(es, end, cfg)
        scope = {"tenant": es.tenant, "workflow": es.workflow, "model": "", "eval_name": es.eval_name}
        tracker = self._tracker_for(es.tenant, es.workflow, minute, cfg)
        out = self._lifecycle(es.conds, "eval_regression", v, scope, minute, cfg, tracker, es.history)
        # Halves older than the longest span of the next early look are no longer needed.
        oldest = end + H - cfg.eval_max_span * W
        for half in [x for x in es.windows if x < oldest]:
            del es.windows[half]
        # As for rates: a minute far under the baseline is not learned even when it does not page.
        h = es.history.evals
        p0, _ = _pooled(h)
        suspect = (cell[1] and len(h) >= cfg.min_history and cell[0] / cell[1] <= p0 - cfg.eval_min_drop
                   and binom_sf(cell[1] - cell[0], cell[1], 1 - p0) <= cfg.learn_alpha)
        if cell[1] and v.state != "anomalous" and "eval_regression" not in es.conds and not suspect:
            h.append((cell[0], cell[1]))
        return out

    # ---------------------------------------------------------------- verdicts

    @staticmethod
    def _rate(k: int, n: int, hist: deque, cfg: AnomalyConfig, metric: str) -> Verdict:
        if len(hist) < cfg.min_history or not n or (n < cfg.min_calls and not k):
            return _INSUFFICIENT
        p0, hn = _pooled(hist)
        rate = k / n
        thr = max(p0 + cfg.rate_min_delta, p0 * cfg.rate_min_ratio)
        # Over the threshold and improbable for a plain binomial: not learned into the
        # baseline even when too small or not significant enough to page (the first
        # minutes of an incident, or its minutes under min_calls, must not raise p0 and
        # the dispersion until the incident looks normal).
        suspect = rate >= thr and binom_sf(k, n, p0) <= cfg.learn_alpha
        if n < cfg.min_calls:
            return _SUSPECT if suspect else _INSUFFICIENT
        phi = dispersion(hist, p0, cfg.max_dispersion) if rate >= thr else 1.0
        sigma = cfg.rate_sigma
        pval = binom_sf_mixed(*quasi(k, n, phi), p0, sigma) if rate >= thr else 1.0
        bad = rate >= thr and pval <= cfg.alpha
        return Verdict(
            _state(bad, rate < (p0 + thr) / 2), rate, p0, thr, _sev_delta(rate - p0),
            {"metric": metric, "observed": round(rate, 4), "baseline": round(p0, 5),
             "baseline_method": f"pooled rate of {len(hist)} windows ({hn} calls), dispersion {phi:.2f}, sigma {sigma:.2f}",
             "threshold": round(thr, 4),
             "calls": n, "count": k, "p_value": pval, "suspect": suspect},
        )

    @staticmethod
    def _robust(value: float | None, hist: deque, ratio: float, cfg: AnomalyConfig, metric: str,
                log_z: float = 0.0) -> Verdict:
        if value is None or len(hist) < cfg.min_history:
            return _INSUFFICIENT
        vals = list(hist)
        med = median(vals)
        scale = 1.4826 * mad(vals, med)
        thr = max(med * ratio, med + cfg.robust_z * scale)
        if log_z > 0 and med > 0 and min(vals) > 0:
            # Multiplicative noise (a provider's slow minute scales every call): the spread
            # of log values, whose right tail is longer than a symmetric MAD allows.
            logs = [math.log(x) for x in vals]
            lmed = median(logs)
            thr = max(thr, med * math.exp(log_z * 1.4826 * mad(logs, lmed)))
        bad = med > 0 and value >= thr
        return Verdict(
            _state(bad, value < (med + thr) / 2), value, med, thr, _sev_ratio(value / med if med else 0.0),
            {"metric": metric, "observed": round(value, 6), "baseline": round(med, 6),
             "baseline_method": f"median of {len(vals)} windows, MAD {scale:.6g}", "threshold": round(thr, 6),
             "ratio": round(value / med, 3) if med else None},
        )

    @classmethod
    def _latency(cls, win: _Window, h: _History, cfg: AnomalyConfig) -> Verdict:
        """p95 over its robust threshold, and significantly many calls above the baseline p95.

        The p95 of a few dozen calls is one or two calls: alone it pages on a couple of
        slow outliers. A real regression moves many calls past the old p95.
        """
        if win.ok < cfg.min_calls or not win.latencies:
            return _INSUFFICIENT
        v = cls._robust(quantile(win.latencies, 0.95), h.p95, cfg.latency_ratio, cfg, "p95_latency_ms",
                        cfg.latency_log_z)
        if v.state not in ("anomalous", "elevated"):
            return v
        above = sum(1 for x in win.latencies if x > v.baseline)
        pval = binom_sf(above, len(win.latencies), cfg.latency_exceed_p0)
        # Elevated and many calls past the old p95: not learned (the first, still sub-threshold
        # minutes of a regression must not widen the baseline's spread).
        ev = {**v.evidence, "calls_above_baseline_p95": above, "calls": len(win.latencies), "p_value": pval,
              "suspect": pval <= cfg.learn_alpha}
        p50 = quantile(win.latencies, 0.5)
        p50_z = cls._p50_z(p50, h)
        if p50_z is not None:
            ev["p50_robust_z"] = round(p50_z, 2)
            if p50_z < cfg.latency_p50_z:
                pval = 1.0  # not a regression of the bulk of the calls: do not page
        if v.state == "elevated":
            # The p95 of a few dozen calls swings, so its MAD threshold is wide; the median
            # moves far less. Every call slower by latency_ratio (a slower model, region or
            # prompt) shows there first: that, with the calls past the old p95, is enough.
            base50 = median(list(h.p50)) if len(h.p50) >= cfg.min_history else 0.0
            if base50 > 0 and p50 >= cfg.latency_ratio * base50 and pval <= cfg.alpha:
                ev.update(p50_latency_ms=round(p50, 1), baseline_p50=round(base50, 1), detected_by="median")
                return v._replace(state="anomalous", severity=_sev_ratio(p50 / base50), evidence=ev)
            return v._replace(evidence=ev)
        return v._replace(state=_state(pval <= cfg.alpha, False), evidence=ev)

    @staticmethod
    def _p50_z(p50: float, h: _History) -> float | None:
        """A window's median latency in robust SDs of the history's log p50 above its median."""
        if len(h.p50) < 2:
            return None
        logs = [math.log(x) for x in h.p50 if x > 0]
        med = median(logs)
        spread = 1.4826 * mad(logs, med)
        if spread <= 0 or p50 <= 0:
            return None
        return (math.log(p50) - med) / spread

    @staticmethod
    def _traffic(win: _Window, h: _History, cfg: AnomalyConfig, by_starts: bool,
                 before: tuple[int, int, int] | None) -> Verdict:
        """Calls far under their median, and distinct traces improbably few for a Poisson.

        Calls are overdispersed (an agent trace makes many calls at once); trace
        arrivals are close to Poisson, so they carry the significance test. Counted as
        calls start when the app sends prompts (`by_starts`), else as they end. When the
        minute is low but not yet significant, the last 90 s (`before`: the half minute
        ahead of the window) are tested too: on a quiet key an outage that began inside
        that half minute is then seen half a minute sooner.
        """
        if len(h.counts) < cfg.min_history:
            return _INSUFFICIENT
        base = median([c for c, _ in h.counts])
        lam = median([t for _, t in h.counts])
        if base < cfg.traffic_min_expected:
            return _INSUFFICIENT
        thr = base * (1 - cfg.traffic_drop)
        calls, traces = win.traffic(by_starts)
        sigma = 0.0
        pval = 1.0
        span = 60
        bad = False
        if calls <= thr:
            # Volume moves from minute to minute more than a Poisson allows: the history's
            # excess variance of trace counts, as a lognormal factor on lam (a 3-sigma quiet
            # minute drawing a low Poisson count is not an outage).
            ts_ = [t for _, t in h.counts]
            mean = sum(ts_) / len(ts_)
            var = sum((t - mean) ** 2 for t in ts_) / (len(ts_) - 1)
            sigma = cfg.traffic_sigma
            if mean > 0 and var > mean:
                sigma = max(sigma, min(cfg.traffic_max_sigma, math.sqrt(math.log1p((var - mean) / (mean * mean)))))
            pval = poisson_cdf_mixed(traces, lam, sigma)
            bad = pval <= cfg.alpha
            if not bad and before is not None and calls + before[1] <= 1.5 * thr:
                # The same volume factor for all 90 s (slow minutes come in runs): conservative.
                p90 = poisson_cdf_mixed(traces + before[2], 1.5 * lam, sigma)
                if p90 <= cfg.alpha:
                    bad, pval, span = True, p90, 90
        drop = 1 - calls / base
        sev = "critical" if drop >= 0.95 else "high" if drop >= 0.8 else "medium"
        evidence = {"metric": "calls_started_per_minute" if by_starts else "calls_per_minute", "observed": calls,
                    "baseline": base, "baseline_method": f"median of {len(h.counts)} windows",
                    "threshold": round(thr, 2), "drop": round(drop, 3), "traces": traces, "baseline_traces": lam,
                    "volume_sigma": round(sigma, 3), "p_value": pval, "tested_seconds": span}
        if span == 90:
            evidence.update(observed_90s=calls + before[1], traces_90s=traces + before[2])
        return Verdict(_state(bad, calls > (base + thr) / 2), calls, base, thr, sev, evidence)

    # --------------------------------------------------------------- lifecycle

    def _lifecycle(self, conds: dict, kind: str, v: Verdict, scope: dict, minute: int, cfg: AnomalyConfig,
                   tracker: _ChangeTracker | None, history: _History) -> list[Finding]:
        end = minute + W
        cond = conds.get(kind)
        if v.state == "anomalous":
            if cond is None:
                if tracker is not None and kind in _CHANGE_COVERED:
                    conds[kind] = _Condition(None)  # attributed: the change finding speaks for it
                    return self._attribute(tracker, kind, v, scope, end)
                f = self._open(kind, v, scope, minute)
                conds[kind] = _Condition(f)
                return [f]
            cond.clear_streak = 0
            cond.windows += 1
            if cond.windows >= cfg.max_open_windows:  # a lasting shift: accept it, relearn
                history.reset()
                del conds[kind]
                return self._resolved(cond.finding, end, "baseline relearned after a lasting shift")
        elif v.state == "elevated" and cond is not None:
            cond.clear_streak = 0  # hysteresis: clearing needs the value back near its baseline
        elif v.state == "normal" and cond is not None:
            cond.clear_streak += 1
            if cond.clear_streak >= cfg.clear_windows:
                del conds[kind]
                return self._resolved(cond.finding, end, "cleared")
        return []

    def _open(self, kind: str, v: Verdict, scope: dict, minute: int) -> Finding:
        evidence = {**v.evidence, "window_start": minute, "window_end": minute + W}
        if "eval_name" in scope:
            evidence["eval_name"] = scope["eval_name"]
        return Finding(
            finding_id=finding_id(kind, scope["tenant"], scope["workflow"], scope["model"], scope.get("eval_name", ""), minute),
            detected_at=self._clock(),
            event_ts=minute + W,
            kind=kind,
            severity=v.severity,  # type: ignore[arg-type]
            tenant=scope["tenant"],
            workflow=scope["workflow"],
            model=scope["model"],
            title=_title(kind, v, scope),
            value=float(v.value),
            threshold=float(v.threshold),
            evidence=evidence,
        )

    def _resolved(self, f: Finding | None, end: int, reason: str) -> list[Finding]:
        if f is None:
            return []
        ev = {**f.evidence, "resolved_reason": reason, "resolved_at_window_end": end}
        return [msgspec.structs.replace(f, status="resolved", event_ts=end, detected_at=self._clock(), evidence=ev)]

    def _drop_conditions(self, conds: dict, end: int, reason: str) -> list[Finding]:
        out: list[Finding] = []
        for c in conds.values():
            out += self._resolved(c.finding, end, reason)
        conds.clear()
        return out

    # ----------------------------------------------------------------- changes

    def _add_change(self, ch: Change) -> list[Finding]:
        """A change starts a tracker per affected workflow; it replaces (and resolves) the previous one."""
        workflows = [ch.workflow] if ch.workflow else sorted({wf for (t, wf) in self._wf_minutes if t == ch.tenant})
        out: list[Finding] = []
        for wf in workflows:
            prev = self._trackers.get((ch.tenant, wf))
            if prev is not None and (prev.change.ts, prev.change.event_id) > (ch.ts, ch.event_id):
                continue  # an older change arriving late does not replace a newer one
            if prev is not None and prev.finding is not None:
                out += self._resolved(prev.finding, ch.ts, f"superseded by change {ch.event_id}")
            tr = self._trackers[(ch.tenant, wf)] = _ChangeTracker(ch, ch.tenant, wf, ch.ts // W * W)
            if ch.change_kind == "rollback" and prev is not None and prev.before is not None:
                tr.before = prev.before  # judged against what it restores, not the period it undoes
                tr.before_minutes = prev.before_minutes
        return out

    def _activate_changes(self, minute: int) -> list[Finding]:
        """Trackers whose change minute is closing: learn `before`, reset swapped models' baselines."""
        out: list[Finding] = []
        for tr in self._trackers.values():
            if tr.active or tr.minute > minute:
                continue
            tr.active = True
            cfg = self.config_for(tr.workflow)
            if tr.before is None:
                tr.before = _Window()
                lo = tr.minute - cfg.before_windows * W
                for m, win in self._wf_minutes.get((tr.tenant, tr.workflow), ()):
                    if lo <= m < tr.minute:
                        tr.before.merge(win, 10 * cfg.max_latency_samples)
                        tr.before_minutes.append(_MinuteSummary.of(win))
            ch = tr.change
            if ch.change_kind in ("model_swap", "rollback"):
                out += self._reset_models(tr.tenant, tr.workflow, {ch.from_value, ch.to_value}, minute + W, ch)
        return out

    def _reset_models(self, tenant: str, wf: str, models: set[str], end: int, ch: Change) -> list[Finding]:
        """Traffic moves between models on a swap: both keys start a fresh baseline."""
        out: list[Finding] = []
        for (t, w, m), ks in self._keys.items():
            if t == tenant and w == wf and m in models:
                ks.history.reset()
                out += self._drop_conditions(ks.conds, end, f"baseline reset by change {ch.event_id}")
        return out

    def _tracker_for(self, tenant: str, wf: str, minute: int, cfg: AnomalyConfig) -> _ChangeTracker | None:
        tr = self._trackers.get((tenant, wf))
        if tr is None or not tr.active or minute >= tr.minute + (cfg.change_windows + 1) * W:
            return None
        return tr

    def _attribute(self, tr: _ChangeTracker, kind: str, v: Verdict, scope: dict, end: int) -> list[Finding]:
        tr.attributed.append(kind)
        if tr.finding is not None:
            return []
        metric = {**v.evidence, "detected_by": kind, "model": scope["model"]}
        return self._change_finding(tr, [metric], end, v.severity)

    def _evaluate_change(self, tr: _ChangeTracker, minute: int) -> list[Finding]:
        cfg = self.config_for(tr.workflow)
        if tr.finding is not None or not tr.active or tr.after_windows > cfg.change_windows:
            return []
        tr.after_windows += 1
        # How many minutes of after-change data there are (the change minute counts in part):
        # the after side is that many draws of the minute-to-minute noise, not n independent calls.
        after_minutes = max(0.5, (minute + W - tr.change.ts) / W)
        worse = _compare(tr.before, tr.after, cfg, tr.before_minutes, after_minutes)
        if not worse:
            return []
        sev = max((w.pop("severity") for w in worse), key=lambda s: _SEV_RANK[s])
        return self._change_finding(tr, worse, minute + W, sev)

    def _change_finding(self, tr: _ChangeTracker, metrics: list[dict], end: int, severity: str) -> list[Finding]:
        ch = tr.change
        names = ", ".join(m["metric"] for m in metrics)
        what = f"{ch.change_kind} {ch.from_value} -> {ch.to_value}".strip() if ch.from_value or ch.to_value else ch.change_kind
        tr.finding = Finding(
            finding_id=finding_id("regression_after_change", tr.tenant, tr.workflow, ch.event_id),
            detected_at=self._clock(),
            event_ts=end,
            kind="regression_after_change",
            severity=severity,  # type: ignore[arg-type]
            tenant=tr.tenant,
            workflow=tr.workflow,
            title=f"{names} worse after {what} on {tr.workflow}",
            value=metrics[0].get("observed"),
            threshold=metrics[0].get("threshold"),
            evidence={"change_event_id": ch.event_id, "change_kind": ch.change_kind, "change_ts": ch.ts,
                      "description": ch.description, "from_value": ch.from_value, "to_value": ch.to_value,
                      "actor": ch.actor, "metrics": metrics, "window_end": end},
        )
        return [tr.finding]


def _after_change(ev: Output, ch: Change) -> bool:
    """A call made under the new configuration: started after the change, and not on the
    model swapped away from (agent traces and in-flight requests drain on the old one)."""
    if ev.ts - ev.latency_ms < ch.ts:
        return False
    return not (ch.change_kind in ("model_swap", "rollback") and ch.from_value and ev.model == ch.from_value)


class _MinuteSummary(NamedTuple):
    """What the change comparison needs of one workflow minute: its minute-to-minute spread."""

    calls: int
    errors: int
    refusals: int
    cost: float | None  # mean cost per ok call (None under 5 calls)
    lat: float | None  # mean latency of ok calls
    ev_pass: int
    ev_total: int

    @classmethod
    def of(cls, w: _Window) -> "_MinuteSummary":
        return cls(w.calls, w.errors, w.refusals, w.cost.mean if w.cost.n >= 5 else None,
                   w.lat.mean if w.lat.n >= 5 else None, w.ev_pass, w.ev_total)


def _minute_z(log_ratio: float, before_logs: list[float], after_minutes: float) -> float:
    """z of a log-ratio of means against the before side's minute-to-minute spread (robust sd
    of log per-minute means): a provider's slow minute or a pricier minute mix is noise that
    the pooled per-call Welch test cannot see, since it takes every call as independent."""
    if len(before_logs) < 5:
        return math.inf
    med = median(before_logs)
    sd = 1.4826 * mad(before_logs, med)
    if sd <= 0:
        return math.inf
    return log_ratio / (sd * math.sqrt(1 / after_minutes + 1 / len(before_logs)))


def _compare(before: _Window, after: _Window, cfg: AnomalyConfig, before_minutes: list | None = None,
             after_minutes: float = 1.0) -> list[dict]:
    """Metrics that got significantly worse after a change (empty: none).

    Rates: binomial tail widened by the before minutes' dispersion (quasi-binomial) and a
    lognormal rate factor (`rate_sigma`); cost and latency: ratio, Welch z per call, and z of
    the log ratio against the before minutes' spread with `after_minutes` minutes after."""
    bm = before_minutes or []
    worse: list[dict] = []
    if before.calls >= cfg.change_min_calls and after.calls >= cfg.change_min_calls:
        for metric, kb, ka, idx in (("error_rate", before.errors, after.errors, 1),
                                    ("refusal_rate", before.refusals, after.refusals, 2)):
            p0 = (kb + 0.5) / (before.calls + 1)
            rate = ka / after.calls
            if rate - p0 >= cfg.change_rate_delta and rate >= 1.5 * p0:
                phi = dispersion([(m[idx], m.calls) for m in bm], p0, cfg.max_dispersion)
                pval = binom_sf_mixed(*quasi(ka, after.calls, phi), p0, cfg.rate_sigma)
                if pval <= cfg.alpha:
                    worse.append({"metric": metric, "before": round(p0, 4), "observed": round(rate, 4),
                                  "threshold": round(p0 + cfg.change_rate_delta, 4), "p_value": pval,
                                  "dispersion": round(phi, 3), "calls_after": after.calls,
                                  "severity": _sev_delta(rate - p0)})
    if before.cost.n >= cfg.change_min_calls and after.cost.n >= cfg.change_min_calls and before.cost.mean > 0:
        r = after.cost.mean / before.cost.mean
        if r >= cfg.change_ratio and welch_z(after.cost, before.cost) >= cfg.change_z:
            z = _minute_z(math.log(r), [math.log(m.cost) for m in bm if m.cost], after_minutes)
            if z >= cfg.change_z:
                worse.append({"metric": "cost_per_call_usd", "before": before.cost.mean, "observed": after.cost.mean,
                              "threshold": before.cost.mean * cfg.change_ratio, "ratio": round(r, 3),
                              "minute_z": round(min(z, 1e9), 2), "severity": _sev_ratio(r)})
    if len(before.latencies) >= cfg.change_min_calls and len(after.latencies) >= cfg.change_min_calls:
        pb, pa = quantile(before.latencies, 0.95), quantile(after.latencies, 0.95)
        r = pa / pb if pb else 0.0
        if r >= cfg.change_ratio and welch_z(after.lat, before.lat) >= cfg.change_z and before.lat.mean > 0:
            z = _minute_z(math.log(max(after.lat.mean, 1e-9) / before.lat.mean),
                          [math.log(m.lat) for m in bm if m.lat], after_minutes)
            if z >= cfg.change_z:
                worse.append({"metric": "p95_latency_ms", "before": pb, "observed": pa, "threshold": pb * cfg.change_ratio,
                              "ratio": round(r, 3), "minute_z": round(min(z, 1e9), 2), "severity": _sev_ratio(r)})
    if before.ev_total >= cfg.min_eval_history and after.ev_total >= cfg.min_evals:
        p0 = (before.ev_pass + 0.5) / (before.ev_total + 1)
        rate = after.ev_pass / after.ev_total
        if p0 - rate >= cfg.change_eval_drop:
            phi = dispersion([(m.ev_total - m.ev_pass, m.ev_total) for m in bm], 1 - p0, cfg.max_dispersion)
            pval = binom_sf(*quasi(after.ev_total - after.ev_pass, after.ev_total, phi), 1 - p0)
            if pval <= cfg.alpha:
                worse.append({"metric": "eval_pass_rate", "before": round(p0, 4), "observed": round(rate, 4),
                              "threshold": round(p0 - cfg.change_eval_drop, 4), "p_value": pval,
                              "dispersion": round(phi, 3), "evals_after": after.ev_total,
                              "severity": _sev_delta(p0 - rate)})
    return worse


def _title(kind: str, v: Verdict, scope: dict) -> str:
    where = "/".join(x for x in (scope["tenant"], scope["workflow"], scope["model"] or scope.get("eval_name", "")) if x)
    if kind == "traffic_drop":
        return f"Traffic dropped to {v.value:.0f}/min from ~{v.baseline:.0f}/min on {where}"
    if kind in ("error_rate_spike", "refusal_spike", "eval_regression"):
        name = {"error_rate_spike": "Error rate", "refusal_spike": "Refusal rate", "eval_regression": "Eval pass rate"}[kind]
        return f"{name} {v.value:.1%} vs baseline {v.baseline:.1%} on {where}"
    name = {"latency_regression": "p95 latency", "cost_spike": "Cost per call", "token_spike": "Tokens per call"}[kind]
    return f"{name} {v.value / v.baseline:.1f}x baseline on {where}" if v.baseline else f"{name} up on {where}"
