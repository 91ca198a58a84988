"""The simulated fleet: tenants, workflows, models, prices, and how a call behaves.

Numbers are plausible, not sourced: list prices per million tokens of public
models, token sizes and latencies of typical chat, RAG and agent workloads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# $ per 1M tokens: input, cached input read, output; latency: first token ms, ms/output token.
MODELS: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"in": 0.15, "cached": 0.075, "out": 0.6, "ttft": 350, "per_out": 9},
    "gpt-4o": {"in": 2.5, "cached": 1.25, "out": 10.0, "ttft": 450, "per_out": 16},
    "gpt-4.1": {"in": 2.0, "cached": 0.5, "out": 8.0, "ttft": 450, "per_out": 15},
    "gpt-4.1-mini": {"in": 0.4, "cached": 0.1, "out": 1.6, "ttft": 380, "per_out": 10},
    "claude-sonnet-4": {"in": 3.0, "cached": 0.3, "out": 15.0, "ttft": 600, "per_out": 18},
    "claude-sonnet-4-5": {"in": 3.0, "cached": 0.3, "out": 15.0, "ttft": 580, "per_out": 17},
    "claude-opus-4": {"in": 15.0, "cached": 1.5, "out": 75.0, "ttft": 900, "per_out": 32},
    "claude-haiku-4-5": {"in": 1.0, "cached": 0.1, "out": 5.0, "ttft": 300, "per_out": 7},
}

# A benign swap keeps cost and speed within ~20%; a bad one is much pricier or slower.
BENIGN_SWAPS = {
    "claude-sonnet-4": "claude-sonnet-4-5",
    "claude-sonnet-4-5": "claude-sonnet-4",
    "gpt-4o": "gpt-4.1",
    "gpt-4.1": "gpt-4o",  # dearer on cached input: benign only where the cost ratio allows (schedule)
    "gpt-4.1-mini": "gpt-4o-mini",  # cheaper: fine
}  # gpt-4o-mini has no like-for-like swap: every alternative is dearer
COSTLY_SWAPS = {
    "gpt-4o-mini": "gpt-4o",
    "gpt-4.1-mini": "gpt-4.1",
    "claude-sonnet-4": "claude-opus-4",
    "claude-sonnet-4-5": "claude-opus-4",
    "gpt-4o": "claude-opus-4",
    "gpt-4.1": "claude-opus-4",
}

TOOLS = {
    "research_agent": ["web_search", "fetch_url", "read_file", "run_python", "check_job"],
    "triage_agent": ["lookup_ticket", "search_kb", "update_ticket", "send_email", "check_job"],
    "rag_answer": ["retrieve"],
}
SIDE_EFFECTS = {"update_ticket": "write", "send_email": "irreversible"}


@dataclass
class Workflow:
    tenant: str
    name: str
    kind: str  # chat | rag | agent
    rate: float  # calls per minute at diurnal factor 1
    models: list[tuple[str, float]]  # (model, share); the first is the primary
    in_tokens: float
    out_tokens: float
    cache_share: float
    error_p: float
    refusal_p: float
    evals: list[str] = field(default_factory=list)
    eval_sample: float = 0.0
    eval_pass: float = 0.9
    steps: tuple[int, int] = (1, 1)  # LLM calls per trace (agents: several)

    @property
    def mean_steps(self) -> float:
        return (self.steps[0] + self.steps[1]) / 2


def build_fleet(volume: float = 1.0) -> list[Workflow]:
    """Three tenants in different time zones; some keys are busy, a few barely used."""
    v = volume
    return [
        Workflow("acme", "support_chat", "chat", 70 * v, [("gpt-4o-mini", 0.85), ("gpt-4o", 0.15)], 1400, 260, 0.5,
                 0.01, 0.02, ["helpfulness"], 0.6, 0.9),
        Workflow("acme", "rag_answer", "rag", 55 * v, [("claude-sonnet-4", 1.0)], 6000, 380, 0.85, 0.008, 0.01,
                 ["faithfulness"], 0.7, 0.88),
        Workflow("acme", "research_agent", "agent", 60 * v, [("claude-sonnet-4", 0.8), ("gpt-4.1", 0.2)], 3500, 300,
                 0.7, 0.012, 0.005, steps=(3, 8)),
        Workflow("acme", "extract", "chat", 6 * v, [("gpt-4o-mini", 1.0)], 900, 120, 0.0, 0.01, 0.0),
        Workflow("globex", "support_chat", "chat", 55 * v, [("gpt-4.1-mini", 1.0)], 1200, 240, 0.4, 0.015, 0.025,
                 ["helpfulness"], 0.7, 0.91),
        Workflow("globex", "triage_agent", "agent", 65 * v, [("gpt-4o", 0.9), ("gpt-4o-mini", 0.1)], 2500, 200, 0.6,
                 0.01, 0.01, steps=(2, 6)),
        Workflow("globex", "summarize", "chat", 45 * v, [("claude-haiku-4-5", 1.0)], 4000, 350, 0.3, 0.005, 0.003),
        Workflow("initech", "rag_answer", "rag", 60 * v, [("gpt-4.1", 1.0)], 7000, 420, 0.85, 0.01, 0.015,
                 ["faithfulness", "citation"], 0.6, 0.9),
        Workflow("initech", "summarize", "chat", 50 * v, [("gpt-4o-mini", 1.0)], 3000, 300, 0.2, 0.006, 0.002),
        Workflow("initech", "research_agent", "agent", 5 * v, [("claude-sonnet-4-5", 1.0)], 3000, 300, 0.7, 0.02,
                 0.01, steps=(3, 7)),
        Workflow("initech", "extract", "chat", 110 * v, [("gpt-4.1-mini", 1.0)], 800, 100, 0.0, 0.004, 0.0),
    ]


TENANT_PHASE_H = {"acme": 0.0, "globex": 7.0, "initech": 15.0}


def diurnal(tenant: str, t_ms: int, amplitude: float) -> float:
    """Volume factor: one broad daily wave per tenant (its own time zone), peak mid-afternoon."""
    hours = (t_ms / 3_600_000 + TENANT_PHASE_H[tenant]) % 24
    return 1.0 + amplitude * math.sin(2 * math.pi * (hours - 9) / 24)


def cost_usd(model: str, in_tokens: int, cached: int, out_tokens: int) -> float:
    p = MODELS[model]
    return ((in_tokens - cached) * p["in"] + cached * p["cached"] + out_tokens * p["out"]) / 1e6
