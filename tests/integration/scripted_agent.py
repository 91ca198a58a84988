"""A scripted agent using the SDK, run as its own process by the kill-switch tests and bench.

    python -m tests.integration.scripted_agent loop|spend BOOTSTRAP EVENTS_TOPIC CONTROLS_TOPIC TRACE_OR_TENANT STEP_S

`loop`: one trace calls the same tool again and again, checking with the SDK before each
call (`trace.check_tool`), each step taking STEP_S (the model's think time); it stops at
the first refusal. `spend`: model calls of one tenant at $0.30 each, checked before each
call (`trace.check_model`); it stops at the first refusal, then checks another tenant.
Prints one JSON line: the calls it made and the verdict that stopped it.
"""

from __future__ import annotations

import sys
import time

import orjson

from llmpulse.ingest import KafkaPublisher
from llmpulse.ingest.controls_config import ControlsConfig

MAX_STEPS = 60


def verdict_doc(v) -> dict:
    a = v.action
    return {"outcome": v.outcome, "kind": a.kind if a else "", "action_id": a.action_id if a else "",
            "expires_at": a.expires_at if a else None, "policy": a.policy if a else "", "at_ms": time.time_ns() // 1_000_000}


def loop(pub: KafkaPublisher, trace_id: str, step_s: float) -> dict:
    with pub.trace("research-agent", trace_id=trace_id, tenant="acme", provider="openai", model="gpt-4o") as t:
        t.prompt(messages=[{"role": "user", "content": "where is order 1234?"}])
        for i in range(MAX_STEPS):
            v = t.check_tool("search_kb", side_effect="read")
            if not v.allowed:
                return {"calls": i, "stopped_by": verdict_doc(v)}
            t.tool_call("search_kb", arguments={"order_id": "1234"}, status="ok", duration_ms=40.0,
                        result="order 1234: in transit", side_effect="read")
            pub.flush(5)
            time.sleep(step_s)
    return {"calls": MAX_STEPS, "stopped_by": None}


def spend(pub: KafkaPublisher, tenant: str, step_s: float) -> dict:
    for i in range(MAX_STEPS):
        with pub.trace("chat", tenant=tenant, provider="self", model="selfhosted-x") as t:
            v = t.check_model("selfhosted-x")
            if not v.allowed:
                with pub.trace("chat", tenant=tenant + "-other", provider="self", model="selfhosted-x") as other:
                    elsewhere = other.check_model("selfhosted-x").outcome
                return {"calls": i, "stopped_by": verdict_doc(v), "other_tenant": elsewhere}
            t.output(status="ok", latency_ms=5.0, cost_usd=0.30)
        pub.flush(5)
        time.sleep(step_s)
    return {"calls": MAX_STEPS, "stopped_by": None}


def main() -> None:
    mode, bootstrap, events_topic, controls_topic, target, step_s = sys.argv[1:7]
    pub = KafkaPublisher(bootstrap, events_topic, redaction=False, controls_topic=controls_topic,
                         controls=ControlsConfig(startup_wait_s=10, refresh_s=0.1))
    try:
        out = (loop if mode == "loop" else spend)(pub, target, float(step_s))
    finally:
        pub.close()
    print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    main()
