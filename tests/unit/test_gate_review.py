"""Review of the eval gate (processors/gate.py) on inputs its first tests did not try."""

from __future__ import annotations

import json
import math
import random

from hypothesis import given, settings as hsettings, strategies as st

from llmpulse.processors.gate import Evidence, GateConfig, Side, evaluate, parse_lines, split_sides, summarize

BOM = b"\xef\xbb\xbf"


def evals(version: str, n: int, rate: float = 0.9, name: str = "faithfulness", **extra) -> list[bytes]:
    passed = [i < round(rate * n) for i in range(n)]
    random.Random(n).shuffle(passed)
    return [json.dumps({"eval_name": name, "passed": p, "prompt_version": version, **extra}).encode() for p in passed]


def test_a_file_that_starts_with_a_byte_order_mark_reads_as_json() -> None:
    # PowerShell 5's `Out-File -Encoding utf8` and Excel's "CSV UTF-8" begin a file with a BOM.
    lines = evals("v1", 3)
    records, errors, _ = parse_lines([BOM + lines[0] + b"\r\n", *(line + b"\r\n" for line in lines[1:])])
    assert errors == [] and len(records) == 3


@hsettings(deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=20))
def test_a_bom_only_counts_at_the_start_of_the_file(flags: list[bool]) -> None:
    lines = [json.dumps({"eval_name": "f", "passed": f, "prompt_version": "v1"}).encode() for f in flags]
    records, errors, _ = parse_lines([BOM + lines[0], *(BOM + line for line in lines[1:])])
    assert len(records) == 1 and [e.line for e in errors] == list(range(2, len(flags) + 1))


def test_scores_with_nothing_that_gates_them_are_not_a_pass() -> None:
    # Evals with a score but no `passed`, and no max_score_drop: no check decides, so the gate
    # must not pass (a drop of 0.1 in mean score would otherwise ship with exit code 0).
    rng = random.Random(3)
    lines = [json.dumps({"eval_name": "helpful", "score": rng.gauss(mu, 0.1), "prompt_version": v}).encode()
             for v, mu in (("v1", 0.8), ("v2", 0.7)) for _ in range(100)]
    records, errors, _ = parse_lines(lines)
    assert not errors
    b, c = split_sides(records, Side.parse("prompt:v1"), Side.parse("prompt:v2"))
    report = evaluate(GateConfig().rule_for("w"), "w", "v1", "v2", summarize(b), summarize(c))
    assert [ch.verdict for ch in report.checks] == ["info"]
    assert report.decision == "insufficient" and report.exit_code == 3
    assert "max_score_drop" in report.checks[0].reason
    gated = evaluate(GateConfig.model_validate({"w": {"max_score_drop": 0.05}}).rule_for("w"), "w", "v1", "v2",
                     summarize(b), summarize(c))
    assert gated.decision == "fail"


def test_students_t_quantiles_match_the_printed_tables() -> None:
    from llmpulse.processors.gate import t_quantile

    # two-sided 95 % and 99 % critical values of Student's t (any statistics table)
    table = {(0.975, 2): 4.303, (0.975, 5): 2.571, (0.975, 10): 2.228, (0.975, 30): 2.042,
             (0.995, 5): 4.032, (0.995, 10): 3.169, (0.995, 30): 2.750}
    for (p, df), t in table.items():
        assert abs(t_quantile(p, df) - t) / t < 0.01, (p, df, t_quantile(p, df))
    assert abs(t_quantile(0.975, math.inf) - 1.95996) < 1e-4


def test_a_small_sample_of_scores_uses_welchs_t_interval_not_the_normal_one() -> None:
    # Six scores a side, the same mean, sd 0.08 (spread 0.09): Welch's t interval (df 10, t = 2.228) reaches
    # past a 0.1 drop, the normal one (z = 1.96) does not; passing on it would be a silent pass.
    from llmpulse.processors.gate import Moments, welch

    a, b = Moments(), Moments()
    for x in (0.71, 0.80, 0.89, 0.71, 0.80, 0.89):
        a.add(x)
        b.add(x)
    d, lo, hi = welch(a, b, 1.959964)
    se = math.sqrt(2 * b.var / 6)
    half = 2.228 * se
    assert 1.96 * se < 0.1 < half  # the normal interval would have passed it
    assert d == 0 and abs(lo + half) < 0.002 and abs(hi - half) < 0.002
    rule = GateConfig.model_validate({"w": {"min_evals": 5, "max_score_drop": 0.1}}).rule_for("w")
    b_ev, c_ev = Evidence(), Evidence()
    b_ev.eval("helpful").score, c_ev.eval("helpful").score = a, b
    (check,) = evaluate(rule, "w", "v1", "v2", b_ev, c_ev).checks
    assert check.verdict == "insufficient", check


