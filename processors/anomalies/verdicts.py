"""Verdicts per metric: one window (or span) of one scope against its baseline history.

Each returns a `Verdict`: anomalous (opens/keeps a condition), elevated (between baseline
and threshold: neither opens nor clears), normal, insufficient (too little data), or
explained (another metric's finding speaks for it)."""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

from llmpulse.processors.anomalies.config import H, W, AnomalyConfig
from llmpulse.processors.anomalies.stats import (
    binom_sf, binom_sf_mixed, dispersion, mad, median, pooled, quantile, quasi,
)
from llmpulse.processors.anomalies.windows import EvalState, History, Window

def verdict_state(bad: bool, clear: bool) -> str:
    return "anomalous" if bad else "normal" if clear else "elevated"


class Verdict(NamedTuple):
    # anomalous: opens/keeps a condition; elevated: not anomalous, not clear either (halfway
    # between baseline and threshold); normal: clear; insufficient: too little data to say;
    # explained: cost rise explained by tokens (token_spike speaks for it).
    state: str
    value: float = 0.0
    baseline: float = 0.0
    threshold: float = 0.0
    severity: str = "low"
    evidence: dict = {}


INSUFFICIENT = Verdict("insufficient")
SUSPECT = Verdict("insufficient", evidence={"suspect": True})  # too few calls to test, too odd to learn
ANOMALY_KINDS = ("traffic_drop", "error_rate_spike", "refusal_spike", "latency_regression", "cost_spike", "token_spike")

def sev_delta(delta: float) -> str:
    return "critical" if delta >= 0.4 else "high" if delta >= 0.2 else "medium" if delta >= 0.1 else "low"


def sev_ratio(ratio: float) -> str:
    return "critical" if ratio >= 4 else "high" if ratio >= 2.5 else "medium" if ratio >= 1.75 else "low"


SEV_RANK = {"critical": 4, "high": 3, "medium": 2, "low": 1, "info": 0}


