"""Changes and eval comparison: a `change` event starts a tracker per affected workflow.
It activates when its minute closes (swapped models get fresh baselines), compares the
workflow's rates, cost, latency and eval pass rate after it with the `before_windows`
minutes before it, and per-key spikes in the next `change_windows` minutes are attributed
to it (one `regression_after_change` naming it). Mixed into the detector."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from llmpulse.processors.anomalies.config import ERROR_STATUSES, REFUSAL_STATUSES, W, AnomalyConfig
from llmpulse.processors.anomalies.stats import binom_sf, binom_sf_mixed, dispersion, mad, median, quantile, quasi, welch_z
from llmpulse.processors.anomalies.verdicts import SEV_RANK, Verdict, sev_delta, sev_ratio
from llmpulse.processors.anomalies.windows import Window
from llmpulse.schemas.contract import Change, Output
from llmpulse.schemas.findings import Finding, finding_id

@dataclass(slots=True)
class ChangeTracker:
    """One change on one (tenant, workflow): before/after comparison and attribution."""

    change: Change
    tenant: str
    workflow: str
    minute: int  # minute of the change; the tracker activates when it closes
    before: Window | None = None  # set at activation, from the closed minutes before
    before_minutes: list = field(default_factory=list)  # per-minute MinuteSummary of `before`
    after: Window = field(default_factory=Window)  # events at or after the change, as they arrive
    after_windows: int = 0
    active: bool = False
    finding: Finding | None = None
    attributed: list[str] = field(default_factory=list)
    own: set[str] = field(default_factory=set)  # metrics whose spike began before the change
    after_models: dict[str, int] = field(default_factory=dict)  # ok calls after, per model

    def add(self, ev: Output, cost_usd: float | None, max_lat: int) -> None:
        """A call under the new configuration (see `after_change`)."""
        self.after.add_output(ev, cost_usd, max_lat)
        if ev.status not in ERROR_STATUSES and ev.status not in REFUSAL_STATUSES:
            self.after_models[ev.model] = self.after_models.get(ev.model, 0) + 1



def after_change(ev: Output, ch: Change) -> bool:
    """A call made under the new configuration: started after the change, and not on the
    model swapped away from (agent traces and in-flight requests drain on the old one)."""
    if ev.ts - ev.latency_ms < ch.ts:
        return False
    return not (ch.change_kind in ("model_swap", "rollback") and ch.from_value and ev.model == ch.from_value)


class MinuteSummary(NamedTuple):
    """What the change comparison needs of one workflow minute: its minute-to-minute spread."""

    calls: int
    errors: int
    refusals: int
    cost: float | None  # mean cost per ok call (None under 5 calls)
    lat: float | None  # mean latency of ok calls
    ev_pass: int
    ev_total: int

    @classmethod
    def of(cls, w: Window) -> "MinuteSummary":
        return cls(w.calls, w.errors, w.refusals, w.cost.mean if w.cost.n >= 5 else None,
                   w.lat.mean if w.lat.n >= 5 else None, w.ev_pass, w.ev_total)


def minute_z(log_ratio: float, before_logs: list[float], after_minutes: float) -> float:
    """z of a log-ratio of means against the before side's minute-to-minute spread (robust sd
    of log per-minute means): a provider's slow minute or a pricier minute mix is noise that
    the pooled per-call Welch test cannot see, since it takes every call as independent."""
    if len(before_logs) < 5:
        return math.inf
    med = median(before_logs)
    sd = 1.4826 * mad(before_logs, med)
    if sd <= 0:
        return math.inf
    return log_ratio / (sd * math.sqrt(1 / after_minutes + 1 / len(before_logs)))


def compare(before: Window, after: Window, cfg: AnomalyConfig, before_minutes: list | None = None,
             after_minutes: float = 1.0) -> list[dict]:
    """Metrics that got significantly worse after a change (empty: none).

    Rates: binomial tail widened by the before minutes' dispersion (quasi-binomial) and a
    lognormal rate factor (`rate_sigma`); cost and latency: ratio, Welch z per call, and z of
    the log ratio against the before minutes' spread with `after_minutes` minutes after."""
    bm = before_minutes or []
    worse: list[dict] = []
    if before.calls >= cfg.change_min_calls and after.calls >= cfg.change_min_calls:
        for metric, kb, ka, idx in (("error_rate", before.errors, after.errors, 1),
                                    ("refusal_rate", before.refusals, after.refusals, 2)):
            p0 = (kb + 0.5) / (before.calls + 1)
            rate = ka / after.calls
            if rate - p0 >= cfg.change_rate_delta and rate >= 1.5 * p0:
                phi = dispersion([(m[idx], m.calls) for m in bm], p0, cfg.max_dispersion)
                pval = binom_sf_mixed(*quasi(ka, after.calls, phi), p0, cfg.rate_sigma)
                if pval <= cfg.alpha:
                    worse.append({"metric": metric, "before": round(p0, 4), "observed": round(rate, 4),
                                  "threshold": round(p0 + cfg.change_rate_delta, 4), "p_value": pval,
                                  "dispersion": round(phi, 3), "calls_after": after.calls,
                                  "severity": sev_delta(rate - p0)})
    if before.cost.n >= cfg.change_min_calls and after.cost.n >= cfg.change_min_calls and before.cost.mean > 0:
        r = after.cost.mean / before.cost.mean
        if r >= cfg.change_ratio and welch_z(after.cost, before.cost) >= cfg.change_z:
            z = minute_z(math.log(r), [math.log(m.cost) for m in bm if m.cost], after_minutes)
            if z >= cfg.change_z:
                worse.append({"metric": "cost_per_call_usd", "before": before.cost.mean, "observed": after.cost.mean,
                              "threshold": before.cost.mean * cfg.change_ratio, "ratio": round(r, 3),
                              "minute_z": round(min(z, 1e9), 2), "severity": sev_ratio(r)})
    if len(before.latencies) >= cfg.change_min_calls and len(after.latencies) >= cfg.change_min_calls:
        pb, pa = quantile(before.latencies, 0.95), quantile(after.latencies, 0.95)
        r = pa / pb if pb else 0.0
        if r >= cfg.change_ratio and welch_z(after.lat, before.lat) >= cfg.change_z and before.lat.mean > 0:
            z = minute_z(math.log(max(after.lat.mean, 1e-9) / before.lat.mean),
                          [math.log(m.lat) for m in bm if m.lat], after_minutes)
            if z >= cfg.change_z:
                worse.append({"metric": "p95_latency_ms", "before": pb, "observed": pa, "threshold": pb * cfg.change_ratio,
                              "ratio": round(r, 3), "minute_z": round(min(z, 1e9), 2), "severity": sev_ratio(r)})
    if before.ev_total >= cfg.min_eval_history and after.ev_total >= cfg.min_evals:
        p0 = (before.ev_pass + 0.5) / (before.ev_total + 1)
        rate = after.ev_pass / after.ev_total
        if p0 - rate >= cfg.change_eval_drop:
            phi = dispersion([(m.ev_total - m.ev_pass, m.ev_total) for m in bm], 1 - p0, cfg.max_dispersion)
            pval = binom_sf(*quasi(after.ev_total - after.ev_pass, after.ev_total, phi), 1 - p0)
            if pval <= cfg.alpha:
                worse.append({"metric": "eval_pass_rate", "before": round(p0, 4), "observed": round(rate, 4),
                              "threshold": round(p0 - cfg.change_eval_drop, 4), "p_value": pval,
                              "dispersion": round(phi, 3), "evals_after": after.ev_total,
                              "severity": sev_delta(p0 - rate)})
    return worse



