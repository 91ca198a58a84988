"""Contract findings under load: publish -> finding on `llm.findings`, through a real worker.

A steady stream of realistic traffic (default 1,000 events/s) with one contract-violating
event a second: a `tool_call` of a tool its workflow's contract does not allow, each in
a new trace, so each raises one `unauthorized_tool` finding. The worker runs with the
default batch settings and a config file holding the contract (LLMPULSE_CONFIG_FILE).
Latency is the wall time from handing the violating event to the SDK to reading its
finding from the findings topic; p50/p99/max are printed against the issue's floor
(a finding within a second of the event that crossed the line).

Run: python bench/bench_cost_latency.py [--rate 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

from _broker import bench_broker  # noqa: E402
from llmpulse.ingest import KafkaPublisher  # noqa: E402
from llmpulse.schemas.findings import decode_finding  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for  # noqa: E402
from llmpulse.traffic import TrafficGenerator  # noqa: E402

WORKFLOW = "bench-bot"
TENANT = "bench-contracts"
CONFIG = {"contracts": {WORKFLOW: {"allowed_tools": ["search_kb"]}}}


class Tap(threading.Thread):
    """Reads the findings topic from the start; event_id -> wall time its finding arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.arrived: dict[str, float] = {}
        self.stop = threading.Event()
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            now = time.time()
            f = decode_finding(msg.value())
            if f.kind == "unauthorized_tool" and f.tenant == TENANT:
                self.arrived.setdefault(f.evidence["event_id"], now)
        self.consumer.close()


def violation() -> dict:
    return {"event_type": "tool_call", "event_id": uuid.uuid4().hex, "ts": time.time_ns() // 1_000_000,
            "tenant": TENANT, "workflow": WORKFLOW, "trace_id": uuid.uuid4().hex, "tool_name": "drop_tables"}


def run(bootstrap: str, rate: int, seconds: int, work: Path) -> list[float]:
    config = work / "llmpulse.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    settings = isolated_settings(bootstrap, work / "state")
    worker = WorkerProcess(settings, work / "worker.log", extra_env={"LLMPULSE_CONFIG_FILE": str(config)}).start()
    tap = Tap(bootstrap, settings.findings_topic)
    tap.start()
    pub = KafkaPublisher(bootstrap, settings.events_topic)
    events = TrafficGenerator(seed=303, start_ms=int(time.time() * 1000)).events(rate * seconds)
    sent_at: dict[str, float] = {}
    sent = 0
    try:
        t_start = time.perf_counter()
        next_violation = 1.0
        while (elapsed := time.perf_counter() - t_start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                e = next(events)
                e["ts"] = time.time_ns() // 1_000_000  # live traffic: event time is now (validation bounds it)
                pub.publish(e)
                sent += 1
            if elapsed >= next_violation:
                v = violation()
                sent_at[v["event_id"]] = time.time()
                pub.publish(v)
                next_violation += 1.0
            time.sleep(0.002)
        achieved = sent / (time.perf_counter() - t_start)
        pub.flush(60)
        wait_for(lambda: len(tap.arrived) >= len(sent_at), 60, what="every violation's finding")
        consumed = worker.stats().get("consumed", 0)
    finally:
        tap.stop.set()
        pub.close()
        worker.stop()
    latencies = sorted((tap.arrived[eid] - t) * 1000 for eid, t in sent_at.items())
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    print(f"background {rate}/s for {seconds}s (achieved {achieved:,.0f}/s, worker consumed {consumed:,}), "
          f"{len(latencies)} violations")
    print(f"publish -> finding on llm.findings: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms "
          f"(floor p99 1,000 ms: {'met' if p99 <= 1000 else 'MISSED'})")
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000, help="background events per second")
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args()
    broker = bench_broker()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        run(broker.bootstrap, args.rate, args.seconds, Path(tmp))


if __name__ == "__main__":
    main()
