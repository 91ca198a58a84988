"""App-side SDK: build contract events and publish them to Kafka (`llm.events`)."""

from llmpulse.ingest.publisher import (
    DEFAULT_PRODUCER_CONFIG,
    EventSink,
    KafkaPublisher,
    MemoryPublisher,
    PublisherStats,
    Trace,
    new_event_id,
    now_ms,
)

Publisher = KafkaPublisher

__all__ = ["DEFAULT_PRODUCER_CONFIG", "EventSink", "KafkaPublisher", "MemoryPublisher", "Publisher", "PublisherStats", "Trace", "new_event_id", "now_ms"]
