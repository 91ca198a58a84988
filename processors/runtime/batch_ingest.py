"""The hot path: Kafka batches -> pipeline -> DLQ/findings -> ClickHouse -> commit.

Why not a faust agent for this topic: faust hands messages one at a time through
its stream machinery; measured here, an agent that does nothing but
`take_events(10_000)` peaks at ~6.6k events/s, below the 10k/s the worker must
sustain with validation and inserts on top. librdkafka's `consume(num_messages)`
returns whole batches from C, so the per-event cost is our own work only.

Offsets are committed synchronously only after the dead letters and findings
are acknowledged by Kafka and the rows are in ClickHouse (at-least-once), and
the sink skips offsets it already stored, so a restart writes nothing twice.
Blocking; the worker calls `step()` on its single ClickHouse thread.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from llmpulse.processors.pipeline import BatchResult, Pipeline, RawMessage
from llmpulse.processors.runtime.sink import ClickHouseSink
from llmpulse.schemas.findings import encode_finding
from llmpulse.settings import Settings

log = logging.getLogger("llmpulse.ingest")


class BatchIngest:
    def __init__(self, settings: Settings, sink: ClickHouseSink, pipeline: Pipeline) -> None:
        s = settings
        self.settings = s
        self.sink = sink
        self.pipeline = pipeline
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
            "logger": log,
        })
        self.consumer.subscribe([s.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        self.producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "enable.idempotence": True,
                                  "compression.type": "lz4", "linger.ms": 5, "logger": log})
        self.stats: dict[str, Any] = {"consumed": 0, "inserted": 0, "dead_letters": 0, "findings": 0,
                                      "skipped_duplicates": 0, "batches": 0}

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.pipeline.expect_partitions((p.topic, p.partition) for p in partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called inside consume(), between batches: nothing is in flight. Another
        # worker may write these partitions next, so forget what we knew of them.
        self.sink.forget_assignments()

    def step(self) -> int:
        """Consume, process, write and commit one batch. Returns the messages handled."""
        s = self.settings
        msgs = self.consumer.consume(s.batch_max_events, timeout=s.batch_max_seconds)
        raw: list[RawMessage] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume: %s", err)
                continue
            raw.append(RawMessage(m.value() or b"", m.topic(), m.partition(), m.offset()))
        if not raw:
            return 0
        try:
            fresh = self.sink.unseen(raw)
            result = self.pipeline.run(fresh)
            self._publish_side_outputs(result)
            self.sink.write(result)
            self.consumer.commit(offsets=_next_offsets(msgs), asynchronous=False)
        except Exception:
            self._rewind(raw)  # read the same batch again on the next step
            raise
        st = self.stats
        st["consumed"] += len(raw)
        st["skipped_duplicates"] += len(raw) - len(fresh)
        st["inserted"] += len(result.rows)
        st["dead_letters"] += len(result.dead_letters)
        st["findings"] += len(result.findings)
        st["batches"] += 1
        return len(raw)

    def _publish_side_outputs(self, result: BatchResult) -> None:
        """Dead letters (original bytes, reason and source in headers) and findings, acknowledged."""
        s = self.settings
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        for dl in result.dead_letters:
            m = dl.message
            headers = [("llmpulse.error", dl.reason.encode()), ("llmpulse.source.topic", m.topic.encode()),
                       ("llmpulse.source.partition", str(m.partition).encode()),
                       ("llmpulse.source.offset", str(m.offset).encode())]
            self.producer.produce(s.dlq_topic, m.value, headers=headers, on_delivery=on_delivery)
        for f in result.findings:
            self.producer.produce(s.findings_topic, encode_finding(f), f.finding_id.encode(), on_delivery=on_delivery)
        if result.dead_letters or result.findings:
            if self.producer.flush(60) or failures:
                # Transient: nothing is committed, the batch will be read again.
                raise RuntimeError(f"side outputs not acknowledged: {failures[:3]}")

    def _rewind(self, raw: list[RawMessage]) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in raw:
            key = (m.topic, m.partition)
            first[key] = min(first.get(key, m.offset), m.offset)
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()


def _next_offsets(msgs: list[Message]) -> list[TopicPartition]:
    """Commit position per partition = last offset seen + 1."""
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        if m.error() is None:
            last[(m.topic(), m.partition())] = m.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
