"""Several workers (issue 18, README "Scaling out"): two processing workers and the one writer
over a slice of the detection benchmark give exactly the backtest's findings, each on the
findings topic exactly once, and every event once in the embedded store; also when one
processing worker is SIGKILLed mid-run and the other takes its partitions over.

The slice and the comparison are test_detection_stream.py's: (finding_id, kind, status,
event_ts) of `findings FINAL` against the backtest's last emission per id, end-of-file
findings left out (a stream has no end of input; a tail past the data closes the windows).
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.detection.generate import Params, generate
from llmpulse.commands.backtest import backtest
from llmpulse.processors.pipeline import Pipeline
from llmpulse.query import worker_url
from llmpulse.schemas.findings import Finding
from llmpulse.settings import Settings
from llmpulse.testing import wait_for
from llmpulse.testing_scaled import Cluster
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llmpulse.schemas.findings import decode_finding
from tests.integration.test_detection_stream import Expected, describe, key, publish, stored

pytestmark = pytest.mark.integration

# A smaller slice than test_detection_stream's (same generator): every loop kind, anomalies.
DATASET = dict(seed=17, hours=1.5, warmup_minutes=0, quiet_hours=0.0, incidents_per_kind=1, changes_bad=1,
               changes_benign=0, loops_per_kind=2, volume=0.25, incident_min_minutes=5, incident_max_minutes=8)
WARMUP = {"LLMPULSE_WARMUP_MINUTES": "240"}  # a takeover replays the whole slice


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[bytes]]:
    out = tmp_path_factory.mktemp("scaled")
    start = datetime.fromtimestamp((int(time.time()) // 3600 - 3) * 3600, tz=timezone.utc).isoformat()
    generate(Params(start=start, **DATASET), out)
    path = out / "events.jsonl"
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    last = max(orjson.loads(line)["ts"] for line in lines[-5000:])
    lines += [orjson.dumps({"event_id": f"tail-{i}", "event_type": "prompt", "ts": last + 15 * 60_000,
                            "trace_id": f"tail-{i}", "workflow": "_tail", "tenant": "_tail"}) for i in range(64)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


@pytest.fixture(scope="module")
def expected(dataset) -> Expected:
    path, lines = dataset
    pipeline = Pipeline.from_settings(Settings(), replay=True)
    at_end: list[Finding] = []
    flush = pipeline.flush
    pipeline.flush = lambda: (lambda got: (at_end.extend(got), got)[1])(flush())  # type: ignore[method-assign]
    findings, counts = backtest(pipeline, path)
    assert counts["events"] == len(lines) and counts["dead_letters"] == 0
    exp = Expected([key(f) for f in findings[: len(findings) - len(at_end)]], {key(f) for f in at_end})
    kinds = {k[1] for k in exp.emitted}
    assert {"tool_loop", "cycle_loop"} <= kinds, kinds
    assert kinds & {"error_rate_spike", "latency_regression", "traffic_drop", "regression_after_change"}, kinds
    return exp


def topic_findings(settings: Settings, want: int, timeout: float = 30) -> list[tuple[str, str]]:
    """The findings topic as a reader that reads committed records sees it (an aborted batch's
    findings are on the log, marked aborted)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(settings.findings_topic, 0, OFFSET_BEGINNING)])
    got: list[tuple[str, str]] = []
    deadline, idle_until = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        msgs = [m for m in consumer.consume(5000, timeout=0.5) if not m.error()]
        got += [(f.finding_id, f.status) for f in map(decode_finding, (m.value() for m in msgs))]
        if len(got) >= want and not msgs:
            idle_until = idle_until or time.monotonic() + 1.0
            if time.monotonic() > idle_until:
                break
    consumer.close()
    return got


def scrape(member) -> dict[tuple[str, str], float]:
    """A member's /metrics: (sample name, stage label) -> value."""
    with urllib.request.urlopen(worker_url(member.settings, "/metrics"), timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, s.labels.get("stage", "")): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples}


def check(cluster: Cluster, lines: list[bytes], expected: Expected) -> None:
    writer = cluster.writer
    try:  # the scope stage's last findings trail the rows by a batch or two
        wait_for(lambda: stored(writer) == expected.final, 20, interval=0.5, what="the findings")
    except Exception:
        pass  # compared below, with the difference
    # Every event once: counted without FINAL, and no event_id twice.
    assert writer.scalar("SELECT count() FROM {db}.events") == len(lines)
    assert writer.scalar("SELECT uniqExact(event_id) FROM {db}.events") == len(lines)
    stream = stored(writer)
    assert stream == expected.final, describe(stream, expected.final, expected.at_end)


