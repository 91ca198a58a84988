"""Streaming proof (issue 4): the detection benchmark through Kafka and a real worker
gives the findings `llmpulse backtest` gives, also when the worker is SIGKILLed mid-run,
and the worker's pipeline, sink and warm-up give them across a restart at chosen points.

A small labelled dataset (bench/detection/generate.py: 90 minutes of event time, loops
of every kind and a few anomaly incidents, ~100k events) is run once through the
backtest code path, then published as it is (`llmpulse replay`: raw lines keyed by
trace_id, so across the topic's partitions) to a fresh topic that a real worker drains.

The backtest closes still-open windows and settles deferred loops at the end of its
file (`flush`); a stream never reaches an end of input, so those end-of-file findings
are left out of the comparison. Compared: (finding_id, kind, status, event_ts);
`detected_at` is wall clock in the stream. Some findings are raised again under the
same id (`pii_detected`: once per event, for the same trace and field); the
`findings` table (ReplacingMergeTree on kind, finding_id, status) keeps the last one,
so `findings FINAL` is compared with the backtest's last emission per id and status
(a finding raised twice at different event times would show there as a wrong event_ts),
and the topic with every emission: exactly once without a restart, at least once with.
"""

from __future__ import annotations

import random
import time
import uuid
import zlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.detection.generate import Params, generate
from llmpulse.commands.backtest import backtest
from llmpulse.ingest import KafkaPublisher
from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.processors.runtime.sink import ClickHouseSink
from llmpulse.processors.runtime.worker import warm_up
from llmpulse.schemas.findings import Finding, decode_finding
from llmpulse.schemas.store import migrate
from llmpulse.settings import Settings
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for

pytestmark = pytest.mark.integration

# Short and small, but every loop kind and several anomaly kinds (the generator pads each
# incident with 35 min of baseline before and 40 min after, hence no warm-up stretch).
DATASET = dict(seed=17, hours=1.5, warmup_minutes=0, quiet_hours=0.0, incidents_per_kind=1, changes_bad=1,
               changes_benign=0, loops_per_kind=3, volume=0.7, incident_min_minutes=5, incident_max_minutes=8)
WARMUP_ENV = {"LLMPULSE_WARMUP_MINUTES": "240"}  # the restart must rebuild state from the whole dataset

Key = tuple[str, str, str, int]  # finding_id, kind, status, event_ts


