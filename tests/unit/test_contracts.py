from __future__ import annotations

import json

import pytest

from llmpulse.processors.contracts import DEFAULT_MAX_STEPS, ContractChecker, ContractsConfig
from llmpulse.schemas.contract import Output, Prompt, ToolCall, Usage

T0 = 1_762_000_000_000
SUPPORT = {
    "allowed_tools": ["search_kb", "create_ticket", "issue_refund"],
    "irreversible_tools": ["issue_refund"],
    "max_steps": 3,
    "max_cost_usd": 2.0,
    "max_tokens": 10_000,
    "output_schema": {
        "type": "object",
        "required": ["answer"],
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    },
}


def checker(**kw) -> ContractChecker:
    return ContractChecker.from_config({"support-bot": SUPPORT}, **kw)


def prompt(i: int, trace: str = "t1", wf: str = "support-bot", eid: str | None = None) -> Prompt:
    return Prompt(event_id=eid or f"{trace}-p{i}", ts=T0 + i * 1000, trace_id=trace, workflow=wf, tenant="acme")


def tool(i: int, name: str, trace: str = "t1", wf: str = "support-bot", **kw) -> ToolCall:
    return ToolCall(event_id=f"{trace}-c{i}", ts=T0 + i * 1000, trace_id=trace, workflow=wf,
                    tenant="acme", tool_name=name, **kw)


def output(i: int, trace: str = "t1", wf: str = "support-bot", content: str = "", **usage) -> Output:
    return Output(event_id=f"{trace}-o{i}", ts=T0 + i * 1000, trace_id=trace, workflow=wf, tenant="acme",
                  model="gpt-4o", status="ok", latency_ms=5.0, content=content,
                  usage=Usage(**usage) if usage else None)


def run(c: ContractChecker, items) -> list:
    found = []
    for item in items:
        ev, cost = item if isinstance(item, tuple) else (item, None)
        found += c.process(ev, cost)
    return found


def test_unauthorized_tool_once_per_trace_and_tool():
    c = checker()
    found = run(c, [tool(1, "search_kb"), tool(2, "delete_db"), tool(3, "delete_db"),
                    tool(4, "drop_table"), tool(5, "delete_db", trace="t2")])
    found = [f for f in found if f.kind != "runaway_steps"]  # t1 also has 4 steps > 3
    assert [(f.kind, f.severity, f.evidence["tool_name"], f.trace_id) for f in found] == [
        ("unauthorized_tool", "critical", "delete_db", "t1"),
        ("unauthorized_tool", "critical", "drop_table", "t1"),
        ("unauthorized_tool", "critical", "delete_db", "t2"),
    ]
    assert found[0].event_ts == T0 + 2000 and found[0].evidence["event_id"] == "t1-c2"
    assert len({f.finding_id for f in found}) == 3


def test_irreversible_tool_needs_approval():
    c = checker()
    found = run(c, [tool(1, "issue_refund", approved_by="alice"), tool(2, "issue_refund"),
                    tool(3, "issue_refund", status="error")])
    assert [(f.kind, f.severity, f.evidence["event_id"]) for f in found] == [
        ("unapproved_irreversible_action", "critical", "t1-c2"),
        ("unapproved_irreversible_action", "critical", "t1-c3"),  # each unapproved act counts
    ]


def test_side_effect_irreversible_without_contract():
    c = ContractChecker()
    found = run(c, [tool(1, "wire_money", wf="finance", side_effect="irreversible"),
                    tool(2, "wire_money", wf="finance", side_effect="irreversible", approved_by="bob"),
                    tool(3, "read_ledger", wf="finance", side_effect="read")])
    assert [(f.kind, f.workflow, f.evidence["side_effect"]) for f in found] == [
        ("unapproved_irreversible_action", "finance", "irreversible")]


def test_runaway_steps_once_at_crossing_with_spend_so_far():
    c = checker()
    events = [prompt(1), (output(2, input_tokens=10), 0.25), tool(3, "search_kb"), prompt(4),
              (output(5, input_tokens=10), 0.5), prompt(6), prompt(7), tool(8, "search_kb")]
    found = run(c, events)
    assert [f.kind for f in found] == ["runaway_steps"]
    f = found[0]
    # Steps are prompts and tool calls only: the 4th is prompt 6.
    assert f.evidence["event_id"] == "t1-p6" and f.event_ts == T0 + 6000
    assert f.severity == "high" and f.value == 4 and f.threshold == 3
    assert f.wasted_usd == pytest.approx(0.75)
    assert f.trace_id == "t1" and f.workflow == "support-bot"


def test_runaway_steps_out_of_order_names_the_event_time_crossing():
    in_order = [prompt(1), tool(2, "search_kb"), (output(3), 0.5), prompt(4), prompt(5), prompt(6)]
    # The crossing step (prompt 5) arrives before prompt 4, output 3 before tool 2.
    shuffled = [prompt(1), (output(3), 0.5), tool(2, "search_kb"), prompt(5), prompt(4), prompt(6)]
    a = run(checker(), in_order)
    b = run(checker(), shuffled)
    assert len(a) == len(b) == 1
    assert (a[0].finding_id, a[0].event_ts, a[0].evidence["event_id"]) == (
        b[0].finding_id, b[0].event_ts, b[0].evidence["event_id"])
    assert a[0].evidence["event_id"] == "t1-p5" and a[0].wasted_usd == pytest.approx(0.5)
    assert b[0].wasted_usd == pytest.approx(0.5)


