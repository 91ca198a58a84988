"""A stress matrix for the detectors: traffic shaped by parameters nobody tuned on.

    python -m bench.detection.stress --seed 101 --out /tmp/stress101
    python -m bench.detection.stress --seed 104 --quiet-day --out /tmp/quiet104
    python -m bench.detection.score /tmp/stress101 /tmp/quiet104 --check

Each axis is a parameter (see `StressParams`): per-key volume bands (calls/min of one
tenant/workflow/model), Poisson or bursty arrivals (bursts of several calls within
seconds, same mean), workflows with several models, keys that first appear mid-day,
incidents per kind and band (error/refusal rate spikes, latency regressions, token and
cost spikes, partial traffic drops), outages to zero of a model, a whole workflow or a
whole tenant, incidents that begin before, at or after a `change` on their workflow,
single runaway traces (several calls at ~40x tokens) on otherwise normal keys, and quiet
days with no incident at all (false pages per 100 key-days).

`events.jsonl` holds v1 contract events in arrival order (generate.arrival_order: jitter,
a few late, fewer very late); `labels.json` holds labels in score.py's shape, each with
the `band` and nominal `rate` of its scope and `rate_at` (expected calls/min at its start,
diurnal included), the key table, the quiet key-days and the settings to score with (the
contracts stage on, with a token limit per trace that only a runaway crosses).

Labels: an outage is a `traffic_drop` whose scope is a model, a workflow (model "") or a
tenant (workflow "") and must page once. An incident near a change also names the change
(`change_ref`, `overlap`); from `at` on, a `regression_after_change` for that change that
names the metric counts as its finding (`or_change`). A runaway trace is a
`runaway_tokens` label on its trace only: a workflow anomaly for it is a false page.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


from bench.detection.generate import WORDS, _poisson, arrival_order, parse_params, write_day
from bench.detection.world import MODELS, cost_usd
from llmpulse.schemas.contract import Change, Message, Output, Prompt, Usage

MIN = 60_000
DAY = 86_400_000
RATE_KINDS = ("error_rate_spike", "refusal_spike")
SPIKE_KINDS = (*RATE_KINDS, "latency_regression", "token_spike", "cost_spike", "traffic_drop")
# A workflow's token limit per trace, in its typical input tokens per call: a normal trace (<= 4
# calls, ~8 with retries, at most 6x tokens in a token spike: mean <= ~50x) stays under it and a
# runaway (6 calls at 40x: ~240x) passes it.
RUNAWAY_LIMIT_X = 150
STAGES = ["contracts", "loops", "anomalies"]


@dataclass
class StressParams:
    seed: int = 101
    hours: float = 10.0  # a day of ~0.8M events: several backtest in a few minutes
    start: str = "2026-11-26T00:00:00+00:00"  # recent: the backtest scores with no age bound anyway
    bands: str = "1,3,10,30,100,300"  # calls/min of one key at diurnal factor 1
    keys_per_band: str = "6,6,6,4,2,1"
    tenants: int = 4
    multi_model_share: float = 0.5  # share of workflows with 2-3 models (keys of any band)
    agent_share: float = 0.25  # workflows whose traces make 2-4 calls
    bursty_share: float = 0.4  # keys whose calls come in bursts
    burst_size: float = 3.0  # mean calls per burst (geometric), within a few seconds
    midday_keys: int = 3  # keys whose first call is between 25 % and 60 % of the day
    diurnal_amplitude: float = 0.2
    volume_noise: float = 0.1  # per-minute lognormal sigma on volume
    rate_noise: float = 0.3  # per-minute lognormal sigma on error/refusal probability
    latency_noise: float = 0.08
    warmup_minutes: int = 60  # no incident before a key has this much history
    quiet_hours: float = 0.0  # a stretch of an incident day with nothing scheduled on any key
    quiet_day: bool = False  # no incidents, outages, overlaps or runaways at all
    incidents_per_cell: int = 1  # incidents per kind and band
    incident_minutes: str = "8,16"
    error_to: str = "0.15,0.35"  # error probability during a spike (baseline 0.5-2 %)
    refusal_to: str = "0.12,0.3"  # refusal probability (baseline 0.2-1 %)
    latency_x: str = "2.5,4.0"
    token_x: str = "3.0,6.0"  # input tokens multiplier (a prompt grew)
    cost_x: str = "2.0,4.0"  # cost multiplier, tokens unchanged
    drop_left: str = "0.0,0.15"  # share of traffic left in a traffic_drop
    outages_model: int = 3
    outages_workflow: int = 2
    outages_tenant: int = 1
    outage_minutes: str = "10,18"
    change_overlaps: int = 6  # incidents before / at / after a change, in turn
    changes_benign: int = 4
    runaways: int = 4
    runaway_calls: int = 6
    runaway_x: float = 40.0
    pad_before_minutes: int = 30  # clean traffic before each incident (baselines)
    pad_after_minutes: int = 25  # and after (resolution); the rest of a key's time is quiet
    late_share: float = 0.02
    very_late_share: float = 0.001


def _pair(s: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in s.split(","))
    return lo, hi


def band_of(rate: float, bands: list[float]) -> float:
    """The largest band at or below `rate` (the smallest band for less)."""
    below = [b for b in bands if b <= rate * 1.0001]
    return max(below) if below else min(bands)


@dataclass
class Key:
    tenant: str
    workflow: str
    model: str
    rate: float  # calls/min at diurnal factor 1
    band: float
    bursty: bool
    appear_ts: int
    steps: tuple[int, int]
    error_p: float
    refusal_p: float
    in_tokens: float
    out_tokens: float
    cache_share: float

    @property
    def scope(self) -> tuple[str, str, str]:
        return self.tenant, self.workflow, self.model

    @property
    def traces_per_min(self) -> float:
        return self.rate / ((self.steps[0] + self.steps[1]) / 2)


@dataclass
class Effect:
    """One scheduled change in behaviour of a set of keys over [start, end)."""

    kind: str
    keys: list[Key]
    start: int
    end: int
    value: float


class Stress:
    def __init__(self, p: StressParams) -> None:
        self.p = p
        self.rng = random.Random(p.seed)
        self.t0 = int(datetime.fromisoformat(p.start).astimezone(timezone.utc).timestamp() * 1000)
        self.t1 = self.t0 + int(p.hours * 3_600_000)
        self.bands = [float(b) for b in p.bands.split(",")]
        self.events: list[Any] = []
        self.n_ev = self.n_tr = 0
        self.noise: dict[tuple[str, str, str, int], tuple[float, float, float]] = {}
        self.effects: dict[tuple[str, str, str], list[Effect]] = {}
        self.busy: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
        self.phase = {f"t{i}": self.rng.uniform(0, 24) for i in range(p.tenants)}
        self.keys = self.build_keys()

    # ------------------------------------------------------------------ fleet

    def build_keys(self) -> list[Key]:
        p, rng = self.p, self.rng
        rates = [b for b, n in zip(self.bands, (int(x) for x in p.keys_per_band.split(","))) for _ in range(n)]
        rng.shuffle(rates)
        keys: list[Key] = []
        models = sorted(MODELS)
        w = 0
        while rates:
            n = rng.choice([2, 3]) if rng.random() < p.multi_model_share else 1
            group, rates = rates[:n], rates[n:]
            tenant = f"t{w % p.tenants}"
            name = f"wf{w}"
            steps = (2, 4) if rng.random() < p.agent_share else (1, 1)
            in_tok = rng.choice([800, 1500, 3000, 6000])
            out_tok = rng.choice([120, 250, 400])
            cache = rng.choice([0.0, 0.3, 0.7])
            for m, rate in zip(rng.sample(models, len(group)), group):
                keys.append(Key(tenant, name, m, rate, band_of(rate, self.bands), rng.random() < p.bursty_share,
                                self.t0, steps, rng.uniform(0.005, 0.02), rng.uniform(0.002, 0.01),
                                in_tok, out_tok, cache))
            w += 1
        common = [k for k in keys if sum(x.band == k.band for x in keys) > 1]  # a band's only key stays all day
        for k in rng.sample(common, min(p.midday_keys, len(common))):
            k.appear_ts = (self.t0 + int((self.t1 - self.t0) * rng.uniform(0.25, 0.6))) // MIN * MIN
        return keys

    def diurnal(self, tenant: str, ts: int) -> float:
        hours = (ts / 3_600_000 + self.phase[tenant]) % 24
        return 1.0 + self.p.diurnal_amplitude * math.sin(2 * math.pi * (hours - 9) / 24)

    def scope_keys(self, tenant: str, workflow: str = "", model: str = "") -> list[Key]:
        return [k for k in self.keys if k.tenant == tenant and (not workflow or k.workflow == workflow)
                and (not model or k.model == model)]

    # ------------------------------------------------------------- schedule

    def free(self, keys: list[Key], s: int, e: int) -> bool:
        lo = s - self.p.pad_before_minutes * MIN
        hi = e + self.p.pad_after_minutes * MIN
        if hi > self.t1 or any(lo < k.appear_ts + self.p.warmup_minutes * MIN for k in keys):
            return False
        if any(q0 < hi and lo < q1 for q0, q1 in self.quiet):
            return False
        return all(not (b0 < hi and lo < b1) for k in keys for b0, b1 in self.busy.get(k.scope, []))

    def take(self, keys: list[Key], s: int, e: int) -> None:
        for k in keys:
            self.busy.setdefault(k.scope, []).append((s - self.p.pad_before_minutes * MIN,
                                                      e + self.p.pad_after_minutes * MIN))

    def slot(self, keys_for: Any, length: tuple[float, float] | int) -> tuple[list[Key], int, int] | None:
        """A random free span (minutes drawn from `length`, or `length` ms) for the keys `keys_for()` picks."""
        rng = self.rng
        for _ in range(3000):
            keys = keys_for()
            dur = length if isinstance(length, int) else int(rng.uniform(*length) * MIN)
            s = rng.randrange(self.t0, max(self.t0 + 1, self.t1 - dur)) // 1000 * 1000
            if self.free(keys, s, s + dur):
                return keys, s, s + dur
        return None

    def label(self, kind: str, keys: list[Key], scope: str, s: int, e: int, **extra: Any) -> dict[str, Any]:
        k = keys[0]
        rate = sum(x.rate for x in keys)
        rate_at = sum(x.rate * self.diurnal(x.tenant, s) for x in keys)
        out = {"kind": kind, "tenant": k.tenant, "workflow": k.workflow if scope != "tenant" else "",
               "model": k.model if scope == "model" else "", "start_ts": s, "end_ts": e, "scope": scope,
               "band": band_of(rate, self.bands), "rate": rate, "rate_at": round(rate_at, 2)}
        out.update(extra)
        return out

    def schedule(self) -> tuple[list[dict[str, Any]], list[tuple[int, Key, str, str]]]:
        """Labels, and the change events to emit as (ts, key, change_kind, description)."""
        p, rng = self.p, self.rng
        labels: list[dict[str, Any]] = []
        changes: list[tuple[int, Key, str, str]] = []
        if p.quiet_day:
            return labels, changes
        inc_min = _pair(p.incident_minutes)
        # The widest scopes first, then the spikes of the scarcest bands (fewest keys, most calls).
        jobs: list[tuple[str, Any]] = [("outage", "tenant")] * p.outages_tenant
        jobs += [("outage", "workflow")] * p.outages_workflow
        jobs += [(kind, band) for band in sorted(self.bands, reverse=True) for kind in SPIKE_KINDS
                 for _ in range(p.incidents_per_cell)]
        jobs += [("overlap", ("before", "at", "after")[i % 3]) for i in range(p.change_overlaps)]
        jobs += [("outage", "model")] * p.outages_model + [("benign", None)] * p.changes_benign
        jobs += [("runaway", None)] * p.runaways
        for job, arg in jobs:
            got = self.schedule_one(job, arg, inc_min, labels, changes)
            if not got:
                self.unscheduled.append(f"{job} {arg or ''}".strip())
                print(f"warning: no room for {job} {arg or ''}; lengthen --hours or lower the counts")
        labels.sort(key=lambda lab: lab["start_ts"])
        return labels, changes

    def schedule_one(self, job: str, arg: Any, inc_min: tuple[float, float], labels: list, changes: list) -> bool:
        p, rng = self.p, self.rng
        busy_keys = [k for k in self.keys if k.rate >= 3]
        if job == "outage":
            tenants = sorted({k.tenant for k in self.keys})
            workflows = sorted({(k.tenant, k.workflow) for k in self.keys})
            pick = {"tenant": lambda: self.scope_keys(rng.choice(tenants)),
                    "workflow": lambda: self.scope_keys(*rng.choice(workflows)),
                    "model": lambda: [rng.choice(busy_keys)]}[arg]
            got = self.slot(pick, _pair(p.outage_minutes))
            if got is None:
                return False
            keys, s, e = got
            self.take(keys, s, e)
            self.add_effect("traffic_drop", keys, s, e, 0.0)
            labels.append(self.label("traffic_drop", keys, arg, s, e, magnitude=0.0, outage=True))
            return True
        if job in ("overlap", "benign"):
            # The change at c, the incident at c + off; clean traffic before both (the "before" side).
            dur = int(rng.uniform(*inc_min) * MIN) if job == "overlap" else 15 * MIN
            off = {"before": -rng.uniform(3, 8), "at": rng.uniform(0, 0.5), "after": rng.uniform(5, 20),
                   None: 0.0}[arg]
            off_ms = int(off * MIN)
            lo, hi = min(0, off_ms), max(0, off_ms) + dur
            wf10 = [k for k in self.keys if k.rate >= 10]
            got = self.slot(lambda: self.scope_keys(*rng.choice(wf10).scope[:2]), hi - lo)  # the whole workflow
            if got is None:
                return False
            wkeys, s0, e0 = got
            self.take(wkeys, s0, e0)
            ch_ts = s0 - lo
            key = rng.choice([k for k in wkeys if k.rate >= 10])
            if job == "benign":
                changes.append((ch_ts, key, rng.choice(("prompt_edit", "config")), "benign"))
                return True
            start, end = ch_ts + off_ms, ch_ts + off_ms + dur
            kind = rng.choice(("error_rate_spike", "refusal_spike", "latency_regression"))
            changes.append((ch_ts, key, "prompt_edit", f"incident {arg}"))
            value, extra = self.magnitude(kind, key)
            self.add_effect(kind, [key], start, end, value)
            labels.append(self.label(kind, [key], "model", start, end, overlap=arg, or_change=arg != "before",
                                     change_ts=ch_ts, **extra))
            labels[-1]["_change"] = len(changes) - 1
            return True
        if job == "runaway":
            got = self.slot(lambda: [rng.choice(busy_keys)], (3, 5))
            if got is None:
                return False
            keys, s, e = got
            self.take(keys, s, e)
            self.runaway_at.append((s, keys[0]))
            labels.append(self.label("runaway_tokens", keys, "model", s, e, magnitude=p.runaway_x,
                                     calls=p.runaway_calls))
            return True
        band_keys = [k for k in self.keys if k.band == arg]
        if not band_keys:
            return True
        got = self.slot(lambda: [rng.choice(band_keys)], inc_min)
        if got is None:
            return False
        keys, s, e = got
        self.take(keys, s, e)
        value, extra = self.magnitude(job, keys[0])
        self.add_effect(job, keys, s, e, value)
        labels.append(self.label(job, keys, "model", s, e, **extra))
        return True

    def magnitude(self, kind: str, key: Key) -> tuple[float, dict[str, Any]]:
        p, rng = self.p, self.rng
        if kind in RATE_KINDS:
            base = key.error_p if kind == "error_rate_spike" else key.refusal_p
            to = rng.uniform(*_pair(p.error_to if kind == "error_rate_spike" else p.refusal_to))
            return to, {"magnitude": round(to, 4), "baseline": round(base, 4), "ratio": round(to / base, 2)}
        rng_s = {"latency_regression": p.latency_x, "token_spike": p.token_x, "cost_spike": p.cost_x,
                 "traffic_drop": p.drop_left}[kind]
        v = rng.uniform(*_pair(rng_s))
        return v, {"magnitude": round(v, 3)}

    def add_effect(self, kind: str, keys: list[Key], s: int, e: int, value: float) -> None:
        for k in keys:
            self.effects.setdefault(k.scope, []).append(Effect(kind, [k], s, e, value))

    # --------------------------------------------------------------- traffic

    def eid(self) -> str:
        self.n_ev += 1
        return f"s{self.p.seed:x}-{self.n_ev:09d}"

    def tid(self) -> str:
        self.n_tr += 1
        return f"st{self.p.seed:x}-{self.n_tr:08d}"

    def minute_noise(self, k: Key, ts: int) -> tuple[float, float, float]:
        key = (*k.scope, ts // MIN)
        n = self.noise.get(key)
        if n is None:
            g = self.rng.gauss
            n = self.noise[key] = (math.exp(g(0, self.p.volume_noise)), math.exp(g(0, self.p.rate_noise)),
                                   math.exp(g(0, self.p.latency_noise)))
        return n

    def active(self, k: Key, ts: int) -> dict[str, float]:
        return {e.kind: e.value for e in self.effects.get(k.scope, ()) if e.start <= ts < e.end}

    def base(self, k: Key, trace: str, ts: int) -> dict[str, Any]:
        return {"event_id": self.eid(), "ts": ts, "trace_id": trace, "tenant": k.tenant, "workflow": k.workflow,
                "app": f"{k.tenant}-app", "environment": "prod", "model": k.model,
                "provider": "anthropic" if k.model.startswith("claude") else "openai"}

    def call(self, k: Key, trace: str, ts: int, msgs: list[Message], tokens_x: float = 1.0) -> tuple[int, str]:
        rng = self.rng
        self.events.append(Prompt(**self.base(k, trace, ts), messages=msgs))
        _, rate_n, lat_n = self.minute_noise(k, ts)
        eff = self.active(k, ts)
        error_p = eff.get("error_rate_spike", k.error_p * rate_n)
        refusal_p = eff.get("refusal_spike", k.refusal_p * rate_n)
        r = rng.random()
        status = "ok"
        if tokens_x == 1.0 and r < error_p:
            status = "timeout" if rng.random() < 0.25 else "error"
        elif tokens_x == 1.0 and r < error_p + refusal_p:
            status = "refusal"
        spec = MODELS[k.model]
        in_tok = int(k.in_tokens * tokens_x * eff.get("token_spike", 1.0) * math.exp(rng.gauss(0, 0.35)))
        out_tok = int(k.out_tokens * math.exp(rng.gauss(0, 0.45))) + 5
        usage, cost = None, None
        if status == "error":
            latency = rng.uniform(200, 2500)
        elif status == "timeout":
            latency = rng.uniform(30_000, 60_000)
        else:
            if status == "refusal":
                out_tok = rng.randint(15, 60)
            cached = int(in_tok * k.cache_share * rng.uniform(0.9, 1.0))
            ttft = spec["ttft"] * math.exp(rng.gauss(0, 0.2)) + in_tok * 0.04
            latency = (ttft + out_tok * spec["per_out"]) * lat_n * eff.get("latency_regression", 1.0)
            latency *= math.exp(rng.gauss(0, 0.15))
            cost = round(cost_usd(k.model, in_tok, cached, out_tok) * eff.get("cost_spike", 1.0), 8)
            usage = Usage(input_tokens=in_tok, output_tokens=out_tok, cache_read_tokens=cached)
        out_ts = ts + int(latency)
        self.events.append(Output(
            **self.base(k, trace, out_ts), status=status, latency_ms=round(latency, 1),
            finish_reason={"ok": "stop", "refusal": "content_filter"}.get(status, ""),
            error_type={"error": rng.choice(["rate_limit", "server_error"]), "timeout": "timeout"}.get(status, ""),
            usage=usage, cost_usd=cost))
        return out_ts, status

    def msgs(self, k: Key, step: int) -> list[Message]:
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(6, 12)))
        return [Message("system", f"You are the {k.workflow} assistant of {k.tenant}."),
                Message("user", f"step {step}: {words}")]

    def trace(self, k: Key, ts: int, tokens_x: float = 1.0, calls: int = 0) -> None:
        rng = self.rng
        tr = self.tid()
        for step in range(calls or rng.randint(*k.steps)):
            msgs = self.msgs(k, step)
            out_ts, status = self.call(k, tr, ts, msgs, tokens_x)
            if status in ("error", "timeout"):  # one retry of the same prompt
                out_ts, status = self.call(k, tr, out_ts + rng.randint(200, 2000), msgs)
            if status != "ok":
                return
            ts = out_ts + rng.randint(100, 1500)

    def starts(self, k: Key, minute: int) -> list[int]:
        """Trace start times in this minute: Poisson, or Poisson bursts of geometric size."""
        rng = self.rng
        lam = k.traces_per_min * self.diurnal(k.tenant, minute) * self.minute_noise(k, minute)[0]
        if not k.bursty:
            return [minute + rng.randrange(MIN) for _ in range(_poisson(rng, lam))]
        out = []
        for _ in range(_poisson(rng, lam / self.p.burst_size)):
            at = minute + rng.randrange(MIN)
            n = 1
            while rng.random() > 1 / self.p.burst_size:
                n += 1
            out += [at + rng.randrange(5_000) for _ in range(n)]
        return out

    def run(self) -> dict[str, Any]:
        p, rng = self.p, self.rng
        warm_end = self.t0 + p.warmup_minutes * MIN
        if p.quiet_day:
            self.quiet = [(self.t0, self.t1)]
        else:
            q_len = int(p.quiet_hours * 3_600_000)
            q0 = rng.randrange(warm_end, max(warm_end + 1, self.t1 - q_len)) // MIN * MIN
            self.quiet = [(q0, q0 + q_len)] if q_len else []
        self.runaway_at: list[tuple[int, Key]] = []
        self.unscheduled: list[str] = []
        labels, changes = self.schedule()
        change_ids = []
        for ts, k, kind, desc in changes:
            change_ids.append(self.eid())
            self.events.append(Change(event_id=change_ids[-1], ts=ts, tenant=k.tenant, workflow=k.workflow,
                                      trace_id=f"deploy-{change_ids[-1]}", change_kind=kind,
                                      description=f"{kind} on {k.workflow} ({desc})", actor="deploy-bot"))
        for lab in labels:
            if "_change" in lab:
                lab["change_ref"] = change_ids[lab.pop("_change")]
        runaways = sorted(self.runaway_at, key=lambda r: r[0])
        ri = 0
        for minute in range(self.t0, self.t1, MIN):
            for k in self.keys:
                if minute < k.appear_ts:
                    continue
                for ts in self.starts(k, minute):
                    left = self.active(k, ts).get("traffic_drop")
                    if left is not None and rng.random() >= left:
                        continue
                    self.trace(k, ts)
            while ri < len(runaways) and runaways[ri][0] < minute + MIN:
                ts, k = runaways[ri]
                n_before = self.n_tr
                self.trace(k, ts, tokens_x=p.runaway_x, calls=p.runaway_calls)
                lab = next(lb for lb in labels if lb["kind"] == "runaway_tokens" and lb["start_ts"] == ts
                           and lb["workflow"] == k.workflow and lb["model"] == k.model)
                lab["trace_id"] = f"st{p.seed:x}-{n_before + 1:08d}"
                ri += 1
        self.events = [e for e in self.events if e.ts < self.t1]
        labels += [{"kind": "quiet", "start_ts": a, "end_ts": b} for a, b in self.quiet]
        day = (self.t1 - self.t0) / DAY
        return {"params": asdict(p), "stress": True, "start_ts": self.t0, "end_ts": self.t1,
                "settings": {"stages": STAGES, "contracts": self.contracts()},
                "bands": self.bands, "labels": labels,
                "keys": [{"tenant": k.tenant, "workflow": k.workflow, "model": k.model, "rate": k.rate,
                          "band": k.band, "bursty": k.bursty, "in_tokens": k.in_tokens, "appear_ts": k.appear_ts,
                          "steps": list(k.steps), "quiet": self.quiet_spans(k)} for k in self.keys],
                "key_days": round(sum(max(0, self.t1 - max(self.t0, k.appear_ts)) for k in self.keys) / DAY, 3),
                "quiet_key_days": round(sum(b - a for k in self.keys for a, b in self.quiet_spans(k)) / DAY, 3),
                "unscheduled": self.unscheduled,
                "days": round(day, 3), "changes": len(changes), "events": len(self.events)}


    def quiet_spans(self, k: Key) -> list[list[int]]:
        """Where nothing labelled is near the key: its time seen, less every span taken (pads included)."""
        out, at = [], max(self.t0, k.appear_ts)
        for b0, b1 in sorted(self.busy.get(k.scope, [])):
            if b0 > at:
                out.append([at, min(b0, self.t1)])
            at = max(at, b1)
        if at < self.t1:
            out.append([at, self.t1])
        return [sp for sp in out if sp[1] > sp[0]]

    def contracts(self) -> dict[str, dict[str, Any]]:
        return {k.workflow: {"max_tokens": int(RUNAWAY_LIMIT_X * k.in_tokens), "max_cost_usd": None}
                for k in self.keys}


def generate(p: StressParams, out_dir: Path) -> dict[str, Any]:
    g = Stress(p)
    meta = g.run()
    events = arrival_order(g.events, p, random.Random(p.seed * 7919 + 3))  # type: ignore[arg-type]
    return write_day(events, meta, out_dir)


def main(argv: list[str] | None = None) -> None:
    params, out = parse_params(StressParams, __doc__, argv)
    meta = generate(params, out)
    kinds: dict[str, int] = {}
    for lab in meta["labels"]:
        kinds[lab["kind"]] = kinds.get(lab["kind"], 0) + 1
    print(f"{meta['events']} events, {len(meta['keys'])} keys, {meta['key_days']} key-days "
          f"({meta['quiet_key_days']} quiet), {meta['changes']} changes -> {out}; labels: {kinds}")


if __name__ == "__main__":
    main()
