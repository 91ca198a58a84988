"""The eval gate's statistics, rule, JSONL reader and reports (processors/gate.py, commands/gate.py)."""

from __future__ import annotations

import json
import random
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from llmpulse.commands.gate import junit_xml, markdown
from llmpulse.processors.gate import (
    Evidence, GateConfig, GateRecord, GateRule, Side, bucket_value, evaluate, latency_bucket, newcombe, p95,
    parse_lines, split_sides, stream_overrides, summarize, wilson,
)
from llmpulse.processors.pipeline import Pipeline
from llmpulse.settings import Settings

Z95 = 1.959963984540054


def evals(name: str, passed: int, n: int, version: str, score: float | None = None) -> list[GateRecord]:
    """n results of one eval, exactly `passed` of them passing, in a shuffled order."""
    out = [GateRecord(eval_name=name, passed=i < passed, prompt_version=version, score=score) for i in range(n)]
    random.Random(n * 7 + passed).shuffle(out)
    return out


def gate(base: list[GateRecord], cand: list[GateRecord], **rule) -> object:
    return evaluate(GateRule(**rule), "support-bot", "prompt_version:v1", "prompt_version:v2",
                    summarize(base), summarize(cand))


# --- the proof cases of the issue ---------------------------------------------------------------


def test_a_drop_from_092_to_080_over_400_evals_fails() -> None:
    report = gate(evals("faithfulness", 368, 400, "v1"), evals("faithfulness", 320, 400, "v2"))
    assert report.decision == "fail" and report.exit_code == 1
    (check,) = report.checks
    assert (check.n_baseline, check.n_candidate, check.baseline, check.candidate) == (400, 400, 0.92, 0.8)
    assert check.diff == pytest.approx(-0.12) and check.ci_low < -0.12 < check.ci_high < -0.05
    assert check.p_value < 1e-5


def test_an_equal_candidate_passes() -> None:
    report = gate(evals("faithfulness", 368, 400, "v1"), evals("faithfulness", 368, 400, "v2"))
    assert report.decision == "pass" and report.exit_code == 0
    assert report.checks[0].ci_low > -0.05


def test_twelve_evals_are_not_enough_evidence_never_a_pass() -> None:
    report = gate(evals("faithfulness", 11, 12, "v1"), evals("faithfulness", 11, 12, "v2"))
    assert report.decision == "insufficient" and report.exit_code == 3
    assert "not enough evidence" in report.checks[0].reason


def test_a_drop_within_tolerance_but_not_ruled_out_is_not_a_pass() -> None:
    # 0.92 -> 0.89 at 200 a side: the point estimate is within 0.05, the interval reaches past it.
    report = gate(evals("f", 184, 200, "v1"), evals("f", 178, 200, "v2"))
    assert report.decision == "insufficient" and "could be up to" in report.checks[0].reason


def test_no_evals_at_all_is_not_enough_evidence() -> None:
    assert gate([], []).decision == "insufficient"


def test_a_required_eval_missing_on_the_candidate_is_not_enough_evidence() -> None:
    report = gate(evals("f", 368, 400, "v1"), evals("f", 368, 400, "v2"), required_evals=["toxicity"])
    assert report.decision == "insufficient"
    assert [c.name for c in report.checks if c.verdict == "insufficient"] == ["toxicity"]


def test_min_pass_rate_and_per_eval_rules() -> None:
    base, cand = evals("f", 368, 400, "v1"), evals("f", 360, 400, "v2")  # 0.92 -> 0.90
    assert gate(base, cand, min_pass_rate=0.91).decision == "fail"
    assert gate(base, cand, max_drop=0.08).decision == "pass"
    # the eval's own rule inherits what it does not name from the workflow's
    report = gate(base, cand, max_drop=0.08, evals={"f": {"min_pass_rate": 0.95}})
    assert report.decision == "fail"
    assert {c.metric: c.verdict for c in report.checks} == {"pass_rate": "pass", "min_pass_rate": "fail"}


def test_mean_score_drop_uses_welch() -> None:
    rng = random.Random(3)
    base = [GateRecord(eval_name="quality", score=rng.gauss(0.80, 0.1), prompt_version="v1") for _ in range(300)]
    cand = [GateRecord(eval_name="quality", score=rng.gauss(0.70, 0.1), prompt_version="v2") for _ in range(300)]
    report = gate(base, cand, max_score_drop=0.05)
    (check,) = report.checks
    assert check.metric == "mean_score" and check.verdict == "fail"
    assert check.ci_low < check.diff < check.ci_high < -0.05
    assert gate(base, base, max_score_drop=0.05).decision == "pass"


