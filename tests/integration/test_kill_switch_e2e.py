"""Proof (issue 15): findings stop the app by themselves. A real worker with the one-line
policy defaults, and a scripted agent using the SDK in a separate process
(tests/integration/scripted_agent.py):

- a looping agent is halted automatically: after the loop finding (the third identical
  call), the app makes at most the one call that was in flight;
- a budget at 100 % refuses further model calls of its scope until the period ends
  (midnight UTC), and only of its scope.

Each step of the agent takes 1.5 s, the time of a model call: long next to the finding ->
app latency (bench/bench_controls_e2e.py), so "at most one more" does not depend on load.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from llmpulse.testing import WorkerProcess, isolated_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STEP_S = 1.5
CONFIG = {"policies": {"defaults": "enforce"},
          "budgets": [{"scope": {"tenant": "spend-e2e"}, "period": "day", "limit_usd": 1.0}]}


@pytest.fixture(scope="module")
def env(kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("killswitch")
    config = root / "llmpulse.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    s = isolated_settings(kafka.bootstrap, root / "state", batch_max_seconds=0.1)
    worker = WorkerProcess(s, root / "worker.log", {"LLMPULSE_CONFIG_FILE": str(config)}).start()
    yield s, worker
    worker.stop()


def agent(s, mode: str, target: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.integration.scripted_agent", mode, s.kafka_bootstrap,
                           s.events_topic, s.controls_topic, target, str(STEP_S)],
                          cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def test_a_looping_agent_is_halted_after_at_most_one_more_call(env):
    s, worker = env
    trace = f"agent-{uuid.uuid4().hex[:8]}"
    out = agent(s, "loop", trace)
    stop = out["stopped_by"]
    assert stop is not None, "the agent was never stopped"
    assert (stop["outcome"], stop["kind"], stop["policy"]) == ("deny", "halt_trace", "halt-loops")
    # The third identical call makes the loop; one more may have been in flight, no more.
    assert 3 <= out["calls"] <= 4, out
    calls = worker.scalar(f"SELECT count() FROM {{db}}.events FINAL WHERE trace_id = '{trace}' AND event_type = 'tool_call'")
    assert calls == out["calls"]
    action = worker.query(f"SELECT action_id, finding_id FROM {{db}}.control_actions FINAL WHERE trace_id = '{trace}'")
    assert [a for a, _ in action] == [stop["action_id"]]
    loop_finding = worker.scalar(f"SELECT finding_id FROM {{db}}.findings FINAL WHERE trace_id = '{trace}' AND kind = 'tool_loop'")
    assert action[0][1] == loop_finding
    # The refusal is audited: a decision event naming the action.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        denied = worker.query(f"SELECT decision, control_kind, action_id FROM {{db}}.events FINAL "
                              f"WHERE trace_id = '{trace}' AND event_type = 'decision'")
        if denied:
            break
        time.sleep(0.3)
    assert denied and denied[0] == ["deny", "halt_trace", stop["action_id"]]


def test_a_budget_at_100_percent_refuses_model_calls_of_its_scope_until_the_period_ends(env):
    s, worker = env
    out = agent(s, "spend", "spend-e2e")
    stop = out["stopped_by"]
    assert stop is not None and (stop["outcome"], stop["kind"]) == ("deny", "block_spend")
    # $0.30 a call against $1.00: the fourth reaches 100 %; one more may have been in flight.
    assert 4 <= out["calls"] <= 5, out
    midnight = (stop["at_ms"] // 86_400_000 + 1) * 86_400_000
    assert stop["expires_at"] == midnight
    assert out["other_tenant"] == "allow"  # another tenant's calls go on
