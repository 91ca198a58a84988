"""Finding lifecycle: a condition opens one finding (id from kind, scope and the opening
window), stays open without repeats, and emits one `resolved` row after `clear_windows`
consecutive normal windows; a condition that lasts `max_open_windows` is accepted as the
new normal (resolved, baseline relearned). Mixed into the detector."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import msgspec

from llmpulse.processors.anomalies.config import W, AnomalyConfig
from llmpulse.processors.anomalies.verdicts import Verdict
from llmpulse.processors.anomalies.windows import Condition, History
from llmpulse.schemas.findings import Finding, finding_id

if TYPE_CHECKING:
    from llmpulse.processors.anomalies.changes import ChangeTracker

# Spikes a recent change explains: reported once as regression_after_change.
CHANGE_COVERED = frozenset({"error_rate_spike", "refusal_spike", "latency_regression", "cost_spike", "token_spike", "eval_regression"})


class Lifecycle:
    _clock: Callable[[], int]
    _attribute: Callable[..., "list[Finding] | None"]

    def _lifecycle(self, conds: dict, kind: str, v: Verdict, scope: dict, minute: int, cfg: AnomalyConfig,
                   tracker: ChangeTracker | None, history: History) -> list[Finding]:
        end = minute + W
        cond = conds.get(kind)
        if v.state == "anomalous":
            if cond is None:
                if tracker is not None and kind in CHANGE_COVERED:
                    attributed = self._attribute(tracker, kind, v, scope, minute, end)
                    if attributed is not None:
                        conds[kind] = Condition(None)  # the change finding speaks for it
                        return attributed
                f = self._open(kind, v, scope, minute)
                conds[kind] = Condition(f)
                return [f]
            cond.clear_streak = 0
            cond.windows += 1
            if cond.windows >= cfg.max_open_windows:  # a lasting shift: accept it, relearn
                history.reset()
                del conds[kind]
                return self._resolved(cond.finding, end, "baseline relearned after a lasting shift")
        elif v.state == "elevated" and cond is not None:
            cond.clear_streak = 0  # hysteresis: clearing needs the value back near its baseline
        elif v.state == "normal" and cond is not None:
            cond.clear_streak += 1
            if cond.clear_streak >= cfg.clear_windows:
                del conds[kind]
                return self._resolved(cond.finding, end, "cleared")
        return []

    def _open(self, kind: str, v: Verdict, scope: dict, minute: int) -> Finding:
        evidence = {**v.evidence, "window_start": minute, "window_end": minute + W}
        if "eval_name" in scope:
            evidence["eval_name"] = scope["eval_name"]
        return Finding(
            finding_id=finding_id(kind, scope["tenant"], scope["workflow"], scope["model"], scope.get("eval_name", ""), minute),
            detected_at=self._clock(),
            event_ts=minute + W,
            kind=kind,
            severity=v.severity,  # type: ignore[arg-type]
            tenant=scope["tenant"],
            workflow=scope["workflow"],
            model=scope["model"],
            title=title(kind, v, scope),
            value=float(v.value),
            threshold=float(v.threshold),
            evidence=evidence,
        )

    def _resolved(self, f: Finding | None, end: int, reason: str) -> list[Finding]:
        if f is None:
            return []
        ev = {**f.evidence, "resolved_reason": reason, "resolved_at_window_end": end}
        return [msgspec.structs.replace(f, status="resolved", event_ts=end, detected_at=self._clock(), evidence=ev)]

    def _drop_conditions(self, conds: dict, end: int, reason: str) -> list[Finding]:
        out: list[Finding] = []
        for c in conds.values():
            out += self._resolved(c.finding, end, reason)
        conds.clear()
        return out



def title(kind: str, v: Verdict, scope: dict) -> str:
    where = "/".join(x for x in (scope["tenant"], scope["workflow"], scope["model"] or scope.get("eval_name", "")) if x)
    if kind == "traffic_drop":
        return f"Traffic dropped to {v.value:.0f}/min from ~{v.baseline:.0f}/min on {where}"
    if kind in ("error_rate_spike", "refusal_spike", "eval_regression"):
        name = {"error_rate_spike": "Error rate", "refusal_spike": "Refusal rate", "eval_regression": "Eval pass rate"}[kind]
        return f"{name} {v.value:.1%} vs baseline {v.baseline:.1%} on {where}"
    name = {"latency_regression": "p95 latency", "cost_spike": "Cost per call", "token_spike": "Tokens per call"}[kind]
    return f"{name} {v.value / v.baseline:.1f}x baseline on {where}" if v.baseline else f"{name} up on {where}"
