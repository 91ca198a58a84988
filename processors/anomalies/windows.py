"""Windows and per-scope state: half-minute buckets of one key, the baseline history, the
state of a key and of an eval stream."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from llmpulse.processors.anomalies.config import ERROR_STATUSES, REFUSAL_STATUSES
from llmpulse.processors.anomalies.stats import Cusum, Moments
from llmpulse.processors.anomalies.timers import DropTimer
from llmpulse.schemas.contract import Output, Prompt
from llmpulse.schemas.findings import Finding

@dataclass(slots=True)
class Window:
    """One key, one minute. Per-call metrics use ok calls only: an error or timeout
    burst must not also read as a latency regression."""

    calls: int = 0
    # Distinct traces (the independent unit of traffic) -> when the first of its calls here
    # started (event time less latency): the silence timers count arrival clusters on it.
    traces: dict[str, int] = field(default_factory=dict)
    # Prompts: calls as they start. A traffic drop shows there at once; outputs keep landing
    # from calls already in flight (a minute and more for slow models).
    starts: int = 0
    start_traces: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # error + timeout
    refusals: int = 0  # refusal + filtered
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    cost: Moments = field(default_factory=Moments)
    tokens: Moments = field(default_factory=Moments)
    lat: Moments = field(default_factory=Moments)
    ev_pass: int = 0
    ev_total: int = 0
    # Per trace, for a key's windows: [tokens n, sum, sum of squares, cost n, sum, sum of squares].
    by_trace: dict[str, list] | None = None

    def add_output(self, ev: Output, cost_usd: float | None, max_lat: int) -> None:
        self.calls += 1
        self.traces.setdefault(ev.trace_id, ev.ts - int(ev.latency_ms))
        if ev.status in ERROR_STATUSES:
            self.errors += 1
        elif ev.status in REFUSAL_STATUSES:
            self.refusals += 1
        else:
            self.ok += 1
            if len(self.latencies) < max_lat:
                self.latencies.append(ev.latency_ms)
            self.lat.add(ev.latency_ms)
            if cost_usd is not None:
                self.cost.add(cost_usd)
            tokens = ev.usage.input_tokens + ev.usage.output_tokens if ev.usage is not None else None
            if tokens is not None:
                self.tokens.add(tokens)
            if self.by_trace is not None and (tokens is not None or cost_usd is not None):
                t = self.by_trace.setdefault(ev.trace_id, [0, 0.0, 0.0, 0, 0.0, 0.0])
                if tokens is not None:
                    t[0], t[1], t[2] = t[0] + 1, t[1] + tokens, t[2] + tokens * tokens
                if cost_usd is not None:
                    t[3], t[4], t[5] = t[3] + 1, t[4] + cost_usd, t[5] + cost_usd * cost_usd

    def trimmed(self) -> tuple[Moments, Moments]:
        """Tokens and cost per call without the trace that contributed most to each: one
        runaway trace (already a per-trace finding) is not the workflow's tokens/call."""
        return self._without_top(self.tokens, 0), self._without_top(self.cost, 3)

    def _without_top(self, m: Moments, i: int) -> Moments:
        if not self.by_trace or sum(1 for t in self.by_trace.values() if t[i]) < 3:
            return m
        top = max(self.by_trace.values(), key=lambda t: t[i + 1])
        return Moments(m.n - top[i], m.s - top[i + 1], m.ss - top[i + 2])

    def add_prompt(self, ev: Prompt) -> None:
        self.starts += 1
        self.start_traces.setdefault(ev.trace_id, ev.ts)

    def traffic(self, by_starts: bool) -> tuple[int, int]:
        """(calls, distinct traces), counted when calls start (prompts) or end (outputs)."""
        return (self.starts, len(self.start_traces)) if by_starts else (self.calls, len(self.traces))

    def trace_starts(self, by_starts: bool) -> dict[str, int]:
        """Distinct traces -> start time (ms), as `traffic` counts them."""
        return self.start_traces if by_starts else self.traces

    def merge(self, o: "Window", max_lat: int) -> None:
        self.calls += o.calls
        self.starts += o.starts
        self.errors += o.errors
        self.refusals += o.refusals
        self.ok += o.ok
        self.latencies.extend(o.latencies[: max(0, max_lat - len(self.latencies))])
        self.cost.merge(o.cost)
        self.tokens.merge(o.tokens)
        self.lat.merge(o.lat)
        self.ev_pass += o.ev_pass
        self.ev_total += o.ev_total


