"""Decision rights, approved models and content capture (processors/governance.py), through the pipeline."""

from __future__ import annotations

import re
import time

import msgspec
import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from pydantic import ValidationError

from llmpulse.processors.governance import GovernanceChecker, GovernanceConfig, strip_content
from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.schemas.contract import Change
from llmpulse.schemas.rows import EVENT_COLUMNS
from llmpulse.settings import Settings

NOW = int(time.time() * 1000) - 3_600_000
DAY = 86_400_000
GOVERNANCE = {
    "groups": {"ml-leads": ["alice", "bob"]},
    "approved_models": {"owner": "platform-team", "models": ["openai/gpt-4o*"]},
    "workflows": {
        "support-bot": {
            "approvals": {"model_swap": {"approvers": ["group:ml-leads"], "require_gate": True},
                          "prompt_edit": {"approvers": ["carol", "group:ml-leads"]},
                          "tool_permission": {"approvers": ["alice"]}},
            "approved_models": {"owner": "support-team", "models": ["anthropic/claude-sonnet-4"]},
        },
        "billing": {"approved_models": {"owner": "billing-team", "models": ["openai/gpt-4o-mini"],
                                        "inherit_global": False},
                    "content": {"capture": "metadata"}},
        "research": {"content": {"capture": "sampled", "rate": 0.3}},
    },
}


def pipeline(**overrides) -> Pipeline:
    return Pipeline.from_settings(Settings(governance=GOVERNANCE, stages=["governance"], **overrides), replay=True)


def messages(events: list[dict]) -> list[RawMessage]:
    return [RawMessage(orjson.dumps(e), "llm.events", 0, i) for i, e in enumerate(events)]


def change(event_id: str, kind: str = "model_swap", **fields) -> dict:
    return {"event_type": "change", "event_id": event_id, "ts": NOW, "workflow": "support-bot",
            "change_kind": kind, "from_value": "gpt-4o", "to_value": "claude-sonnet-4", "actor": "dave", **fields}


def findings_of(p: Pipeline, events: list[dict], kind: str) -> list:
    out = p.run(messages(events))
    assert not out.dead_letters, out.dead_letters
    return [f for f in out.findings + p.flush() if f.kind == kind]


def test_a_model_swap_with_no_approver_raises_exactly_one_unapproved_change() -> None:
    p = pipeline()
    ev = change("ch-1", gate_result="pass")
    found = findings_of(p, [ev], "unapproved_change")
    assert len(found) == 1
    f = found[0]
    assert (f.severity, f.workflow, f.evidence["change_id"], f.evidence["problems"]) == (
        "high", "support-bot", "ch-1", ["no approver"])
    # the same change delivered again (another offset, a replay): no second finding
    assert findings_of(p, [ev, ev], "unapproved_change") == []


def test_a_model_swap_approved_by_a_listed_approver_with_a_passing_gate_raises_none() -> None:
    p = pipeline()
    gate = {"event_type": "change", "event_id": "gate-1", "ts": NOW - 60_000, "workflow": "support-bot",
            "change_kind": "eval_gate", "gate_result": "pass"}
    assert findings_of(p, [gate, change("ch-2", approved_by="bob", gate_id="gate-1")], "unapproved_change") == []
    assert findings_of(p, [change("ch-3", approved_by="alice", gate_result="pass")], "unapproved_change") == []


@pytest.mark.parametrize("fields, problem", [
    ({"approved_by": "bob"}, "no passing eval gate"),  # gate required, none given
    ({"approved_by": "bob", "gate_result": "insufficient"}, "eval gate insufficient"),
    ({"approved_by": "mallory", "gate_result": "pass"}, "not an allowed approver"),
    ({"approved_by": "alice", "actor": "alice", "gate_result": "pass"}, "self-approval does not count"),
])
def test_what_does_not_count_as_approval(fields: dict, problem: str) -> None:
    (f,) = findings_of(pipeline(), [change("ch-x", **fields)], "unapproved_change")
    assert any(problem in p for p in f.evidence["problems"]), f.evidence


def test_a_recorded_failing_gate_overrides_what_the_change_claims() -> None:
    gate = {"event_type": "change", "event_id": "gate-9", "ts": NOW - 1, "workflow": "support-bot",
            "change_kind": "eval_gate", "gate_result": "fail"}
    (f,) = findings_of(pipeline(), [gate, change("ch-4", approved_by="bob", gate_id="gate-9", gate_result="pass")],
                       "unapproved_change")
    assert f.evidence["gate_result"] == "fail" and "eval gate fail" in f.title


def test_severity_by_change_kind_and_ungoverned_kinds() -> None:
    p = pipeline()
    (tool,) = findings_of(p, [change("ch-t", "tool_permission")], "unapproved_change")
    (prompt,) = findings_of(p, [change("ch-p", "prompt_edit")], "unapproved_change")
    assert (tool.severity, prompt.severity) == ("critical", "medium")
    # config changes are not listed for support-bot; other workflows govern no change
    assert findings_of(p, [change("ch-c", "config"), change("ch-o", workflow="billing")], "unapproved_change") == []


