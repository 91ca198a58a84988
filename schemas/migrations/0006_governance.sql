-- Decision rights (processors/governance.py): a change carries the eval gate it went live
-- on; `approved_by` (shared with tool calls) already exists. An `eval_gate` change is the
-- gate's own decision (`llmpulse gate --publish`), its result in `gate_result`.
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS gate_result LowCardinality(String) DEFAULT '' AFTER actor;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS gate_id String DEFAULT '' AFTER gate_result;

-- Retention per workflow (governance `retention_days`): each row carries its workflow's days
-- (0: none of its own) and a second TTL rule drops it after them; the first rule is the
-- table-wide retention (`{ttl_days}`, kept in step by the migration runner).
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS retention_days UInt16 DEFAULT 0 AFTER gate_id;
ALTER TABLE {db}.events MODIFY TTL toDateTime(ts) + INTERVAL {ttl_days} DAY, toDateTime(ts) + toIntervalDay(retention_days) WHERE retention_days > 0;
