"""Realistic synthetic LLM traffic for the demo, tests and benchmarks (deterministic per seed).

Several tenants and workflows, multi-step agent traces (prompt -> tool calls -> output
-> eval), errors, refusals, cached and reasoning tokens, and a few malformed messages.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Iterator

import orjson

TENANTS = ("acme", "globex", "initech")
WORKFLOWS = {
    "support-bot": ("search_kb", "get_order", "create_ticket", "issue_refund"),
    "code-review": ("read_file", "run_tests", "post_comment"),
    "research-agent": ("web_search", "fetch_page", "summarize"),
}
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("openai", "o3-mini"))
USER_TEXT = (
    "Where is my order {n}? It was supposed to arrive on Tuesday.",
    "Please review the diff for the payment retry logic in module {n}.",
    "Find recent papers about retrieval augmented generation and summarise them ({n}).",
    "I was charged twice for invoice {n}, can I get a refund?",
)
TOPICS = ("refund policy", "shipping delay", "order status", "retry logic", "payment module", "rag papers",
          "invoice", "unit tests", "vector search", "api limits")
MALFORMED = (
    b"{not json",
    b'{"event_type": "output", "event_id": "bad-1"}',  # missing ts, trace_id, status, latency
    b'{"event_id": "bad-2", "event_type": "tool_call", "ts": "yesterday", "trace_id": "t", "workflow": "w", "tool_name": "x"}',
    b'{"event_id": "bad-3", "event_type": "telepathy", "ts": 1700000000000, "trace_id": "t", "workflow": "w"}',
    b"[1, 2, 3]",
)


@dataclass
class TrafficGenerator:
    seed: int = 7
    # Yesterday 00:00 UTC: recent enough for any retention TTL, stable within a day.
    start_ms: int = field(default_factory=lambda: (int(time.time()) // 86_400 - 1) * 86_400_000)
    traces_per_minute: float = 600.0
    content_bytes: int = 400

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._n = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self.seed}-{self._n:09d}"

    def trace(self, ts: int) -> list[dict]:
        """One agent run: prompt, 0-5 tool calls, output, sometimes an eval."""
        rng = self.rng
        tenant = rng.choice(TENANTS)
        workflow = rng.choice(list(WORKFLOWS))
        provider, model = rng.choice(MODELS)
        trace_id = self._id("tr")
        common = {"trace_id": trace_id, "tenant": tenant, "workflow": workflow, "app": f"{workflow}-svc",
                  "environment": "prod", "provider": provider, "model": model, "prompt_version": f"v{rng.randint(1, 3)}",
                  "user_id": f"user-{rng.randint(1, 500)}", "session_id": f"s-{rng.randint(1, 2000)}", "schema_version": "1"}
        text = rng.choice(USER_TEXT).format(n=rng.randint(1000, 99999))
        filler = " ".join(rng.choice(("context", "policy", "history", "detail", "note")) for _ in range(self.content_bytes // 8))
        events = [{**common, "event_id": self._id("ev"), "event_type": "prompt", "ts": ts,
                   "span_id": self._id("sp"),
                   "messages": [{"role": "system", "content": f"You are the {workflow} assistant. {filler}"},
                                {"role": "user", "content": text}],
                   "tools_offered": list(WORKFLOWS[workflow]), "params": {"temperature": 0.2}}]
        t = ts
        for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4, 5))):
            t += rng.randint(50, 1500)
            tool = rng.choice(WORKFLOWS[workflow])
            status = "error" if rng.random() < 0.04 else ("timeout" if rng.random() < 0.01 else "ok")
            events.append({**common, "event_id": self._id("ev"), "event_type": "tool_call", "ts": t,
                           "span_id": self._id("sp"), "tool_name": tool, "tool_call_id": self._id("call"),
                           "arguments": {"query": f"{rng.choice(TOPICS)} {rng.randint(1000, 99999)}",
                                         "limit": rng.randint(1, 10)}, "status": status,
                           "duration_ms": round(rng.lognormvariate(4.5, 0.7), 1),
                           "result": f"{rng.randint(0, 40)} results, first id {rng.randint(10**5, 10**6)}" if status == "ok" else "",
                           "side_effect": "irreversible" if tool == "issue_refund" else "read",
                           **({"approved_by": "agent-supervisor"} if tool == "issue_refund" else {})})
        r = rng.random()
        status = "error" if r < 0.03 else "refusal" if r < 0.05 else "ok"
        latency = round(rng.lognormvariate(6.6 if "mini" in model else 7.0, 0.45), 1)
        t += int(latency)
        input_tokens = rng.randint(300, 6000)
        output_tokens = rng.randint(20, 900) if status == "ok" else rng.randint(0, 30)
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                 "cache_read_tokens": int(input_tokens * rng.choice((0, 0, 0.5, 0.8)))}
        if model.startswith("o3"):
            usage["reasoning_tokens"] = output_tokens // 2
        out = {**common, "event_id": self._id("ev"), "event_type": "output", "ts": t, "span_id": self._id("sp"),
               "status": status, "latency_ms": latency, "ttft_ms": round(latency * 0.3, 1), "response_model": model,
               "finish_reason": {"ok": "stop", "refusal": "content_filter", "error": "error"}[status],
               "content": "" if status == "error" else "Here is what I found. " + filler[: self.content_bytes // 2],
               "usage": usage}
        if status == "error":
            out["error_type"] = rng.choice(("rate_limit", "server_error", "timeout"))
        events.append(out)
        if rng.random() < 0.2:
            events.append({**common, "event_id": self._id("ev"), "event_type": "eval", "ts": t + 10,
                           "eval_name": "helpfulness", "score": round(rng.uniform(0.4, 1.0), 2),
                           "passed": rng.random() > 0.1, "evaluator": "llm-judge", "target_span_id": out["span_id"]})
        return events

    def looping_trace(self, ts: int, repeats: int = 4) -> list[dict]:
        """An agent stuck calling the same tool with the same arguments (a `tool_loop`)."""
        events = self.trace(ts)
        head, output = events[0], events[-1] if events[-1]["event_type"] == "output" else events[-2]
        common = {k: head[k] for k in ("trace_id", "tenant", "workflow", "app", "environment", "provider", "model",
                                       "prompt_version", "user_id", "session_id", "schema_version")}
        tool = WORKFLOWS[head["workflow"]][0]
        calls = [{**common, "event_id": self._id("ev"), "event_type": "tool_call", "ts": ts + 500 * (i + 1),
                  "tool_name": tool, "arguments": {"query": "status of order 4711", "request_id": self._id("req")},
                  "status": "ok", "duration_ms": 40.0, "result": "no results", "side_effect": "read"}
                 for i in range(repeats)]
        return [head, *calls, {**output, "ts": ts + 500 * (repeats + 1)}]

    def events(self, n_traces: int) -> Iterator[dict]:
        """Traces spread in event time at `traces_per_minute`, starting at start_ms."""
        step = 60_000 / self.traces_per_minute
        for i in range(n_traces):
            yield from self.trace(self.start_ms + int(i * step))

    def change(self, ts: int, workflow: str, from_model: str, to_model: str) -> dict:
        return {"event_id": self._id("chg"), "event_type": "change", "ts": ts, "workflow": workflow,
                "change_kind": "model_swap", "from_value": from_model, "to_value": to_model, "actor": "deploy-bot",
                "description": f"swap {from_model} -> {to_model}"}


def encode(event: dict) -> bytes:
    return orjson.dumps(event)
