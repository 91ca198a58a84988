"""Review of decision rights and content capture (processors/governance.py) on inputs its first tests
did not try: events out of order, gates of other workflows, dead letters of metadata-only workflows."""

from __future__ import annotations

import re

import orjson
from hypothesis import given, settings as hsettings, strategies as st

from tests.unit.test_governance import NOW, change, findings_of, messages, pipeline

GATE = {"event_type": "change", "event_id": "gate-1", "ts": NOW - 60_000, "workflow": "support-bot",
        "change_kind": "eval_gate", "gate_result": "pass"}


def test_a_change_read_before_the_gate_it_names_is_judged_once_the_gate_is_read() -> None:
    # The deploy's change names the gate CI published a minute earlier; on another partition the
    # worker may read the change first. The passing gate is the change's approval all the same.
    swap = change("swap-1", approved_by="alice", gate_id="gate-1")
    assert findings_of(pipeline(), [swap, GATE], "unapproved_change") == []
    failed = {**GATE, "event_id": "gate-2", "gate_result": "fail"}
    (f,) = findings_of(pipeline(), [change("swap-2", approved_by="alice", gate_id="gate-2"), failed],
                       "unapproved_change")
    assert f.evidence["problems"] == ["eval gate fail"]


def test_a_change_naming_a_gate_never_seen_is_a_finding_once_the_watermark_passes_it() -> None:
    p = pipeline()
    out = p.run(messages([change("swap-3", approved_by="alice", gate_id="gate-missing"),
                          {**GATE, "event_id": "other", "ts": NOW + 120_000}]))
    later = [f for f in out.findings if f.kind == "unapproved_change"]
    rest = [f for f in p.flush() if f.kind == "unapproved_change"]
    assert len(later + rest) == 1 and (later + rest)[0].evidence["problems"] == ["no passing eval gate"]


def test_a_passing_gate_of_another_workflow_is_not_this_changes_gate() -> None:
    other = {**GATE, "workflow": "billing"}
    (f,) = findings_of(pipeline(), [other, change("swap-4", approved_by="alice", gate_id="gate-1")],
                       "unapproved_change")
    assert f.evidence["problems"] == ["eval gate gate-1 was run for billing, not support-bot"]


@hsettings(max_examples=60, deadline=None)
@given(st.permutations(["gate", "swap", "swap", "late"]), st.sampled_from(["pass", "fail"]))
def test_exactly_one_verdict_per_change_in_any_order(order: list[str], result: str) -> None:
    events = {"gate": {**GATE, "gate_result": result},
              "swap": change("swap-5", approved_by="alice", gate_id="gate-1"),
              "late": {**GATE, "event_id": "unrelated", "ts": NOW + 600_000}}
    found = findings_of(pipeline(), [events[k] for k in order], "unapproved_change")
    assert len(found) == (result != "pass")


def test_a_metadata_only_workflows_dead_letter_keeps_no_text() -> None:
    # An event the contract refuses is dead-lettered with its bytes: a metadata-only workflow's
    # prompt would be in the DLQ topic and the dead_letters table.
    bad = {"event_type": "prompt", "event_id": "x1", "ts": NOW, "workflow": "billing", "trace_id": "t",
           "messages": [{"role": "user", "content": "SENTINEL what they typed"}], "params": "not a mapping",
           "note": "SENTINEL"}
    full = {**bad, "event_id": "x2", "workflow": "support-bot"}
    (dl, kept) = pipeline().run(messages([bad, full])).dead_letters
    assert b"SENTINEL" not in dl.message.value and b"SENTINEL" not in dl.reason.encode()
    left = orjson.loads(dl.message.value)
    assert (left["event_id"], left["workflow"], left["messages"][0]["role"]) == ("x1", "billing", "user")
    assert re.fullmatch(r"~h:[a-z]{14}", left["messages"][0]["content"])  # a digest in place of the text
    assert b"SENTINEL" in kept.message.value  # full capture keeps what it was sent


@hsettings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12))
def test_no_text_of_a_metadata_only_workflow_reaches_the_dead_letters(value) -> None:
    bad = {"event_type": "tool_call", "event_id": "x", "ts": "not a time", "workflow": "billing",
           "trace_id": "t", "arguments": {"q": value, "k": "SENTINEL"}, "result": ["SENTINEL", value]}
    (dl,) = pipeline().run(messages([bad])).dead_letters
    assert b"SENTINEL" not in dl.message.value


def test_a_call_that_names_no_model_is_not_an_unapproved_model() -> None:
    # A timeout before any response, or an app that does not set the model: there is nothing to
    # judge (and a route_model policy on model "" would reroute nothing); a named model still counts.
    base = {"event_type": "output", "ts": NOW, "workflow": "support-bot", "trace_id": "t", "latency_ms": 30_000.0}
    events = [{**base, "event_id": "o1", "status": "timeout"},
              {**base, "event_id": "o2", "status": "error", "provider": "openai"},
              {**base, "event_id": "o3", "status": "ok", "provider": "mistral", "model": "mistral-large"}]
    (f,) = findings_of(pipeline(), events, "unapproved_model")
    assert f.model == "mistral-large"


@hsettings(deadline=None)
@given(st.sampled_from(["alice ", " alice", "alice\t", "\nalice"]))
def test_self_approval_does_not_count_whatever_whitespace_the_actor_carries(actor: str) -> None:
    # approved_by is read trimmed; an actor with a stray space was a different person, so
    # "alice " approving her own swap passed.
    (f,) = findings_of(pipeline(), [change("self-1", actor=actor, approved_by="alice", gate_result="pass")],
                       "unapproved_change")
    assert "self-approval" in f.evidence["problems"][0]
