"""Review of issue 15 (kill switches): the CLI against the real broker, misuse included."""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest
from typer.testing import CliRunner

from llmpulse.commands.control import publish, read_state
from llmpulse.schemas.controls import new_action
from llmpulse.testing import isolated_settings


@pytest.fixture
def cli(kafka, tmp_path, monkeypatch):
    from llmpulse.cli import app

    s = isolated_settings(kafka.bootstrap, tmp_path / "state")
    monkeypatch.setenv("LLMPULSE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    monkeypatch.setenv("LLMPULSE_CONTROLS_TOPIC", s.controls_topic)
    monkeypatch.setenv("LLMPULSE_ACTOR", "alice")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def run(*args: str, actor: str = "alice"):
        return runner.invoke(app, ["control", *args], env={"LLMPULSE_ACTOR": actor})

    run.settings = s  # type: ignore[attr-defined]
    return run


def _active_ids(s) -> set[str]:
    return {a.action_id for a in read_state(s).active()}


def test_lift_by_an_ambiguous_prefix_lifts_nothing_and_says_so(cli) -> None:
    s = cli.settings
    now = time.time_ns() // 1_000_000
    a = msgspec.structs.replace(new_action("pause_workflow", reason="r", at=now, actor="bob", workflow="w1"),
                                action_id="abcd0001deadbeef")
    b = msgspec.structs.replace(new_action("pause_workflow", reason="r", at=now, actor="bob", workflow="w2"),
                                action_id="abcd0002deadbeef")
    publish(s, [a, b])
    out = cli("lift", "abcd", "--reason", "oops")
    assert out.exit_code == 1, out.output
    assert "abcd0001deadbeef" in out.output and "abcd0002deadbeef" in out.output  # names the candidates
    assert _active_ids(s) == {a.action_id, b.action_id}  # neither was lifted
    assert cli("lift", "abcd0001").exit_code == 0
    assert _active_ids(s) == {b.action_id}
