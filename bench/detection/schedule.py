"""Where the labelled incidents go: a per-workflow timeline with room around each one.

Every anomaly incident and change needs clean traffic around it: the 35 minutes
before (baselines, the "before" side of a change) and 40 after (resolution). A
warm-up and a long quiet stretch get no incident at all.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from bench.detection.world import BENIGN_SWAPS, COSTLY_SWAPS, Workflow, cost_usd, diurnal

MIN = 60_000
PAD_BEFORE = 35 * MIN
PAD_AFTER = 40 * MIN

ANOMALY_KINDS = ("error_rate_spike", "refusal_spike", "latency_regression", "cost_spike", "token_spike", "traffic_drop")
# Calls/min the key needs during the incident for a one-minute window to carry evidence.
MIN_RATE = {"traffic_drop": 45.0, "default": 35.0}
# New traces/min for a one-minute window to show a traffic drop (see DETECTORS.md).
MIN_TRACES_FOR_DROP = 30.0
MIN_EVALS_PER_MIN = 25.0
# An eval drop is labelled only where two minutes of evals can show it (see eval_drop_visible).
EVAL_EVIDENCE_NATS = 14.0
EVAL_EVIDENCE_Z = 2.0
MIN_CHANGE_RATE = 50.0


@dataclass
class Incident:
    kind: str
    tenant: str
    workflow: str
    model: str
    start: int
    end: int
    params: dict[str, Any] = field(default_factory=dict)

    def label(self) -> dict[str, Any]:
        out = {"kind": self.kind, "tenant": self.tenant, "workflow": self.workflow, "model": self.model,
               "start_ts": self.start, "end_ts": self.end}
        out.update({k: v for k, v in self.params.items() if k in ("eval_name", "change_event_id", "magnitude", "effect")})
        return out


@dataclass
class Change:
    """A deploy marker; `effect` empty means benign. A swap is rolled back at `until`."""

    tenant: str
    workflow: str
    ts: int
    change_kind: str
    from_value: str = ""
    to_value: str = ""
    until: int = 0  # rollback time (0: none)
    effect: str = ""
    magnitude: float = 0.0


class Timeline:
    def __init__(self, start: int, end: int, quiet: list[tuple[int, int]]) -> None:
        self.start, self.end, self.quiet = start, end, quiet
        self.busy: dict[tuple[str, str], list[tuple[int, int]]] = {}

    def free(self, wf: Workflow, s: int, e: int) -> bool:
        lo, hi = s - PAD_BEFORE, e + PAD_AFTER
        if lo < self.start or hi > self.end:
            return False
        if any(q0 < hi and lo < q1 for q0, q1 in self.quiet):
            return False
        return all(not (b0 < hi and lo < b1) for b0, b1 in self.busy.get((wf.tenant, wf.name), []))

    def take(self, wf: Workflow, s: int, e: int) -> None:
        self.busy.setdefault((wf.tenant, wf.name), []).append((s - PAD_BEFORE, e + PAD_AFTER))


def _min_factor(wf: Workflow, s: int, e: int, amplitude: float) -> float:
    return min(diurnal(wf.tenant, t, amplitude) for t in range(s, e + 1, 5 * MIN))


def schedule(rng: random.Random, fleet: list[Workflow], tl: Timeline, p: Any) -> tuple[list[Incident], list[Change]]:
    incidents: list[Incident] = []
    changes: list[Change] = []
    jobs = [("change_bad", i) for i in range(p.changes_bad)] + [("change_benign", i) for i in range(p.changes_benign)]
    jobs += [(k, i) for k in (*ANOMALY_KINDS, "eval_regression") for i in range(p.incidents_per_kind)]
    rng.shuffle(jobs)
    jobs.sort(key=lambda j: j[0] != "change_bad")  # the pickiest first
    for job, _ in jobs:
        for _attempt in range(2000):
            wf = rng.choice(fleet)
            dur = rng.randint(p.incident_min_minutes, p.incident_max_minutes) * MIN
            s = rng.randrange(tl.start, tl.end - dur)
            e = s + dur
            if not tl.free(wf, s, e):
                continue
            f = _min_factor(wf, s, e, p.diurnal_amplitude)
            if job.startswith("change"):
                if wf.rate * f < MIN_CHANGE_RATE:
                    continue
                ch = _make_change(rng, wf, s, e, job == "change_bad", f)
                if ch is None:
                    continue
                changes.append(ch)
                if ch.effect:
                    incidents.append(Incident("regression_after_change", wf.tenant, wf.name, "", s, e,
                                              {"effect": ch.effect, "magnitude": ch.magnitude}))
                    incidents[-1].params["change"] = ch
            elif job == "eval_regression":
                evals_per_min = _evals_per_min(wf, f)
                if not wf.evals or evals_per_min < MIN_EVALS_PER_MIN:
                    continue
                name = rng.choice(wf.evals)
                drop = rng.uniform(0.3, 0.5)
                if not eval_drop_visible(evals_per_min, wf.eval_pass, drop):
                    continue
                incidents.append(Incident(job, wf.tenant, wf.name, "", s, e,
                                          {"eval_name": name, "magnitude": round(drop, 3)}))
            else:
                model, share = wf.models[0]
                if wf.rate * share * f < MIN_RATE.get(job, MIN_RATE["default"]):
                    continue
                if job == "traffic_drop" and wf.rate * share * f / wf.mean_steps < MIN_TRACES_FOR_DROP:
                    continue  # an agent's few long traces need several minutes to show a drop
                if job == "cost_spike" and wf.cache_share < 0.6 and rng.random() < 0.5:
                    continue  # prefer cache-heavy keys, where a cache break is the usual cause
                incidents.append(Incident(job, wf.tenant, wf.name, model, s, e, {"magnitude": _magnitude(rng, job)}))
            tl.take(wf, s, e)
            break
        else:
            print(f"warning: no room for a {job} incident; lengthen --hours or lower the counts")
    incidents.sort(key=lambda i: i.start)
    changes.sort(key=lambda c: c.ts)
    return incidents, changes


def _magnitude(rng: random.Random, kind: str) -> float:
    return round({
        "error_rate_spike": lambda: rng.uniform(0.25, 0.6),  # error probability during the incident
        "refusal_spike": lambda: rng.uniform(0.2, 0.5),
        "latency_regression": lambda: rng.uniform(2.0, 4.0),  # latency multiplier
        "cost_spike": lambda: rng.uniform(2.0, 4.0),  # cost multiplier, tokens unchanged
        "token_spike": lambda: rng.uniform(3.0, 6.0),  # input tokens multiplier
        "traffic_drop": lambda: rng.uniform(0.0, 0.15),  # share of traffic left
    }[kind](), 3)


def _make_change(rng: random.Random, wf: Workflow, s: int, e: int, bad: bool, f: float) -> Change | None:
    primary = wf.models[0][0]
    if not bad:
        kind = rng.choice(["prompt_edit", "config", "model_swap"])
        if kind == "model_swap" and primary in BENIGN_SWAPS and _swap_cost_ratio(wf, primary, BENIGN_SWAPS[primary]) <= 1.1:
            return Change(wf.tenant, wf.name, s, kind, primary, BENIGN_SWAPS[primary], until=e)
        return Change(wf.tenant, wf.name, s, "prompt_edit" if kind == "model_swap" else kind)
    effects = ["costly_swap", "error_prompt", "refusal_prompt", "latency_prompt"]
    if wf.evals and wf.rate * f * wf.eval_sample >= MIN_EVALS_PER_MIN:
        effects.append("eval_prompt")
    effect = rng.choice(effects)
    if effect == "costly_swap":
        if primary not in COSTLY_SWAPS:
            return None
        return Change(wf.tenant, wf.name, s, "model_swap", primary, COSTLY_SWAPS[primary], until=e, effect=effect)
    magnitude = {"error_prompt": rng.uniform(0.15, 0.4), "refusal_prompt": rng.uniform(0.15, 0.4),
                 "latency_prompt": rng.uniform(1.8, 3.0), "eval_prompt": rng.uniform(0.3, 0.5)}[effect]
    if effect == "eval_prompt" and not eval_drop_visible(_evals_per_min(wf, f), wf.eval_pass, magnitude):
        return None
    return Change(wf.tenant, wf.name, s, "prompt_edit", until=e, effect=effect, magnitude=round(magnitude, 3))


def _evals_per_min(wf: Workflow, volume_factor: float) -> float:
    """Evals a minute at the lowest volume of a stretch (only ok calls, ~95 %, are judged)."""
    return wf.rate * volume_factor * wf.eval_sample * 0.95


def _swap_cost_ratio(wf: Workflow, old: str, new: str) -> float:
    """Cost per call after / before a model swap, on the workflow's own token mix: gpt-4.1 ->
    gpt-4o costs 1.25x on fresh input but 1.7x on a cache-heavy RAG key (cached input 2.5x)."""
    cached = int(wf.in_tokens * wf.cache_share)
    def cost(m: str) -> float:
        return cost_usd(m, int(wf.in_tokens), cached, int(wf.out_tokens))
    return cost(new) / cost(old)


def eval_drop_visible(evals_per_min: float, base: float, drop: float, seconds: float = 120.0) -> bool:
    """Can any test see this pass-rate drop within `seconds` without paging on stable streams?

    The most a test can learn per eval is the log-likelihood ratio of the true dropped rate
    against the base (it would have to know the drop). Over the window's evals that sum is
    roughly normal; the drop counts as visible when its mean less EVAL_EVIDENCE_Z standard
    deviations reaches EVAL_EVIDENCE_NATS, the evidence a stream needs to page less than once
    per ~e^14 stable evals. At 30 evals/min a 0.3 drop from 0.9 is not visible in 2 minutes
    (a sequential test is late on ~1 in 5); bench/detection/eval_envelope.py prints the table."""
    p = max(0.02, base - drop)
    fail, ok = math.log((1 - p) / (1 - base)), math.log(p / base)
    mean = (1 - p) * fail + p * ok
    sd = math.sqrt(p * (1 - p)) * (fail - ok)
    n = evals_per_min * seconds / 60
    return n * mean - EVAL_EVIDENCE_Z * sd * math.sqrt(n) >= EVAL_EVIDENCE_NATS
