"""SDK-side redaction hook cost per event on demo traffic, with and without Hyperscan.

Run: python bench/bench_redaction_hook.py
"""

from __future__ import annotations

import time

from llmpulse.ingest.redaction_hook import redaction_hook
from llmpulse.traffic import TrafficGenerator


def main() -> None:
    events = list(TrafficGenerator(seed=5).events(1000))[:3000]
    for accelerate in (False, True):
        hook = redaction_hook(accelerate=accelerate)
        t0 = time.perf_counter()
        for e in events:
            hook(e)
        per_event = (time.perf_counter() - t0) / len(events)
        print(f"redaction hook, hyperscan={accelerate}: {per_event * 1e6:6.1f} us/event over {len(events)} events")


if __name__ == "__main__":
    main()
