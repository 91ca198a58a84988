"""SDK-side redaction hook cost per event, with and without Hyperscan.

On demo traffic (every event type, realistic content) and on the 2 KB output event of
bench_sdk.py; prints median and p99 per event. The hook is what `Publisher(...)` runs
by default before it encodes an event.
Run: python bench/bench_redaction_hook.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sdk import event as sdk_event  # noqa: E402
from llmpulse.ingest.redaction_hook import redaction_hook  # noqa: E402
from llmpulse.traffic import TrafficGenerator  # noqa: E402


def per_event(hook, events: list[dict], rounds: int = 3) -> tuple[float, float, float]:
    """Median, p99 and mean in microseconds; best of `rounds` by median."""
    clock = time.perf_counter_ns
    best = None
    for _ in range(rounds):
        samples = []
        for e in events:
            t0 = clock()
            hook(e)
            samples.append(clock() - t0)
        samples.sort()
        got = (statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000,
               sum(samples) / len(samples) / 1000)
        best = got if best is None or got[0] < best[0] else best
    return best  # type: ignore[return-value]


def main() -> None:
    demo = list(TrafficGenerator(seed=5).events(1000))[:3000]
    two_kb = [{**sdk_event(i), "event_id": f"{i:032x}", "ts": 1_764_000_000_000, "schema_version": "1"}
              for i in range(5000)]
    for accelerate in (False, True):
        hook = redaction_hook(accelerate=accelerate)
        for label, events in (("demo traffic", demo), ("2 KB output", two_kb)):
            med, p99, mean = per_event(hook, events)
            print(f"redaction hook, hyperscan={accelerate!s:5}, {label:12s}: median {med:6.1f} us  "
                  f"p99 {p99:6.1f} us  mean {mean:6.1f} us  ({len(events)} events)")


if __name__ == "__main__":
    main()
