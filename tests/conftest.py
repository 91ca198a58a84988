"""Shared fixtures: one real Kafka broker per test session, real workers as subprocesses.

Integration tests use a unique topic set and consumer group each, so they never
see each other's data. The broker is started once (or reused when one answers on
the test port) and stopped at the end if this session started it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmpulse.kafka.local import LocalKafka
from llmpulse.settings import Settings
from llmpulse.testing import WorkerProcess, free_broker_port, free_port, isolated_settings, wait_for  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
TEST_BOOTSTRAP = os.environ.get("LLMPULSE_TEST_KAFKA", "127.0.0.1:29092")
KAFKA_HOME = ROOT / ".llmpulse" / "kafka"


@pytest.fixture(scope="session")
def chdb_client(tmp_path_factory):
    """The one embedded ClickHouse of this test process: chDB allows a single data path per
    process, so in-process tests share it and each uses its own database."""
    from llmpulse.schemas.store import connect

    client = connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def kafka() -> LocalKafka:
    broker = LocalKafka(KAFKA_HOME, TEST_BOOTSTRAP)
    how = broker.up()
    yield broker
    from llmpulse.ingest.publisher import close_all

    close_all(timeout=1.0)  # before the broker goes: no reconnect noise after the last test
    if how == "started":
        broker.down()


@pytest.fixture
def pipeline_settings(kafka: LocalKafka, tmp_path: Path) -> Settings:
    return isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)


@pytest.fixture
def worker(pipeline_settings: Settings, tmp_path: Path):
    w = WorkerProcess(pipeline_settings, tmp_path / "worker.log").start()
    yield w
    w.stop()
