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


def test_a_second_pause_of_a_scope_ends_the_first_in_the_audit(cli) -> None:
    """Two people's actions on one scope share the topic key, so the second supersedes the first
    in every reader; the first must not stay 'active' in the audit (and in the CLI's promise)
    while nothing enforces it."""
    s = cli.settings
    first = cli("pause", "--workflow", "w", "--reason", "until lifted", actor="alice")
    assert first.exit_code == 0, first.output
    first_id = first.output.split("action ")[1].split()[0].strip(",")
    second = cli("pause", "--workflow", "w", "--reason", "short one", "--for", "1h", actor="bob")
    assert second.exit_code == 0, second.output
    state = read_state(s)
    assert [a.actor for a in state.active()] == ["bob"]
    # The superseded action's record says it ended, by whom and why (the audit reads every record).
    mine = [r for r in _all_records(s) if r.action_id == first_id]
    assert [r.state for r in mine] == ["active", "lifted"], mine
    assert mine[-1].ended_by == "bob" and "superseded" in mine[-1].ended_reason


def _all_records(s) -> list:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from llmpulse.schemas.controls import decode_action

    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"rev-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(s.controls_topic, 0, OFFSET_BEGINNING)])
    _, hi = c.get_watermark_offsets(TopicPartition(s.controls_topic, 0), timeout=10)
    out = []
    deadline = time.monotonic() + 10
    while len(out) < hi and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append(decode_action(m.value()))
    c.close()
    return out


def test_the_sdk_reads_past_hostile_records_and_says_so_once(kafka, tmp_path, caplog) -> None:
    """Garbage on llm.controls (bytes, JSON of the wrong shape, tombstones of unknown keys; a
    keyless record the compacted topic refuses itself) never stops the app's reader: a pause published after it is enforced, and the
    app's log gets a line about the garbage, not a line per record."""
    import logging

    from confluent_kafka import Producer

    from llmpulse.ingest import KafkaPublisher
    from llmpulse.kafka.topics import CONTROLS_TOPIC_CONFIG, ensure_topics
    from llmpulse.schemas.controls import encode_action, scope_key

    s = isolated_settings(kafka.bootstrap, tmp_path / "state")
    ensure_topics(s.kafka_bootstrap, {s.controls_topic: 1}, configs={s.controls_topic: CONTROLS_TOPIC_CONFIG})
    p = Producer({"bootstrap.servers": s.kafka_bootstrap})
    garbage = [b"\xff\x00", b"[]", b'{"kind": "pause_workflow"}', b"null", b"{" * 5000, b"x" * 100_000]
    for i in range(300):
        p.produce(s.controls_topic, garbage[i % len(garbage)], f"junk-{i}".encode())
    p.produce(s.controls_topic, None, b"never-seen")  # a tombstone of a key nobody wrote
    now = time.time_ns() // 1_000_000
    pause = new_action("pause_workflow", reason="after the junk", at=now, actor="alice", workflow="bot")
    p.produce(s.controls_topic, encode_action(pause), scope_key(pause).encode())
    assert p.flush(10) == 0
    caplog.set_level(logging.WARNING, logger="llmpulse.sdk.controls")
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic, controls=True, controls_topic=s.controls_topic)
    try:
        with pub.trace("bot") as t:
            v = t.check_model("gpt-4o")
        assert v.outcome == "deny" and v.action is not None and v.action.action_id == pause.action_id
        assert pub.enforcer.view.state.invalid == 300
        lines = [r for r in caplog.records if r.name == "llmpulse.sdk.controls"]
        assert 1 <= len(lines) <= 3, f"{len(lines)} log lines for 300 bad records"
    finally:
        pub.close(5)
