"""The hot path: Kafka batches -> pipeline -> DLQ/findings -> ClickHouse -> commit.

Why not a faust agent for this topic: faust hands messages one at a time through
its stream machinery; measured here, an agent that does nothing but
`take_events(10_000)` peaks at ~6.6k events/s, below the 10k/s the worker must
sustain with validation and inserts on top. librdkafka's `consume(num_messages)`
returns whole batches from C, so the per-event cost is our own work only.

A batch is a checkpoint (`Checkpoint`): consumed once, processed by the detectors once,
then its side outputs (dead letters, findings, control actions), rows and offsets are made durable in that
order. A step that fails transiently is retried from where it stopped, with the same
processed result, so no detector ever sees a batch twice (a rewound batch would be
counted again by windows and budgets). While a batch waits, its partitions are paused:
offsets stay where they were, and polling keeps the consumer in its group. Rows the store
refuses for good go to the DLQ with the engine's reason and the batch goes on. If the
process dies meanwhile, the restart rebuilds detector state from the stored rows (warm-up)
and re-reads the uncommitted tail; the sink skips offsets already stored.

The events insert of batch N runs on a thread of its own while batch N+1 is consumed,
validated and processed (chDB releases the GIL for most of an insert: ~60% of its wall time
measured, bench_worker). The order of each checkpoint is unchanged: N+1's rows are written
only after N's insert returned and N's offsets were committed, and offsets are committed on
this thread, after their rows. So at most two batches are read but not committed: a worker
killed meanwhile re-reads both, the sink skips the offsets that were stored, and the side
outputs of N+1 (published before N's insert ended) go out again with the same ids, as a
crash between publish and store always did. While an insert is in flight nothing else uses
the ClickHouse client: a step that must query (a partition not seen yet, a duplicate
lookup, the id filter's refresh, a rebuild, `/query/`) waits for it first (`settle`).
A retried insert runs on this thread, so an outage backs off as one.
Blocking; the worker calls `step()` on its single ClickHouse thread.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from llmpulse.ingest.kafka_log import BrokerLog
from llmpulse.processors.dedup import Deduper
from llmpulse.processors.pipeline import BatchResult, DeadLetter, Pipeline, RawMessage, fresh_mask
from llmpulse.processors.redaction import marker_of
from llmpulse.processors.runtime.dedup_store import refresh_bloom
from llmpulse.processors.runtime.retry import Backoff, classify
from llmpulse.processors.runtime.sink import ClickHouseSink
from llmpulse.schemas.controls import encode_action, scope_key
from llmpulse.schemas.findings import encode_finding
from llmpulse.schemas.rows import row_source
from llmpulse.settings import Settings

log = logging.getLogger("llmpulse.ingest")

TRUNCATED_MARKER = b"...[llmpulse: truncated]"


class RetryLater(Exception):
    """A batch step failed transiently; call `step()` again after `delay` seconds."""

    def __init__(self, stage: str, cause: BaseException, delay: float) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage, self.cause, self.delay = stage, cause, delay


@dataclass
class Checkpoint:
    """One consumed batch on its way to durable. `stage` is the next step to run."""

    msgs: list[Message]
    raw: list[RawMessage]
    # unseen -> dedupe -> process -> publish -> store -> writing (the insert, on its thread)
    # [-> store_rejected] -> commit -> done
    stage: str = "unseen"
    fresh: list[RawMessage] = field(default_factory=list)  # not re-deliveries of stored offsets
    validated: list = field(default_factory=list)  # validation of `fresh`
    keep: list[bool] | None = None  # per fresh message: False for a duplicate event_id
    result: BatchResult | None = None
    delivered: set[int] = field(default_factory=set)  # side outputs already acknowledged
    side_outputs: list[tuple] = field(default_factory=list)  # (topic, value, key, headers)
    rejected: int = 0  # rows the store refused, now dead letters
    late_letters: list[DeadLetter] = field(default_factory=list)  # their dead letters
    started: float = field(default_factory=time.monotonic)


class BatchIngest:
    def __init__(self, settings: Settings, sink: ClickHouseSink, pipeline: Pipeline,
                 deduper: Deduper | None = None) -> None:
        s = settings
        self.settings = s
        # A broker outage is one line every few minutes, not one per reconnect attempt.
        kafka_log = BrokerLog(log, s.kafka_bootstrap, "the ingest waits, offsets uncommitted")
        self.sink = sink
        self.pipeline = pipeline
        self.deduper = deduper  # event ids already stored (processors/dedup.py); None: no check
        if deduper is not None:  # its exact lookup queries ClickHouse: not beside an insert
            lookup = deduper.lookup
            deduper.lookup = lambda ids: (self.settle(), lookup(ids))[1]
        self._refresh_due, self._refreshed = False, time.monotonic()
        self.consumer = Consumer({
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"{s.worker_id}.ingest",  # the faust app itself uses group `worker_id`
            "enable.auto.commit": False,  # we commit after ClickHouse has the rows
            "auto.offset.reset": "earliest",
            # Prefetch: a few batches ahead is enough (the worker takes 10k-event batches);
            # more only costs RSS (measured: ~200 MB more at 256 MB, bench_loop_memory).
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
            "queued.max.messages.kbytes": 32 * 1024,
            # A killed worker's partitions move to its replacement within ~10 s, not 45 s.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            "logger": kafka_log,
        })
        self.consumer.subscribe([s.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        self.producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "enable.idempotence": True,
                                  "compression.type": "lz4", "linger.ms": 5, "logger": kafka_log})
        self.backoff = Backoff(s.retry)
        self.pending: Checkpoint | None = None  # the batch this thread advances (or retries)
        self.parked: Checkpoint | None = None  # the next one, while an earlier write is retried
        self.writing: tuple[Checkpoint, Future] | None = None  # the events insert in flight
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-insert")
        # Called when no insert is in flight, right before the next one starts: the worker
        # freezes the heap there, so no insert's (cyclic) context is frozen while alive.
        self.between_writes: Callable[[], None] | None = None
        self.paused: list[TopicPartition] = []
        # Detector state no longer matches the store (a rebalance took a batch they had
        # counted, or processing failed half way): WorkerRuntime rebuilds it before the next step.
        self.pipeline_dirty = False
        # A rebalance has answered, maybe with no partitions: a standby member (more workers
        # than partitions) is ready to take over, not starting (WorkerRuntime.readiness).
        self.joined = False
        self.last_commit = time.monotonic()
        self.last_error = ""
        self.metrics: Any = None  # WorkerMetrics (processors/runtime/metrics.py): per-batch observations
        self.stats: dict[str, Any] = {"consumed": 0, "inserted": 0, "dead_letters": 0, "findings": 0, "actions": 0,
                                      "skipped_duplicates": 0, "duplicate_events": 0, "batches": 0, "retries": 0,
                                      "rejected_by_store": 0, "truncated_dead_letters": 0,
                                      "detector_errors": 0}

    # -- group membership ---------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        self.pipeline.expect_partitions((p.topic, p.partition) for p in partitions)
        self._refresh_due = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called inside consume(), between steps. Another worker may write these partitions
        # next, so forget what we knew of them; a batch still waiting for them is dropped
        # (its offsets were not committed: the new owner reads it) and the detectors, which
        # counted it, must be rebuilt from the store (WorkerRuntime does). The insert in
        # flight lands and its offsets are committed first (these partitions are still ours).
        self.settle_quietly()
        self.sink.forget_assignments()
        if self.pending is not None or self.parked is not None:
            self.pending = self.parked = None
            self.pipeline_dirty = True
        self.paused = []

    # -- the checkpoint -------------------------------------------------------------------
    def step(self) -> int:
        """Advance the waiting batch, or consume and process a new one up to its insert (which
        runs on while the next step works). Returns the messages handled (0: nothing new;
        when idle, the insert in flight is awaited and its batch's count returned). Raises
        RetryLater when a step must be tried again."""
        if self.pending is None and self.parked is not None:  # its turn, after the retried one
            self.pending, self.parked = self.parked, None
            cp = self.pending
        elif self.pending is None:
            cp = self._consume()
            if cp is None:  # idle: the last batch's insert and commit complete now
                try:
                    return self.settle()
                except Exception as exc:
                    assert self.pending is not None
                    self._wait(self.pending, exc)
            self.pending = cp
        else:
            # Paused, so this returns nothing; it serves the group protocol (heartbeats,
            # max.poll.interval, rebalances). Anything it does return is read again later.
            for m in self.consumer.consume(1, timeout=0):
                if m.error() is None:
                    self.consumer.seek(TopicPartition(m.topic(), m.partition(), m.offset()))
            if self.pending is None:  # revoked meanwhile
                return 0
            cp = self.pending
        try:
            self._advance(cp)
        except Exception as exc:
            assert self.pending is not None
            self._wait(self.pending, exc)  # the batch that failed: maybe an earlier one (settle)
        self.pending = None
        self._resume()
        self.backoff.reset()
        self.last_error = ""
        if cp.stage == "done":
            self._done(cp)
        return len(cp.raw)

    def _done(self, cp: Checkpoint) -> None:
        self.last_commit = time.monotonic()
        self._count(cp)
        if self.metrics is not None:
            self.metrics.batch_done(cp)

    # -- the insert on its own thread -----------------------------------------------------
    def settle(self) -> int:
        """Wait for the insert in flight and finish its checkpoint (dead letters of refused
        rows, the commit). Returns its messages (0: none in flight). On failure that batch
        becomes `pending` again, at the step that failed, ahead of the one being advanced
        (parked), and the error is raised."""
        if self.writing is None:
            return 0
        cp, future = self.writing
        self.writing = None
        try:
            try:
                rejected = future.result()
            except BaseException:
                cp.stage = "store"
                raise
            self._stored(cp, rejected)
            self._advance(cp)
        except BaseException:
            if self.pending is not cp:
                self.parked, self.pending = self.pending, cp
            raise
        self._done(cp)
        return len(cp.raw)

    def _stored(self, cp: Checkpoint, rejected: list) -> None:
        """The events insert returned: rows the store refused for good go to the DLQ next."""
        cp.stage = "commit"
        if rejected:
            cp.late_letters = self._reject(cp, rejected)
            cp.stage = "store_rejected"

    def settle_quietly(self) -> None:
        """`settle` where an error must not escape (a rebalance callback, `/query/`): a failed
        insert waits as `pending` for the next step."""
        try:
            self.settle()
        except Exception as exc:
            log.warning("insert in flight failed, retried at the next step: %s", exc)

    def settled(self) -> bool:
        """No insert in flight and no processed batch waiting for its rows (WorkerRuntime
        rebuilds detector state only then: the store must hold what they had counted)."""
        self.settle_quietly()
        return not any(c is not None and c.stage not in ("unseen", "dedupe", "process")
                       for c in (self.pending, self.parked))

    def _consume(self) -> Checkpoint | None:
        s = self.settings
        msgs = self.consumer.consume(s.batch_max_events, timeout=s.batch_max_seconds)
        raw: list[RawMessage] = []
        marked = bool(s.redaction.trust_upstream)  # headers read only when a marker may be trusted
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume: %s", err)
                continue
            raw.append(RawMessage(m.value() or b"", m.topic(), m.partition(), m.offset(),
                                  marker_of(m.headers()) if marked else None))
        if not raw:
            if self.writing is None:
                self.last_commit = time.monotonic()  # nothing waits: not a stall
            return None
        return Checkpoint(msgs, raw)

    def _advance(self, cp: Checkpoint) -> None:
        if cp.stage == "unseen":
            if self.sink.beyond_stored(cp.raw):
                cp.fresh = cp.raw
            else:  # the sink asks ClickHouse which offsets are stored
                self.settle()
                cp.fresh = self.sink.unseen(cp.raw)
            cp.stage = "dedupe"
        if cp.stage == "dedupe":  # validation, then which event ids are stored already
            cp.validated = self.pipeline.validate_batch(cp.fresh)
            if self.deduper is not None:
                self._refresh_ids()
                cp.keep = fresh_mask(self.deduper, cp.validated)
            cp.stage = "process"
        if cp.stage == "process":
            try:  # pure, never raises for an input's sake
                cp.result = self.pipeline.run(cp.fresh, self._backlogged(), cp.validated, cp.keep)
            except Exception:  # out of memory, a bug: the detectors hold part of the batch
                self.pipeline_dirty = True  # WorkerRuntime rebuilds them from the store first
                raise
            for err in cp.result.errors:
                log.error("detector error: %s", err)
            cp.side_outputs = self._side_outputs(cp.result.dead_letters) + [
                (self.settings.findings_topic, encode_finding(f), f.finding_id.encode(), None)
                for f in cp.result.findings] + [
                # Policies' actions go out in the same checkpoint as the findings that fired
                # them: the compacted controls topic, keyed by scope (the SDK's live view).
                (self.settings.controls_topic, encode_action(a), scope_key(a).encode(), None)
                for a in cp.result.actions]
            cp.stage = "publish"
        assert cp.result is not None
        if cp.stage == "publish":
            self._publish(cp)
            cp.stage = "store"
        if cp.stage == "store":  # after the previous batch's rows and offsets
            self.settle()
            if self.between_writes is not None:
                self.between_writes()
            if not self.backoff.attempts:
                self.writing = (cp, self._writer.submit(self.sink.write, cp.result))
                cp.stage = "writing"
                return
            self._stored(cp, self.sink.write(cp.result))  # a retry: here, so an outage backs off as one
        if cp.stage == "store_rejected":  # their dead letters: published, then stored
            self._publish(cp)
            self.sink.write(BatchResult(dead_letters=cp.late_letters))
            cp.stage = "commit"
        if cp.stage == "commit":
            self.consumer.commit(offsets=_next_offsets(cp.msgs), asynchronous=False)
            cp.stage = "done"

    def _refresh_ids(self) -> None:
        """Ids another worker stored (a partition that changed hands, a duplicate published
        to another partition) join the filter: after an assignment, and every refresh_seconds."""
        assert self.deduper is not None
        now = time.monotonic()
        if self._refresh_due or now - self._refreshed > self.settings.dedup.refresh_seconds:
            self.settle()
            report = refresh_bloom(self.sink.client, self.sink.db, self.deduper)
            self._refresh_due, self._refreshed = False, now
            log.debug("event-id filter refreshed: %d ids in %.2fs", report.ids, report.seconds)

    def _backlogged(self) -> list[tuple[str, int]]:
        """Assigned partitions with messages not yet consumed (librdkafka's cached high
        watermarks, no broker call), or not fetched at all yet (no cached watermark): a
        catch-up fetches partitions one after the other, and the pipeline must not take a
        partition waiting for its fetch as idle."""
        out = []
        try:
            for tp in self.consumer.position(self.consumer.assignment()):
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0 or high > max(tp.offset, low):
                    out.append((tp.topic, tp.partition))
        except KafkaException as exc:  # no cached state yet: the wall clock decides
            log.debug("backlog: %s", exc)
        return out

    def _reject(self, cp: Checkpoint, rejected: list) -> list[DeadLetter]:
        """Rows the store refused for good leave the batch for the DLQ, with the engine's reason."""
        assert cp.result is not None
        keys = {(r.topic, r.partition, r.offset): r.reason for r in rejected}
        by_key = {(m.topic, m.partition, m.offset): m for m in cp.fresh}
        letters = [self.pipeline.dead_letter(by_key[k], reason) for k, reason in keys.items()]
        cp.result.rows = [r for r in cp.result.rows if row_source(r) not in keys]
        cp.result.dead_letters.extend(letters)
        cp.side_outputs.extend(self._side_outputs(letters))
        cp.rejected += len(letters)
        for k, reason in keys.items():
            log.error("message %s rejected by the store, sent to the DLQ: %s", k, reason)
        return letters

    def _wait(self, cp: Checkpoint, exc: Exception) -> None:
        """Keep the batch, pause its partitions, and tell the caller when to try again."""
        kind = classify(exc)
        if kind == "permanent":  # not a data error at this stage: nothing to drop, keep retrying
            log.error("batch step %s failed (%s), retrying: %s", cp.stage, kind, exc)
        else:
            log.warning("batch step %s failed, retrying: %s", cp.stage, exc)
        self.last_error = f"{cp.stage}: {type(exc).__name__}: {str(exc)[:300]}"
        self.stats["retries"] += 1
        if self.metrics is not None:
            self.metrics.step_failed(cp.stage, kind)
        self._pause()
        raise RetryLater(cp.stage, exc, self.backoff.next_delay()) from exc

    def _pause(self) -> None:
        if not self.paused:
            try:
                self.paused = self.consumer.assignment()
                self.consumer.pause(self.paused)
            except KafkaException as exc:  # the broker is away too: pausing can wait
                log.debug("pause: %s", exc)
                self.paused = []

    def _resume(self) -> None:
        if self.paused:
            try:
                self.consumer.resume(self.paused)
            except KafkaException as exc:
                log.warning("resume: %s", exc)
            self.paused = []

    def _count(self, cp: Checkpoint) -> None:
        assert cp.result is not None
        st = self.stats
        st["consumed"] += len(cp.raw)
        st["skipped_duplicates"] += len(cp.raw) - len(cp.fresh)  # re-deliveries of stored offsets
        st["duplicate_events"] += cp.result.duplicates  # event ids stored before
        st["inserted"] += len(cp.result.rows)
        st["dead_letters"] += len(cp.result.dead_letters)
        st["findings"] += len(cp.result.findings)
        st["actions"] += len(cp.result.actions)
        st["rejected_by_store"] += cp.rejected
        st["detector_errors"] += len(cp.result.errors)
        st["batches"] += 1

    # -- side outputs ---------------------------------------------------------------------
    def _side_outputs(self, letters: list[DeadLetter]) -> list[tuple]:
        """DLQ records: original (scrubbed) bytes, reason and source in headers. A copy larger
        than `dlq_max_bytes` (scrubbing can grow it) is cut, marked, and keeps its full size
        in a header, so nothing is dropped silently for not fitting the broker's limit."""
        out = []
        limit = self.settings.dlq_max_bytes
        for dl in letters:
            m = dl.message
            value = m.value
            headers = [("llmpulse.error", dl.reason.encode()), ("llmpulse.source.topic", m.topic.encode()),
                       ("llmpulse.source.partition", str(m.partition).encode()),
                       ("llmpulse.source.offset", str(m.offset).encode())]
            if len(value) > limit:
                headers += [("llmpulse.truncated", b"true"), ("llmpulse.original.size", str(len(value)).encode())]
                value = value[: limit - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER
                self.stats["truncated_dead_letters"] += 1
            out.append((self.settings.dlq_topic, value, None, headers))
        return out

    def _publish(self, cp: Checkpoint) -> None:
        """Produce the side outputs not yet acknowledged and wait for their acknowledgements."""
        failures: list[str] = []

        def on_delivery(i: int) -> Any:
            def done(err: KafkaError | None, _msg: Message) -> None:
                if err is None:
                    cp.delivered.add(i)
                else:
                    failures.append(str(err))
            return done

        todo = [i for i in range(len(cp.side_outputs)) if i not in cp.delivered]
        for i in todo:
            topic, value, key, headers = cp.side_outputs[i]
            self.producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery(i))
        if todo:
            self.producer.flush(self.settings.retry.max_seconds)
            if failures or len(cp.delivered) < len(cp.side_outputs):
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"side outputs not acknowledged: {failures[:3]}"))

    # -- health -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Stalled: a batch has waited longer than `retry.stall_seconds` for its outputs."""
        busy = self.pending is not None or self.parked is not None or self.writing is not None
        waited = time.monotonic() - self.last_commit if busy else 0.0
        stalled = waited > self.settings.retry.stall_seconds
        return {"stalled": stalled, "waiting_seconds": round(waited, 1),
                "waiting_stage": self.pending.stage if self.pending else "",
                "waiting_messages": len(self.pending.raw) if self.pending else 0,
                "last_error": self.last_error}

    def close(self) -> None:
        self.settle_quietly()  # the insert in flight lands and commits
        self._writer.shutdown(wait=True)
        self.producer.flush(10)
        self.consumer.close()


def _next_offsets(msgs: list[Message]) -> list[TopicPartition]:
    """Commit position per partition = last offset seen + 1."""
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        if m.error() is None:
            last[(m.topic(), m.partition())] = m.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
