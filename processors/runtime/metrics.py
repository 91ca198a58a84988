"""The worker's `GET /metrics` (Prometheus text format) and its readiness checks.

Counters the ingest loop already keeps (BatchIngest.stats, the notifier's, the detectors'
`stats()`) are read at scrape time by a collector, so the hot path counts nothing twice.
What those counters cannot say is observed per batch (`batch_done`, on the ClickHouse
thread): dead letters per reason class, findings per kind and severity, the batch's
duration from consume to commit, failed steps per stage. Labels have bounded values only:
a dead letter's reason is reduced to its class (`reason_class`), never the text.

Consumer lag per partition comes from the ingest consumer's own cached watermarks
(`refresh_assignment`, no broker call), refreshed on the thread that owns the consumer.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Iterable

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from llmpulse.processors.runtime.worker import WorkerRuntime

# The classic text format, which every Prometheus reads (generate_latest writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Dead-letter reasons (processors/validate.py, the sink's engine errors) -> a class, in order.
_REASON_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(rx)) for name, rx in (
    ("malformed_json", r"^malformed JSON|^expected a JSON object"),
    ("event_time", r"^ts .* (ahead of the clock|older than retention)"),
    ("size_limit", r"event size|max_string_bytes|max_event_bytes|nesting depth|too deep|max_\w+_(bytes|items)"),
    ("integer_range", r"out of range"),
    ("unknown_event_type", r"^event_type must be|^Invalid value .* at `\$\.event_type`$"),
    ("no_value", r"^no message value"),
    ("store_rejected", r"Code: \d+|DB::Exception|rejected by the store"),
    ("schema", r"^Expected|^Object missing|^Invalid|required field|must be|\$\."),
))


def reason_class(reason: str) -> str:
    """The bounded label of a dead letter's reason: the first class whose pattern matches."""
    for name, rx in _REASON_CLASSES:
        if rx.search(reason):
            return name
    return "other"


