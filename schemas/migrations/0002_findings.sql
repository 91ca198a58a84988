-- Detection results (schemas/findings.py). One `open` row per condition and
-- scope, one `resolved` row when it clears; finding_id is stable across replays.
CREATE TABLE IF NOT EXISTS {db}.findings
(
    finding_id   String,
    detected_at  DateTime64(3, 'UTC'),
    event_ts     DateTime64(3, 'UTC'),
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    status       LowCardinality(String),
    tenant       LowCardinality(String),
    workflow     LowCardinality(String),
    model        LowCardinality(String),
    trace_id     String,
    title        String,
    value        Nullable(Float64),
    threshold    Nullable(Float64),
    evidence     String,
    wasted_usd   Nullable(Float64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_ts)
ORDER BY (kind, finding_id, status)
TTL toDateTime(event_ts) + INTERVAL {ttl_days} DAY;
