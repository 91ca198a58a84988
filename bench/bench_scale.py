"""Throughput with several workers (README "Scaling out"), every processor on.

N events of generated traffic (llmpulse.traffic, several tenants) are loaded into a fresh
events topic first; then the topology drains it, timed from the first row stored to the
last:
  - single: today's worker (`scale.role: single`), one process;
  - scaled xN: N processing workers (trace + scope stage) and the one writer that owns the
    embedded store (`scale.role: process` / `writer`).
The scaled members start first and share the partitions, then the events are loaded (a
member joining a full topic would rebalance mid-run).
The machine is shared (2 cores; other work runs beside): compare the figures of one run only.

Run: python bench/bench_scale.py [--events 100000] [--workers 1 2 3] [--bootstrap 127.0.0.1:29092]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmpulse.ingest import KafkaPublisher  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for  # noqa: E402
from llmpulse.testing_scaled import Cluster  # noqa: E402
from llmpulse.traffic import TrafficGenerator  # noqa: E402


def load(bootstrap: str, topic: str, n: int) -> None:
    pub = KafkaPublisher(bootstrap, topic)
    for e in list(TrafficGenerator(seed=101).events(n // 4 + 1))[:n]:
        while not pub.publish(e):
            pub.flush(0.5)
    assert pub.flush(120) == 0
    pub.close()


def timed(stored, n: int) -> float:
    wait_for(lambda: stored() > 0, 120, interval=0.01, what="first rows")
    t0 = time.perf_counter()
    wait_for(lambda: stored() >= n, 900, interval=0.05, what="all stored")
    return time.perf_counter() - t0


def single(bootstrap: str, n: int, work: Path) -> float:
    settings = isolated_settings(bootstrap, work / "single")
    load(bootstrap, settings.events_topic, n)
    worker = WorkerProcess(settings, work / "single.log").start()
    try:
        elapsed = timed(lambda: worker.stats().get("inserted", 0), n)
        assert worker.scalar("SELECT count() FROM {db}.events") == n
    finally:
        worker.stop()
    return n / elapsed


def scaled(bootstrap: str, n: int, workers: int, work: Path) -> float:
    d = work / f"scaled-{workers}-{uuid.uuid4().hex[:4]}"
    d.mkdir()
    cluster = Cluster(bootstrap, d, workers).start()
    try:
        wait_for(cluster.shared, 60, what="partitions shared")
        load(bootstrap, cluster.base.events_topic, n)
        elapsed = timed(lambda: cluster.writer.stats().get("inserted", 0), n)
        assert cluster.stored() == n
    finally:
        cluster.stop()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--bootstrap", default=os.environ.get("LLMPULSE_BENCH_KAFKA", "127.0.0.1:29092"))
    a = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machine: figures of one run)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rate = single(a.bootstrap, a.events, work)
        print(f"single worker (1 process):               {rate:9,.0f} events/s")
        for w in a.workers:
            rate = scaled(a.bootstrap, a.events, w, work)
            print(f"scaled, {w} processing worker(s) + writer:  {rate:9,.0f} events/s")


if __name__ == "__main__":
    main()
