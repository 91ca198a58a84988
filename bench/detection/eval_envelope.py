"""Which eval pass-rate drops can be caught within two minutes? Prints the envelope.

    python -m bench.detection.eval_envelope [--trials 100]

For each (evals/min, base pass rate, drop) it runs the real AnomalyDetector (defaults) over
synthetic eval streams: 40 minutes at the base rate, then the drop. It prints the share of
drops found later than 2 minutes after they began, the median and the worst time to detect,
false alarms during the stable part, and whether the generator would label such a drop
(schedule.eval_drop_visible). The generator labels only drops the envelope calls visible, as it
labels error spikes only on keys with enough calls: a labelled incident that no test can see in
time without paging on stable streams would measure the traffic, not the detector.
"""

from __future__ import annotations

import argparse
import random

from bench.detection.schedule import eval_drop_visible
from llmpulse.processors.anomalies import AnomalyDetector
from llmpulse.schemas.contract import Eval

MIN = 60_000
STABLE_MINUTES = 40
AFTER_MINUTES = 4


def time_to_detect(rate: float, base: float, drop: float, seed: int) -> tuple[float | None, int]:
    """Seconds from the drop to the first eval_regression (None: not within AFTER_MINUTES),
    and the number of eval_regression findings opened while the stream was stable."""
    rng = random.Random(seed)
    det = AnomalyDetector(clock=lambda: 0)
    t0 = 1_800_000_000_000 // MIN * MIN
    start = t0 + STABLE_MINUTES * MIN
    ts, n, false_alarms = t0, 0, 0
    while ts < start + AFTER_MINUTES * MIN:
        ts += int(rng.expovariate(rate / MIN)) + 1
        p = base - drop if ts >= start else base
        n += 1
        ev = Eval(event_id=f"e{n}", ts=ts, trace_id=f"t{n}", tenant="t", workflow="w", eval_name="judge",
                  passed=rng.random() < p)
        for f in det.process(ev):
            if f.kind != "eval_regression" or f.status != "open":
                continue
            if f.event_ts < start:
                false_alarms += 1
            else:
                return (f.event_ts - start) / 1000, false_alarms
    return None, false_alarms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--base", type=float, default=0.9)
    args = ap.parse_args()
    print(f"base pass rate {args.base}, {args.trials} streams per row, detector defaults")
    print(f"{'evals/min':>9} {'drop':>5} {'late >2 min':>11} {'median s':>8} {'worst s':>7} {'false alarms':>12} labelled")
    for rate in (25, 30, 40, 50, 60):
        for drop in (0.3, 0.4, 0.5):
            ttd, fa = [], 0
            for trial in range(args.trials):
                t, f = time_to_detect(rate, args.base, drop, seed=trial * 1000 + rate)
                ttd.append(float("inf") if t is None else t)
                fa += f
            ttd.sort()
            late = sum(t > 120 for t in ttd) / len(ttd)
            print(f"{rate:>9} {drop:>5.2f} {late:>11.1%} {ttd[len(ttd) // 2]:>8.0f} {ttd[-1]:>7.0f} {fa:>12}"
                  f" {'yes' if eval_drop_visible(rate, args.base, drop) else 'no'}")


if __name__ == "__main__":
    main()
