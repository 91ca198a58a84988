"""One trace is not a workflow: a single runaway trace does not page as the workflow's
token or cost spike, while a spike of every trace still does."""

from __future__ import annotations

import random

from llmpulse.processors.anomalies import AnomalyDetector
from llmpulse.schemas.contract import Output, Usage

MIN = 60_000
T0 = 1_772_409_600_000


def clock() -> int:
    return 7


def traffic(minutes: int, seed: int, runaway_at: int | None = None, spike=lambda m: 1.0) -> list[Output]:
    """~40 calls/min of one-call traces; a runaway trace makes six calls at 40x the tokens."""
    rng = random.Random(seed)
    out = []
    for m in range(minutes):
        for i in range(max(0, int(rng.gauss(40, 6)))):
            tokens = int(1_000 * spike(m) * rng.lognormvariate(0, 0.3))
            out.append(Output(event_id=f"o-{m}-{i}", ts=T0 + m * MIN + rng.randrange(MIN), trace_id=f"t-{m}-{i}",
                              tenant="acme", workflow="wf", model="m", status="ok", latency_ms=900.0,
                              usage=Usage(input_tokens=tokens, output_tokens=100), cost_usd=tokens * 1e-6))
        if m == runaway_at:
            for j in range(6):
                tokens = 40_000 + rng.randrange(2_000)
                out.append(Output(event_id=f"run-{j}", ts=T0 + m * MIN + 5_000 * j, trace_id="runaway", tenant="acme",
                                  workflow="wf", model="m", status="ok", latency_ms=900.0,
                                  usage=Usage(input_tokens=tokens, output_tokens=100), cost_usd=tokens * 1e-6))
    return out


def run(events: list) -> list:
    det = AnomalyDetector(clock=clock)
    out = []
    for e in sorted(events, key=lambda e: (e.ts, e.event_id)):
        out += det.process(e, e.cost_usd)
    return [f for f in out + det.flush() if f.status == "open"]


def test_one_runaway_trace_does_not_page_as_a_token_spike():
    for seed in range(3):
        assert run(traffic(100, seed, runaway_at=70)) == []


def test_a_spike_of_every_trace_still_pages():
    found = run(traffic(100, 1, spike=lambda m: 3.0 if 70 <= m < 80 else 1.0))
    assert [f.kind for f in found] == ["token_spike"]
    assert T0 + 70 * MIN < found[0].event_ts <= T0 + 72 * MIN
