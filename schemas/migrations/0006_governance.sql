-- Decision rights (processors/governance.py): a change carries the eval gate it went live
-- on; `approved_by` (shared with tool calls) already exists. An `eval_gate` change is the
-- gate's own decision (`llmpulse gate --publish`), its result in `gate_result`.
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS gate_result LowCardinality(String) DEFAULT '' AFTER actor;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS gate_id String DEFAULT '' AFTER gate_result;
