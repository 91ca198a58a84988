"""The spine against the real broker and real ClickHouse engine: SDK -> Kafka -> worker -> chDB."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer

from llmpulse.ingest import KafkaPublisher
from llmpulse.kafka.local import LocalKafka
from llmpulse.traffic import MALFORMED, TrafficGenerator
from tests.conftest import KAFKA_HOME, WorkerProcess, free_broker_port, wait_for

pytestmark = pytest.mark.integration


def _events(n: int, seed: int) -> list[dict]:
    gen = TrafficGenerator(seed=seed)
    out: list[dict] = []
    for e in gen.events(n):  # ~4.4 events per trace; cut to exactly n
        out.append(e)
        if len(out) == n:
            break
    return out


def _publish_all(pub: KafkaPublisher, events: list[dict]) -> None:
    for e in events:
        assert pub.publish(e)
    assert pub.flush(60) == 0
    assert pub.stats.undelivered == 0


def test_10k_events_land_as_exactly_10k_rows(worker: WorkerProcess) -> None:
    s = worker.settings
    events = _events(10_000, seed=11)
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)
    _publish_all(pub, events)
    pub.close()
    wait_for(lambda: worker.stats().get("inserted", 0) >= 10_000, 120, what="10k rows")
    # No FINAL: not even physical duplicates.
    assert worker.scalar("SELECT count() FROM {db}.events") == 10_000
    assert worker.scalar("SELECT uniqExact(event_id) FROM {db}.events") == 10_000
    # The CLI reads through the worker while the worker holds the chDB directory.
    cli = subprocess.run([sys.executable, "-m", "llmpulse", "sql", "SELECT count() AS n FROM llmpulse.events FINAL"],
                         env=worker.env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "10000" in cli.stdout, cli.stdout + cli.stderr
    ids = {r[0] for r in worker.query("SELECT event_id FROM {db}.events")}
    assert ids == {e["event_id"] for e in events}
    # Typed columns carry the contract fields.
    row = worker.query("SELECT input_tokens, cache_read_tokens, latency_ms, status FROM {db}.events "
                       f"WHERE event_id = '{events[-1]['event_id']}'")
    last = events[-1]
    if last["event_type"] == "output":
        assert row[0][0] == last["usage"]["input_tokens"]
        assert row[0][2] == pytest.approx(last["latency_ms"])


def test_malformed_events_go_to_dlq_with_reason_and_valid_ones_flow(worker: WorkerProcess) -> None:
    s = worker.settings
    valid = _events(500, seed=12)
    extra_field = {**valid[0], "event_id": "with-extra", "brand_new_field": {"x": 1}}
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)
    for i, e in enumerate(valid[1:]):
        pub.publish(e)
        if i % 100 == 0:  # interleave bad messages with good ones
            pub.publish_raw(MALFORMED[(i // 100) % len(MALFORMED)], "bad")
    pub.publish(extra_field)
    for raw in MALFORMED:
        pub.publish_raw(raw, "bad")
    assert pub.flush(30) == 0
    n_bad = 5 + len(MALFORMED)
    wait_for(lambda: worker.stats().get("consumed", 0) >= len(valid) + n_bad, 60, what="all consumed")
    assert worker.scalar("SELECT count() FROM {db}.events") == len(valid)
    assert worker.scalar("SELECT extra FROM {db}.events WHERE event_id = 'with-extra'") == '{"brand_new_field":{"x":1}}'
    assert worker.scalar("SELECT count() FROM {db}.dead_letters") == n_bad

    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"dlq-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([s.dlq_topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < n_bad and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and not msg.error():
            got.append(msg)
    consumer.close()
    assert len(got) == n_bad
    assert {m.value() for m in got} == set(MALFORMED)  # original bytes, untouched
    for m in got:
        headers = dict(m.headers())
        assert headers["llmpulse.error"]
        assert headers["llmpulse.source.topic"].decode() == s.events_topic
        assert int(headers["llmpulse.source.offset"]) >= 0
    reasons = {dict(m.headers())["llmpulse.error"].decode() for m in got}
    assert any("malformed JSON" in r for r in reasons)
    assert any("telepathy" in r for r in reasons)


def test_heap_trims_and_gc_freezes_between_batches_lose_nothing(pipeline_settings, tmp_path) -> None:
    # trim_above_mb=1: the worker is always "above", so it trims after every batch; it also
    # freezes each batch's survivors out of the cyclic GC (WorkerRuntime._age_heap).
    w = WorkerProcess(pipeline_settings, tmp_path / "worker.log", extra_env={"LLMPULSE_TRIM_ABOVE_MB": "1"}).start()
    try:
        events = _events(20_000, seed=17)
        pub = KafkaPublisher(pipeline_settings.kafka_bootstrap, pipeline_settings.events_topic)
        for i in range(0, len(events), 2_000):  # spread over a few seconds: several trims
            for e in events[i:i + 2_000]:
                assert pub.publish(e)
            time.sleep(0.4)
        assert pub.flush(60) == 0
        pub.close()
        wait_for(lambda: w.stats().get("inserted", 0) >= len(events), 120, what="all rows")
        stats = w.stats()
        assert stats["trims"] >= 2 and stats["rss_bytes"] > 0
        assert stats["heap_ages"] >= stats["batches"] >= 2
        assert w.scalar("SELECT uniqExact(event_id) FROM {db}.events") == len(events)
        assert w.scalar("SELECT count() FROM {db}.events") == len(events)
    finally:
        w.stop()


def test_worker_sigkill_mid_stream_loses_and_duplicates_nothing(worker: WorkerProcess) -> None:
    s = worker.settings
    events = _events(30_000, seed=13)
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)

    def produce() -> None:  # a steady stream, so the kill lands mid-stream
        for i in range(0, len(events), 500):
            for e in events[i:i + 500]:
                pub.publish(e)
            time.sleep(0.05)

    t = threading.Thread(target=produce)
    t.start()
    wait_for(lambda: worker.stats().get("inserted", 0) >= 5_000, 60, what="first rows")
    worker.kill()
    t.join()
    assert pub.flush(30) == 0 and pub.stats.undelivered == 0
    worker.start()
    wait_for(lambda: worker.scalar("SELECT count() FROM {db}.events FINAL") >= len(events), 120, what="all rows")
    time.sleep(1.0)  # give a duplicate insert, if any, the chance to show
    assert worker.scalar("SELECT uniqExact(event_id) FROM {db}.events") == len(events)
    assert worker.scalar("SELECT count() FROM {db}.events") == len(events)  # physical rows: no duplicates


def test_broker_down_20s_while_sdk_publishes_loses_nothing(tmp_path) -> None:
    # Its own broker, so stopping it does not disturb the session broker.
    broker = LocalKafka(KAFKA_HOME, f"127.0.0.1:{free_broker_port()}")
    broker.up()
    topic = f"outage.{uuid.uuid4().hex[:8]}"
    try:
        pub = KafkaPublisher(broker.bootstrap, topic)
        sent = [orjson.dumps({"n": i}) for i in range(3000)]
        for raw in sent[:1000]:
            assert pub.publish_raw(raw, "k")
        assert pub.flush(30) == 0
        broker.down()
        outage_started = time.monotonic()
        worst_call = 0.0
        for i, raw in enumerate(sent[1000:]):
            t0 = time.perf_counter()
            assert pub.publish_raw(raw, "k")  # buffered, never blocks or raises
            worst_call = max(worst_call, time.perf_counter() - t0)
            if i % 100 == 0:
                time.sleep(0.2)
        time.sleep(max(0.0, 20 - (time.monotonic() - outage_started)))
        broker.up()
        assert pub.flush(120) == 0
        assert pub.stats.failed == 0 and pub.stats.queue_full == 0
        assert worst_call < 0.05
        pub.close()

        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "outage-check",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                got.append(msg.value())
        consumer.close()
        assert sorted(got) == sorted(sent)  # every message exactly once (idempotent producer)
    finally:
        broker.down()