def output(workflow: str, provider: str, model: str, ts: int, i: int, **fields) -> dict:
    return {"event_type": "output", "event_id": f"o-{workflow}-{model}-{ts}-{i}", "ts": ts, "trace_id": f"t{i}",
            "workflow": workflow, "provider": provider, "model": model, "status": "ok", "latency_ms": 100.0, **fields}


def test_an_unapproved_model_raises_one_finding_per_workflow_model_and_day() -> None:
    p = pipeline()
    day0 = NOW - DAY
    calls = [output("support-bot", "mistral", "mistral-large", day0 + i, i) for i in range(50)]
    calls += [output("support-bot", "openai", "gpt-4o", day0 + i, i) for i in range(10)]  # global list
    calls += [output("support-bot", "anthropic", "claude-sonnet-4", day0 + i, i) for i in range(10)]  # its own
    calls += [output("rag", "mistral", "mistral-large", day0 + i, i) for i in range(5)]
    found = findings_of(p, calls, "unapproved_model")
    assert sorted((f.workflow, f.model, f.evidence["owner"]) for f in found) == [
        ("rag", "mistral-large", "platform-team"), ("support-bot", "mistral-large", "support-team")]
    assert "support-team" in next(f.title for f in found if f.workflow == "support-bot")
    # the next day: once more
    next_day = [output("support-bot", "mistral", "mistral-large", NOW + i, 100 + i) for i in range(5)]
    assert len(findings_of(p, next_day, "unapproved_model")) == 1


def test_a_workflow_list_without_the_global_one() -> None:
    found = findings_of(pipeline(), [output("billing", "openai", "gpt-4o", NOW, 1),
                                     output("billing", "openai", "gpt-4o-mini", NOW, 2)], "unapproved_model")
    assert [(f.model, f.evidence["owner"]) for f in found] == [("gpt-4o", "billing-team")]


TEXT = "SENTINEL the customer wrote this"


def full_trace(workflow: str, i: int) -> list[dict]:
    base = {"ts": NOW + i, "trace_id": f"tr-{workflow}-{i}", "workflow": workflow, "provider": "openai",
            "model": "gpt-4o-mini"}
    return [
        {**base, "event_type": "prompt", "event_id": f"p{i}{workflow}", "messages": [{"role": "user", "content": TEXT}],
         "params": {"note": TEXT}},
        {**base, "event_type": "tool_call", "event_id": f"t{i}{workflow}", "tool_name": "search",
         "arguments": {"q": TEXT}, "result": TEXT},
        {**base, "event_type": "output", "event_id": f"o{i}{workflow}", "status": "ok", "latency_ms": 5.0,
         "content": TEXT, "unknown_field": TEXT},
        {**base, "event_type": "eval", "event_id": f"e{i}{workflow}", "eval_name": "tone", "passed": True,
         "comment": TEXT},
    ]


def test_a_metadata_only_workflow_keeps_no_text_in_rows_or_findings() -> None:
    p = Pipeline.from_settings(Settings(governance=GOVERNANCE))  # every stage
    out = p.run(messages([e for i in range(3) for e in full_trace("billing", i)]))
    assert len(out.rows) == 12 and not out.dead_letters
    assert TEXT not in repr(out.rows) and "SENTINEL" not in repr([msgspec.to_builtins(f) for f in out.findings])
    row = dict(zip(EVENT_COLUMNS, out.rows[0]))
    [msg] = orjson.loads(row["messages"])  # roles stay, text goes: a digest in its place
    assert msg["role"] == "user" and re.fullmatch(r"~h:[a-z]{14}", msg["content"])
    assert {dict(zip(EVENT_COLUMNS, r))["tool_name"] for r in out.rows} >= {"search"}  # names stay
    # a full-capture workflow next to it keeps its text
    kept = p.run(messages(full_trace("support-bot", 9)))
    assert TEXT in repr(kept.rows)


def test_a_sampled_workflow_keeps_content_for_about_its_rate_of_traces() -> None:
    p = Pipeline.from_settings(Settings(governance=GOVERNANCE, stages=[]))
    events = [e for i in range(2000) for e in full_trace("research", i)[2:3]]
    rows = p.run(messages(events)).rows
    kept = sum(TEXT in repr(r) for r in rows)
    assert 0.26 <= kept / len(rows) <= 0.34
    again = Pipeline.from_settings(Settings(governance=GOVERNANCE, stages=[])).run(messages(events)).rows
    assert [TEXT in repr(r) for r in again] == [TEXT in repr(r) for r in rows]  # same traces every time


def test_strip_content_keeps_names() -> None:
    ch = Change(event_id="c", ts=NOW, change_kind="config", description=TEXT, actor="a")
    assert strip_content(ch).description == "" and strip_content(ch).actor == "a"


