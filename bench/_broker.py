"""The benchmarks' broker: the project's local Kafka on its own port (started once, reused)."""

from __future__ import annotations

import os
from pathlib import Path

from llmpulse.kafka.local import LocalKafka

ROOT = Path(__file__).resolve().parents[1]


def bench_broker() -> LocalKafka:
    broker = LocalKafka(ROOT / ".llmpulse" / "kafka", os.environ.get("LLMPULSE_BENCH_KAFKA", "127.0.0.1:39092"))
    broker.up()
    return broker
