"""Kill-switch decisions in the SDK (ingest/enforce.py) over a ControlState (ingest/controls.py)."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from llmpulse.ingest import MemoryPublisher
from llmpulse.ingest.controls import ControlState
from llmpulse.ingest.enforce import ApprovalRequired, Halted, guard_tool
from llmpulse.processors.contracts import ContractsConfig
from llmpulse.processors.validate import Valid, validate
from llmpulse.schemas.controls import encode_action, is_active, lift, new_action, scope_key

CONTRACTS = ContractsConfig.from_config({
    "support-bot": {"irreversible_tools": ["issue_refund"], "approvers": ["alice"],
                    "fallback": {"model": "gpt-4o-mini", "reply": "A person will get back to you."}},
    "payments": {"fail_mode": "closed"},
})


def now() -> int:
    return time.time_ns() // 1_000_000


def setup(*actions, stale: bool = False):
    state = ControlState()
    for a in actions:
        state.apply(scope_key(a), encode_action(a))
    pub = MemoryPublisher(controls=state, contracts=CONTRACTS, stale=stale)
    return state, pub


def decisions(pub: MemoryPublisher) -> list[dict]:
    return [e for e in pub.events if e["event_type"] == "decision"]


def test_pause_denies_model_and_tool_calls_with_the_fallback_reply_and_resume_allows() -> None:
    pause = new_action("pause_workflow", reason="refund loop", at=now(), actor="alice", workflow="support-bot")
    state, pub = setup(pause)
    with pub.trace("support-bot", tenant="acme") as t:
        v = t.check_model("gpt-4o")
        assert (v.outcome, v.allowed, v.action.action_id) == ("deny", False, pause.action_id)
        assert v.reply == "A person will get back to you." and "alice" in v.reason and "refund loop" in v.reason
        assert t.check_tool("search_kb").outcome == "deny"
        with pytest.raises(Halted) as exc:
            t.require_model("gpt-4o")
        assert exc.value.reply == v.reply
        state.apply(scope_key(pause), encode_action(lift(pause, by="bob", at=now())))
        assert t.check_model("gpt-4o").outcome == "allow"  # the cached deny went with the generation
    with pub.trace("other-bot") as t:
        assert t.check_model("gpt-4o").allowed
    d = decisions(pub)
    assert [(e["decision"], e["checked"], e["control_kind"], e["action_id"]) for e in d] == [
        ("deny", "model", "pause_workflow", pause.action_id), ("deny", "tool", "pause_workflow", pause.action_id)]
    assert d[0]["fallback"] == "reply" and d[0]["tenant"] == "acme"
    for e in d:  # every decision is a valid contract event
        assert isinstance(validate(orjson.dumps(e)), Valid)


def test_repeats_are_one_event_with_a_count() -> None:
    halt = new_action("halt_trace", reason="tool_loop", at=now(), finding_id="f1", policy="halt-loops",
                      trace_id="t-loop", expires_at=now() + 60_000)
    _, pub = setup(halt)
    with pub.trace("support-bot", trace_id="t-loop") as t:
        for _ in range(1000):
            assert not t.check_model("gpt-4o")
    assert len(decisions(pub)) == 1  # the first, at once
    assert pub.enforcer.flush() == 0  # the window (5 s) has not passed
    pub.enforcer.flush(force=True)
    first, rest = decisions(pub)
    assert (first.get("decision_count", 1), rest["decision_count"]) == (1, 999)
    assert rest["last_decision_ts"] >= rest["ts"] >= first["ts"]
    assert pub.enforcer.stats["denied"] == 1000 and pub.enforcer.stats["events"] == 2
    assert "policy halt-loops" in rest.get("reason", "") or rest["reason"] == "tool_loop"


def test_route_uses_the_other_model_and_says_it_is_the_fallback() -> None:
    r = new_action("route_model", reason="5xx", at=now(), actor="bob", workflow="support-bot", model="gpt-4o",
                   route_to="gpt-4o-mini")
    _, pub = setup(r)
    with pub.trace("support-bot") as t:
        v = t.check_model("gpt-4o")
        assert (v.outcome, v.model, v.allowed) == ("route", "gpt-4o-mini", True)
        assert t.require_model("gpt-4o") == "gpt-4o-mini"
        assert t.check_model("claude-sonnet").outcome == "allow"
    (d,) = decisions(pub)
    assert (d["decision"], d["route_to"], d["fallback"]) == ("route", "gpt-4o-mini", "model")


def test_approval_holds_irreversible_calls_until_an_approver_approves() -> None:
    need = new_action("require_approval", reason="after an unapproved refund", at=now(), finding_id="f2",
                      workflow="support-bot", expires_at=now() + 60_000)
    state, pub = setup(need)
    with pub.trace("support-bot", tenant="acme") as t:
        assert t.check_tool("search_kb").allowed  # no side effect: not held
        assert t.check_tool("send_mail", side_effect="write").outcome == "needs_approval"
        with pytest.raises(ApprovalRequired):
            t.require_tool("issue_refund")  # irreversible by the contract
        mallory = new_action("approve", reason="ok", at=now(), actor="mallory", trace_id=t.trace_id,
                             expires_at=now() + 60_000)
        state.apply(scope_key(mallory), encode_action(mallory))
        assert t.check_tool("issue_refund").outcome == "needs_approval"  # not an approver
        alice = new_action("approve", reason="ok", at=now(), actor="alice", trace_id=t.trace_id, tool="issue_refund",
                           expires_at=now() + 60_000)
        state.apply(scope_key(alice), encode_action(alice))
        v = t.require_tool("issue_refund")
        assert (v.outcome, v.approved_by) == ("allow", "alice")
        t.tool_call("issue_refund", side_effect="irreversible")
        assert t.check_tool("send_mail", side_effect="write").outcome == "needs_approval"  # approved one tool only
    assert pub.events[-1]["event_type"] == "decision" or any(
        e.get("approved_by") == "alice" for e in pub.events if e["event_type"] == "tool_call")
    (call,) = [e for e in pub.events if e["event_type"] == "tool_call"]
    assert call["approved_by"] == "alice"


def test_guard_tool_checks_in_the_current_trace_only() -> None:
    off = new_action("disable_tool", reason="provider outage", at=now(), actor="bob", tool="issue_refund")
    _, pub = setup(off)
    calls = []

    @guard_tool("issue_refund")
    def refund(order: str) -> str:
        calls.append(order)
        return "done"

    assert refund("outside") == "done"  # no trace: unchecked
    with pub.trace("support-bot"):
        with pytest.raises(Halted, match="disable tool by bob: provider outage"):
            refund("o-1")
    assert calls == ["outside"]


def test_dry_run_decides_publishes_and_allows() -> None:
    dry = new_action("pause_workflow", reason="trying", at=now(), actor="alice", workflow="support-bot", mode="dry_run")
    _, pub = setup(dry)
    with pub.trace("support-bot") as t:
        assert t.check_model("gpt-4o").outcome == "allow"
    (d,) = decisions(pub)
    assert (d["decision"], d["control_mode"]) == ("deny", "dry_run")


def test_stale_view_fails_open_or_closed_per_contract() -> None:
    pause = new_action("pause_workflow", reason="r", at=now(), actor="alice", workflow="support-bot")
    _, pub = setup(pause, stale=True)
    with pub.trace("support-bot") as t:  # fail open: what the view last knew still holds
        assert t.check_model("gpt-4o").outcome == "deny"
    with pub.trace("search") as t:  # fail open, nothing known
        assert t.check_model("gpt-4o").allowed
    with pub.trace("payments") as t:  # fail closed
        v = t.check_tool("charge")
        assert v.outcome == "deny" and v.action is None and "fails closed" in v.reason
    assert decisions(pub)[-1]["control_kind"] == "fail_closed"
    pub.enforcer.view.is_stale = False
    with pub.trace("payments") as t:
        assert t.check_tool("charge").allowed


def test_an_expired_action_lifts_itself() -> None:
    halt = new_action("halt_trace", reason="r", at=now(), actor="a", trace_id="t1", expires_at=now() + 150)
    state, pub = setup(halt)
    with pub.trace("w", trace_id="t1") as t:
        assert t.check_model("m").outcome == "deny"
        time.sleep(0.2)
        assert t.check_model("m").outcome == "allow"  # cached until its expiry only
    assert [a.kind for a in state.sweep(now())] == ["halt_trace"] and len(state) == 0


def test_state_keeps_the_latest_record_per_key() -> None:
    state = ControlState(keep_ended=True)
    a = new_action("disable_tool", reason="r", at=now(), actor="a", tool="x")
    k = scope_key(a)
    state.apply(k, encode_action(a))
    assert state.apply(k, b'{"garbage": 1}') is None and state.invalid == 1 and len(state) == 1  # kept
    state.apply(k, encode_action(lift(a, by="b", at=now())))
    assert len(state) == 0 and state.ended[k].state == "lifted" and state.kinds == {}
    state.apply(k, None)  # tombstone
    assert k not in state.ended


# -- the index answers what a scan of every action would --------------------------------------

TENANTS, WORKFLOWS, MODELS, TOOLS, USERS = ["acme", "beta"], ["support-bot", "payments"], ["m1", "m2"], ["t1", "t2"], ["u1", "u2"]
SIDE = ["", "read", "write", "irreversible"]


@st.composite
def an_action(draw):
    kind = draw(st.sampled_from(["halt_trace", "pause_workflow", "disable_tool", "route_model", "require_approval",
                                 "block_spend"]))
    opt = lambda xs: draw(st.sampled_from(["", *xs]))  # noqa: E731
    scope = {"tenant": opt(TENANTS)}
    if kind == "halt_trace":
        scope |= {"trace_id": draw(st.sampled_from(["tr1", "tr2"])), "workflow": opt(WORKFLOWS)}
    elif kind == "pause_workflow":
        scope |= {"workflow": draw(st.sampled_from(WORKFLOWS))}
    elif kind == "disable_tool":
        scope |= {"tool": draw(st.sampled_from(TOOLS)), "workflow": opt(WORKFLOWS)}
    elif kind == "route_model":
        scope |= {"model": draw(st.sampled_from(MODELS)), "workflow": opt(WORKFLOWS), "route_to": "m9"}
    elif kind == "require_approval":
        scope |= {"tool": opt(TOOLS), "workflow": opt(WORKFLOWS)}
    else:
        scope |= {"workflow": opt(WORKFLOWS), "model": opt(MODELS), "user_id": opt(USERS)}
        if not any(scope.values()):
            scope["user_id"] = "u1"
    t0 = now()
    expires = draw(st.sampled_from([None, t0 + 600_000, t0 - 1 + 2]))  # some already past by check time
    return new_action(kind, reason="r", at=t0 - 10, actor="a", mode=draw(st.sampled_from(["enforce", "dry_run"])),
                      expires_at=expires, **{k: v for k, v in scope.items() if v})


MODEL_ORDER = [("halt_trace", "deny"), ("pause_workflow", "deny"), ("block_spend", "deny"), ("route_model", "route")]
TOOL_ORDER = [("halt_trace", "deny"), ("pause_workflow", "deny"), ("disable_tool", "deny"),
              ("require_approval", "needs_approval")]


def reference(actions, tenant, workflow, user, trace, model=None, tool=None, side=""):
    """Scan every action: the first enforced match in priority order decides."""
    at = now()

    def applies(a) -> bool:
        if not is_active(a, at) or a.tenant not in ("", tenant) or a.workflow not in ("", workflow):
            return False
        if a.kind == "halt_trace":
            return a.trace_id == trace
        if a.kind == "block_spend":
            return a.model in ("", model) and a.user_id in ("", user)
        if a.kind == "route_model":
            return a.model == model
        if a.kind == "disable_tool":
            return a.tool == tool
        if a.kind == "require_approval":
            return a.tool == tool or (a.tool == "" and side in ("write", "irreversible"))
        return True  # pause_workflow

    for kind, outcome in (MODEL_ORDER if tool is None else TOOL_ORDER):
        hits = [a for a in actions if a.kind == kind and a.mode == "enforce" and applies(a)]
        if hits:
            return outcome, {a.action_id for a in hits}
    return "allow", set()


@hsettings(max_examples=300, deadline=None)
@given(st.lists(an_action(), max_size=12), st.sampled_from(TENANTS), st.sampled_from(WORKFLOWS),
       st.sampled_from(USERS), st.sampled_from(["tr1", "tr2", "tr3"]), st.sampled_from(MODELS),
       st.sampled_from(TOOLS), st.sampled_from(SIDE))
def test_index_agrees_with_a_scan(actions, tenant, workflow, user, trace, model, tool, side) -> None:
    state = ControlState()
    for a in actions:  # the latest record per key wins, as on the topic
        state.apply(scope_key(a), encode_action(a))
    live = list(state.by_key.values())
    pub = MemoryPublisher(controls=state)
    with pub.trace(workflow, tenant=tenant, user_id=user, trace_id=trace) as t:
        for check, args in (("model", {"model": model}), ("tool", {"tool": tool, "side": side})):
            v = t.check_model(model) if check == "model" else t.check_tool(tool, side_effect=side)
            want, ids = reference(live, tenant, workflow, user, trace, **args)
            assert v.outcome == want, (check, live)
            assert (v.action.action_id in ids) if ids else v.action is None
            if want == "route":
                assert v.model == "m9"


def test_readme_kill_switch_config_loads_and_decides() -> None:
    import re
    from pathlib import Path

    import yaml

    from llmpulse.settings import Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "fail_mode: closed" in b)
    s = Settings(**yaml.safe_load(block))
    contracts = ContractsConfig.from_config(s.contracts)
    assert s.controls.stale_after_s == 30 and contracts.for_workflow("support-bot").approvers == ("alice", "bob")
    pause = new_action("pause_workflow", reason="r", at=now(), actor="alice", workflow="support-bot")
    state = ControlState()
    state.apply(scope_key(pause), encode_action(pause))
    with MemoryPublisher(controls=state, contracts=contracts).trace("support-bot") as t:
        assert t.check_model("gpt-4o").reply == "A person will get back to you shortly."


def test_the_light_defaults_are_the_settings_defaults() -> None:
    """The SDK decides without pydantic: its stand-ins carry the validated models' defaults."""
    from llmpulse.ingest.controls_config import ControlsConfig
    from llmpulse.ingest.controls_defaults import DEFAULTS
    from llmpulse.ingest.enforce import _NO_CONTRACT
    from llmpulse.processors.contracts import WorkflowContract

    full = WorkflowContract()
    for name in ("irreversible_tools", "owner", "approvers", "fallback", "fail_mode"):
        assert getattr(_NO_CONTRACT, name) == getattr(full, name), name
    settings = ControlsConfig()
    for name in DEFAULTS.__struct_fields__:
        assert getattr(DEFAULTS, name) == getattr(settings, name), name
