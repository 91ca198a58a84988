-- One row per contract event. Typed columns for every contract field; fields a
-- type does not carry stay at their default. ReplacingMergeTree collapses a
-- re-delivered event_id (same key) at merge time; readers use FINAL or the views.
CREATE TABLE IF NOT EXISTS {db}.events
(
    event_id        String,
    event_type      LowCardinality(String),
    ts              DateTime64(3, 'UTC'),
    schema_version  LowCardinality(String),
    trace_id        String,
    span_id         String,
    parent_span_id  String,
    tenant          LowCardinality(String),
    app             LowCardinality(String),
    workflow        LowCardinality(String),
    environment     LowCardinality(String),
    user_id         String,
    session_id      String,
    provider        LowCardinality(String),
    model           LowCardinality(String),
    prompt_version  LowCardinality(String),
    attributes      Map(String, String),
    -- prompt
    messages        String,                  -- JSON array of {role, content}
    tools_offered   Array(String),
    params          String,                  -- JSON object
    -- tool_call (status is shared with output)
    tool_name       LowCardinality(String),
    tool_call_id    String,
    arguments       String,                  -- JSON object, or the string sent
    status          LowCardinality(String),
    duration_ms     Nullable(Float64),
    result          String,
    side_effect     LowCardinality(String),
    approved_by     String,
    -- output
    finish_reason   LowCardinality(String),
    response_model  LowCardinality(String),
    content         String,
    latency_ms      Nullable(Float64),
    ttft_ms         Nullable(Float64),
    error_type      LowCardinality(String),
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    cost_usd        Nullable(Float64),       -- as reported by the app
    -- eval
    eval_name       LowCardinality(String),
    score           Nullable(Float64),
    passed          Nullable(Bool),
    evaluator       LowCardinality(String),
    target_span_id  String,
    comment         String,
    -- change
    change_kind     LowCardinality(String),
    description     String,
    from_value      String,
    to_value        String,
    actor           String,
    -- unknown fields, kept verbatim as JSON
    extra           String,
    -- lineage: where the row came from, for exactly-once restarts
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_trace trace_id TYPE bloom_filter GRANULARITY 4,
    INDEX idx_event event_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, workflow, event_type, ts, event_id)
TTL toDateTime(ts) + INTERVAL {ttl_days} DAY;

-- Messages that failed validation: the reason and where they came from. The
-- original bytes stay in the DLQ topic; they are not copied here (they may hold secrets).
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    received_at     DateTime64(3, 'UTC'),
    reason          String,
    size_bytes      UInt32,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (kafka_topic, kafka_partition, kafka_offset)
TTL toDateTime(received_at) + INTERVAL {ttl_days} DAY;

-- One row per trace: start, end, steps, tokens, status.
CREATE VIEW IF NOT EXISTS {db}.traces AS
SELECT
    tenant,
    workflow,
    trace_id,
    min(ts)                                               AS started_at,
    max(ts)                                               AS ended_at,
    dateDiff('millisecond', min(ts), max(ts))             AS duration_ms,
    count()                                               AS events,
    countIf(event_type IN ('prompt', 'tool_call'))        AS steps,
    countIf(event_type = 'tool_call')                     AS tool_calls,
    countIf(event_type = 'output')                        AS outputs,
    sum(input_tokens)                                     AS input_tokens,
    sum(output_tokens)                                    AS output_tokens,
    sum(cache_read_tokens)                                AS cache_read_tokens,
    groupUniqArrayIf(model, model != '')                  AS models,
    countIf(status IN ('error', 'timeout'))               AS errors,
    countIf(status = 'refusal')                           AS refusals,
    multiIf(errors > 0, 'error', refusals > 0, 'refusal', 'ok') AS trace_status
FROM {db}.events FINAL
WHERE event_type != 'change'
GROUP BY tenant, workflow, trace_id;

-- Per-minute rollup of model calls (output events) per tenant, workflow, model.
CREATE VIEW IF NOT EXISTS {db}.calls_per_minute AS
SELECT
    toStartOfMinute(ts)                          AS minute,
    tenant,
    workflow,
    model,
    prompt_version,
    count()                                      AS calls,
    countIf(status IN ('error', 'timeout'))      AS errors,
    countIf(status = 'refusal')                  AS refusals,
    sum(input_tokens)                            AS input_tokens,
    sum(output_tokens)                           AS output_tokens,
    sum(cache_read_tokens)                       AS cache_read_tokens,
    quantile(0.5)(latency_ms)                    AS p50_latency_ms,
    quantile(0.95)(latency_ms)                   AS p95_latency_ms,
    quantile(0.99)(latency_ms)                   AS p99_latency_ms
FROM {db}.events FINAL
WHERE event_type = 'output'
GROUP BY minute, tenant, workflow, model, prompt_version;

-- Per-minute counts of every event type, tool calls included.
CREATE VIEW IF NOT EXISTS {db}.events_per_minute AS
SELECT
    toStartOfMinute(ts)  AS minute,
    tenant,
    workflow,
    event_type,
    count()              AS events,
    countIf(status IN ('error', 'timeout')) AS errors
FROM {db}.events FINAL
GROUP BY minute, tenant, workflow, event_type;
