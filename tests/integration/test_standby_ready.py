"""A worker whose group has more members than the events topic has partitions holds none:
it is a standby, ready to take over, and /readyz says so (200), for the single worker and for
the processing workers of a scaled-out topology."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from llmpulse.query import worker_url
from llmpulse.testing import WorkerProcess, free_port, isolated_settings, wait_for
from llmpulse.testing_scaled import Cluster

pytestmark = pytest.mark.integration
ONE_PARTITION = {"LLMPULSE_TOPIC_PARTITIONS": "1", "LLMPULSE_SCALE__SCOPE_PARTITIONS": "1"}


def readyz(w: WorkerProcess) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(worker_url(w.settings, "/readyz"), timeout=2) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_single_worker_standby_is_ready(kafka, tmp_path) -> None:
    base = isolated_settings(kafka.bootstrap, tmp_path / "a")
    # Same topics and group, each its own embedded store (chDB: one process per data path).
    other = base.model_copy(update={"state_dir": tmp_path / "b", "worker_web_port": free_port()})
    (tmp_path / "b").mkdir()
    members = [WorkerProcess(base, tmp_path / "a.log", ONE_PARTITION), WorkerProcess(other, tmp_path / "b.log", ONE_PARTITION)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(WorkerProcess.start, members))  # start() waits for ready: both get there

        def settled() -> bool:  # the partition count on /readyz is refreshed once a second
            answers = [readyz(w) for w in members]
            details = [body["checks"]["partitions"]["detail"] for _, body in answers]
            return [code for code, _ in answers] == [200, 200] and sum("standby" in d for d in details) == 1

        wait_for(settled, 30, what="both ready, one of them a standby")
    finally:
        for w in members:
            w.stop()


def test_scaled_standby_is_ready(kafka, tmp_path) -> None:
    cluster = Cluster(kafka.bootstrap, tmp_path, 2, extra_env=ONE_PARTITION).start()  # start() waits for ready
    try:
        answers = [readyz(w) for w in cluster.workers]
        assert [code for code, _ in answers] == [200, 200]
        held = sorted(w.stats()["trace"]["partitions"] for w in cluster.workers)
        assert held == [0, 1]
        assert sum("standby" in body["checks"]["trace"]["detail"] for _, body in answers) == 1
    finally:
        cluster.stop()
