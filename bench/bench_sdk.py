"""SDK hot path: cost of `publish()` of a ~2 KB event on the calling thread.

Compared with a bare confluent_kafka `Producer.produce()` of the same bytes, so
the ratio shows what the SDK adds (stamping, encoding, accounting). Measured as the
README's `Publisher(bootstrap)` runs (redaction on, the default) and with
`redaction=False`.
Run: python bench/bench_sdk.py  (LLMPULSE_BENCH_KAFKA=host:port to reuse a broker)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from _broker import bench_broker  # noqa: E402
from llmpulse.ingest import DEFAULT_PRODUCER_CONFIG, KafkaPublisher  # noqa: E402

N = 50_000


def event(i: int) -> dict:
    return {"event_type": "output", "trace_id": f"trace-{i // 5}", "workflow": "support-bot", "tenant": "acme",
            "provider": "openai", "model": "gpt-4o", "status": "ok", "latency_ms": 812.5, "finish_reason": "stop",
            "usage": {"input_tokens": 1200, "output_tokens": 230, "cache_read_tokens": 800},
            "content": ("The order shipped on Tuesday and will arrive within three business days. " * 25)[:1700]}


def percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def main() -> None:
    broker = bench_broker()
    events = [event(i) for i in range(N)]
    size = len(orjson.dumps({**events[0], "event_id": "x" * 32, "ts": 0, "schema_version": "1"}))

    clock = time.perf_counter_ns
    runs: dict[str, list[int]] = {}
    undelivered = 0
    for label, redaction in (("publish(), redaction on (default)", True), ("publish(), redaction=False", False)):
        pub = KafkaPublisher(broker.bootstrap, "bench.sdk", redaction=redaction)
        for e in events[:2000]:  # warm up connections and caches
            pub.publish(e)
        pub.flush(30)
        samples = runs[label] = []
        for e in events:
            t0 = clock()
            pub.publish(e)
            samples.append(clock() - t0)
        pub.flush(60)
        pub.close()
        undelivered += pub.stats.undelivered

    raw = Producer({**DEFAULT_PRODUCER_CONFIG, "bootstrap.servers": broker.bootstrap})
    payloads = [orjson.dumps(e) for e in events]
    bare = []
    for i, value in enumerate(payloads):
        t0 = clock()
        raw.produce("bench.sdk.bare", value, b"trace")
        bare.append(clock() - t0)
        if i % 1000 == 0:
            raw.poll(0)
    raw.flush(60)

    bare_med, bare_p99 = percentiles(bare)
    print(f"event size: {size} bytes, {N} events per run, undelivered: {undelivered}")
    for label, samples in runs.items():
        med, p99 = percentiles(samples)
        print(f"{label:36s} median {med:6.2f} us   p99 {p99:6.2f} us   ({med / bare_med:4.1f}x / {p99 / bare_p99:4.1f}x bare)")
    print(f"{'bare produce()':36s} median {bare_med:6.2f} us   p99 {bare_p99:6.2f} us")


if __name__ == "__main__":
    main()
