"""Faults on purpose, against the real broker and a real worker (bench/faults.py builds them;
bench/bench_faults.py prints the same scenarios as a table).

- Poison mixed into valid traffic: every valid event lands, every poison message lands or
  is in the DLQ with a reason naming what was wrong, and the worker stays ready.
- A duplicate event_id re-sent with a new ts after 200,000 other events is dropped: one
  row, one count in the budget (which would page at 100 % if it counted twice).
- A batch whose insert keeps failing makes readiness say stalled, with the reason, and
  recovers by itself when the store is back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.faults import poison_messages, produce, run_duplicate_after, run_poison, valid_traffic
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for

pytestmark = pytest.mark.integration


def test_poison_never_stops_the_stream(kafka, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
    worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env={"LLMPULSE_DLQ_MAX_BYTES": "20000"}).start()
    try:
        out, poison, valid_ids = run_poison(worker)
        in_store = {r[0] for r in worker.query("SELECT event_id FROM {db}.events")}
        st = worker.stats()
        assert st["ready"] and not st["stalled"], st
    finally:
        worker.stop()
    assert set(valid_ids) <= in_store, f"{len(set(valid_ids) - in_store)} valid events missing"
    assert out.landed + out.dead_lettered == out.sent, out  # nothing lost, nothing twice
    reasons = " | ".join(out.reasons.values())
    for cls in ("nesting", "integer range", "future ts", "too old", "malformed", "oversize dead letter"):
        ids = {eid for eid, _ in poison[cls]}
        assert not ids & in_store, (cls, ids & in_store)
    months = {eid: int(eid.rsplit("-", 1)[1]) for eid, _ in poison["101 months"]}
    assert {e for e, m in months.items() if m * 31 < 85} <= in_store  # within the retention: stored
    assert not {e for e, m in months.items() if m * 31 > 95} & in_store  # older: dead letters
    for words in ("nesting depth", "out of range", "ahead of the clock", "older than retention", "malformed JSON"):
        assert words in reasons, (words, reasons[:2000])
    cut = [h for h in out.headers.values() if h.get("llmpulse.truncated") == b"true"]
    assert cut and all(int(h["llmpulse.original.size"]) > 20_000 for h in cut), "the oversize copy is cut and marked"
    assert "AKIA" + "Z" * 16 not in str(out.headers)  # the reason quotes nothing secret
    print(f"poison: sent {out.sent}, landed {out.landed}, dead letters {out.dead_lettered}, {out.seconds:.1f}s")


def test_duplicate_after_200k_events_counts_once(kafka, tmp_path: Path) -> None:
    config = tmp_path / "llmpulse.yaml"
    # Counted twice, 0.6 + 0.6 would cross 100 % of this budget and page critical.
    config.write_text("budgets:\n  - scope: {tenant: dup}\n    period: day\n    limit_usd: 1.0\n")
    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
    worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env={"LLMPULSE_CONFIG_FILE": str(config)}).start()
    try:
        out = run_duplicate_after(worker, 200_000)
        rows = worker.query("SELECT count() FROM {db}.events FINAL WHERE event_id = 'dup-target'")
        budget = worker.query("SELECT kind, severity, value FROM {db}.findings FINAL WHERE kind LIKE 'budget%'")
    finally:
        worker.stop()
    assert rows == [[1]] and out.duplicated == 1, (rows, out)
    assert out.landed == out.sent - 1, out
    assert not [b for b in budget if b[2] >= 1.0], budget  # 0.6 of 1.0 spent: no 100 % page
    print(f"duplicate after 200k: sent {out.sent}, landed {out.landed}, duplicated {out.duplicated}, "
          f"{out.seconds:.1f}s")


def test_a_stalled_batch_turns_readiness_false_and_recovers(kafka, tmp_path: Path, chdb_client) -> None:
    from clickhouse_connect.driver.exceptions import OperationalError

    from llmpulse.processors.pipeline import Pipeline
    from llmpulse.processors.runtime.batch_ingest import BatchIngest, RetryLater
    from llmpulse.processors.runtime.retry import RetryConfig
    from llmpulse.processors.runtime.sink import ClickHouseSink
    from llmpulse.processors.runtime.worker import ensure_pipeline_topics
    from llmpulse.schemas.store import migrate

    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2,
                                 retry=RetryConfig(stall_seconds=1.0, initial_seconds=0.05, max_seconds=0.2))
    ensure_pipeline_topics(settings)
    migrate(chdb_client, "stall", settings.retention_days)
    sink = ClickHouseSink(chdb_client, "stall")
    down = {"until": time.monotonic() + 3.0}
    real_insert = chdb_client.insert

    class Flaky:
        def __getattr__(self, name):
            return getattr(chdb_client, name)

        def insert(self, *args, **kwargs):
            if time.monotonic() < down["until"]:
                raise OperationalError("injected: ClickHouse unreachable")
            return real_insert(*args, **kwargs)

    sink.client = Flaky()
    ingest = BatchIngest(settings, sink, Pipeline.from_settings(settings))
    items = valid_traffic(50)
    produce(settings, items)
    stalled_seen: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while ingest.stats["inserted"] < len(items) and time.monotonic() < deadline:
            try:
                ingest.step()
            except RetryLater as wait:
                h = ingest.health()
                if h["stalled"]:
                    stalled_seen.append(h)
                time.sleep(wait.delay)
        healthy = ingest.health()
    finally:
        ingest.close()
    assert stalled_seen, "readiness never turned false during a 3 s outage with stall_seconds=1"
    assert stalled_seen[-1]["waiting_stage"] == "store" and "ClickHouse unreachable" in stalled_seen[-1]["last_error"]
    assert ingest.stats["inserted"] == len(items) and not healthy["stalled"], (ingest.stats, healthy)
    got = chdb_client.query("SELECT count(), uniqExact(event_id) FROM stall.events").result_rows
    assert got == [(len(items), len(items))]