def test_duplicate_deliveries_count_once():
    c = checker()
    assert run(c, [prompt(1), prompt(1), prompt(2), prompt(2), prompt(3), prompt(3)]) == []
    assert [f.kind for f in run(c, [prompt(4)])] == ["runaway_steps"]


def test_runaway_cost_fires_at_crossing_output():
    c = checker()
    found = run(c, [(output(i), 0.8) for i in range(1, 6)])
    assert [f.kind for f in found] == ["runaway_cost"]
    f = found[0]
    assert f.evidence["event_id"] == "t1-o3"  # 0.8 + 0.8 + 0.8 = 2.4 > 2.0
    assert f.value == pytest.approx(2.4) and f.threshold == 2.0 and f.wasted_usd == pytest.approx(2.4)


def test_runaway_cost_out_of_order():
    # Event-time order o1, o2, o3; o3 arrives first. The running sum in event time crosses at o2.
    c = checker()
    found = run(c, [(output(3), 0.5), (output(1), 1.5), (output(2), 1.0)])
    assert [f.kind for f in found] == ["runaway_cost"]
    assert found[0].evidence["event_id"] == "t1-o2" and found[0].event_ts == T0 + 2000
    assert found[0].wasted_usd == pytest.approx(2.5)  # spend up to o2 in event time


def test_runaway_tokens_counts_input_plus_output_once():
    # 6k input incl. 5k cached + 1k output incl. 800 reasoning = 7k tokens per call; limit 10k.
    c = checker()
    call = dict(input_tokens=6_000, cache_read_tokens=5_000, output_tokens=1_000, reasoning_tokens=800)
    assert run(c, [(output(1, **call), 0.01)]) == []
    found = run(c, [(output(2, **call), 0.01), (output(3, **call), 0.01)])
    assert [(f.kind, f.value, f.evidence["event_id"]) for f in found] == [("runaway_tokens", 14_000, "t1-o2")]
    assert found[0].wasted_usd == pytest.approx(0.02)


def test_output_schema_violation_without_leaking_values():
    c = checker()
    good = output(1, content=json.dumps({"answer": "ok", "confidence": 0.9}))
    bad = output(2, content=json.dumps({"answer": "ok", "confidence": "sk-secret-token"}))
    missing = output(3, content='  {"reply": "x"}')
    prose = output(4, content="Sure! Here is the answer.")
    broken = output(5, content='{"answer": ')
    found = run(c, [good, bad, missing, prose, broken])
    assert [(f.kind, f.severity, f.evidence["event_id"]) for f in found] == [
        ("output_schema_violation", "medium", "t1-o2"),
        ("output_schema_violation", "medium", "t1-o3"),
    ]
    assert found[0].evidence["json_path"] == "$.confidence"
    assert found[0].evidence["validator"] == "type"
    assert "sk-secret-token" not in json.dumps(found[0].evidence) + found[0].title
    assert found[1].evidence["validator"] == "required"


def test_defaults_for_workflows_without_contract():
    c = ContractChecker()
    found = run(c, [prompt(i, wf="adhoc") for i in range(DEFAULT_MAX_STEPS + 5)])
    assert [(f.kind, f.evidence["event_id"]) for f in found] == [("runaway_steps", f"t1-p{DEFAULT_MAX_STEPS}")]
    assert run(c, [tool(100, "anything", wf="adhoc")]) == []  # any tool allowed by default
    assert run(ContractChecker(), [(output(1, wf="adhoc"), 5.01)])[0].kind == "runaway_cost"


def test_star_contract_and_null_disables_a_limit():
    c = ContractChecker.from_config({"*": {"max_steps": 2}, "batch": {"max_steps": None}})
    assert [f.kind for f in run(c, [prompt(i, wf="adhoc") for i in range(3)])] == ["runaway_steps"]
    assert run(c, [prompt(i, wf="batch", trace="t9") for i in range(500)]) == []


def test_config_is_validated_at_start_up():
    with pytest.raises(ValueError):
        ContractsConfig.from_config({"x": {"output_schema": {"type": "no-such-type"}}})
    with pytest.raises(ValueError, match="irreversible_tools not in allowed_tools"):
        ContractsConfig.from_config({"x": {"allowed_tools": ["a"], "irreversible_tools": ["b"]}})
    with pytest.raises(ValueError):
        ContractsConfig.from_config({"x": {"max_stepz": 3}})


def test_state_is_bounded_by_idle_time_and_count():
    c = checker(idle_ms=60_000, max_traces=3)
    for n in range(5):
        c.process(prompt(0, trace=f"cap{n}"))
    assert len(c.traces) == 3 and c.evicted == 2
    late = Prompt(event_id="x", ts=T0 + 10 * 60_000, trace_id="fresh", workflow="support-bot", tenant="acme")
    c.process(late)  # event time moves 10 minutes on: the idle traces go
    assert list(c.traces) == [("acme", "fresh")]


def test_detected_at_from_caller_and_replay_ids_stable():
    a = checker().process(tool(1, "delete_db"), detected_at=42)
    b = checker().process(tool(1, "delete_db"))
    assert a[0].detected_at == 42 and b[0].detected_at == T0 + 1000
    assert a[0].finding_id == b[0].finding_id
