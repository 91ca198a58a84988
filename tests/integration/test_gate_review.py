"""Review of `llmpulse gate` and `llmpulse changes` as a new user runs them: real processes, real chDB."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.test_gate import ROOT, nowhere_env, run, write_evals

pytestmark = pytest.mark.integration

SEED = textwrap.dedent("""
    import sys, time
    from llmpulse.schemas.contract import Change
    from llmpulse.schemas.rows import EVENT_COLUMNS, event_row
    from llmpulse.schemas.store import connect, migrate
    client = connect("chdb://" + sys.argv[1])
    migrate(client, "llmpulse")
    now = int(time.time() * 1000)
    def change(i, ts, **f):
        return event_row(Change(event_id=i, ts=ts, workflow="rag", **f), {}, "t", 0, ts)
    rows = [
        # CI ran the gates three days ago; the deploys of today name them
        change("gate-ok", now - 3 * 86_400_000, change_kind="eval_gate", gate_result="pass"),
        change("gate-bad", now - 3 * 86_400_000 + 1, change_kind="eval_gate", gate_result="fail"),
        change("deploy-1", now - 600_000, change_kind="prompt_edit", from_value="v1", to_value="v2",
               actor="dave", approved_by="carol", gate_id="gate-ok"),
        change("deploy-2", now - 300_000, change_kind="prompt_edit", from_value="v2", to_value="v3",
               actor="dave", approved_by="carol", gate_id="gate-bad", gate_result="pass"),
    ]
    client.insert("llmpulse.events", rows, column_names=EVENT_COLUMNS)
    client.close()
""")
GOVERNANCE = textwrap.dedent("""
    governance:
      workflows:
        rag:
          approvals:
            prompt_edit: {approvers: [carol], require_gate: true}
""")


def test_changes_judges_a_change_by_the_gate_it_names_even_when_the_gate_is_not_listed(tmp_path: Path) -> None:
    data = tmp_path / "chdb"
    seeded = subprocess.run([sys.executable, "-c", SEED, str(data)], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    (tmp_path / "gov.yaml").write_text(GOVERNANCE)
    env = {**nowhere_env(tmp_path), "LLMPULSE_CLICKHOUSE_DSN": f"chdb://{data}",
           "LLMPULSE_CONFIG_FILE": str(tmp_path / "gov.yaml")}
    out = run(["changes", "--since", "1d", "--format", "json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    standing = {c["event_id"]: c["governance"] for c in json.loads(out.stdout)}
    # approved by carol on a passing gate; the second names a recorded failing gate (whatever it claims)
    assert standing == {"deploy-1": "ok", "deploy-2": "unapproved: eval gate fail"}


def test_a_report_that_cannot_be_written_is_a_usage_error_not_a_fail(tmp_path: Path) -> None:
    # Exit code 1 says "the candidate is worse": a JUnit path in a missing directory must not say it.
    env = nowhere_env(tmp_path)
    write_evals(tmp_path / "same.jsonl", {"v1": 0.92, "v2": 0.92}, 400)
    args = ["gate", "w", "--candidate", "prompt:v2", "--baseline", "prompt:v1", "--evals", str(tmp_path / "same.jsonl")]
    assert run(args, env, tmp_path).returncode == 0
    for flag, target in (("--junit", tmp_path / "missing" / "gate.xml"), ("--markdown", tmp_path)):
        out = run([*args, flag, str(target)], env, tmp_path)
        assert out.returncode == 2, (flag, out.returncode, out.stderr)
        assert "Traceback" not in out.stderr and f"cannot write {flag} {target}" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_a_candidate_or_baseline_that_matches_nothing_says_so(tmp_path: Path) -> None:
    env = nowhere_env(tmp_path)
    write_evals(tmp_path / "evals.jsonl", {"main": 0.92, "candidate": 0.92}, 100)
    out = run(["gate", "w", "--candidate", "prompt:candidat", "--baseline", "prompt:main", "--evals",
               str(tmp_path / "evals.jsonl")], env, tmp_path)
    assert out.returncode == 3, out.stderr
    assert "no eval or output matched candidate prompt_version:candidat" in out.stderr
    assert "prompt_version values seen: candidate, main" in out.stderr


def test_changes_refuses_a_format_it_does_not_have(tmp_path: Path) -> None:
    out = run(["changes", "--format", "xml"], nowhere_env(tmp_path), tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "changes: --format must be table or json"


def test_a_result_repeated_in_the_files_counts_once(tmp_path: Path) -> None:
    # A retried CI step appends its results again: the same event ids. Stored events count once
    # (FINAL); the file's must too, or twice the evidence narrows the interval into a pass.
    env = nowhere_env(tmp_path)
    lines = [json.dumps({"event_id": f"{v}-{i}", "eval_name": "f", "passed": i < 19, "prompt_version": v})
             for v in ("v1", "v2") for i in range(20)]
    (tmp_path / "run.jsonl").write_text("\n".join(lines * 2) + "\n")
    out = run(["gate", "w", "--candidate", "prompt:v2", "--baseline", "prompt:v1", "--evals", str(tmp_path / "run.jsonl"),
               "--evals", str(tmp_path / "run.jsonl"), "--format", "json"], env, tmp_path)
    assert out.returncode == 3, out.stderr
    (check,) = json.loads(out.stdout)["checks"]
    assert (check["n_baseline"], check["n_candidate"]) == (20, 20)
    assert "120 results repeat an event_id already read: counted once" in out.stderr
