"""The maintained rule catalogue (gitleaks) and its supplement, loaded into the redaction rules."""

from __future__ import annotations

import random
import re

import orjson
import pytest

from bench.redaction.formats import CLEAN_SENTENCES, FORMATS, LOOKALIKES, SENTENCES_KEYWORD, SENTENCES_PLAIN
from bench.redaction.score import score_formats
from llmpulse.processors import redaction_catalog as rc
from llmpulse.processors import redaction_scan
from llmpulse.processors.redaction import CLASS_KIND, Redactor, detection_findings
from llmpulse.processors.redaction_config import RedactionSettings
from llmpulse.processors.validate import validate


def test_the_catalogue_loads_hundreds_of_formats_and_says_what_it_left_out() -> None:
    rules, skipped = rc.load()
    s = rc.summary()
    assert len(rules) >= 250 and s["version"].startswith("gitleaks v8.30.1")
    assert {r.id for r in rules} >= {"gitlab-pat", "huggingface-access-token", "npm-access-token", "sendgrid-api-token",
                                     "pypi-upload-token", "age-secret-key", "groq-api-key"}
    assert all(why for _, why in skipped) and "generic-api-key" in {i for i, _ in skipped}
    assert all(CLASS_KIND[r.rule.cls] == "secret" for r in rules)
    assert s["hyperscan_regex_gates"] + len(s["keyword_gates"]) == len(rules)


def test_go_patterns_are_translated() -> None:
    assert rc.translate(r"\b(SG\.(?i)[a-z0-9]{4})x") == r"\b(SG\.(?i:[a-z0-9]{4}))x"
    assert rc.translate(r"ab(?i)cd") == r"ab(?i:cd)"
    assert rc.translate(r"x[[:alnum:]]{3}\z", prose=False) == r"x[A-Za-z0-9]{3}\Z"
    end = rc.translate(r"(hf_[a-z]{3})(?:[\x60'" '"' r"\s;]|\\[nr]|$)")
    assert re.fullmatch(end, "hf_abc.") and re.fullmatch(end, "hf_abc,") and not re.fullmatch(end, "hf_abcd")
    assert rc.without_lookarounds(r"a(?<![x(])b(?=c)\(?!d") == r"ab\(?!d"


def test_placeholders_and_findings_name_the_rule_never_the_value() -> None:
    token = "glpat-" + "Xk9vR2mQ7tLpZ4wBn8Yc"
    text, counts = Redactor().redact_text(f"the token {token} expired yesterday")
    assert text == "the token [SECRET:gitlab_pat] expired yesterday" and counts == {"gitlab_pat": 1}
    event = validate(orjson.dumps({"event_id": "e", "ts": 1_764_000_000_000, "trace_id": "t", "workflow": "w",
                                   "event_type": "output", "status": "ok", "latency_ms": 1.0,
                                   "content": f"use {token} for the retry"})).event
    redacted, detections = Redactor().redact_event(event)
    (finding,) = detection_findings(event, detections)
    assert finding.kind == "secret_detected" and finding.evidence["class"] == "gitlab_pat"
    assert token not in orjson.dumps(finding.evidence).decode() and token not in finding.title


def test_an_allowlist_on_the_secret_exempts_only_a_whole_harmless_secret() -> None:
    r"""gitleaks' vault allowlist `s\.[A-Za-z]{24}` (legacy tokens that are all letters) must not
    exempt an `hvs.` token whose body happens to open with 24 letters."""
    token = "hvs." + "nTiEvHITrbvDCTugmtrtTwRE" + "egXgla9MSw4D9aJyT-JL7ohQQXTG91poA" * 2
    text, counts = Redactor().redact_text(f"the token {token} expired yesterday")
    assert token[4:] not in text and counts == {"vault_service_token": 1}
    legacy = "s." + "AbCdEfGhIjKlMnOpQrStUvWx"  # the allowlisted shape itself stays
    assert Redactor().redact_text(f"see {legacy} now")[0] == f"see {legacy} now"


def test_a_policy_can_name_a_catalogue_class() -> None:
    s = RedactionSettings.model_validate({"defaults": {"classes": {"gitlab_pat": "allow"}}})
    token = "glpat-" + "Xk9vR2mQ7tLpZ4wBn8Yc"
    assert s.redactor_for("acme", "w").redact_text(token)[0] == token
    with pytest.raises(ValueError):
        RedactionSettings.model_validate({"defaults": {"classes": {"gitlab_patt": "allow"}}})


def test_gated_and_plain_paths_agree_on_every_format_and_look_alike() -> None:
    assert redaction_scan.accelerated(), "hyperscan (the worker's prefilter) must be installed"
    plain, gated = Redactor(accelerate=False), Redactor(accelerate=True)
    r = random.Random(11)
    texts = [r.choice(SENTENCES_PLAIN + SENTENCES_KEYWORD).format(v=gen(r)[0]) for gen in FORMATS.values() for _ in range(3)]
    texts += [r.choice(CLEAN_SENTENCES).format(v=make(r)) for make in LOOKALIKES.values() for _ in range(10)]
    assert [t for t in texts if plain.find(t) != gated.find(t)] == []


def test_a_gate_hyperscan_refuses_runs_on_the_plain_path(caplog) -> None:
    rules, _ = rc.load()
    gitlab = next(r.rule for r in rules if r.id == "gitlab-pat")
    refused = gitlab._replace(gate=r"glpat-(?=x)")  # lookaheads: not supported by Hyperscan
    scanner = redaction_scan.Scanner((refused,), accelerate=True)
    token = "glpat-" + "Xk9vR2mQ7tLpZ4wBn8Yc"
    assert [s.cls for s in scanner.find(f"key {token} here")] == ["gitlab_pat"]
    assert "runs on the plain path" in caplog.text


def test_recall_per_format_and_false_redaction_meet_the_floors() -> None:
    fm = score_formats(5, Redactor(), per_format=20, per_lookalike=40)
    assert len(FORMATS) >= 100
    low = {k: v for k, v in fm["by_format"].items() if v < 0.95}
    assert low == {} and fm["recall"] >= 0.99 and fm["false_rate"] <= 0.005, (low, fm["false"])


def test_a_token_of_no_known_format_is_caught_after_a_credential_word_in_any_language() -> None:
    from bench.redaction.formats import CLEAN_KEYWORD_SENTENCES, SENTENCES_CONTEXT

    red = Redactor()
    token = "Zq8vN3xLm2Rt7Yk4Wb9Pc1Hd6Jf0Gs5T"
    for sentence in SENTENCES_CONTEXT:
        text, counts = red.redact_text(sentence.format(v=token))
        assert token not in text and counts, sentence
    # Near the same words, ids, digests and keys of a cache are left alone.
    for sentence in CLEAN_KEYWORD_SENTENCES:
        for value in ("cus_Nb3Kq8Lz2Xv9Wm", "sha512-" + "Ab3dE5gH7jK9" * 4, "4bf92f3577b34da6a3ce929d0e0e4736",
                      "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f", "req_" + token[:24]):
            assert red.find(sentence.format(v=value)) == [], (sentence, value)
