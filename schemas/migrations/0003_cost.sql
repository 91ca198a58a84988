-- Cost as priced by llmpulse (processors/pricing.py), beside the app-reported
-- cost_usd. price_source/price_version say which catalog or override priced the
-- row, so `llmpulse reprice` can recompute a time range after a price fix.
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS price_usd Nullable(Float64) AFTER cost_usd;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS price_source LowCardinality(String) AFTER price_usd;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS price_version LowCardinality(String) AFTER price_source;

-- One row per trace, now with its spend.
CREATE OR REPLACE VIEW {db}.traces AS
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
    sum(price_usd)                                        AS spend_usd,
    countIf(event_type = 'output' AND price_usd IS NULL)  AS unpriced_outputs,
    groupUniqArrayIf(model, model != '')                  AS models,
    countIf(status IN ('error', 'timeout'))               AS errors,
    countIf(status = 'refusal')                           AS refusals,
    multiIf(errors > 0, 'error', refusals > 0, 'refusal', 'ok') AS trace_status
FROM {db}.events FINAL
WHERE event_type != 'change'
GROUP BY tenant, workflow, trace_id;

-- Spend and usage rollups by minute and by day, per tenant, workflow, model, prompt version.
CREATE OR REPLACE VIEW {db}.calls_per_minute AS
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
    sum(cache_write_tokens)                      AS cache_write_tokens,
    sum(reasoning_tokens)                        AS reasoning_tokens,
    sum(price_usd)                               AS spend_usd,
    sum(cost_usd)                                AS reported_cost_usd,
    quantile(0.5)(latency_ms)                    AS p50_latency_ms,
    quantile(0.95)(latency_ms)                   AS p95_latency_ms,
    quantile(0.99)(latency_ms)                   AS p99_latency_ms
FROM {db}.events FINAL
WHERE event_type = 'output'
GROUP BY minute, tenant, workflow, model, prompt_version;

CREATE OR REPLACE VIEW {db}.calls_per_day AS
SELECT
    toDate(ts)                                   AS day,
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
    sum(cache_write_tokens)                      AS cache_write_tokens,
    sum(reasoning_tokens)                        AS reasoning_tokens,
    sum(price_usd)                               AS spend_usd,
    sum(cost_usd)                                AS reported_cost_usd,
    countIf(price_usd IS NULL)                   AS unpriced_calls
FROM {db}.events FINAL
WHERE event_type = 'output'
GROUP BY day, tenant, workflow, model, prompt_version;
