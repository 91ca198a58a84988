"""Stress days (bench/detection/stress.py): tables per kind and volume band, and the floors.

Floors (issue 13), over all the stress days scored together:
  - precision >= 0.95 and recall >= 0.95 for every kind on every band from 3 calls/min up;
  - at most one false page per 100 quiet key-days (every open finding that matches no label,
    at a time when every key it names was quiet, is a page; stress.quiet_spans);
  - time to detect, event time, for >= 95 % of the incidents it applies to: an error or refusal
    spike >= 5x baseline on >= 5 calls/min within 2 min, >= 10x on >= 30 calls/min within 1 min;
    a traffic drop or outage on >= 5 calls/min within 2 min (calls/min: expected at its start);
  - a whole workflow or tenant going silent opens one finding, not one per model (never more
    than one; one that opens none is a miss, counted in recall).
A finding's band is that of the label it matched, else that of its scope (calls/min of the
keys it names, summed).
"""

from __future__ import annotations

import sys
from typing import Any

from bench.detection.score import GRACE_MS, _pct, _ratio

FLOOR = 0.95
QUIET_PAGES_PER_100 = 1.0
MIN_BAND = 3.0
TTD_RULES = (  # (kinds, min ratio to baseline, min calls/min, limit ms)
    (("error_rate_spike", "refusal_spike"), 5.0, 5.0, 120_000),
    (("error_rate_spike", "refusal_spike"), 10.0, 30.0, 60_000),
    (("traffic_drop",), 0.0, 5.0, 120_000),
)


def _band(bands: list[float], rate: float) -> float:
    below = [b for b in bands if b <= rate * 1.0001]
    return max(below) if below else min(bands)


def finding_band(f: Any, meta: dict[str, Any]) -> float | None:
    rate = sum(k["rate"] for k in _scope(f, meta))
    return _band(meta["bands"], rate) if rate else None


def _ttd(lab: dict[str, Any], hits: list[Any]) -> int | None:
    return min(f.event_ts for f in hits) - lab["start_ts"] if hits else None


