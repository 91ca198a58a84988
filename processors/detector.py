"""The one interface every detector stage implements (loops, anomalies, budgets, contracts).

The pipeline drives each the same way, with no optional methods probed by name:

    findings = det.process(event, cost_usd)   # one valid event, its cost (pipeline.detector_cost)
    findings = det.advance(watermark_ms)      # event time reached the watermark, events or not:
                                              # timers (silent keys, idle traces) fire here
    findings = det.flush()                    # end of a replay's input: settle what is held
    det.stats()                               # counters for /stats and benches (late drops, state size)

A detector with nothing timed returns [] from `advance` and `flush`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from llmpulse.schemas.contract import BaseEvent
from llmpulse.schemas.findings import Finding


@runtime_checkable
class Detector(Protocol):
    def process(self, event: BaseEvent, cost_usd: float | None) -> list[Finding]: ...

    def advance(self, watermark_ms: int) -> list[Finding]: ...

    def flush(self) -> list[Finding]: ...

    def stats(self) -> dict[str, int]: ...
