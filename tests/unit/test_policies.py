"""Policies: findings -> control actions (processors/policies.py), unit and property tests."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from pydantic import ValidationError

from llmpulse.processors.policies import (
    DEFAULT_RULES, Policies, PoliciesConfig, period_end_ms, scope_of,
)
from llmpulse.schemas.controls import is_active, parse_duration
from llmpulse.schemas.findings import Finding, finding_id

H = 3_600_000
T0 = int(datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc).timestamp() * 1000)


def finding(kind: str, severity: str = "high", *, fid: str = "", status: str = "open", at: int = T0,
            tenant: str = "acme", workflow: str = "research-agent", model: str = "gpt-4o", trace_id: str = "",
            **evidence) -> Finding:
    return Finding(finding_id=fid or finding_id(kind, tenant, workflow, trace_id, at), detected_at=at, event_ts=at,
                   kind=kind, severity=severity, status=status, tenant=tenant, workflow=workflow, model=model,
                   trace_id=trace_id, title=f"{kind} here", evidence=evidence)


def defaults(mode: str = "enforce", **kw) -> Policies:
    return Policies.from_config({"defaults": mode, **kw}, contracts={"research-agent": {"fallback": {"model": "gpt-4o-mini"}}})


def test_nothing_acts_unless_configured():
    p = Policies.from_config({})
    assert not p.enabled
    assert p.evaluate([finding("tool_loop", trace_id="t1")]) == []


def test_a_loop_halts_its_trace_for_an_hour_with_a_stable_id():
    p = defaults()
    f = finding("tool_loop", "medium", trace_id="t1")
    [a] = p.evaluate([f])
    assert (a.kind, a.tenant, a.workflow, a.trace_id, a.model, a.tool) == ("halt_trace", "acme", "research-agent", "t1", "", "")
    assert (a.state, a.source, a.mode, a.finding_id, a.policy) == ("active", "policy", "enforce", f.finding_id, "halt-loops")
    assert a.created_at == a.updated_at == T0 and a.expires_at == T0 + H
    assert is_active(a, T0 + H - 1) and not is_active(a, T0 + H)
    assert a.action_id == defaults().evaluate([f])[0].action_id  # a replay fires the same id
    assert "tool_loop" in a.reason


@pytest.mark.parametrize("kind", ["cycle_loop", "no_progress", "runaway_steps", "runaway_cost", "runaway_tokens"])
def test_every_loop_and_runaway_kind_halts(kind):
    [a] = defaults().evaluate([finding(kind, trace_id="t9")])
    assert a.kind == "halt_trace" and a.trace_id == "t9"


def test_the_finding_says_which_action_it_caused_or_met():
    p = defaults()
    loop, cycle = finding("tool_loop", trace_id="t1"), finding("cycle_loop", trace_id="t1")
    [a] = p.evaluate([loop, cycle])
    assert loop.evidence["control_action"] == {"action_id": a.action_id, "kind": "halt_trace", "mode": "enforce",
                                               "policy": "halt-loops", "expires_at": a.expires_at,
                                               "scope": {"tenant": "acme", "workflow": "research-agent", "trace_id": "t1"},
                                               "caused_by_this_finding": True}
    assert cycle.evidence["control_action"]["action_id"] == a.action_id
    assert cycle.evidence["control_action"]["caused_by_this_finding"] is False
    quiet = finding("pii_detected", trace_id="t1")
    p.evaluate([quiet])
    assert "control_action" not in quiet.evidence


def test_one_finding_one_action_and_one_active_action_per_scope():
    p = defaults()
    loop = finding("tool_loop", trace_id="t1")
    assert len(p.evaluate([loop, loop])) == 1  # the same finding twice in a batch
    assert p.evaluate([loop]) == []  # and again later
    assert p.evaluate([finding("cycle_loop", trace_id="t1")]) == []  # same trace, already halted
    assert len(p.evaluate([finding("cycle_loop", trace_id="t2")])) == 1
    assert p.stats["deduplicated"] == 3 and p.stats["actions"] == 2


def test_budget_at_100_percent_blocks_its_scope_until_the_period_ends():
    p = defaults()
    at80 = finding("budget_threshold", "medium", workflow="support-bot", model="", period="2026-12-03", threshold_pct=80)
    assert p.evaluate([at80]) == []
    at100 = finding("budget_threshold", "critical", workflow="support-bot", model="", period="2026-12-03", threshold_pct=100)
    [a] = p.evaluate([at100])
    assert (a.kind, a.tenant, a.workflow, a.model, a.trace_id) == ("block_spend", "acme", "support-bot", "", "")
    assert a.expires_at == int(datetime(2026, 12, 4, tzinfo=timezone.utc).timestamp() * 1000)
    monthly = finding("budget_threshold", "critical", tenant="beta", workflow="", model="", period="2026-12")
    [m] = p.evaluate([monthly])
    assert m.tenant == "beta" and m.expires_at == int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)


def test_a_budget_for_one_user_blocks_that_user():
    [a] = defaults().evaluate([finding("budget_threshold", "critical", workflow="", model="", period="2026-12-03",
                                       user_id="u-42")])
    assert a.user_id == "u-42" and a.kind == "block_spend"


def test_error_spike_routes_to_the_declared_fallback_and_its_resolution_lifts_it():
    p = defaults()
    spike = finding("error_rate_spike", fid="spike1")
    [a] = p.evaluate([spike])
    assert (a.kind, a.model, a.route_to, a.expires_at) == ("route_model", "gpt-4o", "gpt-4o-mini", T0 + H // 2)
    [lift] = p.evaluate([finding("error_rate_spike", fid="spike1", status="resolved", at=T0 + 5 * 60_000)])
    assert (lift.action_id, lift.state, lift.updated_at) == (a.action_id, "lifted", T0 + 5 * 60_000)
    assert lift.ended_by == "policy fallback-model" and "resolved" in lift.ended_reason
    assert p.advance(T0 + 10 * H) == []  # lifted: it does not expire as well
    assert not p.active


def test_route_needs_a_fallback_other_than_the_failing_model():
    p = Policies.from_config({"defaults": "enforce"}, contracts={"other": {"fallback": {"model": "x"}}})
    assert p.evaluate([finding("latency_regression")]) == []
    p2 = Policies.from_config({"defaults": "enforce"}, contracts={"research-agent": {"fallback": {"model": "gpt-4o"}}})
    assert p2.evaluate([finding("latency_regression")]) == []
    assert p.stats["skipped"] == p2.stats["skipped"] == 1


def test_lifting_on_resolve_is_configurable():
    p = defaults(lift_on_resolve=False)
    [a] = p.evaluate([finding("error_rate_spike", fid="s")])
    assert p.evaluate([finding("error_rate_spike", fid="s", status="resolved")]) == []
    [gone] = p.advance(a.expires_at)
    assert gone.state == "expired"


def test_unapproved_irreversible_action_requires_approval_in_its_workflow():
    [a] = defaults().evaluate([finding("unapproved_irreversible_action", "critical", workflow="support-bot",
                                       trace_id="t3", tool_name="issue_refund")])
    assert (a.kind, a.tenant, a.workflow, a.trace_id) == ("require_approval", "acme", "support-bot", "")
    assert a.expires_at == T0 + 24 * H


def test_expiry_follows_the_watermark_once_and_frees_the_scope():
    p = defaults()
    [a] = p.evaluate([finding("tool_loop", trace_id="t1")])
    assert p.advance(T0 + H - 1) == []
    [e] = p.advance(T0 + H)
    assert (e.action_id, e.state, e.updated_at, e.ended_by) == (a.action_id, "expired", a.expires_at, "expiry")
    assert p.advance(T0 + 2 * H) == []
    [again] = p.evaluate([finding("cycle_loop", trace_id="t1", at=T0 + 2 * H)])  # a new finding, a new switch
    assert again.action_id != a.action_id


def test_dry_run_defaults_and_per_rule_mode():
    [a] = defaults("dry_run").evaluate([finding("tool_loop", trace_id="t1")])
    assert a.mode == "dry_run"
    p = Policies.from_config({"defaults": "dry_run", "rules": [
        {"name": "halt-now", "findings": ["tool_loop"], "action": "halt_trace", "for": "10m", "mode": "enforce"}]})
    [b] = p.evaluate([finding("tool_loop", trace_id="t1")])
    assert (b.mode, b.policy, b.expires_at) == ("enforce", "halt-now", T0 + 600_000)


def test_workflow_rules_come_first_and_none_switches_a_default_off():
    p = Policies.from_config({"defaults": "enforce", "rules": [
        {"findings": ["runaway_*"], "action": "pause_workflow", "for": "15m"},
        {"findings": ["tool_loop", "runaway_*"], "workflows": ["batch-jobs"], "action": "none"},
        {"name": "pause-support", "findings": ["unauthorized_tool"], "min_severity": "critical",
         "workflows": ["support-bot"], "action": "disable_tool", "for": "2h"},
    ]})
    assert p.evaluate([finding("tool_loop", workflow="batch-jobs", trace_id="b1")]) == []
    assert p.evaluate([finding("runaway_cost", workflow="batch-jobs", trace_id="b2")]) == []
    [pause] = p.evaluate([finding("runaway_cost", workflow="other", trace_id="o1")])
    assert (pause.kind, pause.workflow, pause.tenant, pause.trace_id) == ("pause_workflow", "other", "acme", "")
    [tool] = p.evaluate([finding("unauthorized_tool", "critical", workflow="support-bot", tool_name="shell")])
    assert (tool.kind, tool.tool, tool.expires_at - tool.created_at) == ("disable_tool", "shell", 2 * H)
    assert p.evaluate([finding("unauthorized_tool", "high", workflow="support-bot", tool_name="sh2")]) == []


def test_a_budget_over_all_spend_blocks_nothing_the_contract_cannot_scope():
    p = defaults()
    assert p.evaluate([finding("budget_threshold", "critical", tenant="", workflow="", model="", period="2026-12-03")]) == []
    assert p.stats["skipped"] == 1


def test_a_halt_needs_a_trace():
    p = Policies.from_config({"rules": [{"findings": ["error_rate_spike"], "action": "halt_trace"}]})
    assert p.evaluate([finding("error_rate_spike")]) == []
    assert p.stats["skipped"] == 1


def test_restore_keeps_expiry_lifts_and_dedupe_after_a_restart():
    p = defaults()
    acts = p.evaluate([finding("error_rate_spike", fid="s1"), finding("tool_loop", trace_id="t1", fid="l1")])
    q = defaults()
    assert q.restore(acts) == 2
    assert q.evaluate([finding("tool_loop", trace_id="t1", fid="l1")]) == []
    [lift] = q.evaluate([finding("error_rate_spike", fid="s1", status="resolved")])
    assert lift.state == "lifted"
    [exp] = q.advance(T0 + H)
    assert exp.finding_id == "l1" and exp.state == "expired"


@pytest.mark.parametrize("raw, words", [
    ({"rules": [{"findings": ["tool_loop"], "action": "halt"}]}, "action"),
    ({"rules": [{"findings": ["tool_loop"], "action": "halt_trace", "for": "soon"}]}, "duration"),
    ({"rules": [{"findings": ["tool_loop"], "action": "halt_trace", "for": "period"}]}, "only fits block_spend"),
    ({"rules": [{"findings": [], "action": "halt_trace"}]}, "on"),
    ({"rules": [{"findings": ["tool_loop"], "action": "halt_trace", "forr": "1h"}]}, "forr"),
    ({"rules": [{"findings": ["to*ol"], "action": "halt_trace"}]}, "prefix ending in *"),
    ({"rules": [{"findings": ["x"], "action": "pause_workflow", "route_to": "m"}]}, "route_to"),
    ({"defaults": "yes"}, "defaults"),
    ({"defaults": "enforce", "rules": [{"name": "halt-loops", "findings": ["x"], "action": "halt_trace"}]}, "unique"),
    ({"rule": []}, "rule"),
])
def test_config_mistakes_are_named(raw, words):
    with pytest.raises(ValidationError) as err:
        PoliciesConfig.model_validate(raw)
    assert words in str(err.value)


def test_one_line_adoption_through_yaml(tmp_path):
    from llmpulse.settings import load_settings

    cfg = tmp_path / "llmpulse.yaml"
    cfg.write_text("policies: {defaults: enforce}\n")
    s = load_settings(cfg)
    assert s.policies.defaults == "enforce" and Policies.from_config(s.policies).rules[0].name == "halt-loops"
    cfg.write_text("policies: {defaults: off}\n")
    assert load_settings(cfg).policies.defaults == "off"
    cfg.write_text("policies:\n  rules:\n    - {findings: [tool_loop], action: halt_trace, for: forever}\n")
    with pytest.raises(ValueError, match="duration 'forever'"):  # named at load
        load_settings(cfg)


def test_durations_and_periods():
    assert [parse_duration(x) for x in ("45s", "30m", "2h", "1d", "1.5h", "90s")] == [
        45_000, 1_800_000, 7_200_000, 86_400_000, 5_400_000, 90_000]
    assert period_end_ms("2026-02") == int(datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp() * 1000)
    assert period_end_ms("2026-12-31") == int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
    assert period_end_ms("nonsense") is None
    assert [r.name for r in DEFAULT_RULES] == ["halt-loops", "block-spend", "fallback-model", "approve-after-irreversible"]


# --- properties ---------------------------------------------------------------------------

KINDS = ["tool_loop", "cycle_loop", "runaway_cost", "budget_threshold", "error_rate_spike",
         "unapproved_irreversible_action", "pii_detected"]

finding_st = st.builds(
    lambda kind, sev, n, trace, wf, status, dt: finding(
        kind, sev, fid=f"f{n}", status=status, at=T0 + dt, workflow=wf, trace_id=trace,
        period="2026-12-03", tool_name="t"),
    st.sampled_from(KINDS), st.sampled_from(["critical", "high", "medium", "low", "info"]),
    st.integers(0, 12), st.sampled_from(["", "t1", "t2", "t3"]), st.sampled_from(["research-agent", "support-bot", ""]),
    st.sampled_from(["open", "open", "resolved"]), st.integers(0, 3 * H))
steps_st = st.lists(st.tuples(st.lists(finding_st, max_size=6), st.integers(0, 3 * H)), max_size=12)


def run(steps, mode="enforce", lift=True):
    p = defaults(mode, lift_on_resolve=lift)
    out = []
    for batch, wm in steps:
        out += p.advance(T0 + wm)
        out += p.evaluate(batch)
    return p, out


@hsettings(max_examples=300, deadline=None)
@given(steps_st, st.booleans())
def test_properties_one_action_per_finding_expiring_lifecycle(steps, lift):
    p, out = run(steps, lift=lift)
    starts = [a for a in out if a.state == "active"]
    ends = [a for a in out if a.state != "active"]
    # One finding makes at most one action; every automatic action expires after it starts.
    assert len({a.finding_id for a in starts}) == len(starts) == len({a.action_id for a in starts})
    assert all(a.expires_at is not None and a.expires_at > a.created_at for a in starts)
    # Each action ends at most once, after it started, as the same switch.
    started = {a.action_id: i for i, a in enumerate(out) if a.state == "active"}
    assert len({a.action_id for a in ends}) == len(ends)
    for i, a in enumerate(out):
        if a.state != "active":
            assert started[a.action_id] < i
            first = out[started[a.action_id]]
            assert (a.kind, scope_of(a), a.expires_at, a.finding_id) == (first.kind, scope_of(first), first.expires_at, first.finding_id)
            assert lift or a.state == "expired"
    # At most one active action per (kind, scope) at any point, and `active` is what is left.
    live: dict = {}
    for a in out:
        key = (a.kind, scope_of(a))
        if a.state == "active":
            assert key not in live
            live[key] = a.action_id
        else:
            assert live.pop(key) == a.action_id
    assert sorted(live.values()) == sorted(a.action_id for a in p.active)
    # Deterministic: the same findings give the same actions.
    assert run(steps, lift=lift)[1] == out


@hsettings(max_examples=150, deadline=None)
@given(steps_st)
def test_property_restore_continues_as_if_never_stopped(steps):
    cut = len(steps) // 2
    p, first = run(steps[:cut])
    q = defaults()
    q.restore(p.active)
    resumed = []
    for batch, wm in steps[cut:]:
        resumed += q.advance(T0 + wm)
        resumed += q.evaluate(batch)
    full = run(steps)[1]
    # A restart forgets findings whose action already ended, or that found their scope
    # taken (the store holds only active actions); short of those, it goes on the same.
    seen = {f.finding_id for batch, _ in steps[:cut] for f in batch}
    later = {f.finding_id for batch, _ in steps[cut:] for f in batch}
    if later & seen <= {a.finding_id for a in p.active}:
        assert resumed == full[len(first):]


json_st = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=12),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                       max_leaves=8)
rule_st = st.dictionaries(
    st.sampled_from(["name", "findings", "min_severity", "workflows", "action", "for", "mode", "lift_on_resolve",
                     "per_tenant", "route_to", "on"]),
    st.one_of(json_st, st.sampled_from(["halt_trace", "block_spend", "period", "30m", "critical", "dry_run"]),
              st.lists(st.sampled_from(["tool_loop", "runaway_*", "x*y", ""]), max_size=3)),
    max_size=8)


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["defaults", "lift_on_resolve", "rules", "rule"]),
                       st.one_of(json_st, st.lists(rule_st, max_size=3), st.sampled_from(["off", "enforce", "dry_run"])),
                       max_size=3))
def test_property_any_config_loads_or_is_refused_with_a_validation_error(raw):
    try:
        config = PoliciesConfig.model_validate(raw)
    except ValidationError:
        return
    p = Policies(config)  # what loads builds an engine that acts without raising
    for r in p.rules:
        assert r.findings and (r.duration == "period" or parse_duration(r.duration) > 0)
    p.evaluate([finding("tool_loop", trace_id="t1"), finding("budget_threshold", "critical", period="2026-12-03")])
