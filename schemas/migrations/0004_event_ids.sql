-- Every stored event_id once: the truth the worker's Deduper asks (processors/dedup.py,
-- processors/runtime/dedup_store.py) before an event reaches the detectors or `events`.
-- The idempotency key is event_id alone; `events` sorts by (tenant, ..., ts, event_id)
-- and cannot collapse a re-publish whose ts or scope differs, so duplicates are kept out
-- upstream. Sorted by event_id with small granules: a lookup of ~100 ids reads ~100
-- granules of 256 ids. `ingested_at` lets a worker load only what others stored since
-- its last load; `ts` bounds the load to the retention horizon.
CREATE TABLE IF NOT EXISTS {db}.event_ids
(
    event_id    String,
    ts          DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY event_id
TTL toDateTime(ts) + INTERVAL {ttl_days} DAY
SETTINGS index_granularity = 256;

-- Written by the same INSERT as the events (an insert trigger on `events`): the block is
-- written to `events`, then pushed through this view, and the client gets its answer after
-- both. Not a transaction: if the view's write fails the client sees the error, but the
-- events part may already be committed (processors/runtime/dedup_store.py: repair_event_ids).
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_ids_mv TO {db}.event_ids AS
SELECT event_id, ts, ingested_at FROM {db}.events;

-- Backfill the events stored before this migration. After the view exists, so an insert
-- running meanwhile is in one or both (ReplacingMergeTree keeps one row per event_id).
-- Runs once: the migration runner applies a file once and records it; a run that failed
-- part way is applied again in full, which is harmless (same ids, collapsed).
INSERT INTO {db}.event_ids (event_id, ts, ingested_at)
SELECT event_id, ts, ingested_at FROM {db}.events;

-- Duplicates stored before this migration (a re-publish with another ts or scope, which
-- FINAL does not collapse): keep the first stored copy of each event_id (earliest
-- ingested, then Kafka position), delete the others. Copies with the same sort key are
-- left to FINAL. `event_ids` keeps the id (a view sees inserts only).
DELETE FROM {db}.events
WHERE event_id IN (
    SELECT event_id FROM {db}.events
    GROUP BY event_id HAVING uniqExact(tenant, workflow, event_type, ts) > 1
)
AND (event_id, kafka_topic, kafka_partition, kafka_offset) NOT IN (
    SELECT event_id, kafka_topic, kafka_partition, kafka_offset FROM {db}.events
    ORDER BY ingested_at, kafka_topic, kafka_partition, kafka_offset
    LIMIT 1 BY event_id
);
