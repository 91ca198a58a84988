"""Create the pipeline's topics if they are missing (any broker, not only the local one)."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


# `llm.controls` (schemas/controls.py): the latest record per key is the state, kept forever;
# superseded records are cleaned soon (segments roll hourly, a quarter dirty is enough) and a
# tombstone is kept a day so every reader sees a forgotten key go.
CONTROLS_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "3600000",
    "min.cleanable.dirty.ratio": "0.25",
    "delete.retention.ms": "86400000",
}


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 30.0,
                  configs: dict[str, dict[str, str]] | None = None, client_config: dict | None = None) -> list[str]:
    """Create each missing topic with its partition count (and topic config, by name);
    returns the names created. `client_config` adds to the admin client's (e.g. log_level)."""
    admin = AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    configs = configs or {}
    missing = [NewTopic(name, num_partitions=n, replication_factor=-1, config=configs.get(name, {}))
               for name, n in topics.items() if name not in existing]
    created = []
    for name, fut in admin.create_topics(missing, request_timeout=timeout).items() if missing else []:
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created


def topic_partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> list[tuple[str, int]]:
    """(topic, partition) for every partition of `topic`; empty when the topic is unknown."""
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        return []
    return [(topic, p) for p in sorted(meta.partitions)]
