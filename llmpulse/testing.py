"""Run a real worker as a subprocess with its own topics, group, chDB directory and port.

Shared by the integration tests and the benchmarks.
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

from llmpulse.query import run_query, worker_stats
from llmpulse.settings import Settings


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


def isolated_settings(bootstrap: str, state_dir: Path, **overrides) -> Settings:
    """Settings with a unique topic set and consumer group, so runs never see each other."""
    tag = uuid.uuid4().hex[:8]
    state_dir.mkdir(parents=True, exist_ok=True)
    return Settings(state_dir=state_dir, kafka_bootstrap=bootstrap, events_topic=f"llm.events.{tag}",
                    dlq_topic=f"llm.events.dlq.{tag}", findings_topic=f"llm.findings.{tag}",
                    worker_id=f"llmpulse-test-{tag}", worker_web_port=free_port(), **overrides)


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})  # e.g. LLMPULSE_CONFIG_FILE for budgets/contracts
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        s = self.settings
        return {**os.environ, "LLMPULSE_STATE_DIR": str(s.state_dir), "LLMPULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "LLMPULSE_EVENTS_TOPIC": s.events_topic, "LLMPULSE_DLQ_TOPIC": s.dlq_topic,
                "LLMPULSE_FINDINGS_TOPIC": s.findings_topic, "LLMPULSE_WORKER_ID": s.worker_id,
                "LLMPULSE_WORKER_WEB_PORT": str(s.worker_web_port),
                "LLMPULSE_BATCH_MAX_EVENTS": str(s.batch_max_events),
                "LLMPULSE_BATCH_MAX_SECONDS": str(s.batch_max_seconds), **self.extra_env}

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "llmpulse", "worker"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.settings.state_dir, start_new_session=True)
        wait_for(lambda: self._alive_or_fail() and (worker_stats(self.settings) or {}).get("ready"), 90,
                 what="worker start")
        return self

    def _alive_or_fail(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return True

    def stats(self) -> dict:
        return worker_stats(self.settings) or {}

    def query(self, sql: str) -> list[list]:
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
