"""The stress-matrix generator (bench/detection/stress.py) and its scoring (bands.py).

A tiny day (three hours, five keys): the same seed writes the same bytes, every label is
consistent with the traffic it describes, every event passes the worker's validation, and
the scorer, run for real over the backtest, reports every band and kind it labelled.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.detection import bands, rate_envelope, score, stress
from llmpulse.processors.validate import Invalid, Limits, validate
from llmpulse.schemas.findings import Finding

TINY = dict(hours=6.0, bands="3,10,30", keys_per_band="2,2,2", tenants=2, midday_keys=1, warmup_minutes=30,
            quiet_hours=0.5, incidents_per_cell=1, outages_model=1, outages_workflow=1, outages_tenant=0,
            change_overlaps=2, changes_benign=0, runaways=1, pad_before_minutes=20, pad_after_minutes=10)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("stress") / "a"
    meta = stress.generate(stress.StressParams(seed=5, **TINY), out)
    return out, meta


def test_same_seed_same_bytes_other_seed_other_day(day: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = day
    stress.generate(stress.StressParams(seed=5, **TINY), tmp_path / "b")
    stress.generate(stress.StressParams(seed=6, **TINY), tmp_path / "c")
    assert (tmp_path / "b" / "events.jsonl").read_bytes() == (out / "events.jsonl").read_bytes()
    assert (tmp_path / "b" / "labels.json").read_bytes() == (out / "labels.json").read_bytes()
    assert (tmp_path / "c" / "events.jsonl").read_bytes() != (out / "events.jsonl").read_bytes()


def test_labels_match_the_generated_traffic(day: tuple[Path, dict]) -> None:
    out, meta = day
    keys = {(k["tenant"], k["workflow"], k["model"]): k for k in meta["keys"]}
    lines = (out / "events.jsonl").read_bytes().splitlines()
    events = [json.loads(ln) for ln in lines]
    assert len(events) == meta["events"]
    calls: dict[tuple, int] = {}
    for ev in events:
        if ev["event_type"] == "output":
            calls[(ev["tenant"], ev["workflow"], ev["model"])] = calls.get((ev["tenant"], ev["workflow"], ev["model"]), 0) + 1
    incidents = [lab for lab in meta["labels"] if lab["kind"] != "quiet"]
    assert {lab["kind"] for lab in incidents} >= {"error_rate_spike", "traffic_drop", "runaway_tokens"}
    for lab in incidents:
        assert meta["start_ts"] <= lab["start_ts"] < lab["end_ts"] <= meta["end_ts"]
        scope = [k for k in meta["keys"] if k["tenant"] == lab["tenant"]
                 and (not lab["workflow"] or k["workflow"] == lab["workflow"]) and (not lab["model"] or k["model"] == lab["model"])]
        rate = sum(k["rate"] for k in scope)
        assert lab["rate"] == rate and lab["band"] == stress.band_of(rate, meta["bands"])
        if lab["scope"] == "model":
            assert lab["band"] == keys[(lab["tenant"], lab["workflow"], lab["model"])]["band"]
        assert all(lab["start_ts"] >= k["appear_ts"] + TINY["warmup_minutes"] * 60_000 for k in scope)
    # Each key's volume is its band: calls over its hours, retries and outages aside, within noise.
    for scope, k in keys.items():
        minutes = (meta["end_ts"] - k["appear_ts"]) / 60_000
        assert 0.6 * k["rate"] * minutes < calls.get(scope, 0) < 1.5 * k["rate"] * minutes + 10, scope
    tokens: dict[tuple[str, str], int] = {}  # (workflow, trace) -> input + output tokens
    for ev in events:
        if ev["event_type"] == "output" and ev.get("usage"):
            u = ev["usage"]
            tokens[(ev["workflow"], ev["trace_id"])] = tokens.get((ev["workflow"], ev["trace_id"]), 0) + \
                u["input_tokens"] + u["output_tokens"]
    limit = {wf: c["max_tokens"] for wf, c in meta["settings"]["contracts"].items()}
    runaways = {lab["trace_id"] for lab in incidents if lab["kind"] == "runaway_tokens"}
    assert runaways and {t for (wf, t), n in tokens.items() if n > limit[wf]} == runaways  # only they cross
    starts: dict[tuple, int] = {}  # trace -> (scope, first event time)
    for ev in events:
        if ev["event_type"] != "change":
            key = (ev["tenant"], ev["workflow"], ev["model"], ev["trace_id"])
            starts[key] = min(starts.get(key, ev["ts"]), ev["ts"])
    for lab in incidents:
        if lab.get("outage"):  # to zero: no trace of the scope starts inside it
            assert not [ts for (t, w, m, _), ts in starts.items() if t == lab["tenant"]
                        and (not lab["workflow"] or w == lab["workflow"]) and (not lab["model"] or m == lab["model"])
                        and lab["start_ts"] <= ts < lab["end_ts"]], lab
        if lab.get("overlap"):
            change = next(ev for ev in events if ev["event_id"] == lab["change_ref"])
            assert change["event_type"] == "change" and change["workflow"] == lab["workflow"]
            assert (lab["start_ts"] < change["ts"]) == (lab["overlap"] == "before")


def test_every_event_is_a_valid_contract_event(day: tuple[Path, dict]) -> None:
    out, _ = day
    limits = Limits(max_age_days=36_500)
    bad = [r for r in map(lambda ln: validate(ln, limits), (out / "events.jsonl").read_bytes().splitlines())
           if isinstance(r, Invalid)]
    assert not bad


def test_scorer_on_a_tiny_day(day: tuple[Path, dict]) -> None:
    out, meta = day
    findings, n, _ = score.run_backtest(out, "given", meta["settings"])
    assert n == meta["events"]
    res = score.score(findings, meta["labels"])
    buf = io.StringIO()
    bands.report("tiny", [(meta, res)], out=buf)
    text = buf.getvalue()
    for lab in meta["labels"]:
        if lab["kind"] != "quiet":
            assert any(line.split()[:2] == [lab["kind"], f"{lab['band']:g}"] for line in text.splitlines()), lab
    assert "per 100 key-days" in text and "TTD error_rate_spike/refusal_spike >= 5x" in text


def _perfect(meta: dict) -> list[Finding]:
    """One on-time finding per label, as a perfect detector would open."""
    out = []
    for i, lab in enumerate(meta["labels"]):
        if lab["kind"] == "quiet":
            continue
        out.append(Finding(finding_id=f"f{i}", detected_at=0, event_ts=lab["start_ts"] + 30_000, kind=lab["kind"],
                           severity="high", tenant=lab["tenant"], workflow=lab["workflow"], model=lab["model"],
                           trace_id=lab.get("trace_id", "")))
    return out


def test_floors_pass_a_perfect_detector_and_fail_a_false_page_or_a_silence_paged_twice(
        day: tuple[Path, dict], tmp_path: Path) -> None:
    _, meta = day
    found = _perfect(meta)
    assert bands.report("perfect", [(meta, score.score(found, meta["labels"]))], out=io.StringIO())
    blind = score.score([], meta["labels"])
    assert not bands.report("blind", [(meta, blind)], out=io.StringIO())
    log = tmp_path / "misses.md"
    n = bands.write_misses(log, [(Path("DAY"), meta, blind)])
    text = log.read_text()
    assert n == len(blind["outcomes"]) == text.count("\n- MISS ") and "--seed 5 --hours 6.0" in text
    k = meta["keys"][0]
    page = Finding(finding_id="fp", detected_at=0, event_ts=k["quiet"][0][0] + 60_000, kind="latency_regression",
                   severity="high", tenant=k["tenant"], workflow=k["workflow"], model=k["model"])
    assert not bands.report("false page", [(meta, score.score(found + [page], meta["labels"]))], out=io.StringIO())
    wf = next(lab for lab in meta["labels"] if lab.get("outage") and lab["scope"] == "workflow")
    models = [k["model"] for k in meta["keys"] if k["workflow"] == wf["workflow"]]
    twice = [msgspec.structs.replace(found[0], finding_id=f"s{m}", kind="traffic_drop", tenant=wf["tenant"],
                                     workflow=wf["workflow"], model=m, event_ts=wf["start_ts"] + 60_000) for m in models]
    buf = io.StringIO()  # the perfect workflow finding plus one per model: paged more than once
    assert not bands.report("per model", [(meta, score.score(found + twice, meta["labels"]))], out=buf)
    assert f"SILENCE {1 + len(models)} findings" in buf.getvalue()


@given(st.floats(min_value=0.0, max_value=1e4, allow_nan=False))
def test_band_of_is_the_largest_band_not_above_the_rate(rate: float) -> None:
    bs = [1.0, 3.0, 10.0, 30.0, 100.0, 300.0]
    b = stress.band_of(rate, bs)
    assert b in bs
    assert b <= max(rate * 1.0001, 1.0)
    assert not [x for x in bs if b < x <= rate]
    assert not math.isnan(b)


@given(st.sampled_from([3.0, 5.0, 10.0, 30.0, 100.0]), st.floats(0.002, 0.03), st.floats(0.04, 0.5),
       st.sampled_from([1.0, 2.0]))
def test_rate_envelope_threshold_keeps_the_budget_and_a_bigger_spike_is_caught_more(
        rate: float, p0: float, p1: float, window: float) -> None:
    budget = 0.01
    k, share = rate_envelope.caught_in_time(rate, p0, p1, window, budget)
    assert (1440 / window) * rate_envelope._sf(k, rate * window * p0) <= budget
    assert k == 1 or (1440 / window) * rate_envelope._sf(k - 1, rate * window * p0) > budget  # the least such k
    assert rate_envelope.caught_in_time(rate, p0, min(1.0, p1 * 1.5), window, budget)[1] >= share