def test_the_json_report_is_strict_json_when_the_baseline_cost_nothing() -> None:
    # A baseline on a free (or fully cached) model costs 0 a call: the ratio is infinite, which
    # json.dumps writes as `Infinity`, a token jq and JSON.parse refuse.
    rule = GateConfig.model_validate({"w": {"max_cost_ratio": 1.2, "min_calls": 5}}).rule_for("w")
    lines = [json.dumps({"event_type": "output", "status": "ok", "latency_ms": 10, "cost_usd": cost,
                         "prompt_version": v}).encode() for v, cost in (("v1", 0.0), ("v2", 0.01)) for _ in range(5)]
    records, errors, _ = parse_lines(lines + evals("v1", 40) + evals("v2", 40))
    b, c = split_sides(records, Side.parse("prompt:v1"), Side.parse("prompt:v2"))
    report = evaluate(rule, "w", "v1", "v2", summarize(b), summarize(c))
    (cost,) = [ch for ch in report.checks if ch.metric == "cost_per_call"]
    assert cost.verdict == "fail" and report.decision == "fail"
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["checks"][1]["metric"] == "cost_per_call"


@hsettings(deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_the_junit_report_parses_whatever_the_eval_is_called(name: str) -> None:
    # A control character (an ANSI colour code in a CI tool's eval name) is not writable in XML 1.0:
    # the report must still parse, or the CI system shows no test at all.
    from xml.etree import ElementTree as ET

    from llmpulse.commands.gate import junit_xml

    b, c = Evidence(), Evidence()
    for ev, k in ((b, 40), (c, 30)):
        ev.eval(name).judged, ev.eval(name).passed = 40, k
    report = evaluate(GateConfig().rule_for("w"), "w", "v1", "v2", b, c)
    suite = ET.fromstring(junit_xml(report))
    (case,) = suite.iter("testcase")
    assert case.find("failure") is not None
    if name.isprintable():
        assert case.get("name") == f"{name}.pass_rate"


def test_the_markdown_summary_shows_an_eval_name_as_written() -> None:
    # GitHub renders HTML in a comment's table: an eval called "no <think> leak" lost its tag.
    from llmpulse.commands.gate import markdown

    name = "no <think> leak | & `raw`"
    b, c = Evidence(), Evidence()
    for ev, k in ((b, 40), (c, 30)):
        ev.eval(name).judged, ev.eval(name).passed = 40, k
    text = markdown(evaluate(GateConfig().rule_for("w"), "w", "v1", "v2", b, c))
    row = next(line for line in text.splitlines() if line.startswith("| no "))
    assert row.startswith("| no &lt;think&gt; leak \\| &amp; \\`raw\\` |")
    # outside the table, a code span shows it literally (HTML is not rendered there)
    assert text.rstrip().endswith("Failing: `` no <think> leak | & `raw` `` (pass_rate)")


def test_the_default_rule_is_the_streams_too() -> None:
    # `"*"` gates every workflow not listed in CI; the stream must use the same drop for them
    # (it used its own defaults), and a listed workflow keeps its own rule's value in both.
    from llmpulse.processors.pipeline import Pipeline
    from llmpulse.settings import Settings

    s = Settings(eval_gate={"*": {"max_drop": 0.2, "max_cost_ratio": 1.5}, "rag": {"min_evals": 10}},
                 anomalies={"billing": {"change_ratio": 3.0}}, stages=["anomalies"])
    (det,) = Pipeline.from_settings(s).detectors
    other, rag, billing = det.config_for("support-bot"), det.config_for("rag"), det.config_for("billing")
    assert (other.eval_min_drop, other.change_eval_drop, other.change_ratio) == (0.2, 0.2, 1.5)
    rule = s.eval_gate.rule_for("rag")  # its own rule in CI: the default max_drop, no cost ratio
    assert (rag.eval_min_drop, rag.change_eval_drop) == (rule.max_drop, rule.max_drop) == (0.05, 0.05)
    assert (billing.change_ratio, billing.eval_min_drop) == (3.0, 0.2)  # an explicit anomalies entry wins
