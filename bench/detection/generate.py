"""Labelled LLM traffic for the detection benchmark.

    python -m bench.detection.generate --seed 7 --hours 24 --out /tmp/bench7

writes `events.jsonl` (contract events in *arrival* order: some out of order, a
few later than the detectors' allowed lateness) and `labels.json` (incidents
with kind, scope and event-time span; loop incidents also carry the event that
completes the pattern; warm-up and quiet stretches where nothing must fire).

Traffic: three tenants in different time zones (diurnal volume), chat, RAG and
multi-step agent workflows on several models, per-minute noise on volume, error
rates and latency, online evals, benign deploys (prompt edits, config changes,
like-for-like model swaps and their rollbacks), and a few barely used keys.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from bench.detection import schedule as sch
from bench.detection.world import MODELS, SIDE_EFFECTS, TOOLS, Workflow, build_fleet, cost_usd, diurnal
from llmpulse.schemas.contract import Change, Eval, Message, Output, Prompt, ToolCall, Usage

MIN = 60_000
WORDS = ("alpha bravo cargo delta echo fleet grid harbor index jolt kilo lumen metro nova orbit pixel quartz radar "
         "solar tango umbra vector willow xenon yield zephyr amber basil cedar dune ember fjord garnet hazel iris "
         "juniper kelp lotus maple nectar onyx pine quill reed sage thyme umber violet wren yarrow zinc").split()


@dataclass
class Params:
    seed: int = 1
    hours: float = 24.0
    start: str = "2026-03-02T00:00:00+00:00"
    volume: float = 1.0  # scales every workflow's rate
    diurnal_amplitude: float = 0.35
    volume_noise: float = 0.1  # per-minute lognormal sigma on volume (overdispersion)
    rate_noise: float = 0.3  # per-minute lognormal sigma on error/refusal probabilities
    latency_noise: float = 0.08  # per-minute provider speed factor
    warmup_minutes: int = 90
    quiet_hours: float = 2.0  # one long stretch without incidents
    incidents_per_kind: int = 8
    changes_bad: int = 8
    changes_benign: int = 8
    incident_min_minutes: int = 6
    incident_max_minutes: int = 20
    loops_per_kind: int = 40
    late_share: float = 0.02  # events delayed 2-25 s (within allowed lateness)
    very_late_share: float = 0.001  # events delayed 1-10 min (beyond it: dropped by windows)


class Gen:
    def __init__(self, p: Params) -> None:
        self.p = p
        self.rng = random.Random(p.seed)
        self.t0 = int(datetime.fromisoformat(p.start).astimezone(timezone.utc).timestamp() * 1000)
        self.t1 = self.t0 + int(p.hours * 3_600_000)
        self.fleet = build_fleet(p.volume)
        self.events: list[Any] = []
        self.n_ev = 0
        self.n_tr = 0
        self.noise: dict[tuple[str, str, int], tuple[float, float, float]] = {}

    # ------------------------------------------------------------------ ids, text

    def eid(self) -> str:
        self.n_ev += 1
        return f"e{self.p.seed:x}-{self.n_ev:09d}"

    def tid(self) -> str:
        self.n_tr += 1
        return f"t{self.p.seed:x}-{self.n_tr:08d}"

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def uuid(self) -> str:
        h = "%032x" % self.rng.getrandbits(128)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def iso(self, ts: int) -> str:
        return datetime.fromtimestamp(ts / 1000, timezone.utc).isoformat().replace("+00:00", "Z")

    def volatile_args(self, base: dict, ts: int) -> dict | str:
        """Same meaning, different bytes: volatile fields, key order, whitespace, string form."""
        args = dict(base)
        r = self.rng.random()
        if r < 0.5:
            args["request_id"] = self.uuid()
        if r > 0.3:
            args["timestamp"] = self.iso(ts)
        if self.rng.random() < 0.3:
            args["nonce"] = "%016x" % self.rng.getrandbits(64)
        items = list(args.items())
        self.rng.shuffle(items)
        args = {k: (f"  {v} " if isinstance(v, str) and self.rng.random() < 0.2 else v) for k, v in items}
        if self.rng.random() < 0.25:
            return json.dumps(args, indent=self.rng.choice([None, 2]))
        return args

    # --------------------------------------------------------------- behaviour

    def minute_noise(self, wf: Workflow, ts: int) -> tuple[float, float, float]:
        key = (wf.tenant, wf.name, ts // MIN)
        n = self.noise.get(key)
        if n is None:
            g = self.rng.gauss
            n = self.noise[key] = (math.exp(g(0, self.p.volume_noise)), math.exp(g(0, self.p.rate_noise)),
                                   math.exp(g(0, self.p.latency_noise)))
        return n

    def effects(self, wf: Workflow, model: str, ts: int) -> dict[str, float]:
        _, rate_n, lat_n = self.minute_noise(wf, ts)
        eff = {"error_p": wf.error_p * rate_n, "refusal_p": wf.refusal_p * rate_n, "lat": lat_n, "cost": 1.0,
               "tokens": 1.0, "out_tokens": 1.0, "cache_break": 0.0}
        for inc in self.active.get((wf.tenant, wf.name), ()):
            if not inc.start <= ts < inc.end or (inc.model and inc.model != model):
                continue
            m = inc.params.get("magnitude", 0.0)
            if inc.kind == "error_rate_spike":
                eff["error_p"] = m
            elif inc.kind == "refusal_spike":
                eff["refusal_p"] = m
            elif inc.kind == "latency_regression":
                eff["lat"] *= m
            elif inc.kind == "cost_spike":
                if m < 2.5 and _cache_break_ratio(wf, model) >= 1.8:
                    eff["cache_break"] = 1.0  # prompt cache stopped hitting
                else:
                    eff["cost"] = m  # routed to a pricier snapshot / surcharge
            elif inc.kind == "token_spike":
                eff["tokens"] = m
            elif inc.kind == "regression_after_change":
                effect = inc.params["effect"]
                if effect == "error_prompt":
                    eff["error_p"] = m
                elif effect == "refusal_prompt":
                    eff["refusal_p"] = m
                elif effect == "latency_prompt":
                    eff["out_tokens"] = m
        return eff

    def traffic_factor(self, wf: Workflow, model: str, ts: int) -> float:
        for inc in self.active.get((wf.tenant, wf.name), ()):
            if inc.kind == "traffic_drop" and inc.model == model and inc.start <= ts < inc.end:
                return inc.params["magnitude"]
        return 1.0

    def eval_pass(self, wf: Workflow, name: str, ts: int) -> float:
        p = wf.eval_pass
        for inc in self.active.get((wf.tenant, wf.name), ()):
            if inc.start <= ts < inc.end and (
                (inc.kind == "eval_regression" and inc.params["eval_name"] == name)
                or (inc.kind == "regression_after_change" and inc.params["effect"] == "eval_prompt")
            ):
                p -= inc.params["magnitude"]
        return max(0.02, p)

    def model_at(self, wf: Workflow, ts: int) -> str:
        """Weighted pick; an active model swap replaces the primary."""
        r = self.rng.random()
        acc = 0.0
        pick = wf.models[-1][0]
        for model, share in wf.models:
            acc += share
            if r < acc:
                pick = model
                break
        if pick == wf.models[0][0]:
            for ch in self.swaps.get((wf.tenant, wf.name), ()):
                if ch.ts <= ts < ch.until:
                    return ch.to_value
        return pick

    # ------------------------------------------------------------------ events

    def base(self, wf: Workflow, trace: str, model: str, ts: int) -> dict[str, Any]:
        return {"event_id": self.eid(), "ts": ts, "trace_id": trace, "tenant": wf.tenant, "workflow": wf.name,
                "app": f"{wf.tenant}-app", "environment": "prod", "model": model,
                "provider": "anthropic" if model.startswith("claude") else "openai"}

    def llm_call(self, wf: Workflow, trace: str, model: str, ts: int, messages: list[Message],
                 force_ok: bool = False) -> tuple[int, str]:
        """Prompt + Output (+ evals). Returns (output ts, status)."""
        self.events.append(Prompt(**self.base(wf, trace, model, ts), messages=messages))
        eff = self.effects(wf, model, ts)
        rng = self.rng
        r = rng.random()
        status = "ok"
        if not force_ok and r < eff["error_p"]:
            status = "timeout" if rng.random() < 0.25 else "error"
        elif not force_ok and r < eff["error_p"] + eff["refusal_p"]:
            status = "refusal"
        spec = MODELS[model]
        in_tok = int(wf.in_tokens * eff["tokens"] * math.exp(rng.gauss(0, 0.35)))
        out_tok = int(wf.out_tokens * eff["out_tokens"] * math.exp(rng.gauss(0, 0.45))) + 5
        usage, cost = None, None
        if status == "error":
            latency = rng.uniform(200, 2500)
        elif status == "timeout":
            latency = rng.uniform(30_000, 60_000)
        else:
            if status == "refusal":
                out_tok = rng.randint(15, 60)
            cached = 0 if eff["cache_break"] else int(in_tok * wf.cache_share * rng.uniform(0.9, 1.0))
            ttft = spec["ttft"] * math.exp(rng.gauss(0, 0.2)) + in_tok * 0.04
            latency = (ttft + out_tok * spec["per_out"]) * eff["lat"] * math.exp(rng.gauss(0, 0.15))
            cost = round(cost_usd(model, in_tok, cached, out_tok) * eff["cost"], 8)
            usage = Usage(input_tokens=in_tok, output_tokens=out_tok, cache_read_tokens=cached)
        out_ts = ts + int(latency)
        self.events.append(Output(
            **self.base(wf, trace, model, out_ts), status=status, latency_ms=round(latency, 1),
            finish_reason={"ok": "stop", "refusal": "content_filter"}.get(status, ""),
            error_type={"error": rng.choice(["rate_limit", "server_error"]), "timeout": "timeout"}.get(status, ""),
            usage=usage, cost_usd=cost,
        ))
        if status == "ok":
            for name in wf.evals:
                if rng.random() < wf.eval_sample:
                    ets = out_ts + rng.randint(2_000, 45_000)  # judges run asynchronously
                    self.events.append(Eval(**self.base(wf, trace, model, ets), eval_name=name,
                                            passed=rng.random() < self.eval_pass(wf, name, ets),
                                            evaluator="llm-judge"))
        return out_ts, status

    def tool_call(self, wf: Workflow, trace: str, ts: int, tool: str, args: dict | str, result: str) -> int:
        dur = self.rng.uniform(80, 2500)
        end = ts + int(dur)
        self.events.append(ToolCall(**self.base(wf, trace, "", end), tool_name=tool, tool_call_id=self.uuid(),
                                    arguments=args, duration_ms=round(dur, 1), result=result,
                                    side_effect=SIDE_EFFECTS.get(tool, "")))  # type: ignore[arg-type]
        return end + self.rng.randint(20, 400)

    def fresh_args(self, tool: str) -> dict:
        rng = self.rng
        if tool == "check_job":
            return {"job_id": f"job-{rng.randrange(10**6)}"}
        if tool in ("fetch_url",):
            return {"url": f"https://{rng.choice(WORDS)}.example.com/{self.words(2).replace(' ', '/')}/{rng.randrange(10**4)}"}
        if tool in ("lookup_ticket", "update_ticket"):
            return {"ticket": f"T-{rng.randrange(10**6)}", "fields": [rng.choice(WORDS)]}
        if tool == "send_email":
            return {"to": f"{rng.choice(WORDS)}@example.com", "template": rng.choice(WORDS)}
        if tool == "run_python":
            return {"code": f"print({rng.randrange(10**6)} * {rng.randrange(100)})"}
        return {"query": self.words(rng.randint(3, 6)), "top_k": rng.choice([3, 5, 10])}

    def fresh_result(self) -> str:
        return json.dumps({"items": [self.words(4) for _ in range(self.rng.randint(1, 3))], "score": round(self.rng.random(), 3)})

    # ------------------------------------------------------------------ traces

    def user_msgs(self, wf: Workflow, extra: str = "") -> list[Message]:
        return [Message("system", f"You are the {wf.name} assistant of {wf.tenant}."),
                Message("user", self.words(self.rng.randint(6, 14)) + extra)]

    def normal_trace(self, wf: Workflow, ts: int, model: str) -> None:
        trace = self.tid()
        rng = self.rng
        msgs = self.user_msgs(wf)
        if wf.kind == "rag":
            ts = self.tool_call(wf, trace, ts, "retrieve", self.volatile_args(self.fresh_args("retrieve"), ts), self.fresh_result())
        if wf.kind != "agent":
            out_ts, status = self.llm_call(wf, trace, model, ts, msgs)
            if status in ("error", "timeout"):  # one retry of the same prompt, no more
                self.llm_call(wf, trace, model, out_ts + rng.randint(200, 2000), msgs)
            return
        tools = TOOLS[wf.name]
        made: list[tuple[str, dict]] = []
        empties: set[str] = set()
        for step in range(rng.randint(*wf.steps)):
            step_msgs = msgs + [Message("user", f"step {step}: {self.words(5)}")]
            out_ts, status = self.llm_call(wf, trace, model, ts, step_msgs)
            if status in ("error", "timeout"):
                out_ts, status = self.llm_call(wf, trace, model, out_ts + rng.randint(200, 2000), step_msgs)
                if status != "ok":
                    return  # the agent gives up
            if status == "refusal":
                return
            if made and rng.random() < 0.04 and sum(1 for m in made if m == made[-1]) < 2:
                tool, args = made[-1]  # a legitimate second look at the same thing
            else:
                tool = rng.choice(tools)
                args = self.fresh_args(tool)
            made.append((tool, args))
            result = self.fresh_result()
            if tool not in empties and rng.random() < 0.03:
                result, _ = "[]", empties.add(tool)
            ts = self.tool_call(wf, trace, out_ts + rng.randint(20, 300), tool, self.volatile_args(args, out_ts), result)

    def loop_trace(self, wf: Workflow, ts: int, kind: str) -> dict[str, Any]:
        """An agent stuck in a loop; returns its label."""
        rng = self.rng
        trace = self.tid()
        model = self.model_at(wf, ts)
        msgs = self.user_msgs(wf)
        tools = TOOLS.get(wf.name, ["web_search", "check_job", "fetch_url"])
        for step in range(rng.randint(0, 2)):  # some honest work first
            out_ts, _ = self.llm_call(wf, trace, model, ts, msgs + [Message("user", f"step {step}: {self.words(5)}")], True)
            tool = rng.choice(tools)
            ts = self.tool_call(wf, trace, out_ts + 50, tool, self.volatile_args(self.fresh_args(tool), out_ts), self.fresh_result())
        pattern_ids: list[tuple[int, str]] = []  # (ts, event id) of the pattern events
        variant = kind
        if kind == "cycle_loop":
            period = rng.randint(2, 4)
            block = [(t, self.fresh_args(t)) for t in rng.sample(tools, period)] if len(tools) >= period else \
                [(rng.choice(tools), self.fresh_args("web_search")) for _ in range(period)]
            calls = block * rng.randint(3, 4)
            need = 3 * period
            variant = f"cycle_{period}"
        elif kind == "tool_loop":
            tool = rng.choice(tools)
            calls = [(tool, self.fresh_args(tool))] * rng.randint(3, 6)
            result = self.fresh_result()
            need = 3
        elif kind == "no_progress_poll":
            job = f"job-{rng.randrange(10**6)}"
            calls = [("check_job", {"job_id": job, "poll": i + 1}) for i in range(rng.randint(3, 6))]
            result = json.dumps({"status": "pending", "progress": None})
            need = 3
        elif kind == "no_progress_empty":
            tool = "search_kb" if "search_kb" in tools else "web_search"
            calls = [(tool, self.fresh_args(tool)) for _ in range(rng.randint(3, 5))]
            result = rng.choice(["[]", json.dumps({"results": [], "total": 0}), "No results found."])
            need = 3
        else:  # no_progress_prompt: the same prompt re-sent (e.g. retry on unparsable output)
            same = msgs + [Message("user", "Return the answer as JSON. " + self.words(6))]
            for _ in range(rng.randint(3, 5)):
                prompt_at = len(self.events)
                out_ts, _ = self.llm_call(wf, trace, model, ts, same, True)
                pattern_ids.append((ts, self.events[prompt_at].event_id))
                ts = out_ts + rng.randint(100, 800)
            return self._loop_label("no_progress", variant, wf, trace, model, pattern_ids, 3)
        for i, (tool, args) in enumerate(calls):
            out_ts, _ = self.llm_call(wf, trace, model, ts, msgs + [Message("user", f"loop {i}: {self.words(5)}")], True)
            res = result if kind != "cycle_loop" else json.dumps({"tool": tool, "ok": True})
            ts = self.tool_call(wf, trace, out_ts + 50, tool, self.volatile_args(args, out_ts), res)
            ev = self.events[-1]
            pattern_ids.append((ev.ts, ev.event_id))
        label_kind = "no_progress" if kind.startswith("no_progress") else kind
        return self._loop_label(label_kind, variant, wf, trace, model, pattern_ids, need)

    def _loop_label(self, kind: str, variant: str, wf: Workflow, trace: str, model: str,
                    ids: list[tuple[int, str]], need: int) -> dict[str, Any]:
        return {"kind": kind, "variant": variant, "tenant": wf.tenant, "workflow": wf.name, "model": model,
                "trace_id": trace, "start_ts": ids[0][0], "end_ts": ids[-1][0], "complete_ts": ids[need - 1][0],
                "complete_event_id": ids[need - 1][1], "count": len(ids), "need": need,
                "event_ids": [event_id for _, event_id in ids]}

    # --------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        p, rng = self.p, self.rng
        warm_end = self.t0 + p.warmup_minutes * MIN
        q_len = int(p.quiet_hours * 3_600_000)
        q0 = rng.randrange(warm_end, max(warm_end + 1, self.t1 - q_len))
        quiet = [(self.t0, warm_end), (q0, q0 + q_len)] if q_len else [(self.t0, warm_end)]
        tl = sch.Timeline(self.t0, self.t1, quiet)
        incidents, changes = sch.schedule(rng, self.fleet, tl, p)
        self.active: dict[tuple[str, str], list[sch.Incident]] = {}
        for inc in incidents:
            self.active.setdefault((inc.tenant, inc.workflow), []).append(inc)
        self.swaps: dict[tuple[str, str], list[sch.Change]] = {}
        for ch in changes:
            if ch.change_kind == "model_swap":
                self.swaps.setdefault((ch.tenant, ch.workflow), []).append(ch)
        change_ids = self.emit_changes(changes)
        for inc in incidents:
            if inc.kind == "regression_after_change":
                inc.params["change_event_id"] = change_ids[id(inc.params.pop("change"))]
        loops = self.schedule_loops(warm_end, quiet)
        by_wf = {(w.tenant, w.name): w for w in self.fleet}
        loop_labels = []
        li = 0
        for minute in range(self.t0, self.t1, MIN):
            for wf in self.fleet:
                vol_n = self.minute_noise(wf, minute)[0]
                lam = wf.rate * diurnal(wf.tenant, minute, p.diurnal_amplitude) * vol_n / wf.mean_steps
                for _ in range(_poisson(rng, lam)):
                    ts = minute + rng.randrange(MIN)
                    model = self.model_at(wf, ts)
                    if rng.random() >= self.traffic_factor(wf, model, ts):
                        continue
                    self.normal_trace(wf, ts, model)
            while li < len(loops) and loops[li][0] < minute + MIN:
                ts, key, kind = loops[li]
                loop_labels.append(self.loop_trace(by_wf[key], ts, kind))
                li += 1
        self.events = [e for e in self.events if e.ts < self.t1]  # a clean cut, not a dying tail
        labels = [i.label() for i in incidents] + loop_labels
        labels += [{"kind": "quiet", "start_ts": a, "end_ts": b} for a, b in quiet]
        return {"params": asdict(p), "start_ts": self.t0, "end_ts": self.t1, "labels": labels,
                "changes": len(changes), "events": len(self.events)}

    def emit_changes(self, changes: list[sch.Change]) -> dict[int, str]:
        ids: dict[int, str] = {}
        for ch in changes:
            base = {"event_id": self.eid(), "ts": ch.ts, "tenant": ch.tenant, "workflow": ch.workflow,
                    "trace_id": f"deploy-{self.uuid()}"}
            desc = f"{ch.change_kind} on {ch.workflow}" + (f" ({ch.effect})" if ch.effect else "")
            self.events.append(Change(**base, change_kind=ch.change_kind, description=desc, from_value=ch.from_value,
                                      to_value=ch.to_value, actor="deploy-bot"))
            ids[id(ch)] = base["event_id"]
            if ch.until:
                self.events.append(Change(event_id=self.eid(), ts=ch.until, tenant=ch.tenant, workflow=ch.workflow,
                                          trace_id=f"deploy-{self.uuid()}", change_kind="rollback",
                                          description=f"rollback on {ch.workflow}", from_value=ch.to_value,
                                          to_value=ch.from_value, actor="deploy-bot"))
        return ids

    def schedule_loops(self, warm_end: int, quiet: list[tuple[int, int]]) -> list[tuple[int, tuple[str, str], str]]:
        rng = self.rng
        agents = [w for w in self.fleet if w.kind == "agent"]
        chats = [w for w in self.fleet if w.kind != "agent"]
        out = []
        for kind, n in (("tool_loop", self.p.loops_per_kind), ("cycle_loop", self.p.loops_per_kind),
                        ("no_progress", self.p.loops_per_kind)):
            for _ in range(n):
                for _attempt in range(1000):
                    ts = rng.randrange(warm_end, max(warm_end + 1, self.t1 - 30 * MIN))
                    if not any(a <= ts < b + 10 * MIN for a, b in quiet):
                        break
                else:
                    raise ValueError("no room for loop incidents: lengthen --hours or shorten --quiet-hours")
                variant = kind
                pool = agents
                if kind == "no_progress":
                    variant = rng.choice(["no_progress_poll", "no_progress_empty", "no_progress_prompt"])
                    pool = agents + chats if variant == "no_progress_prompt" else agents
                wf = rng.choice(pool)
                out.append((ts, (wf.tenant, wf.name), variant))
        return sorted(out)


def _cache_break_ratio(wf: Workflow, model: str) -> float:
    """How much dearer a typical call gets when the prompt cache stops hitting."""
    cached = int(wf.in_tokens * wf.cache_share)
    return cost_usd(model, int(wf.in_tokens), 0, int(wf.out_tokens)) / cost_usd(model, int(wf.in_tokens), cached, int(wf.out_tokens))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    l, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= l:
            return k
        k += 1


def arrival_order(events: list[Any], p: Params, rng: random.Random) -> list[Any]:
    """Events as a collector would see them: small jitter, some late, a few very late."""
    keyed = []
    for ev in events:
        d = rng.expovariate(1 / 150)
        r = rng.random()
        if r < p.very_late_share:
            d += rng.uniform(60_000, 600_000)
        elif r < p.very_late_share + p.late_share:
            d += rng.uniform(2_000, 25_000)
        keyed.append((ev.ts + d, ev.event_id, ev))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [k[2] for k in keyed]


def write_day(events: list, meta: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """A generated day on disk: events.jsonl in arrival order and labels.json (score.py reads both)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = msgspec.json.Encoder()
    with open(out_dir / "events.jsonl", "wb") as f:
        for chunk in range(0, len(events), 50_000):
            f.write(b"\n".join(enc.encode(e) for e in events[chunk : chunk + 50_000]) + b"\n")
    (out_dir / "labels.json").write_text(json.dumps(meta, indent=1))
    return meta


def parse_params(cls: type, doc: str | None, argv: list[str] | None) -> tuple[Any, Path]:
    """`--out DIR` and one flag per field of the dataclass `cls` (booleans as switches)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    for f in cls.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            ap.add_argument(flag, action="store_true", default=f.default)
        else:
            ap.add_argument(flag, type=type(f.default), default=f.default)
    a = vars(ap.parse_args(argv))
    out = a.pop("out")
    return cls(**a), out


def generate(p: Params, out_dir: Path) -> dict[str, Any]:
    g = Gen(p)
    meta = g.run()
    return write_day(arrival_order(g.events, p, random.Random(p.seed * 7919 + 1)), meta, out_dir)


def main(argv: list[str] | None = None) -> None:
    params, out = parse_params(Params, __doc__, argv)
    meta = generate(params, out)
    kinds: dict[str, int] = {}
    for lab in meta["labels"]:
        kinds[lab["kind"]] = kinds.get(lab["kind"], 0) + 1
    print(f"{meta['events']} events, {meta['changes']} changes -> {out}; labels: {kinds}")


if __name__ == "__main__":
    main()