def key(f: Finding) -> Key:
    return (f.finding_id, f.kind, f.status, f.event_ts)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[bytes]]:
    out = tmp_path_factory.mktemp("detection")
    # Recent event time: the tables' TTL (retention_days) would drop rows from months ago.
    start = datetime.fromtimestamp((int(time.time()) // 3600 - 3) * 3600, tz=timezone.utc).isoformat()
    generate(Params(start=start, **DATASET), out)
    path = out / "events.jsonl"
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    # A stream never ends: its watermark is the slowest partition's event time. A tail of
    # events well past the data on every partition lets both the backtest and the stream
    # close every window the data opened, from the same input.
    last = max(orjson.loads(line)["ts"] for line in lines[-5000:])
    tail = [orjson.dumps({"event_id": f"tail-{i}", "event_type": "prompt", "ts": last + 15 * 60_000,
                          "trace_id": f"tail-{i}", "workflow": "_tail", "tenant": "_tail"}) for i in range(64)]
    lines += tail
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


class Expected(NamedTuple):
    emitted: list[Key]  # every finding the backtest raises while reading the file, in order
    at_end: set[Key]  # raised only by the end-of-file flush

    @property
    def final(self) -> set[Key]:
        """What `findings FINAL` keeps: the last emission per (finding_id, kind, status)."""
        return set({k[:3]: k for k in self.emitted}.values())


@pytest.fixture(scope="module")
def expected(dataset) -> Expected:
    path, lines = dataset
    pipeline = Pipeline.from_settings(Settings(), replay=True)
    at_end: list[Finding] = []
    flush = pipeline.flush  # note which findings the end-of-file flush adds
    pipeline.flush = lambda: _extend(at_end, flush())  # type: ignore[method-assign]
    findings, counts = backtest(pipeline, path)
    assert counts["events"] == len(lines) and counts["dead_letters"] == 0
    exp = Expected([key(f) for f in findings[: len(findings) - len(at_end)]], {key(f) for f in at_end})
    kinds = {k[1] for k in exp.emitted}
    assert {"tool_loop", "cycle_loop", "no_progress"} <= kinds
    assert len(kinds & {"error_rate_spike", "latency_regression", "traffic_drop", "regression_after_change"}) >= 2
    return exp


def _extend(into: list, items: list) -> list:
    into.extend(items)
    return items


def publish(settings: Settings, lines: list[bytes]) -> None:
    """As `llmpulse replay`: raw lines, keyed by trace_id."""
    pub = KafkaPublisher(settings.kafka_bootstrap, settings.events_topic)
    for line in lines:
        k = str(orjson.loads(line).get("trace_id") or "")
        while not pub.publish_raw(line, k):
            pub.flush(1.0)
            pub.stats.queue_full = 0
    assert pub.flush(60) == 0 and pub.stats.failed == 0
    pub.close()


def stored(worker: WorkerProcess) -> set[Key]:
    rows = worker.query("SELECT finding_id, kind, status, toUnixTimestamp64Milli(event_ts) FROM {db}.findings FINAL")
    return {(r[0], r[1], r[2], int(r[3])) for r in rows}


def topic_findings(settings: Settings, want: int, timeout: float = 30) -> list[tuple[str, str]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(settings.findings_topic, 0, OFFSET_BEGINNING)])
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    idle_until = None
    while time.monotonic() < deadline:
        msgs = [m for m in consumer.consume(5000, timeout=0.5) if not m.error()]
        got += [(f.finding_id, f.status) for f in map(decode_finding, (m.value() for m in msgs))]
        if len(got) >= want and not msgs:  # caught up
            idle_until = idle_until or time.monotonic() + 1.0
            if time.monotonic() > idle_until:
                break
    consumer.close()
    return got


def describe(stream: set[Key], batch: set[Key], at_end: set[Key]) -> str:
    missing, extra = sorted(batch - stream, key=lambda k: k[3]), sorted(stream - batch, key=lambda k: k[3])
    return (f"missing from stream ({len(missing)}): {missing[:15]}\nonly in stream ({len(extra)}): {extra[:15]}\n"
            f"only-in-stream that the backtest raised at end of file: {len(set(extra) & at_end)}")


def drained(worker: WorkerProcess, n: int) -> bool:
    return worker.scalar("SELECT count() FROM {db}.events FINAL") >= n


def test_replay_through_kafka_gives_the_backtest_findings(kafka, tmp_path, dataset, expected) -> None:
    _, lines = dataset
    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
    worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env=WARMUP_ENV).start()
    try:
        publish(settings, lines)
        wait_for(lambda: drained(worker, len(lines)), 180, interval=0.5, what="all events stored")
        stream = stored(worker)
    finally:
        worker.stop()
    assert stream == expected.final, describe(stream, expected.final, expected.at_end)
    on_topic = topic_findings(settings, len(expected.emitted))
    assert Counter(on_topic) == Counter((k[0], k[2]) for k in expected.emitted)  # each emission exactly once


