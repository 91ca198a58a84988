"""Windows and per-scope state: half-minute buckets of one key, the baseline history, the
state of a key and of an eval stream."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from llmpulse.processors.anomalies.config import ERROR_STATUSES, H, REFUSAL_STATUSES
from llmpulse.processors.anomalies.stats import Cusum, Moments
from llmpulse.schemas.contract import Output, Prompt
from llmpulse.schemas.findings import Finding

@dataclass(slots=True)
class Window:
    """One key, one minute. Per-call metrics use ok calls only: an error or timeout
    burst must not also read as a latency regression."""

    calls: int = 0
    traces: set[str] = field(default_factory=set)  # distinct traces: the independent unit of traffic
    # Prompts: calls as they start. A traffic drop shows there at once; outputs keep landing
    # from calls already in flight (a minute and more for slow models).
    starts: int = 0
    start_traces: set[str] = field(default_factory=set)
    errors: int = 0  # error + timeout
    refusals: int = 0  # refusal + filtered
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    cost: Moments = field(default_factory=Moments)
    tokens: Moments = field(default_factory=Moments)
    lat: Moments = field(default_factory=Moments)
    ev_pass: int = 0
    ev_total: int = 0

    def add_output(self, ev: Output, cost_usd: float | None, max_lat: int) -> None:
        self.calls += 1
        self.traces.add(ev.trace_id)
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
            if ev.usage is not None:
                self.tokens.add(ev.usage.input_tokens + ev.usage.output_tokens)

    def add_prompt(self, ev: Prompt) -> None:
        self.starts += 1
        self.start_traces.add(ev.trace_id)

    def traffic(self, by_starts: bool) -> tuple[int, int]:
        """(calls, distinct traces), counted when calls start (prompts) or end (outputs)."""
        return (self.starts, len(self.start_traces)) if by_starts else (self.calls, len(self.traces))

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
    out = Window()
    for part in (a, b):
        if part is not None:
            out.merge(part, max_lat)
            out.traces |= part.traces
            out.start_traces |= part.start_traces
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
    counts: deque = field(init=False)  # (calls, distinct traces)
    errors: deque = field(init=False)  # (k, n)
    refusals: deque = field(init=False)
    p95: deque = field(init=False)
    p50: deque = field(init=False)
    cost: deque = field(init=False)
    tokens: deque = field(init=False)
    evals: deque = field(init=False)  # (passed, total)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in ("counts", "errors", "refusals", "p95", "p50", "cost", "tokens", "evals"):
            setattr(self, name, deque(maxlen=self.size))



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
    prev: tuple[int, int, int] = (0, 0, 0)  # the half minute taken last: (start, calls, traces)
    # Rate CUSUMs: half -> [(ts, event_id, status code)] until the watermark passes the half
    pending: dict[int, list] = field(default_factory=dict)
    fed: int = 0  # halves before this were fed to the CUSUMs
    cusums: dict[str, Cusum] = field(default_factory=dict)  # kind -> CUSUM, made on first use

    def take(self, half: int) -> tuple[Window | None, tuple[int, int, int] | None]:
        """Pop the bucket at `half`; also return the traffic of the half minute before it
        (None if not known), for the 90 s traffic test."""
        before = self.prev if self.prev[0] == half - H else None
        win = self.windows.pop(half, None)
        self.prev = (half, *win.traffic(self.by_starts)) if win is not None else (half, 0, 0)
        return win, before


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


