"""Review of the eval gate (processors/gate.py) on inputs its first tests did not try."""

from __future__ import annotations

import json
import random

from hypothesis import given, strategies as st

from llmpulse.processors.gate import GateConfig, evaluate, parse_lines, split_sides, summarize, Side

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
