"""Detection latency: a loop's completing event published -> its finding on `llm.findings`.

A real worker (all processors) takes background traffic at a steady rate (default
2,000 events/s, pre-generated, paced, re-stamped with the wall clock as they are
sent). Once a second a tool loop is injected in a new trace: a prompt and three
identical tool calls, the third of which completes the pattern (`tool_loop`). A
confluent-kafka consumer reads `llm.findings` from the start; the latency of a loop
is the arrival of its finding minus the publish call of its third call (one clock:
this process's `time.monotonic()`). Injected events count towards the rate.

Run per batch window (`LLMPULSE_BATCH_MAX_SECONDS`: how long the worker waits to fill
a batch); floor p99 <= 1 s.

    python bench/bench_detection_latency.py [--rate 2000] [--seconds 30] [--batch-seconds 0.25 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402

from _broker import bench_broker  # noqa: E402
from _tap import FindingsTap, pct  # noqa: E402
from llmpulse.ingest import KafkaPublisher  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings, tool_loop_events, wait_for  # noqa: E402
from llmpulse.traffic import TrafficGenerator  # noqa: E402

WARM_S = 3.0  # background traffic only, before the first loop
FLOOR_P99_MS = 1000.0


def run(bootstrap: str, rate: int, seconds: int, batch_seconds: float, work: Path) -> dict:
    settings = isolated_settings(bootstrap, work / f"lat-{batch_seconds}", batch_max_seconds=batch_seconds)
    total = int(rate * (seconds + WARM_S))
    background = list(TrafficGenerator(seed=211).events(total // 4 + 1))[:total]  # before the clock starts
    worker = WorkerProcess(settings, work / f"worker-{batch_seconds}.log").start()
    tap = FindingsTap(bootstrap, settings.findings_topic, "lat-")
    pub = KafkaPublisher(bootstrap, settings.events_topic)
    sent_at: dict[str, float] = {}
    sent = 0
    bg = iter(background)
    try:
        t0 = time.monotonic()
        next_loop = t0 + WARM_S
        end = t0 + WARM_S + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_loop:
                trace = f"lat-{uuid.uuid4().hex[:12]}"
                loop = tool_loop_events(trace, start_ms=time.time_ns() // 1_000_000)
                for e in loop[:-1]:
                    pub.publish_raw(orjson.dumps(e), trace)
                sent_at[trace] = time.monotonic()
                pub.publish_raw(orjson.dumps(loop[-1]), trace)
                sent += len(loop)
                next_loop += 1.0
            due = int((now - t0) * rate)
            wall_ms = time.time_ns() // 1_000_000
            while sent < due:
                e = next(bg, None)
                if e is None:
                    break
                e["ts"] = wall_ms
                pub.publish_raw(orjson.dumps(e), e.get("trace_id") or "")
                sent += 1
            time.sleep(0.002)
        achieved = sent / (time.monotonic() - t0)
        assert pub.flush(30) == 0
        wait_for(lambda: tap.count() >= len(sent_at), 30, interval=0.05, what="every loop's finding")
        stats = worker.stats()
    finally:
        pub.close()
        tap.close()
        worker.stop()
    lat = [(tap.arrived[t] - s) * 1000 for t, s in sent_at.items()]
    return {"batch_seconds": batch_seconds, "loops": len(lat), "achieved": achieved, "p50": statistics.median(lat),
            "p99": pct(lat, 0.99), "max": max(lat), "consumed": stats.get("consumed"), "other": tap.other}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--batch-seconds", type=float, nargs="+", default=[0.25, 0.1])
    args = ap.parse_args()
    broker = bench_broker()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        for bs in args.batch_seconds:
            r = run(broker.bootstrap, args.rate, args.seconds, bs, Path(tmp))
            verdict = "ok" if r["p99"] <= FLOOR_P99_MS else "ABOVE FLOOR"
            print(f"loop event published -> tool_loop on llm.findings, {args.rate}/s for {args.seconds}s, "
                  f"LLMPULSE_BATCH_MAX_SECONDS={bs}: {r['loops']} loops, achieved {r['achieved']:,.0f} events/s: "
                  f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, max {r['max']:.0f} ms "
                  f"(floor p99 {FLOOR_P99_MS:,.0f} ms: {verdict})", flush=True)


if __name__ == "__main__":
    main()