class WorkerMetrics:
    """The worker's registry. `render()` answers `/metrics`."""

    def __init__(self, runtime: "WorkerRuntime") -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batch_seconds = Histogram(
            "llmpulse_batch_duration_seconds", "One batch from consume to committed offsets, retries included",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self.dead_letters = Counter("llmpulse_events_dead_lettered", "Messages sent to the DLQ, by reason class",
                                    ["reason_class"], registry=r)
        self.findings = Counter("llmpulse_findings", "Findings emitted, by kind, severity and status",
                                ["kind", "severity", "status"], registry=r)
        self.actions = Counter("llmpulse_control_actions", "Kill-switch records the policies wrote (new, "
                               "lifted, expired), by kind, state and mode", ["kind", "state", "mode"], registry=r)
        self.step_failures = Counter("llmpulse_batch_step_failures", "Failed batch steps (then retried), by "
                                     "stage (store = ClickHouse insert, publish = DLQ/findings) and class",
                                     ["stage", "error_class"], registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU, open fds
        r.register(_RuntimeCollector(runtime))
        self.lag: dict[tuple[str, int], int] = {}
        self.assigned = 0

    def batch_done(self, checkpoint: Any) -> None:
        """A batch is durable (BatchIngest, on the ClickHouse thread)."""
        result = checkpoint.result
        self.batch_seconds.observe(time.monotonic() - checkpoint.started)
        if result is None:
            return
        for dl in result.dead_letters:
            self.dead_letters.labels(reason_class(dl.reason)).inc()
        for f in result.findings:
            self.findings.labels(f.kind, f.severity, f.status).inc()
        for a in result.actions:
            self.actions.labels(a.kind, a.state, a.mode).inc()

    def step_failed(self, stage: str, error_class: str) -> None:
        self.step_failures.labels(stage, error_class).inc()

    def refresh_assignment(self, consumer: Any) -> None:
        """Lag per assigned partition: cached high watermark minus the consumer's position
        (before anything is consumed, minus the low watermark). On the consumer's thread."""
        lag: dict[tuple[str, int], int] = {}
        try:
            assignment = consumer.assignment()
            for tp in consumer.position(assignment) if assignment else []:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:  # not fetched yet: unknown, not zero
                    continue
                lag[(tp.topic, tp.partition)] = max(0, high - max(tp.offset, low))
        except KafkaException:  # no cached state to read: keep the last values
            return
        self.lag, self.assigned = lag, len(assignment)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RuntimeCollector:
    """Scrape-time view of the counters the worker keeps anyway."""

    def __init__(self, runtime: "WorkerRuntime") -> None:
        self.runtime = runtime

    def describe(self) -> Iterable[Any]:
        return []  # values vary at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Any]:
        rt = self.runtime
        st = rt.ingest.stats if rt.ingest is not None else {}

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=st.get(key, 0))

        yield counter("llmpulse_events_consumed", "Messages read from the events topic", "consumed")
        yield counter("llmpulse_events_inserted", "Event rows stored in ClickHouse", "inserted")
        dup = CounterMetricFamily("llmpulse_events_duplicate", "Messages not stored again", labels=["kind"])
        dup.add_metric(["redelivered_offset"], st.get("skipped_duplicates", 0))
        dup.add_metric(["stored_event_id"], st.get("duplicate_events", 0))
        yield dup
        yield counter("llmpulse_batches", "Batches made durable", "batches")
        yield counter("llmpulse_batch_retries", "Batch steps retried after a transient failure", "retries")
        yield counter("llmpulse_insert_rejected_rows", "Rows ClickHouse refused for good (sent to the DLQ)",
                      "rejected_by_store")
        yield counter("llmpulse_detector_errors", "Exceptions raised by a detector on an event", "detector_errors")
        yield counter("llmpulse_dead_letters_truncated", "DLQ copies cut to dlq_max_bytes",
                      "truncated_dead_letters")

        yield _paging(rt.notifier)

        state = GaugeMetricFamily("llmpulse_detector_state", "Size of a detector's state (entries) and its "
                                  "counters, from the detector's stats()", labels=["detector", "item"])
        for d in rt.pipeline.detectors:
            for item, value in d.stats().items():
                state.add_metric([type(d).__name__, item], value)
        if rt.ingest is not None and rt.ingest.deduper is not None:
            described = rt.ingest.deduper.describe()
            for item in ("ids", "bloom_ids", "bloom_bytes", "generations"):
                if item in described:
                    state.add_metric(["EventIdFilter", item], described[item])
        yield state

        metrics = rt.metrics
        lag = GaugeMetricFamily("llmpulse_consumer_lag", "Messages behind the partition's high watermark "
                                "(the consumer's cached watermarks)", labels=["topic", "partition"])
        for (topic, partition), value in sorted(metrics.lag.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        yield GaugeMetricFamily("llmpulse_partitions_assigned", "Partitions of the events topic this worker owns",
                                value=metrics.assigned)

        health = rt.ingest.health() if rt.ingest is not None else {"waiting_seconds": 0.0}
        yield GaugeMetricFamily("llmpulse_batch_waiting_seconds", "How long the current batch has waited for "
                                "its outputs (0: none waits)", value=health["waiting_seconds"])
        yield _ready(rt.readiness())


def _paging(notifier: Any) -> CounterMetricFamily:
    paging = CounterMetricFamily("llmpulse_paging_notifications", "Alerts posted to Alertmanager", labels=["result"])
    paging.add_metric(["sent"], notifier.stats.sent if notifier else 0)
    paging.add_metric(["failed"], notifier.stats.failed if notifier else 0)
    return paging


def _ready(readiness: dict) -> GaugeMetricFamily:
    checks = GaugeMetricFamily("llmpulse_ready", "1 when a readiness check passes (/readyz)", labels=["check"])
    for name, check in readiness["checks"].items():
        checks.add_metric([name], 1 if check["ok"] else 0)
    return checks


# A scaled role's stage counters (processors/runtime/scaled.py `stats`) -> metric, by stage.
_STAGE_COUNTERS: dict[str, tuple[str, str]] = {
    "consumed": ("llmpulse_stage_messages_consumed", "Messages a stage read (trace: the events topic, scope: "
                 "llm.scope)"),
    "records": ("llmpulse_stage_messages_consumed", "Records the writer read from llm.rows"),
    "batches": ("llmpulse_stage_batches", "Batches committed (a Kafka transaction; the writer: rows, then offsets)"),
    "aborted": ("llmpulse_stage_batches_aborted", "Batches aborted, read again after the state was rebuilt"),
    "retries": ("llmpulse_stage_batch_retries", "Writer batches retried after a failed insert or commit"),
    "replays": ("llmpulse_stage_replays", "State rebuilds from the committed input (rebalances, aborts)"),
    "replayed": ("llmpulse_stage_replayed_messages", "Committed messages read again to rebuild state"),
    "published": ("llmpulse_stage_records_published", "Records a stage's transactions committed"),
    "findings": ("llmpulse_stage_findings", "Findings a stage emitted"),
    "actions": ("llmpulse_stage_control_actions", "Kill-switch records the scope stage's policies wrote"),
    "inserted": ("llmpulse_stage_event_rows", "Event rows: sent to the writer (trace), stored (writer)"),
    "dead_letters": ("llmpulse_stage_dead_letters", "Messages the trace stage sent to the DLQ"),
    "unreadable": ("llmpulse_stage_unreadable_records", "llm.scope / llm.rows records not ours (dead letters)"),
    "rejected_by_store": ("llmpulse_insert_rejected_rows", "Rows ClickHouse refused for good (kept as dead letters)"),
    "budget_periods_restored": ("llmpulse_budget_periods_restored", "Budget periods restored from llm.scope.state "
                                "after a replay"),
    "budget_state_stale": ("llmpulse_budget_state_stale", "Budget state records not for the committed offset "
                           "(spend beyond the replay window lost)"),
}


class ScaledMetrics:
    """`/metrics` of a scaled role (processors/runtime/scaled_app.py): the stages' own counters,
    read at scrape time, with the stage as a label."""

    def __init__(self, runtime: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(_ScaledCollector(runtime))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ScaledCollector:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        rt = self.runtime
        families: dict[str, CounterMetricFamily] = {}
        partitions = GaugeMetricFamily("llmpulse_stage_partitions", "Input partitions a stage holds (0: a standby)",
                                       labels=["stage"])
        watermark = GaugeMetricFamily("llmpulse_stage_watermark_seconds", "A stage's event-time watermark "
                                      "(the slowest partition it holds)", labels=["stage"])
        for name, stage in sorted(rt.stages.items()):
            for key, value in sorted(dict(stage.stats).items()):  # a copy: the stage thread adds keys
                if key in _STAGE_COUNTERS:
                    metric, doc = _STAGE_COUNTERS[key]
                    family = families.get(metric)
                    if family is None:
                        family = families[metric] = CounterMetricFamily(metric, doc, labels=["stage"])
                    family.add_metric([name], value)
            described = stage.describe()
            if "partitions" in described:
                partitions.add_metric([name], described["partitions"])
            if described.get("watermark_ms"):
                watermark.add_metric([name], described["watermark_ms"] / 1000)
        yield from families.values()
        yield partitions
        yield watermark
        yield _paging(rt.notifier)
        yield _ready(rt.readiness())
