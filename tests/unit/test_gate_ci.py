"""The README's "Gate a prompt change in CI" is true: its command is the CI files' gate step, and it gates."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import yaml

from llmpulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECTION = ROOT.joinpath("README.md").read_text().split("## Gate a prompt change in CI")[1].split("\n## ")[0]


def readme_command() -> str:
    return re.search(r"```sh\n(.*?)\n```", SECTION, re.S).group(1).strip()


def test_the_readme_command_is_the_gate_step_of_both_ci_examples() -> None:
    command = readme_command()
    assert command.startswith("make eval ")
    github = yaml.safe_load((ROOT / "docs/ci/github-actions.yml").read_text())
    (step,) = [s for s in github["jobs"]["eval"]["steps"] if s.get("name") == "eval gate"]
    assert step["run"] == command
    assert f"run: {command}" in SECTION  # the snippet quoted in the README
    gitlab = yaml.safe_load((ROOT / "docs/ci/gitlab-ci.yml").read_text())
    assert command in gitlab["eval-gate"]["script"]
    assert gitlab["eval-gate"]["artifacts"]["reports"]["junit"] == "reports/eval-gate.xml"


def test_the_readme_eval_gate_rule_loads() -> None:
    block = re.search(r"```\n(eval_gate:.*?)```", SECTION, re.S).group(1)
    s = Settings(**yaml.safe_load(block))
    assert s.eval_gate.rule_for("support-bot").for_eval("faithfulness").max_drop == 0.01


def write_results(path: Path, baseline: float, candidate: float, n: int = 400) -> None:
    rng = random.Random(2)
    lines = []
    for version, rate in (("main", baseline), ("candidate", candidate)):
        passed = [i < round(rate * n) for i in range(n)]
        rng.shuffle(passed)
        lines += [json.dumps({"eval_name": "faithfulness", "passed": p, "prompt_version": version}) for p in passed]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_the_readme_command_runs_and_gates(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    llmpulse = Path(sys.executable).with_name("llmpulse")
    argv = [*shlex.split(readme_command()), f"LLMPULSE={llmpulse}"]
    env = {**os.environ, "LLMPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LLMPULSE_CLICKHOUSE_DSN": "http://127.0.0.1:1",
           "LLMPULSE_STATE_DIR": str(tmp_path / "state")}
    write_results(tmp_path / "evals/results.jsonl", 0.92, 0.80)
    worse = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert worse.returncode != 0, worse.stdout + worse.stderr
    suite = ET.parse(tmp_path / "reports/eval-gate.xml").getroot()
    assert [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None] == ["faithfulness.pass_rate"]
    assert "FAIL" in (tmp_path / "reports/eval-gate.md").read_text()
    write_results(tmp_path / "evals/results.jsonl", 0.92, 0.92)
    same = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "PASS" in (tmp_path / "reports/eval-gate.md").read_text()
