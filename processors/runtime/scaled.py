"""Several workers: the trace stage, the scope stage and the writer (README "Scaling out").

    llm.events --(key trace_id)--> trace stage: validate, dedupe, redact, price, contracts, loops
        -> llm.scope (key tenant; schemas/scope.py) --> scope stage: budgets, governance,
           anomalies (changes, evals), policies
              -> llm.scope.state (compacted: budget state per scope partition, read on takeover)
        -> llm.rows (finished rows of both)     --> writer: the one process that opens the store
        -> llm.findings, llm.events.dlq, llm.controls

A stage's batch is one Kafka transaction: its records on every output topic and its input
offsets (`send_offsets_to_transaction`) commit together or not at all, and readers of
`llm.scope` and `llm.rows` read committed records only. So a worker killed mid-batch leaves
nothing a reader sees, and its successor, reading from the committed offsets, emits each
record once. Chosen over idempotent produce + offsets after the flush: that is at least once,
and the scope stage would have to deduplicate records without a store to ask (in embedded
mode only the writer opens it). The writer itself commits its offsets after the insert and
skips rows already stored (ClickHouseSink.unseen: by source offset), as the single worker does.

State. Detector state belongs to the partitions a stage holds. On every (eager) rebalance a
stage drops it and rebuilds it by replaying its partitions' recent committed input
(`warmup_minutes`, at most `warmup_max_events` a partition) up to the committed offsets,
outputs discarded: Kafka is the changelog, and no process but the writer needs the store.
A failed transaction is aborted and handled the same way. Budget spend covers a day or a month,
longer than any replay: the scope stage also commits, in each transaction, its partitions'
budget state with the offsets it belongs to (`scale.state_topic`, compacted), and restores it
after the replay when those offsets are the committed ones.

Why batch consumption and not faust `group_by`: faust agents move ~6.6k events/s here
(batch_ingest.py), less than one stage must move; librdkafka's `consume(n)` with a
transactional producer gives the same checkpoint at the stage's own speed.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections import defaultdict
from typing import Any, Callable, Iterable

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from llmpulse.ingest.kafka_log import BrokerLog
from llmpulse.kafka.topics import ensure_topics, topic_partitions
from llmpulse.processors.budgets import BudgetTracker
from llmpulse.processors.dedup import Deduper, MemoryIdStore
from llmpulse.processors.pipeline import BatchResult, Pipeline, RawMessage, fresh_mask
from llmpulse.processors.redaction import marker_of
from llmpulse.processors.runtime.sink import ClickHouseSink
from llmpulse.processors.validate import Invalid
from llmpulse.schemas import scope as sc
from llmpulse.schemas.controls import encode_action, scope_key as action_key
from llmpulse.schemas.findings import encode_finding
from llmpulse.schemas.rows import (
    CONTROL_ACTION_COLUMNS, DEAD_LETTER_COLUMNS, EVENT_COLUMNS, FINDING_COLUMNS, control_action_row, finding_row,
    row_source,
)
from llmpulse.settings import Settings

log = logging.getLogger("llmpulse.scaled")

TRACE_STAGES = ("redact", "price", "contracts", "loops")
SCOPE_STAGES = ("budgets", "governance", "anomalies")
ROWS_PER_RECORD = 256  # event rows of ~1 KB: a record well under the broker's 1 MiB
COLUMNS = {"events": EVENT_COLUMNS, "findings": FINDING_COLUMNS, "dead_letters": DEAD_LETTER_COLUMNS,
           "control_actions": CONTROL_ACTION_COLUMNS}

_rows_encoder = msgspec.msgpack.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(tuple[str, list[list[Any]]])


def encode_rows(table: str, rows: list[list]) -> bytes:
    return _rows_encoder.encode((table, rows))


def decode_rows(raw: bytes) -> tuple[str, list[list]]:
    """A record of the rows topic, each row the width of its table (and an event row with its
    Kafka source), or ValueError: the writer must never fail later on a row it accepted."""
    table, rows = _rows_decoder.decode(raw)
    if table not in COLUMNS:
        raise ValueError(f"unknown table {table!r} on the rows topic")
    width = len(COLUMNS[table])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{table} row {i} has {len(row)} columns, not {width}")
        if table == "events" and not _is_source(row_source(row)):
            raise ValueError(f"events row {i} has no Kafka source (topic, partition, offset)")
    return table, rows


def _is_source(src: tuple) -> bool:
    topic, partition, offset = src
    return isinstance(topic, str) and type(partition) is int and type(offset) is int


def stage_settings(s: Settings, stages: Iterable[str]) -> Settings:
    keep = set(stages)
    return s.model_copy(update={"stages": [x for x in s.stages if x in keep]})


def instance_id(s: Settings) -> str:
    return s.scale.instance or f"{socket.gethostname()}-{s.worker_web_port}"


class Stage:
    """Consume a batch, process it, publish its outputs and offsets in one transaction."""

    name = "stage"

    def __init__(self, settings: Settings, topic: str) -> None:
        s = self.settings = settings
        self.topic = topic
        self.group = f"{s.worker_id}.{self.name}"
        kafka_log = BrokerLog(log, s.kafka_bootstrap, f"the {self.name} stage waits")
        self._base = {"bootstrap.servers": s.kafka_bootstrap, "logger": kafka_log}
        self.consumer = Consumer({
            **self._base, "group.id": self.group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": s.scale.session_timeout_ms,
            "heartbeat.interval.ms": max(500, s.scale.session_timeout_ms // 4),
            "fetch.max.bytes": 16 * 1024 * 1024, "max.partition.fetch.bytes": 4 * 1024 * 1024,
            "queued.max.messages.kbytes": 32 * 1024,
        })
        self.producer = self._new_producer()
        self.assignment: list[TopicPartition] = []
        self.joined = False  # a rebalance has given us our share (maybe none: a standby)
        self.rebuild = True  # state must be rebuilt from the committed input before the next batch
        self.rewind = False  # and the consumer sent back to the committed offsets (an aborted batch)
        # State per input partition: a partition handed over is rebuilt from its own input
        # alone, so its watermark (and what timers fired by it) is the same as before.
        self.pipelines: dict[int, Pipeline] = {}
        self.current = -1  # the partition `process` is working on
        self.pipeline: Pipeline = Pipeline()
        self.stats: dict[str, int] = defaultdict(int)
        self.last_error = ""
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    def _new_producer(self) -> Producer:
        s = self.settings
        producer = Producer({
            **self._base, "transactional.id": f"{s.worker_id}.{self.name}.{instance_id(s)}",
            "transaction.timeout.ms": s.scale.transaction_timeout_ms,
            "compression.type": "lz4", "linger.ms": 5,
        })
        producer.init_transactions(30)  # fences a predecessor with our id, aborting its open batch
        return producer

    # -- to implement -------------------------------------------------------------------
    def new_pipeline(self) -> Pipeline:
        """The state of partition `self.current`."""
        raise NotImplementedError

    def process(self, msgs: list[Message], replay: bool) -> list[tuple]:
        """Feed one partition's messages to its pipeline (`self.pipeline`); returns the outputs
        (topic, value, key, partition)."""
        raise NotImplementedError

    def process_batch(self, msgs: list[Message], replay: bool) -> list[tuple]:
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for m in msgs:
            by_partition[m.partition()].append(m)
        out: list[tuple] = []
        for partition, part in by_partition.items():
            self.current = partition
            pipeline = self.pipelines.get(partition)
            if pipeline is None:
                pipeline = self.pipelines[partition] = self.new_pipeline()
            self.pipeline = pipeline
            out += self.process(part, replay)
        return out

    # -- group membership ---------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assignment = list(partitions)
        self.joined = True
        self.rebuild = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assignment = []
        self.rebuild = True

    # -- the loop -------------------------------------------------------------------------
    def step(self) -> int:
        s = self.settings
        if self.rebuild and self.assignment:
            self._replay()
        msgs = [m for m in self.consumer.consume(s.batch_max_events, timeout=s.batch_max_seconds)
                if m.error() is None]
        if self.rebuild:  # assigned inside this consume(): its messages follow the replay
            if self.assignment:
                self._replay()
            held = {(tp.topic, tp.partition) for tp in self.assignment}
            msgs = [m for m in msgs if (m.topic(), m.partition()) in held]
        if not msgs:
            return 0
        try:
            outputs = self.process_batch(msgs, replay=False)
            self._commit(msgs, outputs)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.stats["aborted"] += 1
            log.warning("%s batch aborted, state rebuilt from the committed input: %s", self.name, exc)
            self._abort(exc)
            self.rebuild = self.rewind = True  # the batch is read again after the replay
            raise
        self.stats["batches"] += 1
        self.stats["consumed"] += len(msgs)
        self.last_error = ""
        return len(msgs)

    def _commit(self, msgs: list[Message], outputs: list[tuple]) -> None:
        p = self.producer
        p.begin_transaction()
        for topic, value, key, partition in outputs:
            while True:
                try:
                    if partition is None:
                        p.produce(topic, value, key)
                    else:
                        p.produce(topic, value, key, partition=partition)
                    break
                except BufferError:  # the local queue is full: let it drain
                    p.poll(0.05)
            p.poll(0)
        last: dict[tuple[str, int], int] = {}
        for m in msgs:
            last[(m.topic(), m.partition())] = m.offset()
        offsets = [TopicPartition(t, q, o + 1) for (t, q), o in last.items()]
        p.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
        p.commit_transaction(30)
        self.stats["published"] += len(outputs)

    def _abort(self, cause: Exception) -> None:
        err = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
        if isinstance(err, KafkaError) and err.fatal():  # fenced or broken: a new producer takes over
            self.producer = self._new_producer()
            return
        try:
            self.producer.abort_transaction(30)
        except KafkaException as exc:  # nothing was open
            log.debug("abort: %s", exc)

    def _replay(self) -> None:
        """Rebuild state: the committed input of our partitions since the warm-up horizon."""
        s = self.settings
        self.pipelines = {}
        self.reset()
        parts = [TopicPartition(tp.topic, tp.partition) for tp in self.assignment]
        committed = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.committed(parts, timeout=30)}
        since = int(time.time() * 1000) - s.warmup_minutes * 60_000
        starts = self.consumer.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, since) for tp in parts], timeout=30)
        todo: dict[tuple[str, int], int] = {}
        assign = []
        for tp in starts:
            end = committed.get((tp.topic, tp.partition), -1)
            if end is None or end < 0:
                continue  # nothing committed: nothing to rebuild
            low, _ = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30)
            start = max(low, end - s.warmup_max_events, tp.offset if tp.offset >= 0 else end)
            if start < end:
                todo[(tp.topic, tp.partition)] = end
                assign.append(TopicPartition(tp.topic, tp.partition, start))
        t0, n = time.monotonic(), 0
        if assign:
            reader = Consumer({**self._base, "group.id": f"{self.group}.replay", "enable.auto.commit": False,
                               "isolation.level": "read_committed", "enable.partition.eof": True})
            reader.assign(assign)
            try:
                while todo:
                    batch = []
                    for m in reader.consume(s.batch_max_events, timeout=1.0):
                        key = (m.topic(), m.partition())
                        if key not in todo:
                            continue
                        if m.error() is not None:
                            if m.error().code() == KafkaError._PARTITION_EOF:
                                del todo[key]
                            continue
                        if m.offset() >= todo[key]:
                            del todo[key]
                            continue
                        batch.append(m)
                    if batch:
                        self.process_batch(batch, replay=True)  # outputs discarded: they were committed
                        n += len(batch)
            finally:
                reader.close()
        if self.rewind:
            for (topic, partition), offset in committed.items():
                if offset is None or offset < 0:
                    offset, _ = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                self.consumer.seek(TopicPartition(topic, partition, offset))
            self.rewind = False
        self.after_replay(committed)
        self.rebuild = False
        self.stats["replays"] += 1
        self.stats["replayed"] += n
        log.info("%s state rebuilt for %d partitions from %d committed messages in %.1fs",
                 self.name, len(parts), n, time.monotonic() - t0)

    def reset(self) -> None:
        """Forget what is not in the pipelines (called before a replay)."""

    def after_replay(self, committed: dict[tuple[str, int], int]) -> None:
        """State the replay cannot rebuild, restored at the committed offsets."""

    def _backlogged(self) -> list[tuple[str, int]]:
        """Held partitions with messages not yet read (librdkafka's cached watermarks)."""
        out = []
        try:
            for tp in self.consumer.position(self.assignment):
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0 or high > max(tp.offset, low):
                    out.append((tp.topic, tp.partition))
        except KafkaException:
            pass
        return out

    def close(self) -> None:
        self.consumer.close()

    def describe(self) -> dict:
        return {"partitions": len(self.assignment), "joined": self.joined, **self.stats,
                "watermark_ms": min((p.watermark_ms for p in list(self.pipelines.values())), default=0),
                "last_error": self.last_error}


def rows_outputs(s: Settings, result: BatchResult, with_events: bool) -> list[tuple]:
    """The finished rows of a batch, for the writer; and its findings, actions and dead letters."""
    out: list[tuple] = []
    rows_topic = s.scale.rows_topic
    tables: list[tuple[str, list[list]]] = [
        ("findings", [finding_row(f) for f in result.findings]),
        ("control_actions", [control_action_row(a) for a in result.actions]),
    ]
    if with_events:
        now = time.time_ns() // 1_000_000
        tables.append(("dead_letters", [[now, d.reason, len(d.message.value), d.message.topic, d.message.partition,
                                         d.message.offset] for d in result.dead_letters]))
    for table, rows in tables:
        for i in range(0, len(rows), ROWS_PER_RECORD):
            out.append((rows_topic, encode_rows(table, rows[i:i + ROWS_PER_RECORD]), None, None))
    # Event rows of one source partition always reach the same rows partition, hence one writer
    # at a time: its skip of stored offsets (ClickHouseSink.unseen) knows every row of it.
    by_source: dict[int, list[list]] = defaultdict(list)
    for row in result.rows:
        by_source[row_source(row)[1]].append(row)
    for source, rows in by_source.items():
        for i in range(0, len(rows), ROWS_PER_RECORD):
            out.append((rows_topic, encode_rows("events", rows[i:i + ROWS_PER_RECORD]), None,
                        source % s.topic_partitions))
    out += [(s.findings_topic, encode_finding(f), f.finding_id.encode(), None) for f in result.findings]
    out += [(s.controls_topic, encode_action(a), action_key(a).encode(), None) for a in result.actions]
    return out


class TraceStage(Stage):
    """Per-trace work on the partitions of `llm.events` this worker holds."""

    name = "trace"

    def __init__(self, settings: Settings) -> None:
        rules = settings.budgets or []
        # Budgets over several tenants need one place for all spend (schemas/scope.py scope_key).
        self.by_tenant = all((r.get("scope") or {}).get("tenant") for r in rules)
        if not self.by_tenant:
            log.warning("a budget without a tenant: every scope record goes to one scope partition")
        self._source_max: dict[int, int] = {}
        super().__init__(settings, settings.events_topic)

    def new_pipeline(self) -> Pipeline:
        s = self.settings
        p = Pipeline.from_settings(stage_settings(s, TRACE_STAGES))
        p.keep_prepared = True
        p.policies = None  # policies act on every finding of a scope: the scope stage runs them
        if s.dedup.enabled:
            # A duplicate shares its original's trace_id, hence its partition: the ids this
            # stage saw (rebuilt by the replay) are the truth for its partitions.
            p.id_store = MemoryIdStore()
            p.deduper = Deduper(s.dedup, p.id_store.lookup, primed=True)
        p.expect_partitions([(self.topic, self.current)])
        return p

    def reset(self) -> None:
        self._source_max = {}

    def process(self, msgs: list[Message], replay: bool) -> list[tuple]:
        s = self.settings
        marked = bool(s.redaction.trust_upstream)  # headers read only when a marker may be trusted
        raw = [RawMessage(m.value() or b"", m.topic(), m.partition(), m.offset(),
                          marker_of(m.headers()) if marked else None) for m in msgs]
        backlogged = [(self.topic, self.current)] if replay else self._backlogged()
        p = self.pipeline
        if p.deduper is not None:
            validated = p.validate_batch(raw)
            keep = fresh_mask(p.deduper, validated)
            result = p.run(raw, backlogged, validated, keep)
            assert p.id_store is not None
            p.id_store.record(r.event.event_id for r, k in zip(validated, keep)  # type: ignore[union-attr]
                              if k and not isinstance(r, Invalid))
        else:
            result = p.run(raw, backlogged)
        for err in result.errors:
            log.error("detector error: %s", err)
        scope_topic, n_scope = s.scale.scope_topic, s.scale.scope_partitions
        out: list[tuple] = []
        source_max = self._source_max
        for source, event, cost in result.prepared:
            if event.ts > source_max.get(source, 0):
                source_max[source] = event.ts
            if not replay:
                out.append((scope_topic, sc.encode(sc.record_for(event, source, cost)),
                            sc.scope_key(event, self.by_tenant).encode(), None))
        if replay:
            return []
        if s.policies.enabled:  # the policies run where every finding of a tenant meets
            out += [(scope_topic, sc.encode(sc.forwarded(f)), sc.scope_key(f, self.by_tenant).encode(), None)
                    for f in result.findings]
        # Progress of each source partition of this batch, on every scope partition: their
        # watermarks move with the slowest source as a single worker's does.
        for source in {m.partition for m in raw}:
            if source in source_max:
                value = sc.encode(sc.progress(source, source_max[source]))
                out += [(scope_topic, value, b"*", i) for i in range(n_scope)]
        out += [(s.dlq_topic, d.message.value, None, None) for d in result.dead_letters]
        self.stats["inserted"] += len(result.rows)
        self.stats["dead_letters"] += len(result.dead_letters)
        self.stats["findings"] += len(result.findings)
        return rows_outputs(s, result, with_events=True) + out


class ScopeStage(Stage):
    """Scope-keyed work on the partitions of `llm.scope` this worker holds."""

    name = "scope"

    def __init__(self, settings: Settings, sources: list[tuple[str, int]]) -> None:
        self.sources = sources  # every partition of the events topic: each holds the watermark
        self.snapshots = bool(settings.budgets) and _state_topic_ready(settings)
        super().__init__(settings, settings.scale.scope_topic)

    def new_pipeline(self) -> Pipeline:
        p = Pipeline.from_settings(stage_settings(self.settings, SCOPE_STAGES))
        p.idle_partition_ms = self.settings.scale.idle_source_ms
        p.expect_partitions(self.paths())
        return p

    def paths(self) -> list[tuple[str, int]]:
        """The watermark's inputs: the current scope partition's route from each source partition.
        (Kept per route: a source's progress read on one scope partition says nothing of its
        records on another.)"""
        return [(_path(self.current), source) for _, source in self.sources]

    def process(self, msgs: list[Message], replay: bool) -> list[tuple]:
        items, found, dead = [], [], []
        for m in msgs:
            try:
                r = sc.decode(m.value() or b"")
            except msgspec.DecodeError as exc:  # not from our trace stage: a dead letter, go on
                log.error("scope record %s/%s unreadable: %s", m.partition(), m.offset(), exc)
                self.stats["unreadable"] += 1
                dead.append((m, str(exc)))
                continue
            if r.finding is not None:
                found.append(r.finding)
            else:
                items.append(((_path(m.partition()), r.source), r.ts, sc.detector_input(r), r.cost))
        # A scope partition with unread records: all its routes wait for it.
        behind = replay or any(p == self.current for _, p in self._backlogged())
        backlogged = self.paths() if behind else []
        result = self.pipeline.detect(items, backlogged, found)
        for err in result.errors:
            log.error("detector error: %s", err)
        if replay:
            return []
        self.stats["findings"] += len(result.findings)
        self.stats["actions"] += len(result.actions)
        out = rows_outputs(self.settings, result, with_events=False) + self._dead_letters(dead)
        tracker = _budgets(self.pipeline)
        if self.snapshots and tracker is not None:  # committed with this batch's offsets
            state = sc.ScopeState(msgs[-1].offset() + 1, tracker.snapshot())
            out.append((self.settings.scale.state_topic, sc.encode_state(state), _path(self.current).encode(),
                        self.current))
        return out

    def after_replay(self, committed: dict[tuple[str, int], int]) -> None:
        """Each held partition's budget spend and fired thresholds, from its last committed state,
        when that state belongs to the committed offset (else the replay's window is all we know)."""
        if not self.snapshots:
            return
        s = self.settings
        for partition, state in _last_states(self._base, s.scale.state_topic,
                                             [tp.partition for tp in self.assignment]).items():
            if state.offset != committed.get((self.topic, partition)):
                log.warning("budget state of scope partition %d is for offset %d, committed is %s: spend "
                            "beyond the replay window is not restored", partition, state.offset,
                            committed.get((self.topic, partition)))
                self.stats["budget_state_stale"] += 1
                continue
            self.current = partition
            pipeline = self.pipelines.get(partition)
            if pipeline is None:
                pipeline = self.pipelines[partition] = self.new_pipeline()
            tracker = _budgets(pipeline)
            if tracker is not None:
                self.stats["budget_periods_restored"] += tracker.restore(state.budgets)

    def _dead_letters(self, dead: list[tuple[Message, str]]) -> list[tuple]:
        """Unreadable scope records: the bytes to the DLQ topic, the reason to `dead_letters`."""
        if not dead:
            return []
        s, now = self.settings, time.time_ns() // 1_000_000
        rows = [[now, f"unreadable scope record: {why}"[:1000], len(m.value() or b""), m.topic(), m.partition(),
                 m.offset()] for m, why in dead]
        return ([(s.scale.rows_topic, encode_rows("dead_letters", rows), None, None)]
                + [(s.dlq_topic, m.value() or b"", None, None) for m, _ in dead])


class WriterSink(ClickHouseSink):
    """The sink, fed finished rows instead of a processed batch."""

    def insert_rows(self, table: str, rows: list[list], columns: list[str]) -> list[tuple[list, str]]:
        return self._insert_isolating(table, rows, columns)

    def note_stored(self, rows: list[list]) -> None:
        for row in rows:  # later batches of these partitions are beyond what is stored
            topic, partition, offset = row_source(row)
            if offset > self._stored_max.get((topic, partition), -1):
                self._stored_max[(topic, partition)] = offset


def _budgets(pipeline: Pipeline) -> BudgetTracker | None:
    return next((d for d in pipeline.detectors if isinstance(d, BudgetTracker)), None)


def _state_topic_ready(s: Settings) -> bool:
    """The compacted state topic, one partition per scope partition (created if missing)."""
    topic = s.scale.state_topic
    n = len(topic_partitions(s.kafka_bootstrap, s.scale.scope_topic)) or s.scale.scope_partitions
    ensure_topics(s.kafka_bootstrap, {topic: n}, configs={topic: {"cleanup.policy": "compact",
                                                                  "segment.ms": "3600000"}})
    have = len(topic_partitions(s.kafka_bootstrap, topic))
    if have < n:
        log.warning("%s has %d partitions for %d scope partitions: budget spend beyond the replay window "
                    "is not kept", topic, have, n)
        return False
    return True


def _last_states(base: dict, topic: str, partitions: list[int], timeout: float = 30.0) -> dict[int, sc.ScopeState]:
    """The last committed state record of each partition: its log's tail first (a record per
    transaction), the whole (compacted) log where the tail holds none."""
    found: dict[int, sc.ScopeState] = {}
    reader = Consumer({**base, "group.id": f"llmpulse-state-{uuid.uuid4().hex}", "enable.auto.commit": False,
                       "isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        for tail in (64, None):
            todo, assign = set(), []
            for q in partitions:
                if q in found:
                    continue
                low, high = reader.get_watermark_offsets(TopicPartition(topic, q), timeout=timeout)
                start = low if tail is None else max(low, high - tail)
                if high > start and (tail is not None or low < high - 64):
                    todo.add(q)
                    assign.append(TopicPartition(topic, q, start))
            if not assign:
                continue
            reader.assign(assign)
            deadline = time.monotonic() + timeout
            while todo and time.monotonic() < deadline:
                for m in reader.consume(1000, timeout=0.5):
                    if m.error() is not None:
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            todo.discard(m.partition())
                        continue
                    try:
                        found[m.partition()] = sc.decode_state(m.value() or b"")
                    except msgspec.DecodeError as exc:  # not ours: the one before it stands
                        log.error("state record %s/%s unreadable: %s", m.partition(), m.offset(), exc)
            if todo:
                log.warning("budget state of scope partitions %s not read within %.0fs", sorted(todo), timeout)
            reader.unassign()
    finally:
        reader.close()
    return found


def _path(scope_partition: int) -> str:
    return f"scope/{scope_partition}"


class RowsWriter:
    """The one process that opens the store: rows topic -> ClickHouse, offsets after the rows."""

    def __init__(self, settings: Settings, sink: WriterSink) -> None:
        s = self.settings = settings
        self.sink = sink
        kafka_log = BrokerLog(log, s.kafka_bootstrap, "the writer waits, offsets uncommitted")
        self.consumer = Consumer({
            "bootstrap.servers": s.kafka_bootstrap, "group.id": f"{s.worker_id}.writer", "logger": kafka_log,
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "session.timeout.ms": s.scale.session_timeout_ms,
            "heartbeat.interval.ms": max(500, s.scale.session_timeout_ms // 4),
        })
        self.joined = False
        self.pending: list[Message] | None = None
        self.stats: dict[str, int] = defaultdict(int)
        self.last_error = ""
        self.consumer.subscribe([s.scale.rows_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.sink.forget_assignments()
        self.pending = None  # not committed: the next owner reads it

    def step(self) -> int:
        if self.pending is None:
            msgs = [m for m in self.consumer.consume(50_000 // ROWS_PER_RECORD, timeout=self.settings.batch_max_seconds)
                    if m.error() is None]
            if not msgs:
                return 0
            self.pending = msgs
        else:  # serve the group while the batch waits; what this returns is read again later
            for m in self.consumer.consume(1, timeout=0):
                if m.error() is None:
                    self.consumer.seek(TopicPartition(m.topic(), m.partition(), m.offset()))
            if self.pending is None:
                return 0
        msgs = self.pending
        try:
            self._write(msgs)
            last: dict[tuple[str, int], int] = {}
            for m in msgs:
                last[(m.topic(), m.partition())] = m.offset()
            self.consumer.commit(offsets=[TopicPartition(t, q, o + 1) for (t, q), o in last.items()],
                                 asynchronous=False)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.stats["retries"] += 1
            raise
        self.pending = None
        self.last_error = ""
        self.stats["records"] += len(msgs)
        return len(msgs)

    def _write(self, msgs: list[Message]) -> None:
        by_table: dict[str, list[list]] = defaultdict(list)
        for m in msgs:
            try:
                table, rows = decode_rows(m.value() or b"")
            except (msgspec.DecodeError, ValueError) as exc:  # not from our stages: a dead letter, go on
                log.error("rows record %s/%s unreadable: %s", m.partition(), m.offset(), exc)
                self.stats["unreadable"] += 1
                by_table["dead_letters"].append([time.time_ns() // 1_000_000, f"unreadable rows record: {exc}"[:1000],
                                                 len(m.value() or b""), m.topic(), m.partition(), m.offset()])
                continue
            by_table[table].extend(rows)
        events = by_table.pop("events", [])
        for table, rows in by_table.items():  # deduplicated by their sort keys (ReplacingMergeTree)
            for row, reason in self.sink.insert_rows(table, rows, COLUMNS[table]):
                log.error("%s row not storable (%s): %s", table, reason, row[:1])
        if events:  # a batch inserted, then killed before its commit: skip what is stored
            fresh = {(m.topic, m.partition, m.offset) for m in self.sink.unseen(
                [RawMessage(b"", *row_source(r)) for r in events])}
            events = [r for r in events if row_source(r) in fresh]
            rejected = self.sink.insert_rows("events", events, EVENT_COLUMNS)
            now = time.time_ns() // 1_000_000
            if rejected:  # the store refused them for good: their reason is kept, the batch goes on
                self.sink.insert_rows("dead_letters", [[now, reason, 0, *row_source(r)] for r, reason in rejected],
                                      DEAD_LETTER_COLUMNS)
                self.stats["rejected_by_store"] += len(rejected)
            self.sink.note_stored(events)
            self.stats["inserted"] += len(events) - len(rejected)
        self.stats["batches"] += 1

    def close(self) -> None:
        self.consumer.close()

    def describe(self) -> dict:
        return {"joined": self.joined, **self.stats, "last_error": self.last_error}


def run_loop(should_stop: Callable[[], bool], step: Callable[[], int], retry: Any, what: str) -> None:
    """Call `step` until told to stop; failures back off under the one retry policy."""
    from llmpulse.processors.runtime.retry import Backoff

    backoff = Backoff(retry)
    while not should_stop():
        try:
            step()
            backoff.reset()
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning("%s step failed, retrying in %.1fs: %s", what, delay, exc)
            time.sleep(delay)