def output(status: str, latency: float, cost: float, version: str) -> GateRecord:
    return GateRecord(event_type="output", status=status, latency_ms=latency, cost_usd=cost, prompt_version=version)


def test_operational_gates_from_the_same_data() -> None:
    ev = evals("f", 368, 400, "v1"), evals("f", 368, 400, "v2")
    base = [output("error" if i % 50 == 0 else "ok", 800 + i, 0.010, "v1") for i in range(400)]
    cand = [output("error" if i % 10 == 0 else "ok", 1600 + i, 0.013, "v2") for i in range(400)]
    ok = gate(ev[0] + base, ev[1] + cand)  # nothing operational configured: figures only
    assert ok.decision == "pass"
    assert {c.metric for c in ok.checks if c.verdict == "info"} == {
        "cost_per_call", "p95_latency_ms", "error_rate", "refusal_rate"}
    report = gate(ev[0] + base, ev[1] + cand, max_cost_ratio=1.2, max_p95_latency_ratio=1.5,
                  max_error_rate_increase=0.05, max_refusal_rate_increase=0.01)
    verdicts = {c.metric: c.verdict for c in report.checks if c.name == "operational"}
    assert verdicts == {"cost_per_call": "fail", "p95_latency_ms": "fail", "error_rate": "fail", "refusal_rate": "pass"}
    assert report.decision == "fail"
    few = gate(ev[0] + base[:10], ev[1] + cand[:10], max_cost_ratio=1.2)
    assert {c.metric: c.verdict for c in few.checks}["cost_per_call"] == "insufficient"


# --- statistics --------------------------------------------------------------------------------


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (a): 56/70 - 48/80,
    # method 10 (hybrid score): 0.0524 to 0.3339.
    d, lo, hi = newcombe(56, 70, 48, 80, Z95)
    assert d == pytest.approx(0.2)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


def test_wilson_matches_the_published_example() -> None:
    # Newcombe (1998) companion paper, 81/263: 0.2553 to 0.3662.
    lo, hi = wilson(81, 263, Z95)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)


def test_newcombe_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = random.Random(11)
    hits = 0
    runs = 2000
    for _ in range(runs):
        k1 = sum(rng.random() < 0.9 for _ in range(150))
        k2 = sum(rng.random() < 0.85 for _ in range(120))
        _, lo, hi = newcombe(k1, 150, k2, 120, Z95)
        hits += lo <= 0.05 <= hi
    assert 0.93 <= hits / runs <= 0.975


counts = st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@settings(max_examples=300, deadline=None)
@given(counts, counts)
def test_newcombe_interval_properties(a: tuple[int, int], b: tuple[int, int]) -> None:
    (k1, n1), (k2, n2) = a, b
    d, lo, hi = newcombe(k1, n1, k2, n2, Z95)
    assert -1 <= lo <= d <= hi <= 1
    # antisymmetric: swapping the sides mirrors the interval
    d2, lo2, hi2 = newcombe(k2, n2, k1, n1, Z95)
    assert d2 == pytest.approx(-d) and lo2 == pytest.approx(-hi) and hi2 == pytest.approx(-lo)
    # four times the evidence at the same rates: no wider
    _, lo4, hi4 = newcombe(4 * k1, 4 * n1, 4 * k2, 4 * n2, Z95)
    assert hi4 - lo4 <= hi - lo + 1e-12
    # a wider confidence level: no narrower
    _, lo99, hi99 = newcombe(k1, n1, k2, n2, 2.5758)
    assert lo99 <= lo + 1e-12 and hi99 >= hi - 1e-12


@settings(max_examples=200, deadline=None)
@given(counts, counts, st.floats(0, 0.5), st.integers(1, 200))
def test_the_decision_follows_the_rule(a, b, max_drop, min_evals) -> None:
    (kb, nb), (kc, nc) = a, b
    base = [GateRecord(eval_name="e", passed=i < kb) for i in range(nb)]
    cand = [GateRecord(eval_name="e", passed=i < kc) for i in range(nc)]
    report = evaluate(GateRule(max_drop=max_drop, min_evals=min_evals), "w", "b", "c", summarize(base), summarize(cand))
    (check,) = report.checks
    if min(nb, nc) < min_evals:
        assert report.decision == "insufficient"
    elif kc / nc - kb / nb < -max_drop - 1e-9:
        assert report.decision == "fail"
    elif report.decision == "pass":
        assert check.ci_low >= -max_drop - 1e-4  # rounded to 4 places in the report
    else:
        assert report.decision == "insufficient" and check.ci_low < -max_drop + 1e-4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e7), min_size=1, max_size=300), st.integers(0, 300))
