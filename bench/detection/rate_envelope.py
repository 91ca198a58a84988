"""How often can ANY count test catch an error-rate spike within the TTD floor? Prints the bound.

    python -m bench.detection.rate_envelope [--baseline 0.01] [--pages-per-100-key-days 1]

A key of r calls/min with error probability p0 gets a spike to p1. The best a test can do in
the first W minutes is count the errors among the ~r*W calls: it pages at k errors, with k
the least count whose false alarms on the stable key, (1440 / W) * P(X >= k | r*W*p0) a day
(windows of W minutes; a sliding test pays more), stay within the budget. The share of spikes
it catches in time is P(X >= k | r*W*p1). Poisson counts, no retries, no minute-to-minute
noise: a generous bound, so a floor above it on some traffic cannot be met by any detector
(the stress days label spikes of 5-40x on keys of 3-300 calls/min).
"""

from __future__ import annotations

import argparse
import math


def _sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam)."""
    term, cdf = math.exp(-lam), 0.0
    for i in range(k):
        cdf += term
        term *= lam / (i + 1)
    return max(0.0, 1.0 - cdf)


def caught_in_time(rate: float, p0: float, p1: float, window_min: float, pages_per_day: float) -> tuple[int, float]:
    """(the page threshold k, the share of spikes to p1 it catches within window_min)."""
    k = 1
    while (1440 / window_min) * _sf(k, rate * window_min * p0) > pages_per_day:
        k += 1
    return k, _sf(k, rate * window_min * p1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=float, default=0.01)
    ap.add_argument("--pages-per-100-key-days", type=float, default=1.0)
    a = ap.parse_args()
    budget = a.pages_per_100_key_days / 100
    print(f"baseline {a.baseline:.1%}, <= {a.pages_per_100_key_days:g} false page per 100 key-days")
    print(f"{'calls/min':>9} {'window':>6} {'spike to':>8} {'ratio':>5} {'k':>3} {'caught in time':>14}")
    for rate, window in ((5, 2), (10, 2), (30, 2), (30, 1), (100, 1), (300, 1)):
        for p1 in (0.05, 0.1, 0.2, 0.3):
            k, share = caught_in_time(rate, a.baseline, p1, window, budget)
            print(f"{rate:>9} {window:>4} m {p1:>8.0%} {p1 / a.baseline:>4.0f}x {k:>3} {share:>14.1%}")


if __name__ == "__main__":
    main()
