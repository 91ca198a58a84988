"""Kill switches in the SDK: what a check costs on the app thread, and what the view holds.

1. Decision check on the app thread (ingest/enforce.py), median and p99 of single calls timed
   with perf_counter_ns (the timer's own ~50 ns included), with 100,000 active actions in
   the view (a realistic mix: halted traces, per-user spend blocks, a few pauses, routes,
   disabled tools):
     allow, repeat        the common case: a model call of a trace no switch concerns
     allow, first check   a new trace each call (its scope and cache are built)
     deny, repeat         a halted trace calling again (the decision counted, not published)
     route, repeat        a routed model
     tool, first check    a tool call in a new trace (approvals and disabled tools looked up)
   Floor: median <= 2 us.
2. SDK memory with 100,000 active actions: records published to a real broker, read by a new
   ControlsReader from offset 0 (as an app starting up); the process RSS before and after,
   and the time until the view was complete.
3. Action published -> enforced in a reading process's view (a producer like the CLI's, this
   process's reader): median and p99 over toggles of one pause.

    python bench/bench_controls.py [--actions 100000] [--calls 200000] [--toggles 40]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Producer  # noqa: E402

from _broker import bench_broker  # noqa: E402
from llmpulse.ingest import MemoryPublisher  # noqa: E402
from llmpulse.ingest.controls import ControlsReader, ControlState  # noqa: E402
from llmpulse.ingest.controls_config import ControlsConfig  # noqa: E402
from llmpulse.kafka.topics import CONTROLS_TOPIC_CONFIG, ensure_topics  # noqa: E402
from llmpulse.processors.contracts import ContractsConfig  # noqa: E402
from llmpulse.schemas.controls import encode_action, lift, new_action, scope_key  # noqa: E402


def now() -> int:
    return time.time_ns() // 1_000_000


def mix(n: int) -> list:
    """n active actions: mostly halted traces and per-user spend blocks (what policies make in
    bulk), plus pauses, routes and disabled tools of some workflows."""
    t0, out = now(), []
    for i in range(n):
        r = i % 10
        if r < 6:
            a = new_action("halt_trace", reason="tool_loop", at=t0, finding_id=f"f{i}", policy="halt-loops",
                           trace_id=f"{i:032x}", workflow=f"agent-{i % 50}", tenant=f"t{i % 200}",
                           expires_at=t0 + 3_600_000)
        elif r < 9:
            a = new_action("block_spend", reason="budget 100%", at=t0, finding_id=f"f{i}", policy="block-spend",
                           user_id=f"user-{i}", tenant=f"t{i % 200}", expires_at=t0 + 86_400_000)
        elif i % 30 == 9:
            a = new_action("pause_workflow", reason="incident", at=t0, actor="oncall", workflow=f"wf-{i}")
        elif i % 30 == 19:
            a = new_action("route_model", reason="5xx", at=t0, actor="oncall", workflow=f"wf-{i}", model="gpt-4o",
                           route_to="gpt-4o-mini")
        else:
            a = new_action("disable_tool", reason="outage", at=t0, actor="oncall", tool=f"tool-{i}",
                           workflow=f"wf-{i}")
        out.append(a)
    return out


def timed(fn, calls: int) -> tuple[float, float]:
    samples = [0] * calls
    pc = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(calls):
            t = pc()
            fn(i)
            samples[i] = pc() - t
    finally:
        gc.enable()
    samples.sort()
    return samples[calls // 2] / 1000, samples[int(calls * 0.99)] / 1000


def bench_checks(actions: list, calls: int) -> None:
    state = ControlState()
    for a in actions:
        state.apply(scope_key(a), encode_action(a))
    halted = next(a for a in actions if a.kind == "halt_trace")
    routed = next(a for a in actions if a.kind == "route_model")
    contracts = ContractsConfig.from_config({"support-bot": {"fallback": {"reply": "sorry"}}})
    pub = MemoryPublisher(controls=state, contracts=contracts, redaction=False)
    pub.publish = lambda e: True  # measure the decision, not an in-memory list growing
    print(f"1. decision check on the app thread, {len(state):,} active actions, {calls:,} calls each")
    t = pub.trace("support-bot", tenant="t7", user_id="someone")
    rows = [("allow, repeat", lambda i: t.check_model("gpt-4o"))]
    rows.append(("allow, first check", lambda i: pub.trace("support-bot", tenant="t7", user_id="u").check_model("gpt-4o")))
    h = pub.trace(halted.workflow, tenant=halted.tenant, trace_id=halted.trace_id)
    rows.append(("deny, repeat", lambda i: h.check_model("gpt-4o")))
    r = pub.trace(routed.workflow)
    rows.append(("route, repeat", lambda i: r.check_model("gpt-4o")))
    rows.append(("tool, first check", lambda i: pub.trace("support-bot", tenant="t7").check_tool("issue_refund", side_effect="write")))
    assert not h.check_model("gpt-4o").allowed and r.check_model("gpt-4o").model == "gpt-4o-mini"
    for name, fn in rows:
        med, p99 = timed(fn, calls)
        print(f"   {name:<20} median {med:5.2f} us   p99 {p99:6.2f} us" + ("   (floor: median <= 2 us)" if name == "allow, repeat" else ""))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def bench_memory(bootstrap: str, actions: list) -> None:
    topic = f"bench.controls.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 1}, configs={topic: CONTROLS_TOPIC_CONFIG})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4", "log_level": 3,
                  "queue.buffering.max.messages": 1_000_000})
    raw = [(scope_key(a).encode(), encode_action(a)) for a in actions]
    for k, v in raw:
        p.produce(topic, v, k)
        p.poll(0)
    assert p.flush(60) == 0
    size = sum(len(k) + len(v) for k, v in raw) / 1e6
    del raw
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    reader = ControlsReader(bootstrap, topic, ControlsConfig(refresh_s=0.05))
    assert reader.wait_ready(120), reader.last_error
    took = time.perf_counter() - t0
    gc.collect()
    after = rss_mb()
    n = len(reader.state)
    print(f"2. SDK memory: {n:,} active actions ({size:.1f} MB of records) read from offset 0 in {took:.2f} s; "
          f"RSS +{after - before:.0f} MB ({(after - before) * 1e6 / max(n, 1):.0f} bytes per action)")
    reader.close()


def bench_propagation(bootstrap: str, toggles: int) -> None:
    topic = f"bench.controls.p.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 1}, configs={topic: CONTROLS_TOPIC_CONFIG})
    reader = ControlsReader(bootstrap, topic, ControlsConfig(refresh_s=0.2))
    assert reader.wait_ready(30)
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0, "log_level": 3})
    p.produce(topic, None, b"warmup")  # a tombstone of no key: connection and producer id set up before timing
    p.flush(10)
    lat = []
    for i in range(toggles):
        a = new_action("pause_workflow", reason="bench", at=now(), actor="bench", workflow="support-bot")
        record = lift(a, by="bench", at=now()) if i % 2 else a
        gen = reader.state.generation
        t0 = time.perf_counter()
        p.produce(topic, encode_action(record), scope_key(record).encode())
        p.flush(10)
        while reader.state.generation == gen:
            time.sleep(0.0002)
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    print(f"3. action published -> in the app's view: median {statistics.median(lat):.1f} ms, "
          f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f} ms, max {lat[-1]:.1f} ms over {len(lat)} toggles")
    reader.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actions", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--toggles", type=int, default=40)
    args = ap.parse_args()
    actions = mix(args.actions)
    bench_checks(actions, args.calls)
    broker = bench_broker()
    bench_memory(broker.bootstrap, actions)
    bench_propagation(broker.bootstrap, args.toggles)


if __name__ == "__main__":
    main()
