"""`llmpulse gate` as CI runs it: a real process, a JSONL file, real chDB, the real broker."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from confluent_kafka import Consumer

from llmpulse.schemas.contract import decode_event
from llmpulse.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "llmpulse"]


def write_evals(path: Path, rates: dict[str, float], n: int, seed: int = 5) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for version, rate in rates.items():
            passed = [i < round(rate * n) for i in range(n)]
            rng.shuffle(passed)
            for p in passed:
                f.write(json.dumps({"eval_name": "faithfulness", "passed": p, "prompt_version": version}) + "\n")


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def nowhere_env(tmp_path: Path) -> dict[str, str]:
    """No broker and no ClickHouse reachable: any attempt to use them fails or hangs."""
    (tmp_path / "none.yaml").write_text("{}\n")  # an empty config: nothing from the cwd's file
    return {**os.environ, "LLMPULSE_STATE_DIR": str(tmp_path / "state"), "LLMPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "LLMPULSE_CLICKHOUSE_DSN": "http://127.0.0.1:1", "LLMPULSE_WORKER_WEB_PORT": str(free_port()),
            "LLMPULSE_CONFIG_FILE": str(tmp_path / "none.yaml"), "COLUMNS": "250"}


def test_gate_from_a_jsonl_file_needs_no_broker_or_clickhouse(tmp_path: Path) -> None:
    env = nowhere_env(tmp_path)
    write_evals(tmp_path / "drop.jsonl", {"v1": 0.92, "v2": 0.80}, 400)
    write_evals(tmp_path / "same.jsonl", {"v1": 0.92, "v2": 0.92}, 400)
    write_evals(tmp_path / "few.jsonl", {"v1": 0.92, "v2": 0.92}, 12)
    args = ["gate", "support-bot", "--candidate", "prompt:v2", "--baseline", "prompt:v1", "--evals"]
    started = time.monotonic()
    drop = run([*args, str(tmp_path / "drop.jsonl"), "--junit", str(tmp_path / "j.xml"), "--format", "json"],
               env, tmp_path)
    assert drop.returncode == 1, drop.stderr
    report = json.loads(drop.stdout)
    assert report["decision"] == "fail" and report["checks"][0]["n_candidate"] == 400
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None] == ["faithfulness.pass_rate"]
    assert run([*args, str(tmp_path / "same.jsonl")], env, tmp_path).returncode == 0
    few = run([*args, str(tmp_path / "few.jsonl")], env, tmp_path)
    assert few.returncode == 3 and "NOT ENOUGH EVIDENCE" in few.stdout
    assert time.monotonic() - started < 60  # nothing waited for a broker's or a server's timeout


def test_bad_input_is_one_clear_message_never_a_traceback(tmp_path: Path) -> None:
    env = nowhere_env(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"eval_name": "f", "passed": true}\nnot json\n{"eval_name": ""}\n')
    bad = run(["gate", "w", "--candidate", "prompt:v2", "--baseline", "prompt:v1", "--evals",
               str(tmp_path / "bad.jsonl")], env, tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "bad.jsonl:2:" in bad.stderr and "bad.jsonl:3:" in bad.stderr
    (tmp_path / "gate.yaml").write_text("eval_gate:\n  w: {max_drop: 3}\n")
    cfg = run(["--config", str(tmp_path / "gate.yaml"), "gate", "w", "--candidate", "prompt:v2", "--baseline",
               "prompt:v1", "--evals", str(tmp_path / "bad.jsonl")], env, tmp_path)
    assert cfg.returncode == 2 and "Traceback" not in cfg.stderr and "max_drop" in cfg.stderr
    none = run(["gate", "w", "--candidate", "prompt:v2", "--baseline", "prompt:v1"], env, tmp_path)
    assert none.returncode == 2 and "no evidence" in none.stderr


SEED_CHDB = textwrap.dedent("""
    import random, sys, time
    from llmpulse.schemas.contract import Change, Eval, Output
    from llmpulse.schemas.rows import EVENT_COLUMNS, event_row
    from llmpulse.schemas.store import connect, migrate
    client = connect("chdb://" + sys.argv[1])
    migrate(client, "llmpulse")
    rng, now = random.Random(1), int(time.time() * 1000)
    change_ts = now - 1_800_000
    rows = [event_row(Change(event_id="ch-1", ts=change_ts, workflow="rag", change_kind="prompt_edit",
                             from_value="v1", to_value="v2"), {}, "t", 0, 0)]
    for i in range(1200):
        ts = now - 3_600_000 + i * 3000
        after = ts >= change_ts
        pv = "v2" if after else "v1"
        rows.append(event_row(Eval(event_id=f"e{i}", ts=ts, trace_id=f"t{i}", workflow="rag", prompt_version=pv,
                                   eval_name="grounded", passed=rng.random() < (0.78 if after else 0.93)),
                              {}, "t", 0, i + 1))
        rows.append(event_row(Output(event_id=f"o{i}", ts=ts, trace_id=f"t{i}", workflow="rag", prompt_version=pv,
                                     status="ok", latency_ms=900.0, cost_usd=0.01), {}, "t", 0, 5000 + i))
    client.insert("llmpulse.events", rows, column_names=EVENT_COLUMNS)
    client.close()
