"""A findings-topic reader for the latency benches: when each loop trace's `tool_loop` finding
came out of the worker, and the percentile helper their reports share."""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llmpulse.schemas.findings import decode_finding


class FindingsTap:
    """Per trace whose id starts with `prefix`, its first `tool_loop` finding's arrival here
    (`time.monotonic()`, seconds) and the worker's `detected_at` (wall clock, ms); `other`
    counts every other finding."""

    def __init__(self, bootstrap: str, topic: str, prefix: str) -> None:
        self.arrived: dict[str, float] = {}
        self.detected_at: dict[str, int] = {}
        self.other = 0
        self._prefix = prefix
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tap-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._run, name="findings-tap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, timeout=0.05):
                if msg.error():
                    continue
                now = time.monotonic()
                f = decode_finding(msg.value())
                with self._lock:
                    if f.kind == "tool_loop" and f.trace_id.startswith(self._prefix):
                        self.arrived.setdefault(f.trace_id, now)
                        self.detected_at.setdefault(f.trace_id, f.detected_at)
                    else:
                        self.other += 1

    def count(self) -> int:
        with self._lock:
            return len(self.arrived)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.detected_at)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]
