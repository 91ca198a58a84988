"""Self-contained detection driver: events in, findings out (what `backtest` will run).

Feeds every event to a LoopDetector and an AnomalyDetector, in event-time order
by default (ties by event id, so a replay is deterministic), then flushes both.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from llmpulse.processors.anomalies import AnomalyConfig, AnomalyDetector
from llmpulse.processors.loops import LoopConfig, LoopDetector
from llmpulse.schemas.findings import Finding


def event_cost(event: Any) -> float | None:
    """Default cost source: the cost the SDK reported on Output events (pricing may replace it)."""
    return getattr(event, "cost_usd", None)


def run_detectors(
    events: Iterable[Any],
    *,
    cost_fn: Callable[[Any], float | None] = event_cost,
    order: str = "ts",
    loop_config: LoopConfig | None = None,
    anomaly_config: AnomalyConfig | None = None,
    loop_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    anomaly_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    clock: Callable[[], int] | None = None,
    stats: dict[str, Any] | None = None,
) -> list[Finding]:
    """Run loop and anomaly detection over contract events.

    order="ts" sorts by (ts, event_id) like the backtest; order="given" keeps the
    input order (arrival order: exercises allowed lateness). `stats`, if given,
    receives counters (late events dropped, traces expired).
    """
    kw = {"clock": clock} if clock is not None else {}
    loops = LoopDetector(loop_config, loop_overrides, **kw)
    anomalies = AnomalyDetector(anomaly_config, anomaly_overrides, **kw)
    if order == "ts":
        events = sorted(events, key=lambda e: (e.ts, e.event_id))
    elif order != "given":
        raise ValueError(f"order must be 'ts' or 'given', not {order!r}")
    out: list[Finding] = []
    for ev in events:
        cost = cost_fn(ev)
        out += loops.process(ev, cost)
        out += anomalies.process(ev, cost)
    out += loops.flush()
    out += anomalies.flush()
    if stats is not None:
        stats.update(late_dropped=anomalies.late_dropped, expired_traces=loops.expired_traces)
    return out