# A sequential test's run may start on a chance hit shortly before the change it belongs to.
ONSET_SLACK_MS = 60_000
# A change's finding speaks for spikes of a metric it names this long after it opened (more
# keys of the workflow reaching the same regression), and while any such spike is open.
LIVE_MS = 5 * 60_000
# The change comparison's metrics each per-key kind speaks for (longer prompts are slower and dearer).
KIND_METRICS = {"error_rate_spike": ("error_rate",), "refusal_spike": ("refusal_rate",),
                "latency_regression": ("p95_latency_ms",), "cost_spike": ("cost_per_call_usd",),
                "token_spike": ("cost_per_call_usd", "p95_latency_ms")}
# Per-call metrics: the change comparison's name, the KeyState history of recent ok calls.
MIX_METRICS = {"cost_per_call_usd": "cost_values", "p95_latency_ms": "latencies"}


class Changes:
    def _add_change(self, ch: Change) -> list[Finding]:
        """A change starts a tracker per affected workflow; it replaces (and resolves) the previous one."""
        workflows = [ch.workflow] if ch.workflow else sorted({wf for (t, wf) in self._wf_minutes if t == ch.tenant})
        out: list[Finding] = []
        for wf in workflows:
            prev = self._trackers.get((ch.tenant, wf))
            if prev is not None and (prev.change.ts, prev.change.event_id) > (ch.ts, ch.event_id):
                continue  # an older change arriving late does not replace a newer one
            if prev is not None and prev.finding is not None:
                out += self._resolved(prev.finding, ch.ts, f"superseded by change {ch.event_id}")
            tr = self._trackers[(ch.tenant, wf)] = ChangeTracker(ch, ch.tenant, wf, ch.ts // W * W)
            if ch.change_kind == "rollback" and prev is not None and prev.before is not None:
                tr.before = prev.before  # judged against what it restores, not the period it undoes
                tr.before_minutes = prev.before_minutes
        return out

    def _activate_changes(self, minute: int) -> list[Finding]:
        """Trackers whose change minute is closing: learn `before`, reset swapped models' baselines."""
        out: list[Finding] = []
        for tr in self._trackers.values():
            if tr.active or tr.minute > minute:
                continue
            tr.active = True
            cfg = self.config_for(tr.workflow)
            if tr.before is None:
                tr.before = Window()
                lo = tr.minute - cfg.before_windows * W
                for m, win in self._wf_minutes.get((tr.tenant, tr.workflow), ()):
                    if lo <= m < tr.minute:
                        tr.before.merge(win, 10 * cfg.max_latency_samples)
                        tr.before_minutes.append(MinuteSummary.of(win))
            ch = tr.change
            if ch.change_kind in ("model_swap", "rollback"):
                out += self._reset_models(tr.tenant, tr.workflow, {ch.from_value, ch.to_value}, minute + W, ch)
        return out

    def _reset_models(self, tenant: str, wf: str, models: set[str], end: int, ch: Change) -> list[Finding]:
        """Traffic moves between models on a swap: both keys start a fresh baseline, except for
        error and refusal rates: the model swapped to starts from the one it replaces (the
        workflow's rates are the best prior there is), so a burst in its first minutes is
        tested, not learned, and one that a bad swap causes names the change."""
        out: list[Finding] = []
        keys = [ks for (t, w, m), ks in self._keys.items() if t == tenant and w == wf and m in models]
        prior = next((ks.history for ks in keys if ks.model == ch.from_value), None)
        rates = (list(prior.errors), list(prior.refusals)) if prior is not None else ([], [])
        for ks in keys:
            ks.history.reset()
            ks.drop.reset()
            ks.cusums.clear()
            if ks.model == ch.to_value:
                ks.history.errors.extend(rates[0])
                ks.history.refusals.extend(rates[1])
            # The model swapped away from drains (agent traces, calls in flight) and then
            # stops for good: its silence is the change, not an outage.
            ks.retired = ks.model == ch.from_value
            out += self._drop_conditions(ks.conds, end, f"baseline reset by change {ch.event_id}")
        return out

    def _tracker_for(self, tenant: str, wf: str, minute: int, cfg: AnomalyConfig) -> ChangeTracker | None:
        tr = self._trackers.get((tenant, wf))
        if tr is None or not tr.active or minute >= tr.minute + (cfg.change_windows + 1) * W:
            return None
        return tr

    def _attribute(self, tr: ChangeTracker, kind: str, v: Verdict, scope: dict, minute: int,
                   end: int) -> list[Finding] | None:
        """A spike after a change is reported as the change's regression, naming the metric,
        unless that would swallow it: None (the spike opens its own finding) when it began
        before the change, or when the change's finding already names other metrics only."""
        onset = v.evidence.get("run_start_ts", minute)
        if onset < tr.change.ts - ONSET_SLACK_MS:
            return None
        if tr.finding is not None and tr.finding.event_ts == end:
            # Another metric of the same window as the change's page (a longer prompt: slower and
            # dearer at once): the same page names it too. Not yet emitted: the window's findings
            # leave together.
            metrics = tr.finding.evidence["metrics"]
            if v.evidence.get("metric") not in {m.get("metric") for m in metrics}:
                metrics.append({**v.evidence, "detected_by": kind, "model": scope["model"]})
                tr.finding.title = self._change_title(tr, metrics)
            tr.attributed.append(kind)
            return []
        if tr.finding is not None:
            named = {m.get("metric") for m in tr.finding.evidence.get("metrics", ())}
            if v.evidence.get("metric") not in named or not self._still_live(tr, kind, end):
                return None
            tr.attributed.append(kind)
            return []  # the change's finding already pages for this metric
        tr.attributed.append(kind)
        metric = {**v.evidence, "detected_by": kind, "model": scope["model"]}
        return self._change_finding(tr, [metric], end, v.severity)

    def _evaluate_change(self, tr: ChangeTracker, minute: int) -> list[Finding]:
        cfg = self.config_for(tr.workflow)
        if tr.finding is not None or not tr.active or tr.after_windows > cfg.change_windows:
            return []
        tr.after_windows += 1
        # How many minutes of after-change data there are (the change minute counts in part):
        # the after side is that many draws of the minute-to-minute noise, not n independent calls.
        after_minutes = max(0.5, (minute + W - tr.change.ts) / W)
        worse = [w for w in compare(tr.before, tr.after, cfg, tr.before_minutes, after_minutes)
                 if w["metric"] not in self._began_before(tr) and self._beyond_mix(tr, w, cfg)]
        if not worse:
            return []
        sev = max((w.pop("severity") for w in worse), key=lambda s: SEV_RANK[s])
        return self._change_finding(tr, worse, minute + W, sev)

    def _still_live(self, tr: ChangeTracker, kind: str, end: int) -> bool:
        """Is the change's regression of this kind still under way: its finding opened in the
        last few minutes, or another key's spike of the kind attributed to it still open? A
        spike after those cleared is a new incident and pages as its own."""
        if tr.finding is not None and end - tr.finding.event_ts <= LIVE_MS:
            return True
        return any(t == tr.tenant and wf == tr.workflow and kind in ks.conds and ks.conds[kind].finding is None
                   for (t, wf, _), ks in self._keys.items())

    def _began_before(self, tr: ChangeTracker) -> set[str]:
        """Metrics of the workflow with a finding of their own that began before the change: a
        spike already under way is its own finding, and the after side, which it fills, is no
        evidence against the change (remembered for the tracker's whole period: the incident's
        calls stay in the after side once it has cleared)."""
        for (t, wf, _), ks in self._keys.items():
            if t != tr.tenant or wf != tr.workflow:
                continue
            for kind, cond in ks.conds.items():
                metrics = KIND_METRICS.get(kind, ())
                if not metrics or cond.finding is None:
                    continue
                ev = cond.finding.evidence
                if min(ev.get("run_start_ts", ev["window_start"]), ev["window_start"]) < tr.change.ts - ONSET_SLACK_MS:
                    tr.own.update(metrics)
        return tr.own

    def _beyond_mix(self, tr: ChangeTracker, w: dict, cfg: AnomalyConfig) -> bool:
        """A workflow's cost or latency per call moves with its model mix: a few more calls
        on its dear model (1 call/min of an opus next to 10 of a mini) is 2x the mean cost,
        with no model any dearer. Worse after the change must hold at the after side's mix:
        against what each model cost (took) in its recent calls before, weighted by its share
        of the calls after. A model with no such history (new, swapped to) keeps the plain
        comparison."""
        name = MIX_METRICS.get(w["metric"])
        if name is None or len(tr.after_models) < 2:
            return True
        expected = total = 0.0
        for model, n in tr.after_models.items():
            ks = self._keys.get((tr.tenant, tr.workflow, model))
            samples = getattr(ks.history, name) if ks is not None else ()
            if len(samples) < cfg.change_min_calls:
                return True
            expected += n * sum(samples) / len(samples)
            total += n
        observed = tr.after.cost.mean if name == "cost_values" else tr.after.lat.mean
        ratio = observed * total / expected if expected > 0 else math.inf
        w["mix_ratio"] = round(ratio, 3)
        return ratio >= cfg.change_ratio

    @staticmethod
    def _change_title(tr: ChangeTracker, metrics: list[dict]) -> str:
        ch = tr.change
        names = ", ".join(m["metric"] for m in metrics)
        what = f"{ch.change_kind} {ch.from_value} -> {ch.to_value}".strip() if ch.from_value or ch.to_value else ch.change_kind
        return f"{names} worse after {what} on {tr.workflow}"

    def _change_finding(self, tr: ChangeTracker, metrics: list[dict], end: int, severity: str) -> list[Finding]:
        ch = tr.change
        tr.finding = Finding(
            finding_id=finding_id("regression_after_change", tr.tenant, tr.workflow, ch.event_id),
            detected_at=self._clock(),
            event_ts=end,
            kind="regression_after_change",
            severity=severity,  # type: ignore[arg-type]
            tenant=tr.tenant,
            workflow=tr.workflow,
            title=self._change_title(tr, metrics),
            value=metrics[0].get("observed"),
            threshold=metrics[0].get("threshold"),
            evidence={"change_event_id": ch.event_id, "change_kind": ch.change_kind, "change_ts": ch.ts,
                      "description": ch.description, "from_value": ch.from_value, "to_value": ch.to_value,
                      "actor": ch.actor, "metrics": metrics, "window_end": end},
        )
        return [tr.finding]


