"""`llmpulse control pending`: the held tool calls no approval has answered, from the decisions a
real worker stored and the live actions on the real broker; an approval takes a run off the list."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from tests.conftest import wait_for

pytestmark = pytest.mark.integration
LLMPULSE = str(Path(sys.executable).with_name("llmpulse"))


def held(trace: str, tool: str, at: int, workflow: str = "refunds", count: int = 1) -> bytes:
    return orjson.dumps({"event_type": "decision", "event_id": uuid.uuid4().hex, "ts": at, "trace_id": trace,
                         "tenant": "acme", "workflow": workflow, "decision": "needs_approval", "checked": "tool",
                         "control_kind": "require_approval", "action_id": "a" * 16, "tool_name": tool,
                         "side_effect": "irreversible", "reason": "refunds need a person", "decision_count": count})


def cli(worker, *args: str) -> subprocess.CompletedProcess:
    env = {**worker.env, "LLMPULSE_ACTOR": "carol", "COLUMNS": "300"}
    return subprocess.run([LLMPULSE, "control", *args], env=env, capture_output=True, text=True, timeout=90,
                          cwd=worker.settings.state_dir)


def test_pending_lists_unanswered_holds_and_an_approval_clears_one(worker) -> None:
    s = worker.settings
    now = time.time_ns() // 1_000_000
    a, b = f"run-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
    p = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for value in (held(a, "issue_refund", now - 5000, count=3), held(b, "delete_account", now - 4000),
                  held(b, "delete_account", now - 3000, workflow="other")):
        p.produce(s.events_topic, value)
    p.flush(10)
    wait_for(lambda: worker.scalar("SELECT count() FROM {db}.events WHERE event_type = 'decision'") == 3, 30,
             what="the decisions stored")

    out = cli(worker, "pending")
    assert out.returncode == 0, out.stderr
    assert a in out.stdout and b in out.stdout and "unanswered (3)" in out.stdout
    assert f"llmpulse control approve --trace {a} --tool issue_refund --workflow refunds" in out.stdout

    approve = cli(worker, "approve", "--trace", a, "--tool", "issue_refund", "--workflow", "refunds")
    assert approve.returncode == 0, approve.stderr
    out = cli(worker, "pending", "--workflow", "refunds")
    assert out.returncode == 0, out.stderr
    assert a not in out.stdout and b in out.stdout and "unanswered (1)" in out.stdout
    # A mistake is one line, not a traceback.
    bad = cli(worker, "pending", "--since", "yesterday-ish")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr + bad.stdout


def test_forget_tombstones_only_keys_that_ended_long_enough_ago(kafka, tmp_path) -> None:
    controls = f"llm.controls.{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LLMPULSE_KAFKA_BOOTSTRAP": kafka.bootstrap, "LLMPULSE_CONTROLS_TOPIC": controls,
           "LLMPULSE_STATE_DIR": str(tmp_path), "LLMPULSE_ACTOR": "alice", "COLUMNS": "300"}

    def run(*args: str) -> str:
        out = subprocess.run([LLMPULSE, "control", *args], env=env, capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr + out.stdout
        return out.stdout

    run("pause", "--workflow", "wf-expiring", "--reason", "r", "--for", "1s")  # expires by itself
    run("disable-tool", "issue_refund", "--reason", "r")
    run("pause", "--workflow", "wf-resumed", "--reason", "r")
    run("resume", "--workflow", "wf-resumed")
    time.sleep(1.5)
    assert "would forget 0 ended" in run("forget", "--ended-before", "1h", "--dry-run")
    assert "forgot 2 ended action key(s)" in run("forget", "--ended-before", "0s")
    history = run("list", "--all")
    assert "issue_refund" in history and "wf-expiring" not in history and "wf-resumed" not in history
    assert "forgot 0" in run("forget", "--ended-before", "0s")  # the tombstones made the keys go