""")


@pytest.fixture(scope="module")
def seeded_chdb(tmp_path_factory) -> Path:
    """A chDB directory with an hour of evals and outputs around change ch-1 (in a process of its own:
    chDB opens one data path per process, and the CLI under test opens this one)."""
    data = tmp_path_factory.mktemp("gate") / "chdb"
    seeded = subprocess.run([sys.executable, "-c", SEED_CHDB, str(data)], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    return data


def test_gate_reads_evals_from_clickhouse_by_prompt_version_and_by_change(seeded_chdb: Path, tmp_path: Path) -> None:
    data = seeded_chdb
    env = {**nowhere_env(tmp_path), "LLMPULSE_CLICKHOUSE_DSN": f"chdb://{data}"}
    by_version = run(["gate", "rag", "--candidate", "prompt:v2", "--baseline", "prompt:v1", "--since", "2h",
                      "--format", "json"], env, tmp_path)
    assert by_version.returncode == 1, by_version.stderr
    checks = {c["metric"]: c for c in json.loads(by_version.stdout)["checks"]}
    assert checks["pass_rate"]["verdict"] == "fail" and checks["pass_rate"]["n_baseline"] == 600
    assert checks["cost_per_call"]["candidate"] == 0.01  # the outputs of the same rows
    by_change = run(["gate", "rag", "--candidate", "change:ch-1", "--since", "2h", "--format", "json",
                     "--markdown", str(tmp_path / "pr.md")], env, tmp_path)
    assert by_change.returncode == 1, by_change.stderr
    report = json.loads(by_change.stdout)
    assert report["baseline"] == "before change:ch-1" and report["checks"][0]["n_candidate"] == 600
    assert "`grounded` (pass_rate)" in (tmp_path / "pr.md").read_text()
    # both sources: the file's results add to the stored ones
    (tmp_path / "more.jsonl").write_text("".join(
        json.dumps({"eval_name": "grounded", "passed": True, "prompt_version": v}) + "\n" for v in ["v2"] * 100))
    both = run(["gate", "rag", "--candidate", "prompt:v2", "--baseline", "prompt:v1", "--since", "2h",
                "--evals", str(tmp_path / "more.jsonl"), "--format", "json"], env, tmp_path)
    check = json.loads(both.stdout)["checks"][0]
    assert (check["n_baseline"], check["n_candidate"]) == (600, 700)


def test_the_published_decision_is_a_contract_change_event(kafka, tmp_path: Path) -> None:
    topic = f"llm.events.gate.{uuid.uuid4().hex[:8]}"
    env = {**nowhere_env(tmp_path), "LLMPULSE_KAFKA_BOOTSTRAP": kafka.bootstrap, "LLMPULSE_EVENTS_TOPIC": topic}
    write_evals(tmp_path / "same.jsonl", {"v1": 0.92, "v2": 0.92}, 400)
    done = run(["gate", "support-bot", "--candidate", "prompt:v2", "--baseline", "prompt:v1", "--evals",
                str(tmp_path / "same.jsonl"), "--publish", "--gate-id", "gate-ci-42", "--actor", "ci-bot"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"gate-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        msg = None
        while msg is None and time.monotonic() < deadline:
            m = consumer.poll(1.0)
            msg = m if m is not None and not m.error() else None
    finally:
        consumer.close()
    assert msg is not None
    event = decode_event(msg.value())
    assert (event.event_type, event.change_kind, event.event_id) == ("change", "eval_gate", "gate-ci-42")
    assert (event.gate_result, event.from_value, event.to_value) == ("pass", "prompt_version:v1", "prompt_version:v2")
    assert event.actor == "ci-bot" and event.attributes["evals_candidate"] == "400"


def test_changes_lists_who_changed_what_with_its_approval_and_figures(seeded_chdb: Path, tmp_path: Path) -> None:
    data = seeded_chdb
    (tmp_path / "gov.yaml").write_text(textwrap.dedent("""
        governance:
          workflows:
            rag:
              approvals:
                prompt_edit: {approvers: [carol], require_gate: true}
    """))
    env = {**nowhere_env(tmp_path), "LLMPULSE_CLICKHOUSE_DSN": f"chdb://{data}",
           "LLMPULSE_CONFIG_FILE": str(tmp_path / "gov.yaml")}
    out = run(["changes", "--since", "1d", "--window", "30m", "--format", "json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    (change,) = json.loads(out.stdout)
    assert (change["event_id"], change["change_kind"], change["to_value"]) == ("ch-1", "prompt_edit", "v2")
    assert change["governance"] == "unapproved: no approver; no passing eval gate"
    figures = change["figures"]
    assert figures["calls"] == [600, 600] and figures["usd_per_call"] == [0.01, 0.01]
    before, after = figures["eval_pass"]
    assert 0.88 < before < 0.97 and 0.72 < after < 0.84
    table = run(["changes", "--workflow", "rag"], env, tmp_path)
    assert table.returncode == 0 and "prompt_edit" in table.stdout
