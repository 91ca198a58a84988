"""A scaled-out topology as real processes, for tests and benches: one writer (owns the
embedded store) and `n` processing workers (README "Scaling out")."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmpulse.settings import Settings
from llmpulse.testing import WorkerProcess, free_port, isolated_settings


class Cluster:
    def __init__(self, bootstrap: str, work: Path, n: int, extra_env: dict[str, str] | None = None,
                 base: Settings | None = None) -> None:
        self.base = base or isolated_settings(bootstrap, work / "state", batch_max_seconds=0.2)
        tag = uuid.uuid4().hex[:8]
        self.env = {**(extra_env or {}), "LLMPULSE_SCALE__SCOPE_TOPIC": f"llm.scope.{tag}",
                    "LLMPULSE_SCALE__ROWS_TOPIC": f"llm.rows.{tag}",
                    "LLMPULSE_SCALE__STATE_TOPIC": f"llm.scope.state.{tag}"}
        self.work = work
        self.writer = self._member("writer", "writer")
        self.workers = [self._member("process", f"w{i}") for i in range(n)]

    def _member(self, role: str, name: str) -> WorkerProcess:
        s = self.base.model_copy(update={"worker_web_port": free_port()})
        return WorkerProcess(s, self.work / f"{name}.log", extra_env={**self.env, "LLMPULSE_SCALE__ROLE": role,
                                                                       "LLMPULSE_SCALE__INSTANCE": name})

    def start(self) -> "Cluster":
        members = [self.writer, *self.workers]
        with ThreadPoolExecutor(len(members)) as pool:  # start-up is mostly waiting: side by side
            list(pool.map(WorkerProcess.start, members))
        return self

    def stop(self) -> None:
        for w in [*self.workers, self.writer]:
            w.stop()

    def stored(self) -> int:
        return self.writer.scalar("SELECT count() FROM {db}.events")

    def shared(self) -> bool:
        """Every processing worker holds partitions of the events topic."""
        return all(w.stats().get("trace", {}).get("partitions") for w in self.workers)
