"""`llmpulse replay` against the real broker: unparsable lines are named by line number."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from confluent_kafka import Consumer


def _topic_values(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.partition.eof": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    for _ in range(60):
        values += [m.value() for m in consumer.consume(100, timeout=0.5) if m.error() is None]
        if len(values) >= expected:
            break
    consumer.close()
    return values


def _replay(kafka, tmp_path: Path, topic: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")},
           "LLMPULSE_KAFKA_BOOTSTRAP": kafka.bootstrap, "LLMPULSE_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run([sys.executable, "-m", "llmpulse", "replay", "in.jsonl", "--topic", topic, *flags],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_replay_names_unparsable_lines_and_exits_non_zero_unless_accepted(kafka, tmp_path: Path) -> None:
    lines = ['{"event_id": "a", "trace_id": "t1"}', "{broken", "", '["a list"]', '{"event_id": "b"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    topic = f"llm.replay.{uuid.uuid4().hex[:8]}"
    out = _replay(kafka, tmp_path, topic)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "in.jsonl:2: not JSON" in out.stderr and "in.jsonl:4: not a JSON object" in out.stderr
    assert "in.jsonl:1:" not in out.stderr and "in.jsonl:3:" not in out.stderr
    assert "2 unparsable lines not published" in out.stdout
    assert sorted(_topic_values(kafka.bootstrap, topic, 2)) == [lines[0].encode(), lines[4].encode()]

    accepted = f"{topic}.all"
    out = _replay(kafka, tmp_path, accepted, "--accept-invalid")
    assert out.returncode == 0, out.stderr
    assert "in.jsonl:2: not JSON" in out.stderr  # still reported
    assert len(_topic_values(kafka.bootstrap, accepted, 4)) == 4  # the blank line is no message
