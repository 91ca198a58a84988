"""The SDK never blocks or raises into the app, and counts what it could not deliver."""

from __future__ import annotations

import time

from llmpulse.ingest import KafkaPublisher, MemoryPublisher
from tests.conftest import free_port


def test_trace_context_stamps_common_fields_and_ids() -> None:
    pub = MemoryPublisher()
    with pub.trace("support-bot", tenant="acme", model="gpt-4o") as t:
        t.prompt(messages=[{"role": "user", "content": "hi"}])
        t.tool_call("search_kb", arguments={"q": "refund"})
        t.output(latency_ms=120.0)
    assert [e["event_type"] for e in pub.events] == ["prompt", "tool_call", "output"]
    assert {e["trace_id"] for e in pub.events} == {t.trace_id}
    assert all(e["tenant"] == "acme" and e["workflow"] == "support-bot" for e in pub.events)
    assert len({e["event_id"] for e in pub.events}) == 3
    assert all(isinstance(e["ts"], int) and e["schema_version"] == "1" for e in pub.events)


def test_hooks_run_before_publish_and_can_drop() -> None:
    def scrub(e: dict) -> dict | None:
        if e.get("user_id") == "blocked":
            return None
        return {**e, "content": "[REDACTED]"} if "content" in e else e

    pub = MemoryPublisher(hooks=[scrub])
    assert pub.publish({"event_type": "output", "content": "secret", "trace_id": "t", "workflow": "w"})
    assert not pub.publish({"event_type": "output", "user_id": "blocked", "trace_id": "t", "workflow": "w"})
    assert pub.events[0]["content"] == "[REDACTED]"
    assert pub.stats.invalid == 1


def test_publish_with_no_broker_neither_blocks_nor_raises_and_counts_drops() -> None:
    # Nothing listens on this port; a tiny queue overflows quickly.
    pub = KafkaPublisher(f"127.0.0.1:{free_port()}", "t", config={"queue.buffering.max.messages": 100,
                                                                   "message.timeout.ms": 1000})
    worst = 0.0
    results = []
    for i in range(300):
        t0 = time.perf_counter()
        results.append(pub.publish({"event_type": "prompt", "trace_id": "t", "workflow": "w", "n": i}))
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05
    assert results.count(True) == 100 and pub.stats.queue_full == 200
    assert not pub.publish({"event_type": "output", "n": 10**40})  # unencodable: counted, not raised
    assert pub.stats.invalid == 1
    pub.flush(3)
    assert pub.stats.failed == 100  # timed out in delivery reports, counted
    assert pub.stats.undelivered == 301
    pub.close(0.1)
