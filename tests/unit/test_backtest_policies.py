"""`llmpulse backtest` with policies: the actions that would have fired, and what they would have saved."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from typer.testing import CliRunner

from llmpulse.cli import app
from llmpulse.commands.backtest import run, savings, summarize
from llmpulse.processors.pipeline import Pipeline
from llmpulse.settings import Settings
from llmpulse.testing import tool_loop_events

T0 = (int(time.time()) // 3600 - 2) * 3_600_000  # recent: validation refuses events older than the retention
CONFIG = {"policies": {"defaults": "enforce"}, "stages": ["price", "budgets", "contracts", "loops"],
          "budgets": [{"scope": {"tenant": "beta"}, "period": "day", "limit_usd": 1.0}]}


def output(trace: str, i: int, ts: int, cost: float, tenant: str = "acme", workflow: str = "research-agent") -> dict:
    return {"event_id": f"{trace}-o{i}", "event_type": "output", "ts": ts, "trace_id": trace, "tenant": tenant,
            "workflow": workflow, "model": "selfhosted-x", "provider": "self", "status": "ok", "latency_ms": 5.0,
            "cost_usd": cost}


def history(loop_extra: int = 5) -> list[dict]:
    """A loop that goes on `loop_extra` more rounds after it is found, a budget blown through, a quiet trace."""
    events = tool_loop_events("loop1", n=3, start_ms=T0)
    last = tool_loop_events("loop1", n=3 + loop_extra, start_ms=T0)[4:]  # the same call, again and again
    for k, e in enumerate(last):
        e["ts"] = T0 + 100 + 10 * k
        events += [e, output("loop1", k, e["ts"] + 5, 0.25)]
    events += [output(f"b{i}", 0, T0 + 1000 + i, 0.30, tenant="beta", workflow="chat") for i in range(6)]
    events += tool_loop_events("quiet", n=1, start_ms=T0 + 50)
    return events


def write(path: Path, events: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def backtested(path: Path, config: dict = CONFIG):
    pipeline = Pipeline.from_settings(Settings(**config), replay=True)
    r = run(pipeline, path)
    return r, savings(pipeline, path, r.actions)


def test_a_halted_loop_and_a_blocked_budget_save_what_came_after(tmp_path):
    r, saved = backtested(write(tmp_path / "h.jsonl", history()))
    by_kind = {s.action.kind: s for s in saved}
    assert set(by_kind) == {"halt_trace", "block_spend"}
    halt = by_kind["halt_trace"]
    assert halt.action.trace_id == "loop1" and halt.loop_cut_short
    # The third identical call fired the loop: the five rounds after it are refused.
    assert (halt.tool_calls_refused, halt.model_calls_refused) == (5, 5)
    assert halt.usd_refused == pytest.approx(5 * 0.25)
    block = by_kind["block_spend"]
    assert block.action.tenant == "beta" and block.ended_at == block.action.expires_at
    assert (block.model_calls_refused, block.usd_refused) == (2, pytest.approx(0.60))  # $1.20 reached at the 4th
    assert r.counts["actions"] == 2
    rows = {tuple(row[:3]): row[3:] for row in summarize(saved)}
    assert rows[("halt-loops", "halt_trace", "enforce")][:4] == [1, 1, 5, 1.25]
    assert rows[("block-spend", "block_spend", "enforce")][:4] == [1, 0, 2, 0.6]


def test_no_policies_no_actions(tmp_path):
    r, saved = backtested(write(tmp_path / "h.jsonl", history()), {"budgets": CONFIG["budgets"], "stages": CONFIG["stages"]})
    assert r.actions == [] and saved == []
    assert {f.kind for f in r.findings} >= {"tool_loop", "budget_threshold"}


def test_the_cli_prints_what_the_actions_would_have_saved(tmp_path):
    path = write(tmp_path / "h.jsonl", history())
    cfg = tmp_path / "llmpulse.yaml"
    cfg.write_text(orjson.dumps(CONFIG).decode())  # JSON is YAML
    res = CliRunner().invoke(app, ["backtest", str(path), "--config", str(cfg), "--actions-out", str(tmp_path / "a.jsonl")])
    assert res.exit_code == 0, res.output
    assert "2 actions would have saved 7 model calls ($1.85) and 5 tool calls; 1 loops cut short" in res.output
    assert len((tmp_path / "a.jsonl").read_bytes().splitlines()) >= 2
    cfg.write_text("policies:\n  rules:\n    - {findings: [tool_loop], action: stop}\n")
    bad = CliRunner().invoke(app, ["backtest", str(path), "--config", str(cfg)])
    assert bad.exit_code == 2 and "policies.rules" in bad.output and "action" in bad.output
    assert "Traceback" not in bad.output


@hsettings(max_examples=40, deadline=None)
@given(st.integers(0, 8), st.sampled_from(["enforce", "dry_run"]), st.integers(0, 2**16))
def test_property_savings_are_the_calls_after_the_action_in_its_scope(extra, mode, salt):
    import tempfile

    events = history(extra)
    for e in events:
        e["event_id"] += f"-{salt}"
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d) / "h.jsonl", events + events[:7])  # re-sent events count once
        config = {**CONFIG, "policies": {"defaults": mode}}
        r, saved = backtested(path, config)
    halt = next(s for s in saved if s.action.kind == "halt_trace")
    assert halt.action.mode == mode
    assert halt.tool_calls_refused == halt.model_calls_refused == extra  # exactly the rounds after the finding
    assert halt.loop_cut_short == (extra > 0)
    assert all(s.traces <= {e["trace_id"] for e in events} for s in saved)


def test_what_each_kind_would_have_done_to_a_call():
    from llmpulse.commands.backtest import Saving, apply
    from llmpulse.schemas.contract import Output, ToolCall
    from llmpulse.schemas.controls import new_action

    def act(kind, **kw):
        return Saving(new_action(kind, reason="r", at=T0, finding_id="f", policy="p", expires_at=T0 + 1000, **kw), None)

    common = dict(ts=T0 + 1, trace_id="t1", tenant="acme", workflow="wf", model="gpt-4o")
    model_call = Output(event_id="o", status="ok", latency_ms=5.0, cost_usd=0.5, **common)
    write = ToolCall(event_id="w", tool_name="refund", side_effect="write", **common)
    approved = ToolCall(event_id="a", tool_name="refund", side_effect="write", approved_by="alice", **common)
    read = ToolCall(event_id="r", tool_name="search", side_effect="read", **common)
    cases = {
        "halt": (act("halt_trace", trace_id="t1"), "model_calls_refused", 1, "tool_calls_refused", 3),
        "pause": (act("pause_workflow", workflow="wf"), "model_calls_refused", 1, "tool_calls_refused", 3),
        "block": (act("block_spend", tenant="acme", model="gpt-4o"), "model_calls_refused", 1, "tool_calls_refused", 0),
        "disable": (act("disable_tool", tool="search"), "model_calls_refused", 0, "tool_calls_refused", 1),
        "route": (act("route_model", model="gpt-4o", route_to="mini"), "model_calls_rerouted", 1, "tool_calls_refused", 0),
        "approve": (act("require_approval", workflow="wf"), "model_calls_refused", 0, "tool_calls_held", 1),
        "other": (act("halt_trace", trace_id="t2"), "model_calls_refused", 0, "tool_calls_refused", 0),
    }
    for name, (s, f1, n1, f2, n2) in cases.items():
        for e in (model_call, write, approved, read):
            apply(s, e, 0.5 if e is model_call else None)
        assert (getattr(s, f1), getattr(s, f2)) == (n1, n2), name
    assert cases["halt"][0].usd_refused == 0.5 and cases["route"][0].usd_refused == 0.0
