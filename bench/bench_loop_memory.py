"""Memory: worker RSS with 100,000 live traces (floor: RSS <= 1 GB).

A real worker (all processors, chDB embedded in the process: what users run) is
started and its RSS read at idle (baseline). Then N agent traces are published at a
steady rate: each a prompt, `--calls` tool calls with distinct JSON arguments and
results of a few hundred bytes, and an output with usage, over several tenants,
workflows and models. Event times are the wall clock at publish, so after the run
every trace is still live in the detectors (the LoopDetector drops a trace after
15 min of event-time inactivity). No trace is a loop. Once the worker has consumed
every event, its RSS (VmRSS: anonymous memory plus the touched pages of mapped files,
chDB's ~300 MB library among them) and peak (VmHWM) are read from /proc/<pid>/status,
the detectors' live trace counts from /stats/; RSS again after `--settle` idle seconds,
when the last batches' buffers (librdkafka's prefetch, chDB's insert blocks) have gone
back to the allocator. The floor is judged on the first reading; RSS is also sampled
every half second during the run (median, highest and when).

`--stages` limits the worker's stages (LLMPULSE_STAGES) to see what the memory is:
`--stages` alone is the spine (validate -> ClickHouse), `--stages loops` adds one.

    python bench/bench_loop_memory.py [--traces 100000] [--calls 4] [--rate 5000] [--settle 30] [--stages ...]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402

from _broker import bench_broker  # noqa: E402
from llmpulse.ingest import KafkaPublisher  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for  # noqa: E402

FLOOR_BYTES = 10**9  # 1 GB, read strictly (10^9 bytes = 954 MiB, not 1 GiB)
MIB = 1 << 20

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("openai", "o3-mini"))
WORDS = ("order", "shipping", "refund", "invoice", "carrier", "warehouse", "delay", "policy", "customer", "payment",
         "retry", "timeout", "module", "handler", "vector", "index", "latency", "cache", "report", "summary",
         "dataset", "benchmark", "retrieval", "context", "window", "token", "budget", "release", "branch", "review")


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choices(WORDS, k=n_words))


# Per workflow: tool -> arguments for the k-th call of a trace (k keeps calls distinct: no loops).
def _support(rng: random.Random, k: int) -> tuple[str, dict]:
    tool = ("search_kb", "get_order", "lookup_customer", "create_ticket")[k % 4]
    args = {
        "search_kb": lambda: {"query": _text(rng, 6), "limit": 5 + k, "filters": {"locale": "en-US", "page": k}},
        "get_order": lambda: {"order_id": f"ORD-{rng.randint(10**6, 10**7)}", "include": ["items", "shipping"]},
        "lookup_customer": lambda: {"customer_id": f"C{rng.randint(10**5, 10**6)}", "fields": ["tier", "region"]},
        "create_ticket": lambda: {"subject": _text(rng, 5), "priority": rng.choice(("low", "normal", "high")),
                                  "body": _text(rng, 25)},
    }[tool]()
    return tool, args


def _code(rng: random.Random, k: int) -> tuple[str, dict]:
    tool = ("read_file", "run_tests", "read_file", "post_comment")[k % 4]
    path = f"src/{rng.choice(WORDS)}/{rng.choice(WORDS)}_{k}.py"
    args = {
        "read_file": lambda: {"path": path, "ref": f"{rng.getrandbits(40):010x}", "start_line": 1 + 40 * k},
        "run_tests": lambda: {"target": f"tests/test_{rng.choice(WORDS)}.py", "timeout_s": 120, "k": _text(rng, 2)},
        "post_comment": lambda: {"path": path, "line": rng.randint(1, 400), "body": _text(rng, 30)},
    }[tool]()
    return tool, args


def _research(rng: random.Random, k: int) -> tuple[str, dict]:
    tool = ("web_search", "fetch_page", "fetch_page", "summarize")[k % 4]
    args = {
        "web_search": lambda: {"q": _text(rng, 5), "num": 10, "offset": 10 * k},
        "fetch_page": lambda: {"url": f"https://example.org/{rng.choice(WORDS)}/{rng.randint(1, 10**6)}",
                               "max_bytes": 200_000},
        "summarize": lambda: {"doc_ids": [f"doc-{rng.randint(1, 10**6)}" for _ in range(3)], "max_words": 150},
    }[tool]()
    return tool, args


WORKFLOWS = {"support-bot": _support, "code-review": _code, "research-agent": _research}


def _result(rng: random.Random, k: int) -> str:
    """A JSON tool result of a few hundred bytes, different for every call."""
    hits = [{"id": f"r{k}-{rng.randint(10**5, 10**6)}", "title": _text(rng, 4), "score": round(rng.random(), 3),
             "snippet": _text(rng, 12)} for _ in range(rng.randint(2, 4))]
    return orjson.dumps({"total": len(hits) + rng.randint(0, 50), "items": hits}).decode()


def agent_trace(rng: random.Random, trace_id: str, calls: int, end_ms: int) -> list[dict]:
    """prompt -> `calls` distinct tool calls -> output with usage, ending at `end_ms`."""
    workflow = rng.choice(list(WORKFLOWS))
    provider, model = rng.choice(MODELS)
    common = {"trace_id": trace_id, "tenant": rng.choice(TENANTS), "workflow": workflow, "app": f"{workflow}-svc",
              "environment": "prod", "provider": provider, "model": model, "prompt_version": f"v{rng.randint(1, 3)}",
              "user_id": f"user-{rng.randint(1, 5000)}", "session_id": f"s-{rng.randint(1, 20000)}"}
    steps = [rng.randint(200, 1500) for _ in range(calls + 1)]
    t = end_ms - sum(steps)
    root = f"{trace_id}-p"
    events = [{**common, "event_id": root, "span_id": root, "event_type": "prompt", "ts": t,
               "messages": [{"role": "system", "content": f"You are the {workflow} assistant."},
                            {"role": "user", "content": _text(rng, 20)}],
               "params": {"temperature": 0.2}}]
    build = WORKFLOWS[workflow]
    for k in range(calls):
        t += steps[k]
        tool, args = build(rng, k)
        events.append({**common, "event_id": f"{trace_id}-t{k}", "span_id": f"{trace_id}-t{k}",
                       "parent_span_id": root, "event_type": "tool_call", "ts": t, "tool_name": tool,
                       "tool_call_id": f"call-{trace_id}-{k}", "arguments": args, "status": "ok",
                       "duration_ms": round(rng.lognormvariate(4.5, 0.6), 1), "result": _result(rng, k),
                       "side_effect": "write" if tool in ("create_ticket", "post_comment") else "read"})
    t += steps[-1]
    inp, out = rng.randint(800, 8000), rng.randint(50, 900)
    events.append({**common, "event_id": f"{trace_id}-o", "span_id": f"{trace_id}-o", "parent_span_id": root,
                   "event_type": "output", "ts": t, "status": "ok", "latency_ms": float(steps[-1]),
                   "finish_reason": "stop", "response_model": model, "content": _text(rng, 40),
                   "usage": {"input_tokens": inp, "output_tokens": out, "cache_read_tokens": inp // 2}})
    return events


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def publish(pub: KafkaPublisher, traces: int, calls: int, rate: int) -> int:
    """Publish `traces` traces paced at `rate` events/s; returns the events sent."""
    rng = random.Random(42)
    run = uuid.uuid4().hex[:6]
    sent = 0
    t0 = time.monotonic()
    for i in range(traces):
        for e in agent_trace(rng, f"mem-{run}-{i:07d}", calls, time.time_ns() // 1_000_000):
            while not pub.publish_raw(orjson.dumps(e), e["trace_id"]):
                pub.flush(0.5)  # local queue full: wait for the broker
            sent += 1
        ahead = sent / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        if (i + 1) % 20_000 == 0:
            print(f"  published {i + 1:,} traces ({sent:,} events)", file=sys.stderr, flush=True)
    assert pub.flush(60) == 0
    return sent


def run(bootstrap: str, traces: int, calls: int, rate: int, settle: float, stages: list[str] | None,
        work: Path) -> dict:
    settings = isolated_settings(bootstrap, work / "state")
    env = {} if stages is None else {"LLMPULSE_STAGES": orjson.dumps(stages).decode()}
    worker = WorkerProcess(settings, work / "worker.log", extra_env=env).start()
    pub = KafkaPublisher(bootstrap, settings.events_topic)
    try:
        time.sleep(3)  # let start-up settle before the baseline
        base = proc_status(worker.proc.pid)
        t0 = time.monotonic()
        samples: list[tuple[float, int, int]] = []  # (seconds since the first event, RSS, consumed)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                samples.append((time.monotonic() - t0, proc_status(worker.proc.pid)["VmRSS"],
                                worker.stats().get("consumed", 0)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        events = publish(pub, traces, calls, rate)
        wait_for(lambda: worker.stats().get("consumed", 0) >= events, max(300, events / 1000), interval=0.5,
                 what="worker to consume every event")
        elapsed = time.monotonic() - t0
        stop.set()
        sampler.join()
        after = proc_status(worker.proc.pid)
        stats = worker.stats()
        time.sleep(settle)
        settled = proc_status(worker.proc.pid)
    finally:
        pub.close()
        worker.stop()
    return {"traces": traces, "events": events, "elapsed": elapsed, "base": base, "after": after, "samples": samples,
            "settled": settled, "stats": stats}


def _spread(samples: list[tuple[float, int, int]], mib: Any) -> str:
    """Median and highest of the half-second RSS samples, and when the highest was taken."""
    if not samples:
        return "no samples"
    rss = sorted(s[1] for s in samples)
    t_max, v_max, _ = max(samples, key=lambda s: s[1])
    return (f"median {mib(rss[len(rss) // 2])}, highest {mib(v_max)} at {t_max:.0f} s "
            f"({len(samples)} samples every 0.5 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=4, help="tool calls per trace")
    ap.add_argument("--rate", type=int, default=5000, help="events/s published (with these traces the worker does 3-5k/s: a backlog builds)")
    ap.add_argument("--settle", type=float, default=30, help="idle seconds before the second RSS reading")
    ap.add_argument("--stages", nargs="*", default=None, help="worker stages (default: all)")
    ap.add_argument("--samples-out", type=Path, help="write the samples (s, RSS bytes, events consumed) as CSV")
    args = ap.parse_args()
    broker = bench_broker()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        r = run(broker.bootstrap, args.traces, args.calls, args.rate, args.settle, args.stages, Path(tmp))
    st, before, after = r["stats"], r["base"], r["after"]
    if args.samples_out:
        args.samples_out.write_text("".join(f"{t:.1f},{v},{c}\n" for t, v, c in r["samples"]))
    met = after["VmRSS"] <= FLOOR_BYTES
    live = st.get("live_traces")

    def mib(n: int) -> str:
        return f"{n / MIB:,.0f} MiB"

    rows = [
        ("traces published", f"{r['traces']:,} (prompt + {args.calls} tool calls + output each)"),
        ("events", (f"{r['events']:,}, consumed {st.get('consumed', 0):,} in {r['elapsed']:.0f} s, "
                    f"findings {st.get('findings', 0):,}")),
        ("live_traces (LoopDetector)", f"{live:,}" if live is not None else "not reported"),
        ("contract_traces", f"{st['contract_traces']:,}" if "contract_traces" in st else "not reported"),
        ("RSS baseline (idle)", (f"{mib(before['VmRSS'])} (anon {mib(before['RssAnon'])}, "
                                 f"file {mib(before['RssFile'])})")),
        ("RSS after", (f"{mib(after['VmRSS'])} (anon {mib(after['RssAnon'])}, file {mib(after['RssFile'])}; "
                       f"/stats/ rss_bytes {mib(st.get('rss_bytes', 0))})")),
        (f"RSS after {args.settle:.0f} s idle", (f"{mib(r['settled']['VmRSS'])} "
                                                 f"(anon {mib(r['settled']['RssAnon'])})")),
        ("RSS peak (VmHWM)", mib(after["VmHWM"])),
        ("RSS during the run", _spread(r["samples"], mib)),
        ("heap trims (trim_above_mb)", f"{st.get('trims', 0)}, the last took {st.get('last_trim_ms', 0)} ms"),
        ("bytes per trace", (f"{(after['VmRSS'] - before['VmRSS']) / r['traces']:,.0f} "
                             "((after - baseline) / traces)")),
        ("floor RSS <= 1 GB (10^9 bytes)", "met" if met else "MISSED"),
    ]
    width = max(len(k) for k, _ in rows)
    stages = "all processors" if args.stages is None else f"stages={args.stages}"
    print(f"worker memory, {stages}, chDB embedded, {args.rate:,} events/s published")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    if live is not None and live < r["traces"]:
        print(f"  note: only {live:,} of {r['traces']:,} traces live: the figure understates the load")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