def tables(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[tuple[str, float | None], dict[str, Any]]:
    cells: dict[tuple[str, float | None], dict[str, Any]] = {}

    def cell(kind: str, band: float | None) -> dict[str, Any]:
        return cells.setdefault((kind, band), {"incidents": 0, "caught": 0, "findings": 0, "tp": 0, "ttd": []})

    for meta, res in runs:
        for lab, hits in res["outcomes"]:
            c = cell(lab["kind"], lab.get("band"))
            c["incidents"] += 1
            if hits:
                c["caught"] += 1
                c["ttd"].append(_ttd(lab, hits))
        for f in res["opened"]:
            lab = res["matched"].get(f.finding_id)
            c = cell(f.kind, lab.get("band") if lab else finding_band(f, meta))
            c["findings"] += 1
            c["tp"] += lab is not None
    return cells


def _scope(f: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [k for k in meta["keys"] if k["tenant"] == f.tenant and (not f.workflow or k["workflow"] == f.workflow)
            and (not f.model or k["model"] == f.model)]


def quiet_pages(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[list[Any], float]:
    """False findings at a time when every key they name was quiet (nothing labelled near it:
    stress.quiet_spans), and the quiet key-days of all the runs."""
    pages = []
    for meta, res in runs:
        for f in res["false_positives"]:
            keys = _scope(f, meta)
            if keys and all(any(a <= f.event_ts < b for a, b in k["quiet"]) for k in keys):
                pages.append(f)
    return pages, sum(meta["quiet_key_days"] for meta, _ in runs)


def ttd_checks(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple[str, list, list]]:
    """Per rule: its name, the (label, ttd) it applies to, and those late or missed."""
    out = []
    for kinds, ratio, rate, limit in TTD_RULES:
        name = f"{'/'.join(kinds)} {'>= %gx ' % ratio if ratio else ''}on >= {rate:g}/min within {limit // 1000}s"
        applies, late = [], []
        for _, res in runs:
            for lab, hits in res["outcomes"]:
                if lab["kind"] in kinds and lab.get("ratio", ratio) >= ratio and lab.get("rate_at", 0) >= rate:
                    t = _ttd(lab, hits)
                    applies.append((lab, t))
                    if t is None or t > limit:
                        late.append((lab, t))
        out.append((name, applies, late))
    return out


def silence_pages(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple[dict[str, Any], int]]:
    """Each workflow or tenant outage and the number of traffic_drop findings it opened."""
    out = []
    for _, res in runs:
        for lab, _hits in res["outcomes"]:
            if lab.get("outage") and lab.get("scope") in ("workflow", "tenant"):
                n = sum(1 for f in res["opened"] if f.kind == "traffic_drop" and f.tenant == lab["tenant"]
                        and (not lab["workflow"] or f.workflow == lab["workflow"])
                        and lab["start_ts"] <= f.event_ts <= lab["end_ts"] + GRACE_MS)
                out.append((lab, n))
    return out


def _short(lab: dict[str, Any]) -> str:
    keep = ("tenant", "workflow", "model", "start_ts", "end_ts", "band", "rate_at", "magnitude", "ratio",
            "overlap", "scope", "trace_id")
    return " ".join(f"{k}={lab[k]}" for k in keep if lab.get(k) not in (None, ""))


def report(name: str, runs: list[tuple[dict[str, Any], dict[str, Any]]], out=sys.stdout) -> bool:
    ok = True
    cells = tables(runs)
    print(f"\n== {name}: per kind and volume band (calls/min of the label's scope; '?' unknown scope)", file=out)
    print(f"{'kind':26} {'band':>5} {'inc':>4} {'caught':>6} {'recall':>6} {'found':>5} {'FP':>3} {'prec':>6} "
          f"{'ttd_med':>7} {'ttd_p95':>7}  floor", file=out)
    for (kind, band), c in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
        rec, prec = _ratio(c["caught"], c["incidents"]), _ratio(c["tp"], c["findings"])
        checked = band is None or band >= MIN_BAND
        good = not checked or (rec >= FLOOR and prec >= FLOOR)
        ok &= good
        mark = "-" if not checked else ("ok" if good else "MISSED")
        print(f"{kind:26} {'?' if band is None else f'{band:g}':>5} {c['incidents']:>4} {c['caught']:>6} {rec:>6.3f} "
              f"{c['findings']:>5} {c['findings'] - c['tp']:>3} {prec:>6.3f} {_pct(c['ttd'], .5):>6.1f}s "
              f"{_pct(c['ttd'], .95):>6.1f}s  {mark}", file=out)
    pages, key_days = quiet_pages(runs)
    per100 = 100 * len(pages) / key_days if key_days else 0.0
    good = per100 <= QUIET_PAGES_PER_100
    ok &= good
    print(f"false pages on quiet keys: {len(pages)} over {key_days:.1f} quiet key-days = {per100:.2f} per 100 "
          f"key-days (floor <= {QUIET_PAGES_PER_100:g}) {'ok' if good else 'MISSED'}", file=out)
    for f in pages[:20]:
        print(f"  QUIET-PAGE {f.kind} {f.severity} {f.tenant}/{f.workflow}/{f.model or f.trace_id} ts={f.event_ts} "
              f"{f.title}", file=out)
    for rule, applies, late in ttd_checks(runs):
        share = 1 - len(late) / len(applies) if applies else 1.0
        good = share >= FLOOR
        ok &= good
        ttds = [t for _, t in applies if t is not None]
        print(f"TTD {rule}: {len(applies) - len(late)}/{len(applies)} on time ({share:.3f}), median "
              f"{_pct(ttds, .5):.1f}s, p95 {_pct(ttds, .95):.1f}s {'ok' if good else 'MISSED'}", file=out)
        for lab, t in late[:8]:
            print(f"  LATE {lab['kind']} ttd={'missed' if t is None else f'{t / 1000:.1f}s'} {_short(lab)}", file=out)
    silences = silence_pages(runs)
    bad = [(lab, n) for lab, n in silences if n > 1]
    ok &= not bad
    print(f"workflow/tenant silences paging at most once: {len(silences) - len(bad)}/{len(silences)} "
          f"(once: {sum(n == 1 for _, n in silences)}) {'ok' if not bad else 'MISSED'}", file=out)
    for lab, n in bad:
        print(f"  SILENCE {n} findings: {_short(lab)}", file=out)
    runaway_pages = [f for meta, res in runs for f in res["false_positives"]
                     if f.kind in ("token_spike", "cost_spike") and any(
                         lab["kind"] == "runaway_tokens" and lab["workflow"] == f.workflow
                         and lab["start_ts"] <= f.event_ts <= lab["end_ts"] + GRACE_MS for lab, _ in res["outcomes"])]
    print(f"runaway traces also paged as a workflow anomaly: {len(runaway_pages)}", file=out)
    for _, res in runs:
        for lab, hits in res["outcomes"]:
            if not hits and (lab.get("band") or 0) >= MIN_BAND:
                print(f"  MISS {lab['kind']} {_short(lab)}", file=out)
    return ok


def _repro(meta: dict[str, Any], path: Any) -> str:
    from bench.detection.stress import StressParams  # the defaults, to name only what differs

    defaults = StressParams()
    flags = []
    for k, v in meta["params"].items():
        if k == "seed" or v != getattr(defaults, k):
            flag = "--" + k.replace("_", "-")
            flags.append(flag if v is True else f"{flag} {v}")
    return f"python -m bench.detection.stress {' '.join(flags)} --out {path} && python -m bench.detection.score {path}"


def _key_shape(meta: dict[str, Any], tenant: str, workflow: str, model: str) -> str:
    keys = [k for k in meta["keys"] if k["tenant"] == tenant and (not workflow or k["workflow"] == workflow)
            and (not model or k["model"] == model)]
    if len(keys) != 1:
        return f"{len(keys)} keys, {sum(k['rate'] for k in keys):g} calls/min together"
    k = keys[0]
    steps = "1 call/trace" if k["steps"] == [1, 1] else f"{k['steps'][0]}-{k['steps'][1]} calls/trace"
    return f"{'bursty' if k['bursty'] else 'Poisson'}, {steps}, {k['in_tokens']:g} input tokens/call"


def write_misses(path: Any, runs: list[tuple[Any, dict[str, Any], dict[str, Any]]], note: str = "") -> int:
    """Append each miss, late detection (against the TTD rules) and false page of the stress
    days to `path` as Markdown, a section per day with the command that rebuilds it, for
    whoever tunes the detectors. Returns the count."""
    out, n = [], 0
    for folder, meta, res in runs:
        lines = []
        late = {id(lab) for _, _, ls in ttd_checks([(meta, res)]) for lab, _ in ls}
        for lab, hits in res["outcomes"]:
            t = _ttd(lab, hits)
            what = "MISS" if not hits else ("LATE" if id(lab) in late else "")
            if what:
                lines.append(f"- {what} {lab['kind']} band {lab.get('band', 0):g} "
                             f"({'missed' if t is None else f'ttd {t / 1000:.0f}s'}): {_short(lab)}; key: "
                             f"{_key_shape(meta, lab['tenant'], lab['workflow'], lab['model'])}")
        for f in res["false_positives"]:
            lines.append(f"- FALSE {f.kind} band {finding_band(f, meta) or 0:g} {f.severity}: "
                         f"{f.tenant}/{f.workflow}/{f.model or f.trace_id} ts={f.event_ts} \"{f.title}\"; key: "
                         f"{_key_shape(meta, f.tenant, f.workflow, f.model)}")
        out += [f"\n### {folder} {note}".rstrip(), f"`{_repro(meta, folder)}`", *lines]
        n += len(lines)
    with open(path, "a") as fh:
        fh.write("\n".join(out) + "\n")
    return n