def newest_half_severity(kind: str, v: Verdict, half: Window | None, cfg: AnomalyConfig) -> str:
    """An early look's window is half normal traffic when the incident began inside it: its
    magnitude understates the incident. Severity (which decides who is paged) follows the
    newest half minute when that has >= min_calls / 2 calls; it only ever raises it."""
    if half is None or half.calls < max(1, cfg.min_calls // 2) or not v.baseline:
        return v.severity
    if kind == "error_rate_spike":
        sev = sev_delta(half.errors / half.calls - v.baseline)
    elif kind == "refusal_spike":
        sev = sev_delta(half.refusals / half.calls - v.baseline)
    elif kind == "latency_regression" and half.latencies:
        sev = sev_ratio(quantile(half.latencies, 0.95) / v.baseline)
    elif kind == "cost_spike" and half.trimmed()[1].n:
        sev = sev_ratio(half.trimmed()[1].mean / v.baseline)
    elif kind == "token_spike" and half.trimmed()[0].n:
        sev = sev_ratio(half.trimmed()[0].mean / v.baseline)
    else:  # traffic_drop: a quiet half minute is noisier than a quiet minute; keep the window's
        return v.severity
    return max(v.severity, sev, key=SEV_RANK.__getitem__)




def rate_verdict(k: int, n: int, hist: deque, cfg: AnomalyConfig, metric: str) -> Verdict:
    if len(hist) < cfg.min_history or not n or (n < cfg.min_calls and not k):
        return INSUFFICIENT
    p0, hn = pooled(hist)
    rate = k / n
    thr = max(p0 + cfg.rate_min_delta, p0 * cfg.rate_min_ratio)
    # Over the threshold and improbable for a plain binomial: not learned into the
    # baseline even when too small or not significant enough to page (the first
    # minutes of an incident, or its minutes under min_calls, must not raise p0 and
    # the dispersion until the incident looks normal).
    suspect = rate >= thr and binom_sf(k, n, p0) <= cfg.learn_alpha
    if n < cfg.min_calls:
        return SUSPECT if suspect else INSUFFICIENT
    phi = dispersion(hist, p0, cfg.max_dispersion) if rate >= thr else 1.0
    sigma = cfg.rate_sigma
    pval = binom_sf_mixed(*quasi(k, n, phi), p0, sigma) if rate >= thr else 1.0
    bad = rate >= thr and pval <= cfg.alpha
    return Verdict(
        verdict_state(bad, rate < (p0 + thr) / 2), rate, p0, thr, sev_delta(rate - p0),
        {"metric": metric, "observed": round(rate, 4), "baseline": round(p0, 5),
         "baseline_method": f"pooled rate of {len(hist)} windows ({hn} calls), dispersion {phi:.2f}, sigma {sigma:.2f}",
         "threshold": round(thr, 4),
         "calls": n, "count": k, "p_value": pval, "suspect": suspect},
    )

def robust_verdict(value: float | None, hist: deque, ratio: float, cfg: AnomalyConfig, metric: str,
            log_z: float = 0.0) -> Verdict:
    if value is None or len(hist) < cfg.min_history:
        return INSUFFICIENT
    vals = list(hist)
    med = median(vals)
    scale = 1.4826 * mad(vals, med)
    thr = max(med * ratio, med + cfg.robust_z * scale)
    if log_z > 0 and med > 0 and min(vals) > 0:
        # Multiplicative noise (a provider's slow minute scales every call): the spread
        # of log values, whose right tail is longer than a symmetric MAD allows.
        logs = [math.log(x) for x in vals]
        lmed = median(logs)
        thr = max(thr, med * math.exp(log_z * 1.4826 * mad(logs, lmed)))
    bad = med > 0 and value >= thr
    return Verdict(
        verdict_state(bad, value < (med + thr) / 2), value, med, thr, sev_ratio(value / med if med else 0.0),
        {"metric": metric, "observed": round(value, 6), "baseline": round(med, 6),
         "baseline_method": f"median of {len(vals)} windows, MAD {scale:.6g}", "threshold": round(thr, 6),
         "ratio": round(value / med, 3) if med else None},
    )

def latency_verdict(win: Window, h: History, cfg: AnomalyConfig) -> Verdict:
    """p95 over its robust threshold, and significantly many calls above the baseline p95.

    The p95 of a few dozen calls is one or two calls: alone it pages on a couple of
    slow outliers. A real regression moves many calls past the old p95.
    """
    if win.ok < cfg.min_calls or not win.latencies:
        return INSUFFICIENT
    v = robust_verdict(quantile(win.latencies, 0.95), h.p95, cfg.latency_ratio, cfg, "p95_latency_ms",
                    cfg.latency_log_z)
    if v.state not in ("anomalous", "elevated"):
        return v
    above = sum(1 for x in win.latencies if x > v.baseline)
    pval = binom_sf(above, len(win.latencies), cfg.latency_exceed_p0)
    # Elevated and many calls past the old p95: not learned (the first, still sub-threshold
    # minutes of a regression must not widen the baseline's spread).
    ev = {**v.evidence, "calls_above_baseline_p95": above, "calls": len(win.latencies), "p_value": pval,
          "suspect": pval <= cfg.learn_alpha}
    p50 = quantile(win.latencies, 0.5)
    z50 = p50_z(p50, h)
    if z50 is not None:
        ev["p50_robust_z"] = round(z50, 2)
        if z50 < cfg.latency_p50_z:
            pval = 1.0  # not a regression of the bulk of the calls: do not page
    if v.state == "elevated":
        # The p95 of a few dozen calls swings, so its MAD threshold is wide; the median
        # moves far less. Every call slower by latency_ratio (a slower model, region or
        # prompt) shows there first: that, with the calls past the old p95, is enough.
        base50 = median(list(h.p50)) if len(h.p50) >= cfg.min_history else 0.0
        if base50 > 0 and p50 >= cfg.latency_ratio * base50 and pval <= cfg.alpha:
            ev.update(p50_latency_ms=round(p50, 1), baseline_p50=round(base50, 1), detected_by="median")
            return v._replace(state="anomalous", severity=sev_ratio(p50 / base50), evidence=ev)
        return v._replace(evidence=ev)
    return v._replace(state=verdict_state(pval <= cfg.alpha, False), evidence=ev)

def p50_z(p50: float, h: History) -> float | None:
    """A window's median latency in robust SDs of the history's log p50 above its median."""
    if len(h.p50) < 2:
        return None
    logs = [math.log(x) for x in h.p50 if x > 0]
    med = median(logs)
    spread = 1.4826 * mad(logs, med)
    if spread <= 0 or p50 <= 0:
        return None
    return (math.log(p50) - med) / spread

def eval_verdict(es: EvalState, end: int, cfg: AnomalyConfig) -> Verdict:
    """Pass rate of the newest 1..eval_max_span minutes before `end` (those with >= min_evals
    evals); the most significant drop wins, its p-value paying for the extra looks (Bonferroni)."""
    h = es.history.evals
    p0, hist_total = pooled(h)
    if len(h) < cfg.min_history or hist_total < cfg.min_eval_history:
        return INSUFFICIENT
    spans: list[tuple[float, int, int]] = []
    phi = dispersion(h, p0, cfg.max_dispersion)
    passed = total = 0
    looks = cfg.eval_max_span + 1  # the newest minute alone with >= min_evals / 2 is one more look
    for i in range(cfg.eval_max_span):
        for half in (end - (i + 1) * W, end - (i + 1) * W + H):
            p, t = es.windows.get(half, (0, 0))
            passed, total = passed + p, total + t
        if total >= cfg.min_evals or (i == 0 and total >= max(1, cfg.min_evals // 2)):
            # lower tail of passes = upper tail of failures, widened by the dispersion
            fk, fn = quasi(total - passed, total, phi)
            spans.append((binom_sf(fk, fn, 1 - p0) * looks, passed, total))
    if not spans:
        return INSUFFICIENT
    pval, passed, total = min(spans)
    rate = passed / total
    bad = p0 - rate >= cfg.eval_min_drop and pval <= cfg.eval_alpha
    return Verdict(
        verdict_state(bad, rate >= p0 - cfg.eval_min_drop / 2), rate, p0, p0 - cfg.eval_min_drop, sev_delta(p0 - rate),
        {"metric": "eval_pass_rate", "eval_name": es.eval_name, "observed": round(rate, 4),
         "baseline": round(p0, 4), "baseline_method": f"pooled pass rate of {len(h)} windows",
         "dispersion": round(phi, 3), "evals": total, "p_value": pval},
    )



# A condition opened by a sequential test on a key with too few calls a minute for the window
# tests (a 10-call/min key never has min_calls in a minute) must still clear: else it stays
# open all day and silences every later incident of its kind on that key (and a token spike
# silences latency and cost too). While open, the key's newest calls (traces, for per-call
# metrics) are pooled back over half minutes until there are enough to judge; a minute the
# window test cannot judge counts as clear when that pool is under the clear level, the
# window tests' hysteresis (halfway between baseline and threshold).
RECOVERY = "/recovery"  # suffix of the pool's name in a key's cusums
SEQUENTIAL_KINDS = frozenset({"error_rate_spike", "refusal_spike", "latency_regression", "cost_spike", "token_spike"})


class Recent:
    """The newest half minutes' (hits, observations) of a key while a condition is open."""

    __slots__ = ("halves", "clear")
    s = 0.0  # not a sequential run (the learning gate reads every entry's statistic)

    def __init__(self) -> None:
        self.halves: deque = deque(maxlen=40)
        self.clear = False

    def reset(self) -> None:
        self.halves.clear()
        self.clear = False


def recovery(cusums: dict, kind: str, hits: list[bool], need: int, level: float) -> None:
    """Add a half minute's observations (hit: an error, a trace over threshold); clear when the
    newest `need` or more of them (whole half minutes, up to 20 minutes back) hit under `level`."""
    r = cusums.get(kind + RECOVERY)
    if r is None:
        r = cusums[kind + RECOVERY] = Recent()
    if hits:
        r.halves.append((sum(hits), len(hits)))
    k = n = 0
    for hk, hn in reversed(r.halves):
        k, n = k + hk, n + hn
        if n >= need:
            break
    r.clear = n >= need and k < level * n


def sequential_state(kind: str, v: Verdict, conds: dict, cusums: dict) -> Verdict:
    """A minute the window test cannot judge (too few calls) while a condition is open: clear
    when the newest calls say so, else the condition holds and ages (a shift that lasts
    `max_open_windows` minutes is accepted as the new normal, as for the window tests)."""
    if v.state != "insufficient" or kind not in conds or kind not in SEQUENTIAL_KINDS:
        return v
    r = cusums.get(kind + RECOVERY)
    if r is not None and r.clear and not v.evidence.get("suspect"):
        return Verdict("normal")
    return Verdict("anomalous", evidence={"held": "sequential"})


def trace_obs(calls: list, value: int, thr: float) -> list[tuple[int, str, bool]]:
    """One observation per trace of a half minute's ok calls (the median of its values; the
    trace is complete at its last call here), over `thr` or not, in (ts, event_id) order."""
    traces: dict[str, list] = {}
    for c in calls:
        traces.setdefault(c[4], []).append((c[0], c[1], c[value]))
    obs = []
    for items in traces.values():
        items.sort()
        ts, eid, _ = items[-1]
        obs.append((ts, eid, median([x for _, _, x in items]) > thr))
    obs.sort()
    return obs
