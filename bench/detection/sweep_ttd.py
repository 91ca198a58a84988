"""What each detector can see: calls/min x size of change -> median and p95 time to detect.

    python -m bench.detection.sweep_ttd [--seeds 8] [--rates 1,3,10,30,100,300] [--kinds error,latency,drop,tokens]

One key per run, Poisson arrivals with the benchmark's per-minute noise (volume sigma 0.1,
error-rate sigma 0.3, provider speed sigma 0.08), 75 minutes of clean traffic, then the
change for 15 minutes, starting at a random second. Each cell is `--seeds` runs with the
default AnomalyConfig; TTD is event time from the change's start to the first open
finding of its kind (a finding of another kind is counted as a false page). A cell shows
median / p95 TTD in seconds and, when not every run was found within the 15 minutes,
the share found; "-" when fewer than half were. Printed as the Markdown table that
processors/DETECTORS.md carries.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Callable

from llmpulse.processors.anomalies import AnomalyDetector
from llmpulse.schemas.contract import Output, Usage

MIN = 60_000
T0 = 1_772_409_600_000
WARM_MIN, INCIDENT_MIN = 75, 15
BASE_ERROR = 0.01

# kind -> (finding kind, sizes, label of a size, effect(size) -> per-call overrides while on)
KINDS: dict[str, tuple[str, tuple[float, ...], Callable[[float], str]]] = {
    "error": ("error_rate_spike", (0.05, 0.10, 0.25, 0.50), lambda s: f"1% -> {s:.0%}"),
    "latency": ("latency_regression", (1.5, 2.0, 3.0, 5.0), lambda s: f"x{s:g}"),
    "drop": ("traffic_drop", (0.4, 0.15, 0.05, 0.0), lambda s: f"{s:.0%} left"),
    "tokens": ("token_spike", (1.5, 2.0, 3.0, 6.0), lambda s: f"x{s:g}"),
}


def stream(kind: str, size: float, rate: float, seed: int) -> tuple[list[Output], int]:
    rng = random.Random(f"{kind}-{size}-{rate}-{seed}")
    start = T0 + WARM_MIN * MIN + rng.randrange(MIN)
    end = start + INCIDENT_MIN * MIN
    out: list[Output] = []
    for m in range(WARM_MIN + INCIDENT_MIN + 5):
        vol = rng.lognormvariate(0, 0.1)
        err = BASE_ERROR * rng.lognormvariate(0, 0.3)
        speed = rng.lognormvariate(0, 0.08)
        t = T0 + m * MIN + rng.expovariate(rate * vol / MIN)
        while t < T0 + (m + 1) * MIN:
            ts = int(t)
            t += rng.expovariate(rate * vol / MIN)
            on = start <= ts < end
            if on and kind == "drop" and rng.random() >= size:
                continue
            e = size if on and kind == "error" else err
            status = "error" if rng.random() < e else "ok"
            lat = 900 * speed * rng.lognormvariate(0, 0.3) * (size if on and kind == "latency" else 1.0)
            tokens = int(1_000 * rng.lognormvariate(0, 0.3) * (size if on and kind == "tokens" else 1.0))
            out.append(Output(event_id=f"{seed}-{len(out)}", ts=ts, trace_id=f"t{seed}-{len(out)}", tenant="t",
                              workflow="wf", model="m", status=status, latency_ms=lat,
                              usage=Usage(input_tokens=tokens, output_tokens=100) if status == "ok" else None,
                              cost_usd=tokens * 1e-6 if status == "ok" else None))
    return out, start


def one(kind: str, size: float, rate: float, seed: int) -> tuple[float | None, int]:
    """(TTD in seconds or None, false pages) of one run."""
    events, start = stream(kind, size, rate, seed)
    det = AnomalyDetector(clock=lambda: 0)
    found = []
    for e in events:
        found += det.process(e, e.cost_usd)
    found = [f for f in found + det.flush() if f.status == "open"]
    want = KINDS[kind][0]
    hits = [f.event_ts for f in found if f.kind == want and f.event_ts >= start]
    ttd = (min(hits) - start) / 1000 if hits and min(hits) <= start + INCIDENT_MIN * MIN else None
    return ttd, sum(1 for f in found if f.kind != want or f.event_ts < start)


def cell(kind: str, size: float, rate: float, seeds: int) -> tuple[str, int]:
    runs = [one(kind, size, rate, s) for s in range(seeds)]
    ttd = sorted(t for t, _ in runs if t is not None)
    fp = sum(f for _, f in runs)
    if len(ttd) * 2 < seeds:
        return "-", fp
    p95 = ttd[min(len(ttd) - 1, int(0.95 * len(ttd)))] if len(ttd) == seeds else None
    text = f"{statistics.median(ttd):.0f} / {p95:.0f}" if p95 is not None else f"{statistics.median(ttd):.0f} ({len(ttd)}/{seeds})"
    return text, fp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--rates", default="1,3,10,30,100,300")
    ap.add_argument("--kinds", default=",".join(KINDS))
    a = ap.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    t0 = time.time()
    false_pages = 0
    for kind in a.kinds.split(","):
        finding, sizes, label = KINDS[kind]
        print(f"\n`{finding}`: median / p95 seconds to detect ({a.seeds} runs a cell; (k/n): found in k of n)\n")
        print("| calls/min | " + " | ".join(label(s) for s in sizes) + " |")
        print("|---:|" + "---:|" * len(sizes))
        for rate in rates:
            cells = []
            for size in sizes:
                text, fp = cell(kind, size, rate, a.seeds)
                cells.append(text)
                false_pages += fp
            print(f"| {rate:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nother findings (false pages) over all runs: {false_pages}; {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