def test_sigkill_mid_replay_loses_and_duplicates_no_finding(kafka, tmp_path, dataset, expected) -> None:
    _, lines = dataset
    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
    worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env=WARMUP_ENV).start()
    try:
        publish(settings, lines)
        done = wait_for(lambda: worker.stats().get("inserted", 0) >= len(lines) * 0.4 and worker.stats()["inserted"],
                        120, interval=0.05, what="40% stored")
        worker.kill()
        assert done < len(lines), "the kill must land mid-replay"
        t0 = time.monotonic()
        worker.start()
        t1 = time.monotonic()
        wait_for(lambda: drained(worker, len(lines)), 180, interval=0.5, what="all events stored")
        # (most of the wait: the killed member's consumer-group session has to expire first)
        print(f"killed after {done} of {len(lines)} events; restart {t1 - t0:.1f}s, "
              f"rest drained {time.monotonic() - t1:.1f}s later")
        stream = stored(worker)
    finally:
        worker.stop()
    assert stream == expected.final, describe(stream, expected.final, expected.at_end)
    on_topic = topic_findings(settings, len(expected.emitted))
    assert set(on_topic) == {(k[0], k[2]) for k in expected.emitted}  # at least once, nothing else


# Restarts at chosen points, in process: the same pipeline, sink and warm-up code as the worker,
# on the session's chDB, with the partitions' interleaving under the test's control (a real
# consumer's is whatever librdkafka fetches). "backlog": the partitions read one after the
# other, killed while the last two have nothing stored (the cold-start case).
@pytest.mark.parametrize("interleave,seed,kill_at", [("random", 1, 0.3), ("random", 2, 0.6), ("backlog", 3, 0.45)])
def test_restart_anywhere_gives_the_backtest_findings(chdb_client, dataset, expected, interleave, seed, kill_at) -> None:
    _, lines = dataset
    n_parts, topic = 4, "llm.events"
    parts: list[list[RawMessage]] = [[] for _ in range(n_parts)]
    for line in lines:
        p = zlib.crc32(str(orjson.loads(line).get("trace_id") or "").encode()) % n_parts
        parts[p].append(RawMessage(line, topic, p, len(parts[p])))
    rng = random.Random(seed)

    def batches(pos: list[int]):
        while any(pos[p] < len(parts[p]) for p in range(n_parts)):
            batch: list[RawMessage] = []
            while len(batch) < 10_000 and any(pos[p] < len(parts[p]) for p in range(n_parts)):
                left = [p for p in range(n_parts) if pos[p] < len(parts[p])]
                p = rng.choice(left) if interleave == "random" else left[0]
                chunk = parts[p][pos[p] : pos[p] + rng.randint(50, 6000)]
                pos[p] += len(chunk)
                batch += chunk
            yield batch

    settings = Settings()
    db = f"restart_{interleave}_{seed}"
    migrate(chdb_client, db, settings.retention_days)
    sink = ClickHouseSink(chdb_client, db)
    total = sum(map(len, parts))
    got: list[Key] = []
    pos = [0] * n_parts
    pipeline = Pipeline.from_settings(settings)
    pipeline.expect_partitions((topic, p) for p in range(n_parts))
    for batch in batches(pos):  # `pos` moves as batches are taken
        result = pipeline.run(batch)
        sink.write(result)
        got += [key(f) for f in result.findings]
        if sum(pos) >= kill_at * total:
            break
    if interleave == "backlog":
        assert pos[2] == pos[3] == 0, "the kill must land before the last partitions are read"
    restarted = Pipeline.from_settings(settings)  # the dead worker's state is gone
    warm_up(restarted, chdb_client, db, 240, 500_000, [(topic, p) for p in range(n_parts)])
    restarted.expect_partitions((topic, p) for p in range(n_parts))
    for batch in batches(pos):
        result = restarted.run(batch)
        sink.write(result)
        got += [key(f) for f in result.findings]
    final = set({k[:3]: k for k in got}.values())
    assert final == expected.final, describe(final, expected.final, expected.at_end)


# A batch is a checkpoint: a step that fails after the detectors ran (side outputs, insert,
# commit) is retried with the same processed result, so no detector counts a batch twice and
# no finding is lost or emitted twice. In process, with the worker's own BatchIngest on the
# real broker and chDB; every third batch fails once, transiently, at the chosen step.
class _CommitFails:
    """The real consumer, except that chosen commits fail before reaching the broker."""

    def __init__(self, consumer, fail) -> None:
        self._consumer, self._fail = consumer, fail

    def commit(self, *args, **kwargs):
        if self._fail():
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "injected: broker unreachable"))
        return self._consumer.commit(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._consumer, name)


