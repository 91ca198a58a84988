"""An app using the SDK's kill switches, run as its own process by tests/integration/test_controls.py.

    python -m tests.integration.controls_app BOOTSTRAP EVENTS_TOPIC CONTROLS_TOPIC CONFIG_JSON

CONFIG_JSON: {"workflows": [...], "contracts": {...}, "controls": {...}}. Every 20 ms it checks a
model call of each workflow in a new trace (as an app serving requests would) and prints a JSON
line whenever a workflow's answer changes: {"workflow", "outcome", "kind", "action_id",
"at_ms", "stale"}. Runs until its stdin closes.
"""

from __future__ import annotations

import sys
import threading
import time

import orjson

from llmpulse.ingest import KafkaPublisher
from llmpulse.ingest.controls_config import ControlsConfig
from llmpulse.processors.contracts import ContractsConfig


def main() -> None:
    bootstrap, events_topic, controls_topic, raw = sys.argv[1:5]
    cfg = orjson.loads(raw)
    pub = KafkaPublisher(bootstrap, events_topic, controls=ControlsConfig(**cfg.get("controls", {})),
                         contracts=ContractsConfig.from_config(cfg.get("contracts", {})), controls_topic=controls_topic,
                         config={"message.timeout.ms": 60_000})
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    last: dict[str, tuple] = {}
    while not done.is_set():
        for wf in cfg["workflows"]:
            with pub.trace(wf, tenant="acme") as t:
                v = t.check_model("gpt-4o")
            a = v.action
            seen = (v.outcome, a.action_id if a else "")
            if last.get(wf) != seen:
                last[wf] = seen
                print(orjson.dumps({"workflow": wf, "outcome": v.outcome, "kind": a.kind if a else "",
                                    "action_id": a.action_id if a else "", "reason": v.reason,
                                    "at_ms": time.time_ns() // 1_000_000,
                                    "stale": pub.enforcer.view.stale()}).decode(), flush=True)
        time.sleep(0.02)
    pub.close(5)


if __name__ == "__main__":
    main()
