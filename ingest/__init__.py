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

# After the publisher: `instrument` (the function) must shadow the submodule of the same name.
from llmpulse.ingest.instrument import Instrumentation, instrument, instrument_anthropic, instrument_openai  # noqa: E402

from llmpulse.ingest.enforce import ApprovalRequired, Halted, Verdict, guard_tool  # noqa: E402 (kill switches)

Publisher = KafkaPublisher

__all__ = ["DEFAULT_PRODUCER_CONFIG", "EventSink", "Instrumentation", "KafkaPublisher", "MemoryPublisher", "Publisher",
           "PublisherStats", "Trace", "instrument", "instrument_anthropic", "instrument_openai", "new_event_id", "now_ms",
           "ApprovalRequired", "Halted", "Verdict", "guard_tool"]
