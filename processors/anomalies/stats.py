"""Statistics: robust location and scale, exact binomial and Poisson tails (plain and with
a lognormal rate factor), moments for Welch tests, dispersion, and the Bernoulli CUSUM."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import msgspec

# Windows are pooled for the dispersion until a group expects this many hits (see dispersion).
DISPERSION_MIN_EXPECTED = 0.25


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

    1 for binomial counts; above 1 when the rate itself moves between windows. A window that
    expects fewer than `DISPERSION_MIN_EXPECTED` hits is pooled with the next such ones until
    their group expects that many: far under one expected hit a term is all tail (one error
    in a 1-call minute at p0 = 0.0065 adds 153 to chi2 against a standard error of 12.5), and
    on a quiet bursty key a handful of 1-4-call minutes with an error made sixty binomial
    minutes read as dispersion 2.9, which divided its error CUSUM's evidence by 2.9 (a 33x
    error burst found after 708 s instead of ~310 s). Windows with enough calls are their own
    terms, as before. Only the dispersion beyond two standard errors (Var of a term ~ 2 +
    1/expected) is used: at half an expected refusal per window, three windows with 2-3
    refusals make the raw chi2/df 1.6 by chance; the lower bound says 1.0. Clamped to [1, cap]
    so that a quiet history never makes the test sharper than binomial."""
    var1 = p0 * (1 - p0)
    if var1 <= 0:
        return 1.0
    groups: list[list[int]] = []
    k = n = 0
    for a, b in hist:
        if b * p0 >= DISPERSION_MIN_EXPECTED:
            groups.append([a, b])
            continue
        k, n = k + a, n + b
        if n * p0 >= DISPERSION_MIN_EXPECTED:
            groups.append([k, n])
            k = n = 0
    if n and groups:  # the short rest joins the newest group
        groups[-1][0] += k
        groups[-1][1] += n
    elif n:
        groups.append([k, n])
    chi = 0.0
    var = 0.0
    m = 0
    for k, n in groups:
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



def pooled(hist: deque) -> tuple[float, int]:
    """Pooled rate of (k, n) windows, smoothed so an all-zero history is not exactly 0; and n."""
    n = sum(b for _, b in hist)
    return (sum(a for a, _ in hist) + 0.5) / (n + 1), n


@dataclass(slots=True)
class Cusum:
    """Bernoulli CUSUM of one rate (failures, errors, refusals) in event-time order."""

    s: float = 0.0  # log-likelihood ratio, nats
    n: int = 0  # observations since the statistic left 0
    hits: int = 0  # ... of which hits
    since: int = 0  # event time of the first of them

    def reset(self) -> None:
        self.s, self.n, self.hits, self.since = 0.0, 0, 0, 0

    def feed(self, obs: list[tuple[int, str, bool]], p0: float, p1: float, phi: float, h: float,
             ready: Callable[["Cusum"], bool] = lambda cs: True) -> int | None:
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




def p95_and_median(xs: Any) -> tuple[float, float]:
    """quantile(xs, 0.95) and median(xs) from one sort (the per-call tests take both of a
    key's recent calls every half minute)."""
    s = sorted(xs)
    n = len(s)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return s[min(n - 1, max(0, math.ceil(0.95 * n) - 1))], med
