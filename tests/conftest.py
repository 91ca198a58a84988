"""Shared fixtures: one real Kafka broker per test session, real workers as subprocesses.

Integration tests use a unique topic set and consumer group each, so they never
see each other's data. The broker is started once (or reused when one answers on
the test port) and stopped at the end if this session started it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from llmpulse.kafka.local import LocalKafka
from llmpulse.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TEST_BOOTSTRAP = os.environ.get("LLMPULSE_TEST_KAFKA", "127.0.0.1:29092")
KAFKA_HOME = ROOT / ".llmpulse" / "kafka"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def kafka() -> LocalKafka:
    broker = LocalKafka(KAFKA_HOME, TEST_BOOTSTRAP)
    how = broker.up()
    yield broker
    if how == "started":
        broker.down()


class WorkerProcess:
    """A real `llmpulse worker` subprocess with its own topics, group, chDB directory and port."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        s = self.settings
        return {**os.environ, "LLMPULSE_STATE_DIR": str(s.state_dir), "LLMPULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "LLMPULSE_EVENTS_TOPIC": s.events_topic, "LLMPULSE_DLQ_TOPIC": s.dlq_topic,
                "LLMPULSE_FINDINGS_TOPIC": s.findings_topic, "LLMPULSE_WORKER_ID": s.worker_id,
                "LLMPULSE_WORKER_WEB_PORT": str(s.worker_web_port), "LLMPULSE_BATCH_MAX_SECONDS": "0.2"}

    def start(self) -> "WorkerProcess":
        from llmpulse.query import worker_stats

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "llmpulse", "worker"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.settings.state_dir, start_new_session=True)
        wait_for(lambda: self._alive_or_fail() and (worker_stats(self.settings) or {}).get("ready"), 90, what="worker start")
        return self

    def _alive_or_fail(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return True

    def stats(self) -> dict:
        from llmpulse.query import worker_stats

        return worker_stats(self.settings) or {}

    def query(self, sql: str) -> list[list]:
        from llmpulse.query import run_query

        return run_query(self.settings, sql.replace("{db}", self.settings.database))["rows"]

    def scalar(self, sql: str):
        return self.query(sql)[0][0]

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def pipeline_settings(kafka: LocalKafka, tmp_path: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    state = tmp_path / "state"
    state.mkdir()
    return Settings(state_dir=state, kafka_bootstrap=kafka.bootstrap, events_topic=f"llm.events.{tag}",
                    dlq_topic=f"llm.events.dlq.{tag}", findings_topic=f"llm.findings.{tag}",
                    worker_id=f"llmpulse-test-{tag}", worker_web_port=free_port())


@pytest.fixture
def worker(pipeline_settings: Settings, tmp_path: Path):
    w = WorkerProcess(pipeline_settings, tmp_path / "worker.log").start()
    yield w
    w.stop()
