"""Score the detectors on generated traffic: precision, recall, time to detect.

    python -m bench.detection.score /tmp/bench7 [/tmp/bench8 ...] [--order given|ts] [--check]

Runs the backtest (`llmpulse backtest`: the worker's Pipeline, replay clock) over each
events.jsonl with the loop and anomaly stages on, and matches the `open` findings with
labels.json. The benchmark prices calls with its own table (world.MODELS) and reports
them as `cost_usd`, so the price stage stays off and detectors see the reported cost.
An incident is caught when a finding of its kind for its scope (trace; or
tenant/workflow/model; eval name and change id where the label has them) has event_ts
in [start, end + 2 min]. Every other open finding is a false positive (findings in the
warm-up and quiet stretches are listed apart). TTD is event time from incident start
to the first matching finding. Floors: precision and recall >= 0.95 overall and per
kind; loops at the completing event (in arrival order: see `arrival_completions`);
every anomaly within 2 minutes. `--check` exits 1 when a floor is missed.

Stress days (labels.json with `"stress": true`, from bench.detection.stress) are run with
their own settings (contracts on) and judged by their own floors, per kind and volume band
(bench/detection/bands.py). A label with an empty workflow or model matches a finding of any.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from llmpulse.commands.backtest import BATCH, backtest, read_messages
from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.schemas.contract import Event
from llmpulse.schemas.findings import Finding
from llmpulse.settings import Settings

STAGES = ["loops", "anomalies"]

GRACE_MS = 120_000
LOOP_KINDS = ("tool_loop", "cycle_loop", "no_progress")
FLOOR = 0.95
TTD_FLOOR_MS = 120_000


def run_backtest(path: Path, order: str, settings: dict[str, Any] | None = None) -> tuple[list[Finding], int, int]:
    """Findings of the backtest over `path`/events.jsonl, the events and late drops.
    `settings` (a stress day's: its stages and contracts) replaces the default stages."""
    # Generated days may lie months back (the defaults start in 2026-03): no age bound here.
    conf = {"stages": STAGES, **(settings or {}), "limits": {"max_age_days": 36_500}}
    pipeline = Pipeline.from_settings(Settings(**conf), replay=True)
    events = path / "events.jsonl"
    if order == "given":  # file order = arrival order, as `llmpulse backtest FILE` reads it
        findings, counts = backtest(pipeline, events)
    else:  # event-time order: the same file sorted by (ts, event_id)
        dec = msgspec.json.Decoder(Event)
        lines = [ln for ln in events.read_bytes().splitlines() if ln.strip()]
        keys = [(e.ts, e.event_id) for e in map(dec.decode, lines)]
        lines = [ln for _, ln in sorted(zip(keys, lines), key=lambda kv: kv[0])]
        findings = []
        for i in range(0, len(lines), BATCH):
            batch = [RawMessage(ln, "backtest", 0, i + j) for j, ln in enumerate(lines[i:i + BATCH])]
            findings += pipeline.run(batch).findings
        findings += pipeline.flush()
        counts = {"events": len(lines)}
    late = sum(getattr(d, "late_dropped", 0) for d in pipeline.detectors)
    return findings, counts["events"], late


# What a regression_after_change must name (a metric or the detector that saw it) to count
# as the finding of a spike near its change (stress labels with `or_change`).
METRIC_WORDS = {"error_rate_spike": "error", "refusal_spike": "refusal", "latency_regression": "latency",
                "token_spike": "token", "cost_spike": "cost", "traffic_drop": "calls"}


def _names_metric(f: Finding, lab: dict[str, Any]) -> bool:
    if f.evidence.get("change_event_id") != lab.get("change_ref"):
        return False
    word = METRIC_WORDS.get(lab["kind"], lab["kind"])
    return any(m.get("detected_by") == lab["kind"] or word in str(m.get("metric", ""))
               for m in f.evidence.get("metrics", []) if isinstance(m, dict))


def _matches(f: Finding, lab: dict[str, Any]) -> bool:
    if not lab["start_ts"] <= f.event_ts <= lab["end_ts"] + GRACE_MS:
        return False
    if f.kind != lab["kind"]:
        if not (lab.get("or_change") and f.kind == "regression_after_change" and _names_metric(f, lab)):
            return False
        return f.tenant == lab["tenant"] and f.workflow == lab["workflow"]
    for field in ("tenant", "workflow", "model", "trace_id"):
        if lab.get(field) and getattr(f, field) != lab[field]:
            return False
    if lab.get("eval_name") and f.evidence.get("eval_name") != lab["eval_name"]:
        return False
    if lab.get("change_event_id") and f.evidence.get("change_event_id") != lab["change_event_id"]:
        return False
    return True


class _Seen(msgspec.Struct):
    event_id: str
    ts: int


def arrival_completions(events: Path, labels: list[dict[str, Any]]) -> None:
    """Where a loop completes in arrival order, added to each loop label as `complete_at`.

    A repeat that arrives late (after calls that follow it in event time) moves the
    completing event: the pattern is complete once `need` of its calls have arrived, and
    the detector stamps the latest of them. That event counts as on time too; the label's
    `complete_ts` (event-time order) always does. A cycle is complete once `need`
    consecutive calls of it have arrived (any `need` of a longer cycle's calls in a row are
    its repeats too, so a late first call moves the completion to a later window).
    """
    loops = [lab for lab in labels if lab["kind"] in LOOP_KINDS and "event_ids" in lab]
    wanted = {eid for lab in loops for eid in lab["event_ids"]}
    arrival: dict[str, tuple[int, int]] = {}
    dec = msgspec.json.Decoder(_Seen)
    with open(events, "rb") as f:
        for pos, line in enumerate(f):
            if line.strip():
                ev = dec.decode(line)
                if ev.event_id in wanted:
                    arrival[ev.event_id] = (pos, ev.ts)
    for lab in loops:
        need, ids = lab["need"], lab["event_ids"]
        if lab["kind"] == "cycle_loop":
            # (arrival of its last call, latest event time) of each run of `need` calls in a row
            runs = [(max(arrival[e][0] for e in w), max(arrival[e][1] for e in w))
                    for w in (ids[k : k + need] for k in range(len(ids) - need + 1)) if all(e in arrival for e in w)]
            first = min((pos for pos, _ in runs), default=None)
            lab["complete_at"] = (lab["complete_ts"], *(ts for pos, ts in runs if pos == first))
            continue
        arrived = sorted(arrival[eid] for eid in ids if eid in arrival)
        done = [ts for _, ts in arrived[:need]]
        lab["complete_at"] = (lab["complete_ts"], max(done)) if len(done) == need else (lab["complete_ts"],)


def score(findings: list[Finding], labels: list[dict[str, Any]]) -> dict[str, Any]:
    incidents = [lab for lab in labels if lab["kind"] != "quiet"]
    quiet = [lab for lab in labels if lab["kind"] == "quiet"]
    opened = [f for f in findings if f.status == "open"]
    resolved = {f.finding_id for f in findings if f.status == "resolved"}
    kinds = sorted({lab["kind"] for lab in incidents} | {f.kind for f in opened})
    per: dict[str, dict[str, Any]] = {k: {"incidents": 0, "caught": 0, "findings": 0, "tp": 0, "ttd": [],
                                          "on_time": 0, "dups": 0, "resolved": 0} for k in kinds}
    by_scope: dict[tuple, list[Finding]] = {}  # (kind, tenant): an empty workflow or model matches any
    for f in opened:
        by_scope.setdefault((f.kind, f.tenant), []).append(f)
    matched: dict[str, dict[str, Any]] = {}  # finding id -> the label it was matched to
    outcomes = []  # (label, its matching findings), for the per-band tables of stress days
    for lab in incidents:
        s = per[lab["kind"]]
        s["incidents"] += 1
        cands = by_scope.get((lab["kind"], lab.get("tenant", "")), [])
        if lab.get("or_change"):
            cands = cands + by_scope.get(("regression_after_change", lab.get("tenant", "")), [])
        hits = [f for f in cands if _matches(f, lab)]
        outcomes.append((lab, hits))
        if not hits:
            s.setdefault("missed", []).append(lab)
            continue
        s["caught"] += 1
        s["dups"] += len(hits) - 1
        matched.update((f.finding_id, lab) for f in hits)
        first = min(hits, key=lambda f: f.event_ts)
        s["ttd"].append(first.event_ts - lab["start_ts"])
        on_time = (first.event_ts in lab.get("complete_at", (lab["complete_ts"],)) if lab["kind"] in LOOP_KINDS
                   else first.event_ts - lab["start_ts"] <= TTD_FLOOR_MS)
        s["on_time"] += on_time
        if not on_time:
            s.setdefault("late", []).append((first.event_ts - lab["start_ts"], lab))
        if lab["kind"] not in LOOP_KINDS:
            s["resolved"] += any(f.finding_id in resolved for f in hits)
    fps = []
    for f in opened:
        s = per[f.kind]
        s["findings"] += 1
        if f.finding_id in matched:
            s["tp"] += 1
        else:
            fps.append(f)
    in_quiet = [f for f in fps if any(q["start_ts"] <= f.event_ts < q["end_ts"] for q in quiet)]
    return {"per_kind": per, "false_positives": fps, "fp_in_quiet": in_quiet, "outcomes": outcomes,
            "matched": matched, "opened": opened}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def _pct(xs: list[int], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000 if s else float("nan")


def report(name: str, res: dict[str, Any], out=sys.stdout) -> bool:
    per = res["per_kind"]
    ok = True
    print(f"\n== {name}", file=out)
    print(f"{'kind':26} {'inc':>4} {'caught':>6} {'recall':>6} {'found':>5} {'FP':>3} {'prec':>6} "
          f"{'ttd_med':>7} {'ttd_p95':>7} {'ttd_max':>7} {'on_time':>7} {'dups':>4} {'resolv':>6}", file=out)
    tot = {"incidents": 0, "caught": 0, "findings": 0, "tp": 0, "on_time": 0, "ttd": []}
    for kind, s in per.items():
        rec, prec = _ratio(s["caught"], s["incidents"]), _ratio(s["tp"], s["findings"])
        ok &= rec >= FLOOR and prec >= FLOOR and s["on_time"] == s["caught"]
        for k in tot:
            tot[k] += s[k]
        res_col = "-" if kind in LOOP_KINDS else f"{s['resolved']}/{s['caught']}"
        print(f"{kind:26} {s['incidents']:>4} {s['caught']:>6} {rec:>6.3f} {s['findings']:>5} "
              f"{s['findings'] - s['tp']:>3} {prec:>6.3f} {_pct(s['ttd'], .5):>6.1f}s {_pct(s['ttd'], .95):>6.1f}s "
              f"{_pct(s['ttd'], 1):>6.1f}s {s['on_time']:>3}/{s['caught']:<3} {s['dups']:>4} {res_col:>6}", file=out)
    rec, prec = _ratio(tot["caught"], tot["incidents"]), _ratio(tot["tp"], tot["findings"])
    ok &= rec >= FLOOR and prec >= FLOOR
    print(f"{'OVERALL':26} {tot['incidents']:>4} {tot['caught']:>6} {rec:>6.3f} {tot['findings']:>5} "
          f"{tot['findings'] - tot['tp']:>3} {prec:>6.3f} {_pct(tot['ttd'], .5):>6.1f}s {_pct(tot['ttd'], .95):>6.1f}s "
          f"{_pct(tot['ttd'], 1):>6.1f}s {tot['on_time']:>3}/{tot['caught']:<3}", file=out)
    print(f"false positives in warm-up/quiet stretches: {len(res['fp_in_quiet'])}", file=out)
    for f in res["false_positives"][:15]:
        print(f"  FP {f.kind} {f.tenant}/{f.workflow}/{f.model or f.trace_id} ts={f.event_ts} {f.title}", file=out)
    for kind, s in per.items():
        for lab in s.get("missed", [])[:5]:
            print(f"  MISS {kind} {lab}", file=out)
        for ttd, lab in s.get("late", [])[:5]:
            print(f"  LATE {kind} ttd={ttd / 1000:.1f}s {lab}", file=out)
    return ok


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"per_kind": {}, "false_positives": [], "fp_in_quiet": []}
    for r in results:
        out["false_positives"] += r["false_positives"]
        out["fp_in_quiet"] += r["fp_in_quiet"]
        for kind, s in r["per_kind"].items():
            d = out["per_kind"].setdefault(kind, {k: ([] if isinstance(v, list) else 0) for k, v in s.items()})
            for k, v in s.items():
                d[k] = d.get(k, [] if isinstance(v, list) else 0) + v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", type=Path, help="folders written by bench.detection.generate")
    ap.add_argument("--order", choices=("given", "ts"), default="given",
                    help="given: file (arrival) order, as the backtest and the stream read it; ts: sorted by event time")
    ap.add_argument("--check", action="store_true", help="exit 1 when a floor is missed")
    ap.add_argument("--misses", type=Path, help="append the stress days' misses and false pages to this file")
    a = ap.parse_args(argv)
    from bench.detection import bands  # it builds on this module's matching

    results, stress_runs, folders = [], [], []
    ok = True
    for path in a.data:
        meta = json.loads((path / "labels.json").read_text())
        labels = meta["labels"]
        if a.order == "given":
            arrival_completions(path / "events.jsonl", labels)
        t = time.perf_counter()
        findings, n, late = run_backtest(path, a.order, meta.get("settings"))
        dt = time.perf_counter() - t
        res = score(findings, labels)
        name = (f"{path} ({n} events, {dt:.1f}s = {n / dt:,.0f} ev/s, order={a.order}, "
                f"late dropped {late}, findings {len(findings)})")
        if meta.get("stress"):  # judged by the stress floors (bands.py), per band
            report(name, res)
            stress_runs.append((meta, res))
            folders.append(path)
            continue
        results.append(res)
        ok &= report(name, res)
    if len(results) > 1:
        ok &= report(f"ALL {len(results)} runs", merge(results))
    if stress_runs:
        ok &= bands.report(f"{len(stress_runs)} stress day(s)", stress_runs)
        if a.misses:
            note = time.strftime("(scored %Y-%m-%d %H:%M UTC)", time.gmtime())
            n = bands.write_misses(a.misses, [(p, m, r) for p, (m, r) in zip(folders, stress_runs)], note)
            print(f"{n} misses, late detections and false pages appended to {a.misses}")
    print("\nfloors met" if ok else "\nFLOORS MISSED")
    return 0 if ok or not a.check else 1


if __name__ == "__main__":
    sys.exit(main())
