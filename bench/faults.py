"""Fault scenarios against a real worker: poison mixed into valid traffic, duplicates after a
long gap. Shared by tests/integration/test_faults.py (asserts) and bench/bench_faults.py
(prints the table). Messages go through a plain producer, as a producer that is not our SDK
would send them: nothing here is cleaned up on the way in.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from llmpulse.settings import Settings
from llmpulse.testing import WorkerProcess, wait_for
from llmpulse.traffic import TrafficGenerator

DAY_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _base(kind: str, eid: str, ts: int, **fields) -> dict:
    event = {"event_type": kind, "event_id": eid, "ts": ts, "trace_id": f"tr-{eid}", "workflow": "poison-wf",
             "tenant": "poison"}
    if kind == "output":
        event.update(status="ok", latency_ms=10.0)
    if kind == "tool_call":
        event.update(tool_name="t")
    event.update(fields)
    return event


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def poison_messages(tag: str) -> dict[str, list[tuple[str, bytes]]]:
    """Poison classes -> [(event_id or label, bytes)]. Each must land as a row or go to the
    DLQ with a reason; none may stop the stream."""
    t = now_ms()
    out: dict[str, list[tuple[str, bytes]]] = {}

    def add(cls: str, eid: str, raw: bytes) -> None:
        out.setdefault(cls, []).append((eid, raw))

    for depth, where in ((300, "params"), (10_000, "arguments"), (255, "unknown")):
        eid = f"{tag}-deep-{where}-{depth}"
        kind = {"params": "prompt", "arguments": "tool_call", "unknown": "prompt"}[where]
        body = orjson.dumps(_base(kind, eid, t)).decode()[:-1]
        field_name = "mystery" if where == "unknown" else where
        add("nesting", eid, f'{body},"{field_name}":{_nested(depth)}}}'.encode())
    for i, value in enumerate(("18446744073709551616", "1e30", "-1")):
        eid = f"{tag}-int-{i}"
        body = orjson.dumps(_base("output", eid, t)).decode()[:-1]
        add("integer range", eid, f'{body},"usage":{{"input_tokens":{value}}}}}'.encode())
    for m in range(101):  # one event per month back from now: the store partitions by month
        eid = f"{tag}-month-{m}"
        add("101 months", eid, orjson.dumps(_base("prompt", eid, t - m * 31 * DAY_MS)))
    add("future ts", f"{tag}-future", orjson.dumps(_base("prompt", f"{tag}-future", 4_070_908_800_000)))  # 2099
    add("future ts", f"{tag}-future-2100", orjson.dumps(_base("prompt", f"{tag}-future-2100", 4_102_444_700_000)))
    add("too old", f"{tag}-old", orjson.dumps(_base("prompt", f"{tag}-old", t - 200 * DAY_MS)))
    # An invalid message whose scrubbed copy is larger than it (secrets masked to longer
    # placeholders, invalid bytes to U+FFFD) and larger than the DLQ's limit.
    secret = "AKIA" + "Z" * 16
    big = b'{"event_type": "prompt", "event_id": "' + tag.encode() + b'-big", "oops": "' + \
        (b"\xff\xfe" + f" key={secret} ".encode()) * 2000 + b'"'
    add("oversize dead letter", f"{tag}-big", big)
    add("malformed", f"{tag}-garbage", b"\x00\x01\xff not json at all")
    add("malformed", f"{tag}-array", b"[" * 5000)
    add("malformed", f"{tag}-empty", b"")
    add("huge string", f"{tag}-huge", orjson.dumps(_base("output", f"{tag}-huge", t, content="x" * 900_000,
                                                          error_type="E" * 5000)))
    return out


@dataclass
class Outcome:
    sent: int = 0
    landed: int = 0
    dead_lettered: int = 0
    duplicated: int = 0
    findings: int = 0
    reasons: dict[str, str] = field(default_factory=dict)  # "(partition, offset)" -> DLQ reason
    headers: dict[str, dict[str, bytes]] = field(default_factory=dict)  # "(partition, offset)" -> DLQ headers
    seconds: float = 0.0
    note: str = ""


def produce(settings: Settings, items: list[tuple[str, bytes]]) -> None:
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    for key, raw in items:
        while True:
            try:
                p.produce(settings.events_topic, raw, key.encode())
                break
            except BufferError:
                p.poll(0.5)
        p.poll(0)
    assert p.flush(60) == 0


def dlq(settings: Settings, want: int, timeout: float = 60) -> list:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"dlq-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(settings.dlq_topic, 0, OFFSET_BEGINNING)])
    got: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < want:
        got += [m for m in c.consume(1000, timeout=0.5) if m.error() is None]
    c.close()
    return got


def valid_traffic(n_traces: int, seed: int = 11) -> list[tuple[str, bytes]]:
    gen = TrafficGenerator(seed=seed, start_ms=now_ms() - 3_600_000)
    return [(e["trace_id"], orjson.dumps(e)) for e in gen.events(n_traces)]


def run_poison(worker: WorkerProcess, n_traces: int = 400) -> tuple[Outcome, dict, list[str]]:
    """Valid traffic with every poison class mixed in. Returns the outcome, the poison classes
    and the valid event ids."""
    s = worker.settings
    tag = uuid.uuid4().hex[:6]
    poison = poison_messages(tag)
    valid = valid_traffic(n_traces)
    valid_ids = [orjson.loads(raw)["event_id"] for _, raw in valid]
    mixed: list[tuple[str, bytes]] = []
    bad = [item for items in poison.values() for item in items]
    step = max(1, len(valid) // (len(bad) + 1))
    for i, item in enumerate(valid):
        mixed.append(item)
        if i % step == 0 and bad:
            mixed.append(bad.pop())
    mixed += bad
    t0 = time.monotonic()
    produce(s, mixed)
    total = len(mixed)
    wait_for(lambda: (worker.stats().get("consumed", 0) >= total), 180, interval=0.5, what="all consumed")
    out = Outcome(sent=total, seconds=time.monotonic() - t0)
    st = worker.stats()
    out.landed = worker.scalar("SELECT count() FROM {db}.events")
    out.findings = st.get("findings", 0)
    out.duplicated = st.get("duplicate_events", 0)
    letters = dlq(s, st.get("dead_letters", 0))
    out.dead_lettered = len(letters)
    for m in letters:
        h = dict(m.headers() or [])
        src = (int(h["llmpulse.source.partition"]), int(h["llmpulse.source.offset"]))
        out.reasons[str(src)] = h["llmpulse.error"].decode()
        out.headers[str(src)] = h
    return out, poison, valid_ids


def run_duplicate_after(worker: WorkerProcess, gap_events: int = 200_000) -> Outcome:
    """One priced output, `gap_events` others, then the same event_id again with a new ts
    (an app that re-stamps what it re-sends)."""
    s = worker.settings
    t = now_ms() - 60_000
    first = _base("output", "dup-target", t - 30_000, tenant="dup", workflow="dup-wf", model="selfhosted-dup",
                  cost_usd=0.6)
    filler = [(f"f{i}", orjson.dumps({"event_type": "prompt", "event_id": f"gap-{i}", "ts": t + i % 50_000,
                                      "trace_id": f"g{i % 5000}", "workflow": "gap", "tenant": "gap"}))
              for i in range(gap_events)]
    again = dict(first, ts=t + 50_000)
    items = [("dup", orjson.dumps(first))] + filler + [("dup2", orjson.dumps(again))]
    t0 = time.monotonic()
    produce(s, items)
    wait_for(lambda: worker.stats().get("consumed", 0) >= len(items), 300, interval=0.5, what="all consumed")
    out = Outcome(sent=len(items), seconds=time.monotonic() - t0)
    st = worker.stats()
    out.landed = worker.scalar("SELECT count() FROM {db}.events")
    out.duplicated = st.get("duplicate_events", 0)
    out.findings = st.get("findings", 0)
    out.dead_lettered = st.get("dead_letters", 0)
    rows = worker.query("SELECT count(), sum(cost_usd) FROM {db}.events FINAL WHERE event_id = 'dup-target'")
    out.note = f"dup-target rows {rows[0][0]}, reported cost {rows[0][1]}"
    return out