def test_two_workers_one_sigkilled_mid_run_give_the_backtest_findings_once(kafka, tmp_path, dataset,
                                                                         expected) -> None:
    """(Without the kill the same holds a fortiori: the kill adds a takeover, a replay and an
    aborted transaction to the same run.)"""
    _, lines = dataset
    cluster = Cluster(kafka.bootstrap, tmp_path, 2, extra_env=WARMUP).start()
    try:
        # Both members hold partitions of both stages (4 events partitions, 4 scope partitions).
        wait_for(cluster.shared, 30, what="partitions shared")
        publish(cluster.base, lines)
        victim, survivor = cluster.workers
        # Killed once it has committed batches of its own (so the takeover has input to rebuild).
        wait_for(lambda: cluster.writer.stats().get("inserted", 0) >= len(lines) * 0.3
                 and victim.stats().get("trace", {}).get("batches", 0) > 0, 60, interval=0.05,
                 what="30% stored, the victim's batches among them")
        victim.kill()
        killed_at = time.monotonic()
        assert cluster.writer.stats()["inserted"] < len(lines), "the kill must land mid-run"
        wait_for(lambda: (survivor.stats().get("trace", {}).get("partitions"),
                          survivor.stats().get("scope", {}).get("partitions")) == (4, 4), 30, what="takeover")
        print(f"partitions taken over {time.monotonic() - killed_at:.1f}s after the kill")
        wait_for(lambda: cluster.stored() >= len(lines), 120, interval=0.5, what="all events stored")
        check(cluster, lines, expected)
        # /metrics of the roles: the survivor holds everything and rebuilt state; the writer stored it all.
        survivor_m, writer_m = scrape(survivor), scrape(cluster.writer)
        assert survivor_m[("llmpulse_stage_partitions", "trace")] == survivor_m[("llmpulse_stage_partitions", "scope")] == 4
        # The takeover rebuilt the victim's partitions from their committed input (how many
        # rebuilds the survivor ran depends on how the group's rebalances fell: at least one).
        assert survivor_m[("llmpulse_stage_replays_total", "trace")] >= 1
        assert survivor_m[("llmpulse_stage_replayed_messages_total", "trace")] > 0
        assert survivor_m[("llmpulse_stage_messages_consumed_total", "trace")] > 0
        assert writer_m[("llmpulse_stage_event_rows_total", "writer")] == len(lines)
    finally:
        cluster.stop()
    on_topic = topic_findings(cluster.base, len(expected.emitted))
    # Transactions: the killed worker's open batch was aborted, its successor emitted it once.
    assert Counter(on_topic) == Counter((k[0], k[2]) for k in expected.emitted)


def test_the_writer_sigkilled_mid_run_and_restarted_stores_every_event_once(kafka, tmp_path, dataset,
                                                                            expected) -> None:
    """The writer commits its `llm.rows` offsets after the rows: killed between an insert and
    its commit, the restarted writer reads those records again and skips the rows already
    stored (by source offset); processing goes on meanwhile, its rows waiting on the topic."""
    _, lines = dataset
    cluster = Cluster(kafka.bootstrap, tmp_path, 1, extra_env=WARMUP).start()
    try:
        wait_for(cluster.shared, 30, what="partitions held")
        publish(cluster.base, lines)
        wait_for(lambda: cluster.writer.stats().get("inserted", 0) >= len(lines) * 0.3, 60, interval=0.05,
                 what="30% stored")
        before = cluster.writer.stats()["inserted"]
        cluster.writer.kill()
        assert before < len(lines), "the kill must land mid-run"
        time.sleep(2)  # processing goes on: rows wait on llm.rows
        cluster.writer.start()
        wait_for(lambda: cluster.stored() >= len(lines), 120, interval=0.5, what="all events stored")
        check(cluster, lines, expected)
    finally:
        cluster.stop()
    on_topic = topic_findings(cluster.base, len(expected.emitted))
    assert Counter(on_topic) == Counter((k[0], k[2]) for k in expected.emitted)


def test_a_worker_added_mid_run_takes_its_share_and_the_findings_stay_the_backtests(kafka, tmp_path, dataset,
                                                                                    expected) -> None:
    """Scaling out: a second processing worker joins after 30 % is stored; the rebalance moves
    partitions whose traces, loops and baselines go on in the second half (each stage rebuilds
    the state of what it holds from the committed input), and nothing is lost, doubled or paged
    twice."""
    _, lines = dataset
    cluster = Cluster(kafka.bootstrap, tmp_path, 1, extra_env=WARMUP).start()
    try:
        wait_for(cluster.shared, 30, what="partitions held")
        half = len(lines) // 2
        publish(cluster.base, lines[:half])
        wait_for(lambda: cluster.writer.stats().get("inserted", 0) >= len(lines) * 0.3, 60, interval=0.05,
                 what="30% stored")
        joiner = cluster._member("process", "w1")
        cluster.workers.append(joiner)
        joiner.start()  # while the first half may still flow
        wait_for(cluster.shared, 60, what="the new worker holds partitions")
        publish(cluster.base, lines[half:])  # traces, loops and baselines span both halves
        wait_for(lambda: cluster.stored() >= len(lines), 120, interval=0.5, what="all events stored")
        check(cluster, lines, expected)
        trace = joiner.stats()["trace"]
        assert trace["consumed"] > 0 and trace["replays"] >= 1, trace  # its share, its partitions' state rebuilt
    finally:
        cluster.stop()
    on_topic = topic_findings(cluster.base, len(expected.emitted))
    assert Counter(on_topic) == Counter((k[0], k[2]) for k in expected.emitted)