def combined(a: Window | None, b: Window | None, max_lat: int) -> Window:
    """A fresh window holding both halves (either may be missing)."""
    out = Window(by_trace={})
    for part in (a, b):
        if part is not None:
            out.merge(part, max_lat)
            out.traces = part.traces | out.traces  # the first half's start wins
            out.start_traces = part.start_traces | out.start_traces
            for trace, t in (part.by_trace or {}).items():
                o = out.by_trace.setdefault(trace, [0, 0.0, 0.0, 0, 0.0, 0.0])
                for j in range(6):
                    o[j] += t[j]
    return out



@dataclass(slots=True)
class Condition:
    finding: Finding | None  # None when attributed to a change (no own finding)
    windows: int = 1
    clear_streak: int = 0


@dataclass(slots=True)
class History:
    """Recent non-anomalous windows of one scope, one deque per metric."""

    size: int
    counts: deque = field(init=False)  # (calls, distinct traces, arrival clusters, empty halves, of them after an empty half)
    errors: deque = field(init=False)  # (k, n)
    refusals: deque = field(init=False)
    p95: deque = field(init=False)
    p50: deque = field(init=False)
    cost: deque = field(init=False)
    tokens: deque = field(init=False)
    evals: deque = field(init=False)  # (passed, total)
    # (minute, counts entry) minutes that will join `counts` once COUNTS_DELAY_MS have passed
    # without a traffic drop opening (timers.learn_counts).
    counts_pending: deque = field(init=False)
    # Recent ok calls' latency, tokens and cost: the sequential per-call tests' baselines.
    latencies: deque = field(init=False)
    token_values: deque = field(init=False)
    cost_values: deque = field(init=False)
    latency_samples: int = 1_000

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in ("counts", "errors", "refusals", "p95", "p50", "cost", "tokens", "evals"):
            setattr(self, name, deque(maxlen=self.size))
        self.counts_pending = deque()
        for name in ("latencies", "token_values", "cost_values"):
            setattr(self, name, deque(maxlen=self.latency_samples))



@dataclass(slots=True)
class KeyState:
    tenant: str
    workflow: str
    model: str
    first_minute: int
    history: History
    last_ts: int = 0
    windows: dict[int, Window] = field(default_factory=dict)  # half-minute start -> bucket
    by_starts: bool = False  # traffic counted from prompts: the key's app sends them
    conds: dict[str, Condition] = field(default_factory=dict)
    drop: DropTimer = field(default_factory=DropTimer)  # silence timer (timers.py)
    retired: bool = False  # swapped away from by a change: no silence timer until swapped back to
    # Rate CUSUMs: half -> [(ts, event_id, status code)] until the watermark passes the half
    pending: dict[int, list] = field(default_factory=dict)
    fed: int = 0  # halves before this were fed to the CUSUMs
    cusums: dict[str, Cusum] = field(default_factory=dict)  # kind -> CUSUM, made on first use


@dataclass(slots=True)
class EvalState:
    tenant: str
    workflow: str
    eval_name: str
    first_minute: int
    history: History
    last_ts: int = 0
    # half-minute start -> [passed, total], kept for eval_max_span minutes (the spans tested)
    windows: dict[int, list[int]] = field(default_factory=dict)
    conds: dict[str, Condition] = field(default_factory=dict)
    pending: dict[int, list] = field(default_factory=dict)  # half -> [(ts, event_id, failed)] for the CUSUM
    fed: int = 0  # halves before this were fed to the CUSUM
    cusum: Cusum = field(default_factory=Cusum)  # of failures


