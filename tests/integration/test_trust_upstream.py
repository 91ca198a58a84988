"""Events redacted by the SDK are marked (header `llmpulse-redacted`), and a worker that trusts
the tenant (`redaction.trust_upstream`) does not redact them again; any other event is.

Real broker, real worker, real ClickHouse. The marker proves nothing (the worker cannot check
it), which the first case shows on purpose: a producer that sets the right marker on raw bytes
for a trusted tenant gets them stored as sent. Hence the default: no tenant trusted.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from llmpulse.ingest import Publisher
from llmpulse.processors.redaction import MARKER_HEADER, Policy, Redactor
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for
from llmpulse.testing_scaled import Cluster

pytestmark = pytest.mark.integration

TOKEN = "ghp_7Yt3Rk9Wq2Lp5Zx8Cv1Bn4Mj6Hg0Fd2Sa3Qe"
EMAIL = "ingrid.holm@nordlys-mail.no"
TS = (time.time_ns() // 3_600_000_000_000 - 1) * 3_600_000
MARKER = Redactor().marker  # the default policy's marker: the worker's too (no redaction: section)


def _event(trace: str, tenant: str) -> dict:
    return {"event_type": "output", "event_id": uuid.uuid4().hex, "ts": TS, "schema_version": "1",
            "trace_id": trace, "tenant": tenant, "workflow": "support", "status": "ok", "latency_ms": 800.0,
            "content": f"use {TOKEN} and write to {EMAIL}"}


TRUST = {"LLMPULSE_REDACTION__TRUST_UPSTREAM": '["trusted"]'}


@pytest.mark.parametrize("topology", ["single", "scaled"])
def test_marked_events_of_trusted_tenants_are_not_redacted_again(kafka, tmp_path: Path, topology: str) -> None:
    """The single worker, and the scaled trace stage (README "Scaling out"), read the marker alike."""
    if topology == "single":
        settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
        worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env=TRUST).start()
        members = [worker]
    else:
        cluster = Cluster(kafka.bootstrap, tmp_path, 1, extra_env=TRUST).start()
        settings, worker, members = cluster.base, cluster.writer, [*cluster.workers, cluster.writer]
    try:
        raw = Producer({"bootstrap.servers": kafka.bootstrap})
        cases = {  # trace -> (tenant, header): raw bytes, secrets in clear
            "marked-trusted": ("trusted", MARKER),
            "marked-untrusted-tenant": ("other", MARKER),
            "old-ruleset": ("trusted", b"1:0000000000000000:" + MARKER.rsplit(b":", 1)[1]),
            "other-policy": ("trusted", Redactor(Policy(pii="allow")).marker),  # the SDK kept PII
            "unmarked": ("trusted", None),
        }
        for trace, (tenant, marker) in cases.items():
            headers = [(MARKER_HEADER, marker)] if marker is not None else None
            raw.produce(settings.events_topic, orjson.dumps(_event(trace, tenant)), trace.encode(), headers=headers)
        assert raw.flush(30) == 0
        sdk = Publisher(kafka.bootstrap, settings.events_topic)  # redaction on: marks what it sends
        assert sdk.publish(_event("sdk", "trusted"))
        assert sdk.flush(30) == 0
        sdk.close()

        wait_for(lambda: worker.scalar("SELECT count() FROM {db}.events") == len(cases) + 1, 60, what="rows")
        stored = dict(worker.query("SELECT trace_id, content FROM {db}.events"))
        assert TOKEN in stored["marked-trusted"] and EMAIL in stored["marked-trusted"]  # trusted: as sent
        for trace in ("marked-untrusted-tenant", "old-ruleset", "other-policy", "unmarked"):
            assert TOKEN not in stored[trace] and EMAIL not in stored[trace], trace
            assert "[SECRET:" in stored[trace] and "[EMAIL]" in stored[trace], trace
        # The SDK's own event: marked on the topic, redacted once (in the app), and still
        # reported: its annotation gives the finding the worker's pass would have.
        assert _header_of(kafka.bootstrap, settings.events_topic, "sdk") == MARKER
        assert TOKEN not in stored["sdk"] and "[SECRET:" in stored["sdk"] and "[EMAIL]" in stored["sdk"]
        wait_for(lambda: worker.scalar("SELECT count() FROM {db}.findings WHERE trace_id = 'sdk' "
                                       "AND kind IN ('secret_detected', 'pii_detected')") >= 2, 30, what="findings")
    finally:
        for member in members:
            member.stop()


def _header_of(bootstrap: str, topic: str, trace: str) -> bytes | None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peek-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error() is not None:
                continue
            if m.key() == trace.encode():
                return dict(m.headers() or []).get(MARKER_HEADER)
        raise AssertionError(f"no message of trace {trace}")
    finally:
        c.close()
