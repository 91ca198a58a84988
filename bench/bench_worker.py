"""Worker speed on this machine: end-to-end throughput and publish -> queryable latency.

1. Throughput: N events are loaded into a fresh topic first, then one worker
   process drains it (Kafka -> validate -> ClickHouse). Printed beside the same
   machine's bare consume-and-insert rate (confluent-kafka consumer + one
   clickhouse-connect insert of the raw payloads per batch, no validation).
2. Latency: events published at a steady rate (default 2,000/s); each carries
   its publish wall time and the row's `ingested_at` says when it became
   queryable; p50/p99 of the difference.

3. Per-event cost by stage: a backtest of the same generated traffic (no Kafka, no
   ClickHouse), stages switched on one after the other, in the app's CPU time (less
   sensitive to a loaded machine than the end-to-end rates), with the time spent in
   cyclic-GC passes; batches handled as the worker does (no GC pass inside a batch).

Run: python bench/bench_worker.py [--events 200000] [--rate 2000] [--seconds 30] [--breakdown-only]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402

from _broker import bench_broker  # noqa: E402
from llmpulse.commands.backtest import _run_batch  # noqa: E402
from llmpulse.ingest import KafkaPublisher  # noqa: E402
from llmpulse.processors.pipeline import STAGES, Pipeline, RawMessage  # noqa: E402
from llmpulse.schemas.store import connect  # noqa: E402
from llmpulse.settings import Settings  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for  # noqa: E402
from llmpulse.traffic import TrafficGenerator  # noqa: E402


def load(pub: KafkaPublisher, events: list[dict]) -> None:
    for e in events:
        while not pub.publish(e):
            pub.flush(0.5)
    assert pub.flush(120) == 0


def throughput(bootstrap: str, n: int, work: Path, stages: list[str] | None = None) -> float:
    """`stages=[]`: the spine only (validate -> ClickHouse); None: every processor."""
    label = "all processors" if stages is None else f"stages={stages}"
    settings = isolated_settings(bootstrap, work / f"tp-{len(stages or [])}-{uuid.uuid4().hex[:4]}")
    events = list(TrafficGenerator(seed=101).events(n // 4 + 1))[:n]
    pub = KafkaPublisher(bootstrap, settings.events_topic)
    load(pub, events)
    pub.close()
    extra = {} if stages is None else {"LLMPULSE_STAGES": orjson.dumps(stages).decode()}
    worker = WorkerProcess(settings, work / "tp-worker.log", extra_env=extra).start()  # topic is full first
    try:
        wait_for(lambda: worker.stats().get("consumed", 0) > 0, 60, interval=0.01, what="first batch")
        t0 = time.perf_counter()
        wait_for(lambda: worker.stats().get("inserted", 0) >= n, 600, interval=0.05, what="all inserted")
        elapsed = time.perf_counter() - t0
        assert worker.scalar("SELECT count() FROM {db}.events") == n
    finally:
        worker.stop()
    rate = n / elapsed
    print(f"worker, {label + ':':24s} {n} events in {elapsed:6.2f} s = {rate:9,.0f} events/s")
    return rate


def bare_rate(bootstrap: str, n: int, work: Path) -> float:
    topic = f"bench.bare.{uuid.uuid4().hex[:8]}"
    events = list(TrafficGenerator(seed=102).events(n // 4 + 1))[:n]
    pub = KafkaPublisher(bootstrap, topic)
    load(pub, events)
    pub.close()
    client = connect(f"chdb://{work / 'bare'}")
    client.command("CREATE DATABASE IF NOT EXISTS bare")
    client.command("CREATE TABLE IF NOT EXISTS bare.raw (value String) ENGINE = MergeTree ORDER BY tuple()")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = 0
    t0 = None
    while got < n:
        msgs = [m for m in consumer.consume(10_000, timeout=0.25) if not m.error()]
        if not msgs:
            continue
        t0 = t0 or time.perf_counter()
        client.insert("bare.raw", [[m.value()] for m in msgs], column_names=["value"])
        consumer.commit(asynchronous=False)
        got += len(msgs)
    elapsed = time.perf_counter() - t0
    consumer.close()
    rate = got / elapsed
    print(f"bare consume-and-insert:         {got} events in {elapsed:6.2f} s = {rate:9,.0f} events/s")
    return rate


def latency(bootstrap: str, rate: int, seconds: int, work: Path) -> None:
    settings = isolated_settings(bootstrap, work / "lat")
    worker = WorkerProcess(settings, work / "lat-worker.log").start()
    gen = TrafficGenerator(seed=103, start_ms=int(time.time() * 1000))
    pub = KafkaPublisher(bootstrap, settings.events_topic)
    total = rate * seconds
    sent = 0
    events = iter(list(gen.events(total // 4 + 1))[:total])  # generated before the clock starts
    try:
        t_start = time.perf_counter()
        while sent < total:
            due = int((time.perf_counter() - t_start) * rate)
            while sent < min(due, total):
                e = next(events)
                e["ts"] = time.time_ns() // 1_000_000  # live traffic: event time is now (validation bounds it)
                e["attributes"] = {"sent_at_ms": str(e["ts"])}
                pub.publish(e)
                sent += 1
            time.sleep(0.002)
        achieved = sent / (time.perf_counter() - t_start)
        pub.flush(60)
        wait_for(lambda: worker.stats().get("inserted", 0) >= sent, 120, what="all landed")
        rows = worker.query(
            "SELECT quantile(0.5)(d), quantile(0.99)(d), max(d), count() FROM (SELECT "
            "toUnixTimestamp64Milli(ingested_at) - toInt64(attributes['sent_at_ms']) AS d FROM {db}.events)"
        )[0]
    finally:
        pub.close()
        worker.stop()
    p50, p99, worst, count = rows
    print(f"publish -> queryable at {rate}/s for {seconds}s ({count} events, achieved {achieved:,.0f}/s): "
          f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms (floor p99 2,000 ms)")


def breakdown(n: int, work: Path) -> None:
    """Backtest µs per event as stages are added: the spine, then each processor."""
    events = list(TrafficGenerator(seed=101).events(n // 4 + 1))[:n]
    batches = [[RawMessage(orjson.dumps(e), "bench", 0, i + j) for j, e in enumerate(events[i:i + 5000])]
               for i in range(0, n, 5000)]
    del events
    in_gc = [0.0, 0.0]

    def gc_clock(phase: str, _info: dict) -> None:
        if phase == "start":
            in_gc[1] = time.process_time()
        else:
            in_gc[0] += time.process_time() - in_gc[1]

    gc.callbacks.append(gc_clock)
    print(f"backtest of the same traffic, {n} events, CPU time per event (stages added in order):")
    prev = 0.0
    try:
        for k in range(len(STAGES) + 1):
            settings = Settings(state_dir=work / "breakdown", stages=list(STAGES[:k]))
            warm = Pipeline.from_settings(settings, replay=True)
            warm.run(batches[0][:50])  # compiled scanners and imports outside the timing
            pipeline = Pipeline.from_settings(settings, replay=True)
            gc.collect()
            in_gc[0] = 0.0
            t0 = time.process_time()
            for batch in batches:
                _run_batch(pipeline, batch)
            pipeline.flush()
            per = (time.process_time() - t0) / n * 1e6
            gc.unfreeze()
            label = "spine (validate, row)" if k == 0 else f"+ {STAGES[k - 1]}"
            print(f"  {label:22s} {per:6.1f} us/event  ({per - prev:+5.1f})  of which GC {in_gc[0] / n * 1e6:4.1f}"
                  f"   = {1e6 / per:8,.0f} events/s")
            prev = per
    finally:
        gc.callbacks.remove(gc_clock)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--breakdown-only", action="store_true", help="only the backtest's per-stage costs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        work = Path(tmp)
        breakdown(min(args.events, 100_000), work)
        if args.breakdown_only:
            return
        broker = bench_broker()
        spine = throughput(broker.bootstrap, args.events, work, stages=[])
        full = throughput(broker.bootstrap, args.events, work)
        bare = bare_rate(broker.bootstrap, args.events, work)
        print(f"ratio spine / bare: {spine / bare:.2f}   all processors / bare: {full / bare:.2f}  (floor: spine >= 10,000/s)")
        latency(broker.bootstrap, args.rate, args.seconds, work)


if __name__ == "__main__":
    main()
