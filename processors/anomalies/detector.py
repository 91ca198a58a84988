"""The anomaly detector: feeding, the watermark, minute closes and early looks, and the
sequential tests, over the state in `windows`, the verdicts in `verdicts`, the lifecycle
and the change trackers (mixed in). See the package docstring."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Mapping

from llmpulse.processors.anomalies.changes import ChangeTracker, Changes, after_change
from llmpulse.processors.anomalies.config import ERROR_STATUSES, H, REFUSAL_STATUSES, W, AnomalyConfig
from llmpulse.processors.anomalies.lifecycle import Lifecycle
from llmpulse.processors.anomalies import timers
from llmpulse.processors.anomalies.stats import (
    Cusum, binom_sf, dispersion, median, p95_and_median, poisson_cdf, pooled, quantile,
)
from llmpulse.processors.anomalies.verdicts import (
    RECOVERY, SEV_RANK, Verdict, eval_verdict, latency_verdict, newest_half_severity, rate_verdict, recovery,
    robust_verdict, sequential_state, sev_delta, trace_obs,
)
from llmpulse.processors.anomalies.windows import Condition, EvalState, History, KeyState, Window, combined
from llmpulse.schemas.contract import Change, Eval, Output, Prompt
from llmpulse.schemas.findings import Finding


LEARN_NATS = 5.0
LOW = "/low"  # suffix of a rate's second CUSUM (the moderate design)  # a sequential test this far into a run: its minutes are not learned


def wall_ms() -> int:
    return int(time.time() * 1000)


class AnomalyDetector(Lifecycle, Changes):
    """Windows, baselines and lifecycles for every (tenant, workflow, model). One instance
    must see all events of the keys it owns (route by tenant/workflow, not by trace)."""

    EVENT_TYPES = frozenset({"output", "prompt", "eval", "change"})  # what `process` reads

    def __init__(
        self,
        config: AnomalyConfig | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.config = config or AnomalyConfig()
        self._per_workflow = {wf: self.config.merged(o) for wf, o in (overrides or {}).items()}
        self._clock = clock
        # Closed workflow minutes kept for the "before" side of a change comparison.
        self._wf_memory = max(c.before_windows for c in (self.config, *self._per_workflow.values())) + 2
        self._keys: dict[tuple[str, str, str], KeyState] = {}
        self._evals: dict[tuple[str, str, str], EvalState] = {}
        self._wf_minutes: dict[tuple[str, str], deque] = {}  # closed (minute, Window) per workflow
        self._wf_open: dict[tuple[str, str], dict[int, Window]] = {}
        self._trackers: dict[tuple[str, str], ChangeTracker] = {}
        self._max_ts: int | None = None
        self._closed_until: int | None = None  # start of the oldest still-open minute
        self._looked_until: int = 0  # end of the last early look
        self.late_dropped = 0

    def config_for(self, workflow: str) -> AnomalyConfig:
        return self._per_workflow.get(workflow, self.config)

    # ------------------------------------------------------------------ feeding

    def process(self, event: Any, cost_usd: float | None = None) -> list[Finding]:
        ts = event.ts
        if self._closed_until is None:
            self._closed_until = (ts - self.config.allowed_lateness_ms) // W * W
        out: list[Finding] = []
        if isinstance(event, Change):
            # A late change still counts: it activates at the next close. An eval gate's decision
            # (llmpulse gate --publish) is evidence about a change, not a deploy.
            out = self._add_change(event) if event.change_kind != "eval_gate" else []
        elif ts < self._closed_until:
            self.late_dropped += 1  # its window is already closed and judged
        elif isinstance(event, Output):
            self._add_output(event, cost_usd, ts)
        elif isinstance(event, Prompt) and event.model:
            self._add_prompt(event)
        elif isinstance(event, Eval):
            self._add_eval(event, ts)
        return out + self._advance_to(ts)

    def advance(self, event_time_ms: int) -> list[Finding]:
        """Event time has reached `event_time_ms` without events (idle input)."""
        if self._closed_until is None:
            return []  # nothing seen yet: no window to close, no key to judge
        return self._advance_to(event_time_ms)

    def flush(self) -> list[Finding]:
        """End of a replay: close every minute that the data fully covers."""
        if self._max_ts is None:
            return []
        return self._close_until((self._max_ts + 1) // W * W)  # minutes ending at or before max_ts + 1

    def stats(self) -> dict[str, int]:
        return {"keys": len(self._keys), "eval_streams": len(self._evals), "changes": len(self._trackers),
                "late_dropped": self.late_dropped}

    def _advance_to(self, ts: int) -> list[Finding]:
        if self._max_ts is not None and ts <= self._max_ts:
            return []
        self._max_ts = ts
        return self._close_until(ts - self.config.allowed_lateness_ms)

    def _close_until(self, watermark: int) -> list[Finding]:
        """Close the minutes and take the early looks (half a minute into each open
        minute) that end at or before `watermark`, in event-time order."""
        out: list[Finding] = []
        while True:
            look = self._closed_until + H
            if self._looked_until < look <= watermark:
                out += self._early_look(look)
                self._looked_until = look
            elif self._closed_until + W <= watermark:
                out += self._close_minute(self._closed_until)
                self._closed_until += W
            else:
                return out

    def _bucket(self, ev: Output | Prompt, cfg: AnomalyConfig) -> tuple[KeyState, Window]:
        minute, half = ev.ts // W * W, ev.ts // H * H
        key = (ev.tenant, ev.workflow, ev.model)
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = KeyState(ev.tenant, ev.workflow, ev.model, minute,
                                                 History(cfg.history_windows, cfg.latency_samples))
        ks.first_minute = min(ks.first_minute, minute)
        ks.last_ts = max(ks.last_ts, ev.ts)
        win = ks.windows.get(half)
        if win is None:
            win = ks.windows[half] = Window(by_trace={})
        return ks, win

    def _add_prompt(self, ev: Prompt) -> None:
        ks, win = self._bucket(ev, self.config_for(ev.workflow))
        if not ks.by_starts:
            ks.by_starts = True
            ks.history.counts.clear()  # a baseline counted at call ends does not compare
            ks.history.counts_pending.clear()
        win.add_prompt(ev)

    def _add_output(self, ev: Output, cost_usd: float | None, ts: int) -> None:
        minute = ts // W * W
        cfg = self.config_for(ev.workflow)
        ks, win = self._bucket(ev, cfg)
        win.add_output(ev, cost_usd, cfg.max_latency_samples)
        half = ts // H * H
        if half >= ks.fed:
            tokens = ev.usage.input_tokens + ev.usage.output_tokens if ev.usage is not None else 0
            ks.pending.setdefault(half, []).append((ts, ev.event_id, ev.status, ev.latency_ms, ev.trace_id,
                                                     tokens if ev.usage is not None else None, cost_usd))
        wf = self._wf_open.setdefault((ev.tenant, ev.workflow), {})
        wf.setdefault(minute, Window()).add_output(ev, cost_usd, cfg.max_latency_samples)
        tr = self._trackers.get((ev.tenant, ev.workflow))
        if tr is not None and after_change(ev, tr.change):
            tr.add(ev, cost_usd, 10 * cfg.max_latency_samples)

    def _add_eval(self, ev: Eval, ts: int) -> None:
        minute, half = ts // W * W, ts // H * H
        passed = ev.passed if ev.passed is not None else (ev.score >= 0.5 if ev.score is not None else None)
        if passed is None:
            return
        cfg = self.config_for(ev.workflow)
        key = (ev.tenant, ev.workflow, ev.eval_name)
        es = self._evals.get(key)
        if es is None:
            es = self._evals[key] = EvalState(ev.tenant, ev.workflow, ev.eval_name, minute, History(cfg.history_windows))
        es.first_minute = min(es.first_minute, minute)
        es.last_ts = max(es.last_ts, ev.ts)
        cell = es.windows.setdefault(half, [0, 0])
        cell[0] += int(passed)
        cell[1] += 1
        if cfg.eval_cusum_h > 0 and half >= es.fed:
            es.pending.setdefault(half, []).append((ev.ts, ev.event_id, not passed))
        wf = self._wf_open.setdefault((ev.tenant, ev.workflow), {}).setdefault(minute, Window())
        wf.ev_pass += int(passed)
        wf.ev_total += 1
        tr = self._trackers.get((ev.tenant, ev.workflow))
        if tr is not None and ev.ts >= tr.change.ts:
            tr.after.ev_pass += int(passed)
            tr.after.ev_total += 1

    # ------------------------------------------------------------- minute close

    def _close_minute(self, minute: int) -> list[Finding]:
        end = minute + W
        out = self._activate_changes(minute)
        pending = self._pending_changes()
        alarms: list[tuple[KeyState, int]] = []
        for key in list(self._keys):
            ks = self._keys[key]
            if minute < ks.first_minute:
                continue
            cfg = self.config_for(ks.workflow)
            if ks.last_ts < end - cfg.key_ttl_ms and not ks.windows:
                out += self._drop_conditions(ks.conds, end, "key idle")
                del self._keys[key]
                continue
            out += self._rate_cusums(ks, minute + H, cfg, (ks.tenant, ks.workflow) in pending)
            # Both halves at the close, when their buckets are as final as the minute window (an
            # event later than the lateness may still land in the first half before it): a
            # stream and a backtest time the same counts.
            for half in (minute, minute + H):
                at = self._silence(ks, half, cfg, (ks.tenant, ks.workflow) in pending)
                if at is not None:
                    alarms.append((ks, at))
            # The second half stays for the early look that straddles the next minute.
            first = ks.windows.pop(minute, None)
            win = combined(first, ks.windows.get(minute + H), cfg.max_latency_samples)
            out += self._close_key(ks, win, minute, cfg)
        out += self._open_drops(alarms)
        for key in list(self._evals):
            es = self._evals[key]
            if minute < es.first_minute:
                continue
            cfg = self.config_for(es.workflow)
            if es.last_ts < end - cfg.key_ttl_ms and not es.windows:
                out += self._drop_conditions(es.conds, end, "key idle")
                del self._evals[key]
                continue
            out += self._eval_cusum(es, minute + H, cfg, (es.tenant, es.workflow) in pending)
            out += self._close_eval(es, minute, cfg)
        for wf_key, open_minutes in list(self._wf_open.items()):
            win = open_minutes.pop(minute, None)
            if win is not None:
                self._wf_minutes.setdefault(wf_key, deque(maxlen=self._wf_memory)).append((minute, win))
            if not open_minutes:
                del self._wf_open[wf_key]
        for tr in list(self._trackers.values()):
            out += self._evaluate_change(tr, minute)
        return out

    def _verdicts(self, win: Window, ks: KeyState, cfg: AnomalyConfig) -> dict[str, Verdict]:
        h = ks.history
        tokens, cost = win.trimmed()
        verdicts = {
            "error_rate_spike": rate_verdict(win.errors, win.calls, h.errors, cfg, "error_rate"),
            "refusal_spike": rate_verdict(win.refusals, win.calls, h.refusals, cfg, "refusal_rate"),
            "latency_regression": latency_verdict(win, h, cfg),
            "cost_spike": robust_verdict(cost.mean if cost.n >= cfg.min_calls else None, h.cost, cfg.cost_ratio, cfg, "cost_per_call_usd"),
            "token_spike": robust_verdict(tokens.mean if tokens.n >= cfg.min_calls else None, h.tokens, cfg.token_ratio, cfg, "tokens_per_call"),
        }
        cost, tok = verdicts["cost_spike"], verdicts["token_spike"]
        if cost.state == "anomalous" and tok.baseline > 0 and cost.baseline > 0:
            tok_ratio = tok.value / tok.baseline if tok.value else 0.0
            if tok_ratio - 1 >= cfg.cost_explained_share * (cost.value / cost.baseline - 1):
                verdicts["cost_spike"] = cost._replace(state="explained")  # token_spike covers it
        # Longer prompts take longer to prefill: while tokens/call is spiking, a slower p95 is
        # the same incident and token_spike pages for both.
        lat = verdicts["latency_regression"]
        if lat.state == "anomalous" and (tok.state == "anomalous" or "token_spike" in ks.conds):
            verdicts["latency_regression"] = lat._replace(state="explained")
        return verdicts

    def _early_look(self, end: int) -> list[Finding]:
        """The minute ending half a minute into the open one: may OPEN a condition early.

        Half a minute sooner for an incident that began late in a minute, whose first
        window is mostly normal traffic. Nothing is learned, kept open or resolved here:
        that stays with the minute windows. A workflow whose change has not activated
        yet waits for its minute, so a spike the change explains is attributed to it.
        """
        out: list[Finding] = []
        start = end - W
        pending = self._pending_changes()
        for ks in self._keys.values():
            cfg = self.config_for(ks.workflow)
            out += self._rate_cusums(ks, end - H, cfg, (ks.tenant, ks.workflow) in pending)
            first, second = ks.windows.pop(start, None), ks.windows.get(end - H)
            if (first is None and second is None) or (ks.tenant, ks.workflow) in pending:
                continue
            verdicts = self._verdicts(combined(first, second, cfg.max_latency_samples), ks, cfg)
            fresh = [(k, v) for k, v in verdicts.items() if v.state == "anomalous" and k not in ks.conds]
            if fresh:
                scope = {"tenant": ks.tenant, "workflow": ks.workflow, "model": ks.model}
                tracker = self._tracker_for(ks.tenant, ks.workflow, start, cfg)
                for kind, v in fresh:
                    v = v._replace(severity=newest_half_severity(kind, v, second, cfg))
                    out += self._lifecycle(ks.conds, kind, v, scope, start, cfg, tracker, ks.history)
        for es in self._evals.values():
            out += self._eval_cusum(es, end - H, self.config_for(es.workflow), (es.tenant, es.workflow) in pending)
            if "eval_regression" in es.conds or (es.tenant, es.workflow) in pending:
                continue
            cfg = self.config_for(es.workflow)
            v = eval_verdict(es, end, cfg)
            if v.state == "anomalous":
                p, t = es.windows.get(end - H, (0, 0))
                if t >= max(1, cfg.min_evals // 2):  # severity follows the newest half (see below)
                    v = v._replace(severity=max(v.severity, sev_delta(v.baseline - p / t), key=SEV_RANK.__getitem__))
                scope = {"tenant": es.tenant, "workflow": es.workflow, "model": "", "eval_name": es.eval_name}
                tracker = self._tracker_for(es.tenant, es.workflow, start, cfg)
                out += self._lifecycle(es.conds, "eval_regression", v, scope, start, cfg, tracker, es.history)
        return out

    # ----------------------------------------------------------- silence timers

    def _silence(self, ks: KeyState, half: int, cfg: AnomalyConfig, held: bool) -> int | None:
        """Feed the key's silence timer the half minute the watermark has passed (events
        or none); the event time of an alarm, else None. `held`: a change on the workflow has not activated
        yet (a model swap moves the traffic and resets the timers when it does)."""
        win = ks.windows.get(half)
        traces = clusters = 0
        if win is not None:
            arrived = ks.drop.arrivals(win.trace_starts(ks.by_starts))
            traces = len(arrived)
            clusters = ks.drop.count(arrived.values(), cfg.traffic_cluster_gap_ms)
        else:
            ks.drop.seen.append(set())
        ks.drop.recent.append((half, traces, clusters))
        level = timers.expected_level(ks.history.counts, cfg)
        if level is None or "traffic_drop" in ks.conds or ks.retired:
            ks.drop.reset()
            return None
        at = timers.feed(ks.drop, half, (traces, clusters), level, cfg)
        return None if held else at

    def _open_drops(self, alarms: list[tuple[KeyState, int]]) -> list[Finding]:
        """traffic_drop for the keys whose timers alarmed in this half minute (at `end`, the
        crossing's event time, which stamps the finding): one finding for a
        tenant or a workflow that went silent as a whole (every key with the volume to tell),
        else one per key. A key of a tenant that already has a drop open joins it: one outage,
        one page."""
        out: list[Finding] = []
        for ks, end in sorted(alarms, key=lambda a: (a[1], a[0].tenant, a[0].workflow, a[0].model)):
            cfg = self.config_for(ks.workflow)
            if "traffic_drop" in ks.conds:  # made a member of a group earlier in this step
                continue
            tenant_keys = [k for k in self._keys.values() if k.tenant == ks.tenant]
            lv = timers.expected_level(ks.history.counts, cfg)
            since = ks.drop.low_since(lv.per_min, 1 - cfg.traffic_drop, end)
            if any(self._same_outage(k, ks, since) for k in tenant_keys):
                ks.conds["traffic_drop"] = Condition(None)
                ks.drop.reset()
                continue
            # A group needs two keys seen silent (one with too little volume to tell joins it,
            # but cannot make a lone model's outage its workflow's) and none carrying on.
            judged = {id(k): self._silent_too(k, since, end) for k in tenant_keys}
            judged[id(ks)] = True
            members = [k for k in tenant_keys
                       if k is ks or timers.expected_level(k.history.counts, self.config_for(k.workflow))]
            wf_members = [k for k in members if k.workflow == ks.workflow]
            wf_keys = [k for k in tenant_keys if k.workflow == ks.workflow]

            def grouped(keys: list[KeyState], wide: int) -> bool:
                seen = [k for k in keys if judged[id(k)]]
                return all(judged[id(k)] is not False for k in keys) and len(seen) >= 2 and \
                    len({k.workflow for k in seen}) >= wide

            if grouped(members, 2):
                group, scope = members, {"tenant": ks.tenant, "workflow": "", "model": ""}
            elif grouped(wf_members, 1):
                group, scope = wf_members, {"tenant": ks.tenant, "workflow": ks.workflow, "model": ""}
            elif self._moved(ks, wf_keys, since, end):
                ks.drop.reset()  # the workflow's traffic went to another model (a swap, a router)
                continue
            else:
                group, scope = [ks], {"tenant": ks.tenant, "workflow": ks.workflow, "model": ks.model}
            per_min = sum(timers.expected_level(k.history.counts, self.config_for(k.workflow))[0] for k in group)
            seen = sum(k.drop.count_since(since, end) for k in group)
            expected = per_min * (end - since) / W
            left = seen / expected if expected else 0.0
            ev = {"metric": "traces_started_per_minute" if ks.by_starts else "traces_per_minute", "method": "cusum",
                  "observed": seen,
                  "expected": round(expected, 2), "baseline": round(per_min, 3), "left": round(left, 3),
                  "baseline_method": f"mean traces/min of {len(ks.history.counts)} recent minutes",
                  "run_start_ts": since, "statistic": round(ks.drop.statistic, 3),
                  "unit": "clusters" if ks.drop.crossed[0] == timers.CLUSTERS else "traces",
                  "design_left": ks.drop.crossed[1],
                  "dispersion": [round(x[1], 2) for x in lv.units], "units_per_min": [round(x[0], 2) for x in lv.units],
                  "threshold_nats": round(timers.drop_threshold(cfg), 3)}
            if len(group) > 1:
                ev["models"] = sorted({f"{k.workflow}/{k.model}" for k in group})
            v = Verdict("anomalous", seen * W / (end - since), per_min, per_min * (1 - cfg.traffic_drop),
                        timers.severity(left), ev)
            out += self._lifecycle(ks.conds, "traffic_drop", v, scope, end - W, cfg, None, ks.history)
            for k in group:
                k.drop.reset()
                k.conds.setdefault("traffic_drop", Condition(None))
        return out

    @staticmethod
    def _same_outage(k: KeyState, ks: KeyState, since: int) -> bool:
        """Is `ks`'s silence part of the drop open on `k`, its tenant's key? Yes when that
        drop names ks's workflow or whole tenant, or began at most 5 minutes before ks fell
        quiet (a tenant's slower keys alarm later); another model's outage an hour on is not."""
        c = k.conds.get("traffic_drop")
        if c is None:
            return False
        if c.finding is None:  # a member of a group: it names its workflow at least
            return k.workflow == ks.workflow
        f = c.finding
        if not f.model and (not f.workflow or f.workflow == ks.workflow):
            return True
        return since <= f.evidence.get("run_start_ts", since) + 5 * W

    def _moved(self, ks: KeyState, siblings: list[KeyState], since: int, end: int) -> bool:
        """Did the calls this key lost over [since, end) show up on its workflow's other
        models (at least half of them, beyond 3 SD of their own noise)? Then traffic moved,
        it did not stop."""
        span = (end - since) / W
        level = timers.expected_level(ks.history.counts, self.config_for(ks.workflow))
        lost = level[0] * span - ks.drop.count_since(since, end)
        gained = expected = 0.0
        for k in siblings:
            if k is not ks:  # a model new to the workflow (no baseline) gains all its calls
                sib = timers.expected_level(k.history.counts, self.config_for(k.workflow))
                expected += sib[0] * span if sib is not None else 0.0
                gained += k.drop.count_since(since, end)
        gained -= expected + 3.0 * math.sqrt(expected)  # beyond the siblings' own Poisson noise
        return lost > 0 and gained >= lost / 2

    def _silent_too(self, ks: KeyState, since: int, end: int) -> bool | None:
        """A sibling's traffic over the alarm's span: True silent, False carrying on, None
        no baseline or too little volume to tell."""
        if "traffic_drop" in ks.conds:  # silent if its own drop is this one, else unknown
            return True if self._same_outage(ks, ks, since) else None
        cfg = self.config_for(ks.workflow)
        level = timers.expected_level(ks.history.counts, cfg)
        return None if level is None else timers.silent_since(ks.drop, since, end, level, 1 - cfg.traffic_drop)

    def _pending_changes(self) -> set[tuple[str, str]]:
        """Workflows with a change that has not activated yet (its minute is still open)."""
        return {(t.tenant, t.workflow) for t in self._trackers.values() if not t.active}

    def _close_key(self, ks: KeyState, win: Window, minute: int, cfg: AnomalyConfig) -> list[Finding]:
        h = ks.history
        verdicts = {k: sequential_state(k, v, ks.conds, ks.cusums) for k, v in self._verdicts(win, ks, cfg).items()}
        scope = {"tenant": ks.tenant, "workflow": ks.workflow, "model": ks.model}
        tracker = self._tracker_for(ks.tenant, ks.workflow, minute, cfg)
        out: list[Finding] = []
        for kind, v in verdicts.items():
            out += self._lifecycle(ks.conds, kind, v, scope, minute, cfg, tracker, h)
        # Traffic drops open on the silence timers (half minutes); minutes only hold or clear them.
        calls = win.traffic(ks.by_starts)[0]
        traces, *units = ks.drop.minute(minute)  # arrivals, as the silence timers count them
        level = timers.expected_level(h.counts, cfg)
        if "traffic_drop" in ks.conds and level is not None:
            v = Verdict(timers.hold_state(traces, level[0], cfg), traces, level[0])
            out += self._lifecycle(ks.conds, "traffic_drop", v, scope, minute, cfg, None, h)
        # Learn from what was not anomalous (nor a minute improbably quiet for the level).
        flagged = {k for k, v in verdicts.items()
                   if v.state in ("anomalous", "explained") or v.evidence.get("suspect")} | set(ks.conds)
        # Improbable at the key's own dispersion: by a plain Poisson, every empty minute of a
        # bursty key (8 traces/min in bursts: p = 3e-4) went unlearned, which held its level
        # over what it sends and made its ordinary silences look like drops.
        phi = level.unit(timers.TRACES)[1] if level is not None else 1.0
        quiet = level is not None and traces < level[0] * (1 - cfg.traffic_drop) and \
            poisson_cdf(int(traces / phi), level[0] / phi) <= cfg.learn_alpha
        learn = "traffic_drop" not in flagged and not quiet and \
            not ks.drop.holds_learning(timers.drop_threshold(cfg), minute + W)
        timers.learn_counts(h, minute, (calls, traces, *units) if learn else None,
                            "traffic_drop" in ks.conds, cfg)
        # Nor minutes well into a sequential test's run: on a quiet key the first minutes of a
        # burst are too few calls to be suspect, and would teach the baseline the burst.
        flagged |= {k.split("/")[0] for k, cs in ks.cusums.items() if cs.s >= LEARN_NATS}
        if win.calls:
            if "error_rate_spike" not in flagged:
                h.errors.append((win.errors, win.calls))
            if "refusal_spike" not in flagged:
                h.refusals.append((win.refusals, win.calls))
        if win.ok >= cfg.min_calls and win.latencies and "latency_regression" not in flagged:
            h.p95.append(quantile(win.latencies, 0.95))
            h.p50.append(quantile(win.latencies, 0.5))
        tokens, cost = win.trimmed()
        if cost.n >= cfg.min_calls and "cost_spike" not in flagged:
            h.cost.append(cost.mean)
        if tokens.n >= cfg.min_calls and "token_spike" not in flagged:
            h.tokens.append(tokens.mean)
        return out

    def _eval_cusum(self, es: EvalState, half: int, cfg: AnomalyConfig, held: bool) -> list[Finding]:
        """Feed the CUSUM the evals of a half minute the watermark has passed, in (ts, id) order.

        An alarm opens eval_regression stamped with the eval that crossed the threshold.
        `held`: a change on the workflow has not activated yet: keep adding up, alarm once
        the alarm can be attributed to it."""
        es.fed = max(es.fed, half + H)
        evals = es.pending.pop(half, None)
        if not evals:
            return []
        h = es.history.evals
        p0, hist_total = pooled(h)
        cs = es.cusum
        if "eval_regression" in es.conds or len(h) < cfg.min_history or hist_total < cfg.min_eval_history:
            cs.reset()
            return []
        p1 = max(0.01, p0 - cfg.eval_cusum_shift)
        phi = dispersion(h, p0, cfg.max_dispersion)
        ts = cs.feed(sorted(evals), 1 - p0, 1 - p1, phi, cfg.eval_cusum_h, lambda c: not held)  # as failure rates
        if ts is None:
            return []
        rate = 1 - cs.hits / cs.n
        v = Verdict("anomalous", rate, p0, p1, sev_delta(p0 - rate),
                    {"metric": "eval_pass_rate", "eval_name": es.eval_name, "method": "cusum",
                     "observed": round(rate, 4), "baseline": round(p0, 4), "design_rate": round(p1, 4),
                     "baseline_method": f"pooled pass rate of {len(h)} windows", "dispersion": round(phi, 3),
                     "evals": cs.n, "failures": cs.hits, "run_start_ts": cs.since,
                     "statistic": round(cs.s, 3), "threshold_nats": cfg.eval_cusum_h})
        cs.reset()
        scope = {"tenant": es.tenant, "workflow": es.workflow, "model": "", "eval_name": es.eval_name}
        start = ts - W  # the finding is stamped with the crossing eval (window_end = ts)
        tracker = self._tracker_for(es.tenant, es.workflow, ts // W * W, cfg)
        return self._lifecycle(es.conds, "eval_regression", v, scope, start, cfg, tracker, es.history)

    _RATE_STATUSES = (("error_rate_spike", "errors", "error_rate", ERROR_STATUSES),
                      ("refusal_spike", "refusals", "refusal_rate", REFUSAL_STATUSES))

    def _rate_cusums(self, ks: KeyState, half: int, cfg: AnomalyConfig, held: bool) -> list[Finding]:
        """Feed a key's sequential tests (error and refusal CUSUMs, latency) the calls of a half
        minute the watermark has passed; an alarm opens the finding stamped with the call
        that crossed the threshold. `held` as for evals."""
        ks.fed = max(ks.fed, half + H)
        calls = ks.pending.pop(half, None)
        if not calls:
            return []
        calls.sort()
        out: list[Finding] = []
        per_day = self._calls_per_day(ks.history.errors)
        h = max(cfg.rate_cusum_h, math.log(per_day * cfg.false_alarm_key_days))
        for kind, hist_name, metric, statuses in self._RATE_STATUSES:
            hist = getattr(ks.history, hist_name)
            cs = ks.cusums.get(kind)
            p0, hn = pooled(hist)
            if cfg.rate_cusum_h <= 0 or kind in ks.conds or len(hist) < cfg.min_history:
                for c in (cs, ks.cusums.get(kind + LOW)):
                    if c is not None:
                        c.reset()
                if kind in ks.conds and cfg.rate_cusum_h > 0 and len(hist) >= cfg.min_history:
                    thr = max(p0 + cfg.rate_min_delta, p0 * cfg.rate_min_ratio)
                    recovery(ks.cusums, kind, [c[2] in statuses for c in calls], cfg.min_calls, (p0 + thr) / 2)
                continue
            ks.cusums.pop(kind + RECOVERY, None)
            thr = max(p0 + cfg.rate_min_delta, p0 * cfg.rate_min_ratio)  # as the window test
            phi = dispersion(hist, p0, cfg.max_dispersion)
            obs = [(c[0], c[1], c[2] in statuses) for c in calls]
            # Two designs, a large rise and a moderate one (1 % -> 13 %: an incident at 15 % gains
            # 0.27 nats a call there, 0.17 against the large design), each at h + ln 2. A handful
            # of calls or errors does not page, nor strong evidence of a rise too small to page
            # (a run starts on an error: min_calls keeps it from being a lucky few).
            ts = None
            for name, shift in ((kind, cfg.rate_cusum_shift), (kind + LOW, cfg.rate_cusum_shift_low)):
                if shift <= 0:
                    continue
                one = ks.cusums.get(name) or ks.cusums.setdefault(name, Cusum())
                d = min(0.99, max(thr, p0 + shift))
                at = one.feed(obs, p0, d, phi, h + math.log(2),
                              lambda c: not held and c.n >= cfg.rate_cusum_min_calls
                              and c.hits >= cfg.rate_cusum_min_hits and c.hits >= thr * c.n)
                if at is not None and (ts is None or at < ts):
                    ts, cs, p1 = at, one, d
            if ts is None:
                continue
            rate = cs.hits / cs.n
            v = Verdict("anomalous", rate, p0, p1, sev_delta(rate - p0),
                        {"metric": metric, "method": "cusum", "observed": round(rate, 4), "baseline": round(p0, 5),
                         "design_rate": round(p1, 4), "dispersion": round(phi, 3),
                         "baseline_method": f"pooled rate of {len(hist)} windows ({hn} calls)",
                         "calls": cs.n, "count": cs.hits, "run_start_ts": cs.since,
                         "statistic": round(cs.s, 3), "threshold_nats": round(h + math.log(2), 3)})
            for name in (kind, kind + LOW):
                if name in ks.cusums:
                    ks.cusums[name].reset()
            out += self._open_sequential(ks, kind, v, ts, cfg)
        out += self._per_call_cusums(ks, calls, cfg, held, h)
        return out

    @staticmethod
    def _calls_per_day(hist: deque) -> float:
        """A key's calls a day at its recent volume: the observations a sequential test sees
        in a day, which sets its threshold for a false-alarm rate per key-day."""
        n = sum(c for _, c in hist)
        return max(1.0, 1_440.0 * n / len(hist)) if hist else 1.0

    # Per-call metrics tested sequentially: kind, History deque of recent values, the ratio
    # over the baseline median that a call must pass besides the baseline p95 (0: p95 alone).
    _PER_CALL = (("latency_regression", "latencies", "p95_latency_ms", None),
                 ("token_spike", "token_values", "tokens_per_call", "token_ratio"),
                 ("cost_spike", "cost_values", "cost_per_call_usd", "cost_ratio"))

    def _per_call_cusums(self, ks: KeyState, calls: list, cfg: AnomalyConfig, held: bool, h: float) -> list[Finding]:
        """Latency, tokens and cost per call, sequentially: one observation per trace of the
        half minute (its ok calls' median, so one trace is one observation), over a threshold
        from the key's recent ok calls (their p95, and ratio x their median) or not; a
        Bernoulli CUSUM of `latency_exceed_p0` against `latency_cusum_p1`. A call whose tokens
        are over the tokens threshold is token_spike's alone (a longer prompt is slower and
        dearer too); while tokens spike, latency and cost wait."""
        ok = [c for c in calls if c[2] not in ERROR_STATUSES and c[2] not in REFUSAL_STATUSES]
        thresholds = {}
        for kind, name, _, ratio in self._PER_CALL:
            samples = getattr(ks.history, name)
            if len(samples) >= cfg.min_history * 5:
                q95, med = p95_and_median(samples)
                thresholds[kind] = max(q95, getattr(cfg, ratio) * med if ratio else 0.0)
        tok_thr = thresholds.get("token_spike")
        tokens_up = "token_spike" in ks.conds or ks.cusums.get("token_spike", Cusum()).s >= LEARN_NATS
        out: list[Finding] = []
        for idx, (kind, name, metric, _) in enumerate(self._PER_CALL):
            value = {"latency_regression": 3, "token_spike": 5, "cost_spike": 6}[kind]
            usable = [c for c in ok if c[value] is not None and (kind == "token_spike" or tok_thr is None
                                                                 or not c[5] or c[5] <= tok_thr)]
            blocked = kind in ks.conds or (kind != "token_spike" and tokens_up)
            samples = getattr(ks.history, name)
            cs = ks.cusums.get(kind)
            if not blocked and (cs is None or cs.s < LEARN_NATS):  # learn, a few calls a half minute at most
                samples.extend(c[value] for c in usable[: max(1, cfg.latency_samples // (2 * cfg.history_windows))])
            thr = thresholds.get(kind)
            if kind not in ks.conds:
                ks.cusums.pop(kind + RECOVERY, None)
            elif thr is not None and cfg.latency_cusum_p1 > 0:  # is the open condition over?
                p0 = cfg.latency_exceed_p0
                recovery(ks.cusums, kind, [o[2] for o in trace_obs(usable, value, thr)], cfg.rate_cusum_min_calls,
                         p0 + (cfg.latency_cusum_p1 - p0) / 5)
            if cfg.latency_cusum_p1 <= 0 or blocked or thr is None:
                if cs is not None:
                    cs.reset()
                continue
            cs = cs or ks.cusums.setdefault(kind, Cusum())
            obs = trace_obs(usable, value, thr)
            at = cs.feed(obs, cfg.latency_exceed_p0, cfg.latency_cusum_p1, 1.0, h,
                         lambda c: not held and c.n >= cfg.rate_cusum_min_calls and c.hits >= c.n / 2)
            if at is None:
                continue
            share = cs.hits / cs.n
            base = median(list(samples))
            v = Verdict("anomalous", thr * (1 + share), base, thr, "high" if share >= 0.8 else "medium",
                        {"metric": metric, "method": "cusum", "baseline": round(base, 6), "threshold": round(thr, 6),
                         "baseline_method": f"median and p95 of {len(samples)} recent ok calls",
                         "traces": cs.n, "traces_over_threshold": cs.hits, "share_over": round(share, 3),
                         "design_share": cfg.latency_cusum_p1, "run_start_ts": cs.since,
                         "statistic": round(cs.s, 3), "threshold_nats": round(h, 3)})
            cs.reset()
            out += self._open_sequential(ks, kind, v, at, cfg)
        return out

    def _open_sequential(self, ks: KeyState, kind: str, v: Verdict, ts: int, cfg: AnomalyConfig) -> list[Finding]:
        scope = {"tenant": ks.tenant, "workflow": ks.workflow, "model": ks.model}
        tracker = self._tracker_for(ks.tenant, ks.workflow, ts // W * W, cfg)
        return self._lifecycle(ks.conds, kind, v, scope, ts - W, cfg, tracker, ks.history)

    def _close_eval(self, es: EvalState, minute: int, cfg: AnomalyConfig) -> list[Finding]:
        end = minute + W
        a, b = es.windows.get(minute, (0, 0)), es.windows.get(minute + H, (0, 0))
        cell = (a[0] + b[0], a[1] + b[1])
        v = eval_verdict(es, end, cfg)
        scope = {"tenant": es.tenant, "workflow": es.workflow, "model": "", "eval_name": es.eval_name}
        tracker = self._tracker_for(es.tenant, es.workflow, minute, cfg)
        out = self._lifecycle(es.conds, "eval_regression", v, scope, minute, cfg, tracker, es.history)
        # Halves older than the longest span of the next early look are no longer needed.
        oldest = end + H - cfg.eval_max_span * W
        for half in [x for x in es.windows if x < oldest]:
            del es.windows[half]
        # As for rates: a minute far under the baseline is not learned even when it does not page.
        h = es.history.evals
        p0, _ = pooled(h)
        suspect = (cell[1] and len(h) >= cfg.min_history and cell[0] / cell[1] <= p0 - cfg.eval_min_drop
                   and binom_sf(cell[1] - cell[0], cell[1], 1 - p0) <= cfg.learn_alpha)
        if cell[1] and v.state != "anomalous" and "eval_regression" not in es.conds and not suspect:
            h.append((cell[0], cell[1]))
        return out