def test_latency_p95_is_the_nearest_rank_within_one_percent_and_merges(xs: list[float], cut: int) -> None:
    exact = sorted(xs)[max(1, -(-95 * len(xs) // 100)) - 1]
    hist: dict[int, int] = {}
    for x in xs:
        hist[latency_bucket(x)] = hist.get(latency_bucket(x), 0) + 1
    got = p95(hist)
    assert exact <= got * (1 + 1e-9) and got <= (exact + 1) * 1.01 + 1e-6
    recs = [GateRecord(event_type="output", status="ok", latency_ms=x) for x in xs]
    merged = summarize(recs[:cut]).merge(summarize(recs[cut:]))
    assert merged.latency == summarize(recs).latency and bucket_value(latency_bucket(0.0)) > 0


def test_evidence_from_parts_equals_evidence_from_the_whole() -> None:
    rng = random.Random(4)
    recs = [GateRecord(eval_name=rng.choice("ab"), passed=rng.random() < 0.8, score=rng.random()) for _ in range(500)]
    recs += [output(rng.choice(["ok", "error", "refusal"]), rng.random() * 1e3, rng.random(), "") for _ in range(500)]
    whole = summarize(recs)
    parts = Evidence().merge(summarize(recs[:123])).merge(summarize(recs[123:]))
    assert parts.evals["a"].passed == whole.evals["a"].passed and parts.calls == whole.calls == 500
    assert parts.cost.s == pytest.approx(whole.cost.s) and parts.latency == whole.latency


# --- the JSONL reader --------------------------------------------------------------------------------


def test_reader_takes_contract_events_and_short_lines_and_names_bad_lines() -> None:
    lines = [
        json.dumps({"event_type": "eval", "event_id": "e1", "ts": "2026-12-01T10:00:00+00:00", "trace_id": "t",
                    "workflow": "w", "eval_name": "f", "passed": True, "prompt_version": "v2"}),
        "",
        json.dumps({"eval_name": "f", "score": 0.7}),
        json.dumps({"event_type": "output", "status": "ok", "latency_ms": 10, "cost_usd": 0.01}),
        json.dumps({"event_type": "prompt", "trace_id": "t"}),
        "not json",
        json.dumps({"eval_name": "f"}),
        json.dumps({"eval_name": "f", "passed": "yes"}),
        json.dumps([1, 2]),
        json.dumps({"eval_name": "f", "passed": True, "ts": 5}),
        json.dumps({"eval_name": "f", "passed": True, "ts": "2026-12-01T10:00:00"}),
    ]
    records, errors, more = parse_lines(lines)
    assert [r.event_type for r in records] == ["eval", "eval", "output"]
    assert records[0].ts == 1_796_119_200_000
    assert [e.line for e in errors] == [6, 7, 8, 9, 10, 11] and more == 0
    assert "malformed" in errors[0].message and "neither passed nor score" in errors[1].message
    assert "$.passed" in errors[2].message and "timezone" in errors[5].message


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                           max_leaves=12)
fieldish = st.fixed_dictionaries({}, optional={
    "event_type": st.sampled_from(["eval", "output", "change", "prompt", "nope"]) | st.text(max_size=5),
    "eval_name": st.text(max_size=5) | st.integers(), "passed": st.booleans() | st.none() | st.text(max_size=3),
    "score": st.floats() | st.none() | st.text(max_size=3), "ts": st.integers() | st.text(max_size=30),
    "status": st.text(max_size=6), "latency_ms": st.floats() | st.integers(), "cost_usd": st.floats(),
    "prompt_version": st.text(max_size=4) | st.integers()})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60) | json_values.map(json.dumps) | fieldish.map(json.dumps), max_size=12))
def test_reader_never_raises_and_accounts_for_every_line(lines) -> None:
    records, errors, more = parse_lines(lines)
    numbered = [i for i, line in enumerate(lines, 1) if (line.strip() if isinstance(line, (bytes, str)) else line)]
    assert {e.line for e in errors} <= set(numbered)
    assert all(e.message for e in errors) and more == 0
    assert len(records) + len(errors) <= len(numbered)
    for r in records:
        assert r.event_type in ("eval", "output", "change")
        if r.event_type == "eval":
            assert r.eval_name and (r.passed is not None or r.score is not None)


# --- sides, config, stream, reports --------------------------------------------------------------------