def test_config_errors_name_the_entry() -> None:
    for bad, where in (
        ({"workflows": {"w": {"approvals": {"model_swap": {"approvers": ["group:nope"]}}}}}, "unknown groups"),
        ({"workflows": {"w": {"approvals": {"modelswap": {"approvers": ["a"]}}}}}, "modelswap"),
        ({"workflows": {"w": {"approvals": {"model_swap": {"approvers": []}}}}}, "approvers"),
        ({"workflows": {"w": {"content": {"capture": "sampled"}}}}, "rate"),
        ({"approved_models": {"models": ["x"]}}, "owner"),
    ):
        with pytest.raises(ValidationError, match=where):
            Settings(governance=bad)


kinds = st.sampled_from(["model_swap", "prompt_edit", "config", "rollback", "tool_permission", "eval_gate"])
people = st.sampled_from(["", "alice", "bob", "carol", "dave", "alice,bob", " bob , x"])


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3", "g1"]), kinds, people, people,
                          st.sampled_from(["", "pass", "fail", "insufficient"]), st.sampled_from(["", "g1", "zz"]),
                          st.sampled_from(["support-bot", "billing", ""])), max_size=20))
def test_at_most_one_finding_per_change_whatever_arrives(changes) -> None:
    det = GovernanceChecker(GovernanceConfig.model_validate(GOVERNANCE))
    ids = []
    for eid, kind, actor, approver, gate, gate_id, wf in changes:
        ev = Change(event_id=eid, ts=NOW, change_kind=kind, actor=actor, approved_by=approver,
                    gate_result=gate, gate_id=gate_id, workflow=wf)
        ids += [f.finding_id for f in det.process(ev)]
    assert len(ids) == len(set(ids))


def test_both_findings_can_drive_a_kill_switch_policy() -> None:
    p = Pipeline.from_settings(Settings(
        governance=GOVERNANCE, contracts={"support-bot": {"fallback": {"model": "gpt-4o"}}},
        policies={"rules": [{"name": "back-to-approved", "findings": ["unapproved_model", "unapproved_change"],
                             "action": "route_model", "for": "1h"}]},
        stages=["governance"]), replay=True)
    out = p.run(messages([change("ch-9", gate_result="pass"),
                          output("support-bot", "mistral", "mistral-large", NOW, 1)]))
    routes = sorted((a.kind, a.model, a.route_to) for a in out.actions)
    assert routes == [("route_model", "claude-sonnet-4", "gpt-4o"), ("route_model", "mistral-large", "gpt-4o")]


gov_scalars = st.none() | st.booleans() | st.integers(-2, 70_000) | st.floats(allow_nan=True) | st.text(max_size=6)
gov_values = st.recursive(gov_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["approvals", "model_swap", "approvers", "require_gate", "owner", "models", "content", "capture",
                     "rate", "retention_days", "group:ml", "workflows", "w", "groups", "ml", "approved_models"]),
    c, max_size=4), max_leaves=15)


@hsettings(max_examples=300, deadline=None)
@given(gov_values)
def test_any_governance_section_loads_or_is_one_validation_error(section) -> None:
    try:
        s = Settings(governance=section)
    except ValidationError as exc:
        assert all(e["loc"][0] == "governance" for e in exc.errors())
        return
    GovernanceChecker(s.governance)  # what loads, runs


def test_the_sdk_hook_keeps_the_text_out_of_kafka_too() -> None:
    from llmpulse.ingest import MemoryPublisher
    from llmpulse.processors.governance import ContentPolicy
    from llmpulse.processors.validate import Valid, validate

    policy = ContentPolicy(GovernanceConfig.model_validate(GOVERNANCE))
    pub = MemoryPublisher(hooks=[policy.hook])
    for ev in full_trace("billing", 1) + full_trace("support-bot", 1):
        assert pub.publish(ev)
    billing = [e for e in pub.events if e["workflow"] == "billing"]
    assert len(billing) == 4 and TEXT not in repr(billing) and "unknown_field" not in repr(billing)
    [msg] = billing[0]["messages"]
    assert msg["role"] == "user" and re.fullmatch(r"~h:[a-z]{14}", msg["content"])
    assert billing[1]["tool_name"] == "search"
    assert all(isinstance(validate(orjson.dumps(e)), Valid) for e in billing)  # still valid contract events
    assert TEXT in repr([e for e in pub.events if e["workflow"] == "support-bot"])


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["event_type", "workflow", "trace_id", "messages", "content", "arguments",
                                        "result", "comment", "description", "x"]),
                       st.sampled_from(["prompt", "output", "tool_call", "eval", "change", "billing"])
                       | st.lists(st.dictionaries(st.sampled_from(["role", "content", "z"]), st.text(max_size=3)
                                                  | st.integers(), max_size=3) | st.integers(), max_size=3)
                       | st.text(max_size=5) | st.integers() | st.none(), max_size=8))
def test_the_sdk_hook_never_raises_on_any_dict(event) -> None:
    from llmpulse.processors.governance import ContentPolicy

    out = ContentPolicy(GovernanceConfig.model_validate(GOVERNANCE)).hook(dict(event, workflow="billing"))
    assert isinstance(out, dict)
