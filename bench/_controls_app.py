"""The app of bench_controls_e2e: injects a tool loop once a second, then checks its trace
every 5 ms until its own SDK view of llm.controls denies it. One JSON line per loop.

    python bench/_controls_app.py BOOTSTRAP EVENTS_TOPIC CONTROLS_TOPIC WARM_S SECONDS
"""

from __future__ import annotations

import sys
import time
import uuid

import orjson

from llmpulse.ingest import KafkaPublisher
from llmpulse.ingest.controls_config import ControlsConfig

POLL_S = 0.005
WAIT_S = 30.0  # a loop not denied by then counts as not enforced (the worker may lag under load)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def main() -> None:
    bootstrap, events_topic, controls_topic, warm_s, seconds = sys.argv[1:6]
    pub = KafkaPublisher(bootstrap, events_topic, redaction=False, controls_topic=controls_topic,
                         controls=ControlsConfig(startup_wait_s=10))
    pending: dict[str, tuple] = {}  # trace id -> (trace, sent_ms, deadline)
    start = time.monotonic() + float(warm_s)
    end = start + float(seconds)
    next_loop = start
    try:
        while time.monotonic() < end or pending:
            now = time.monotonic()
            if now >= next_loop and now < end:
                t = pub.trace("research-agent", trace_id=f"ks-{uuid.uuid4().hex[:12]}", tenant="acme",
                              provider="openai", model="gpt-4o")
                t.prompt(messages=[{"role": "user", "content": "where is order 1234?"}])
                for _ in range(3):
                    t.tool_call("search_kb", arguments={"order_id": "1234"}, status="ok", duration_ms=40.0,
                                result="order 1234: in transit", side_effect="read")
                pending[t.trace_id] = (t, wall_ms(), now + WAIT_S)
                next_loop += 1.0
            for tid, (t, sent, deadline) in list(pending.items()):
                v = t.check_tool("search_kb", side_effect="read")
                if not v.allowed or now > deadline:
                    del pending[tid]
                    print(orjson.dumps({"trace": tid, "sent_ms": sent,
                                        "enforced_ms": None if v.allowed else wall_ms()}).decode(), flush=True)
            # Checks cost microseconds; the sleep keeps this process from taking a core from the
            # worker on a small machine (the deny is seen within POLL_S of the view changing).
            time.sleep(POLL_S if pending else max(0.0, min(next_loop, end) - time.monotonic()) or POLL_S)
    finally:
        pub.close()


if __name__ == "__main__":
    main()