def test_sides_parse_and_split() -> None:
    assert Side.parse("prompt:v7") == Side("prompt_version", "v7")
    with pytest.raises(ValueError, match="expected prompt:VERSION"):
        Side.parse("v7")
    recs = [GateRecord(eval_name="e", passed=True, ts=t, model=m) for t, m in ((1, "a"), (5, "b"), (9, "b"))]
    b, c = split_sides(recs, Side.parse("model:a"), Side.parse("model:b"))
    assert len(b) == 1 and len(c) == 2
    b, c = split_sides(recs, None, Side.parse("change:ch1"), change_ts=5)
    assert [r.ts for r in b] == [1] and [r.ts for r in c] == [5, 9]
    with pytest.raises(ValueError, match="time is unknown"):
        split_sides(recs, None, Side.parse("change:ch1"))


def test_config_validates_at_load_naming_the_entry() -> None:
    s = Settings(eval_gate={"support-bot": {"max_drop": 0.03, "evals": {"f": {"min_evals": 10}}}, "*": {"min_evals": 50}})
    assert s.eval_gate.rule_for("support-bot").for_eval("f").max_drop == 0.03
    assert s.eval_gate.rule_for("other").min_evals == 50
    for bad, where in (({"w": {"max_dropp": 1}}, "max_dropp"), ({"w": {"max_drop": 2}}, "max_drop"),
                       ({"w": {"evals": {"f": {"typo": 1}}}}, "typo"), ({"w": {"confidence": 1.5}}, "confidence")):
        with pytest.raises(ValidationError, match=where):
            Settings(eval_gate=bad)


def test_the_stream_uses_the_gate_thresholds() -> None:
    config = GateConfig.model_validate({"support-bot": {"max_drop": 0.04, "max_cost_ratio": 1.25},
                                        "rag": {"min_evals": 10}})
    merged = stream_overrides(config, {"support-bot": {"change_ratio": 2.0}})
    assert merged == {"support-bot": {"eval_min_drop": 0.04, "change_eval_drop": 0.04, "change_ratio": 2.0}}
    s = Settings(eval_gate={"support-bot": {"max_drop": 0.04}}, stages=["anomalies"])
    (det,) = Pipeline.from_settings(s).detectors
    cfg = det.config_for("support-bot") if hasattr(det, "config_for") else det._per_workflow["support-bot"]
    assert (cfg.eval_min_drop, cfg.change_eval_drop) == (0.04, 0.04)


def test_junit_parses_and_lists_the_failing_eval() -> None:
    base = evals("faithfulness", 368, 400, "v1") + evals("tone", 380, 400, "v1") + evals("safety", 5, 6, "v1")
    cand = evals("faithfulness", 320, 400, "v2") + evals("tone", 380, 400, "v2") + evals("safety", 5, 6, "v2")
    report = gate(base, cand)
    suite = ET.fromstring(junit_xml(report))
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    errored = [c.get("name") for c in suite.iter("testcase") if c.find("error") is not None]
    assert failed == ["faithfulness.pass_rate"] and errored == ["safety.pass_rate"]
    md = markdown(report)
    assert "FAIL" in md and "| faithfulness | pass_rate | fail |" in md and "Failing: `faithfulness`" in md


def test_a_published_gate_decision_is_not_a_deploy_for_the_anomaly_detector() -> None:
    from llmpulse.processors.anomalies import AnomalyDetector
    from llmpulse.schemas.contract import Change

    det = AnomalyDetector()
    det.process(Change(event_id="g1", ts=1_796_000_000_000, workflow="w", change_kind="eval_gate", gate_result="pass"))
    assert det.stats()["changes"] == 0
    det.process(Change(event_id="c1", ts=1_796_000_000_001, workflow="w", change_kind="prompt_edit", gate_id="g1"))
    assert det.stats()["changes"] == 1


keys = st.sampled_from(["min_evals", "max_drop", "min_pass_rate", "max_score_drop", "confidence", "evals",
                        "required_evals", "min_calls", "max_cost_ratio", "max_p95_latency_ms", "max_error_rate", "x"])
scalars = st.none() | st.booleans() | st.integers(-5, 500) | st.floats(allow_nan=True) | st.text(max_size=4)
rules = st.dictionaries(keys, scalars | st.lists(scalars, max_size=3)
                        | st.dictionaries(st.text(max_size=3), st.dictionaries(keys, scalars, max_size=3) | scalars,
                                          max_size=2), max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["support-bot", "*", "rules", ""]), rules | scalars, max_size=3))
def test_any_eval_gate_section_loads_or_is_one_validation_error(section) -> None:
    try:
        s = Settings(eval_gate=section)
    except ValidationError as exc:
        assert all(e["loc"][0] == "eval_gate" for e in exc.errors())
        return
    rule = s.eval_gate.rule_for("support-bot")
    assert 0 <= rule.max_drop <= 1 and rule.min_evals >= 1 and 0.5 < rule.confidence < 1