@pytest.mark.parametrize("stage", ["none", "unseen", "publish_before", "publish_after", "store_events", "commit"])
def test_failed_batch_steps_give_the_backtest_findings(kafka, tmp_path, chdb_client, dataset, expected, stage) -> None:
    from clickhouse_connect.driver.exceptions import OperationalError

    from llmpulse.processors.runtime.batch_ingest import BatchIngest, RetryLater
    from llmpulse.processors.runtime.worker import ensure_pipeline_topics

    _, lines = dataset
    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
    ensure_pipeline_topics(settings)
    db = f"faults_{stage}"
    migrate(chdb_client, db, settings.retention_days)
    pipeline = Pipeline.from_settings(settings)
    ingest = BatchIngest(settings, ClickHouseSink(chdb_client, db), pipeline)
    calls = Counter()
    handed: dict[int, list[int]] = {}  # partition -> offsets the detectors got, in order
    real_run = pipeline.run

    def run(msgs, *args):
        for m in msgs:
            handed.setdefault(m.partition, []).append(m.offset)
        return real_run(msgs, *args)
    pipeline.run = run

    def fail(what: str) -> bool:  # the first try of every third batch's step fails
        calls[what] += 1
        return calls[what] % 3 == 1

    sink, real_publish = ingest.sink, ingest._publish
    if stage == "unseen":
        real_unseen = sink.unseen
        sink.unseen = lambda raw: _raise(OperationalError("injected: ClickHouse unreachable")) if fail("u") else real_unseen(raw)
    elif stage.startswith("publish"):
        def flaky_publish(cp):
            if stage == "publish_after":  # delivered, then the acknowledgement is lost
                real_publish(cp)
            if cp.side_outputs and fail("p"):
                raise OperationalError("injected: side outputs not acknowledged")
            real_publish(cp)
        ingest._publish = flaky_publish
    elif stage == "store_events":  # dead letters and findings inserted, the events insert fails
        client = sink.client
        real_insert = client.insert

        def insert(table, *args, **kwargs):
            if table.endswith(".events") and fail("i"):
                raise OperationalError("injected: connection reset")
            return real_insert(table, *args, **kwargs)
        sink.client = _Proxy(client, insert=insert)
    elif stage == "commit":
        ingest.consumer = _CommitFails(ingest.consumer, lambda: fail("c"))
    try:
        publish(settings, lines)
        deadline = time.monotonic() + 240
        while ingest.stats["inserted"] < len(lines) and time.monotonic() < deadline:
            try:
                ingest.step()
            except RetryLater:
                pass
    finally:
        ingest._publish = real_publish
        ingest.close()
    assert ingest.stats["inserted"] == len(lines) and (ingest.stats["retries"] > 0) == (stage != "none"), ingest.stats
    for p, offsets in handed.items():  # each message once, in partition order
        assert offsets == list(range(len(offsets))), (p, [o for i, o in enumerate(offsets) if o != i][:5])
    assert chdb_client.query(f"SELECT count(), uniqExact(event_id) FROM {db}.events").result_rows == [(len(lines),) * 2]
    rows = chdb_client.query(f"SELECT finding_id, kind, status, toUnixTimestamp64Milli(event_ts) FROM {db}.findings FINAL")
    stream = {(r[0], r[1], r[2], int(r[3])) for r in rows.result_rows}
    assert stream == expected.final, describe(stream, expected.final, expected.at_end)
    on_topic = topic_findings(settings, len(expected.emitted))
    assert Counter(on_topic) == Counter((k[0], k[2]) for k in expected.emitted)  # each exactly once
    print(f"{stage}: {ingest.stats['retries']} injected failures, {ingest.stats['batches']} batches")


def _raise(exc: Exception):
    raise exc


class _Proxy:
    def __init__(self, target, **overrides) -> None:
        self._target, self._overrides = target, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._target, name)
