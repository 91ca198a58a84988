-- Kill switches (schemas/controls.py). Every record of `llm.controls` is one row: an action
-- when it is created, and again when it is lifted or expires (state, updated_at, ended_by).
-- A re-delivered record has the same (action_id, state, updated_at) and collapses.
CREATE TABLE IF NOT EXISTS {db}.control_actions
(
    action_id     String,
    kind          LowCardinality(String),
    state         LowCardinality(String),
    mode          LowCardinality(String),
    source        LowCardinality(String),
    actor         String,
    finding_id    String,
    policy        LowCardinality(String),
    reason        String,
    tenant        LowCardinality(String),
    workflow      LowCardinality(String),
    model         LowCardinality(String),
    tool          LowCardinality(String),
    user_id       String,
    trace_id      String,
    route_to      LowCardinality(String),
    created_at    DateTime64(3, 'UTC'),
    updated_at    DateTime64(3, 'UTC'),
    expires_at    Nullable(DateTime64(3, 'UTC')),
    ended_by      String,
    ended_reason  String,
    recorded_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (action_id, updated_at, state)
TTL toDateTime(updated_at) + INTERVAL {ttl_days} DAY;

-- Enforced decisions are contract events (event_type 'decision', schemas/contract.py
-- Decision) stored in `events`; these are their columns.
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS decision LowCardinality(String) AFTER actor;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS checked LowCardinality(String) AFTER decision;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS control_kind LowCardinality(String) AFTER checked;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS control_mode LowCardinality(String) AFTER control_kind;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS action_id String AFTER control_mode;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS route_to LowCardinality(String) AFTER action_id;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS fallback LowCardinality(String) AFTER route_to;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS reason String AFTER fallback;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS decision_count UInt32 AFTER reason;
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS last_decision_ts Nullable(DateTime64(3, 'UTC')) AFTER decision_count;

-- The audit in one query: each action's latest state, with what its decisions refused.
--   SELECT * FROM llmpulse.control_audit ORDER BY created_at DESC
CREATE OR REPLACE VIEW {db}.control_audit AS
SELECT
    a.action_id                                   AS action_id,
    a.kind                                        AS kind,
    a.mode                                        AS mode,
    -- An action past expires_at is expired whether or not its `expired` record was written.
    if(a.state = 'active' AND a.expires_at <= now64(3), 'expired', a.state) AS state,
    if(a.source = 'person', a.actor, concat('policy ', a.policy)) AS who,
    a.finding_id                                  AS finding_id,
    a.reason                                      AS reason,
    a.tenant AS tenant, a.workflow AS workflow, a.model AS model, a.tool AS tool,
    a.user_id AS user_id, a.trace_id AS trace_id, a.route_to AS route_to,
    a.created_at                                  AS created_at,
    a.expires_at                                  AS expires_at,
    multiIf(a.state != 'active', a.updated_at, a.expires_at <= now64(3), a.expires_at, NULL) AS ended_at,
    if(a.state = 'active' AND a.expires_at <= now64(3), 'expiry', a.ended_by) AS ended_by,
    a.ended_reason                                AS ended_reason,
    d.denied                                      AS denied,
    d.routed                                      AS routed,
    d.approvals_requested                         AS approvals_requested,
    d.traces                                      AS traces_affected,
    d.first_decision                              AS first_decision,
    d.last_decision                               AS last_decision
FROM
(
    SELECT * FROM {db}.control_actions FINAL
    ORDER BY updated_at DESC, state = 'active'
    LIMIT 1 BY action_id
) AS a
LEFT JOIN
(
    SELECT
        action_id,
        sumIf(decision_count, decision = 'deny')           AS denied,
        sumIf(decision_count, decision = 'route')          AS routed,
        sumIf(decision_count, decision = 'needs_approval') AS approvals_requested,
        uniqExact(trace_id)                                AS traces,
        min(ts)                                            AS first_decision,
        max(coalesce(last_decision_ts, ts))                AS last_decision
    FROM {db}.events FINAL
    WHERE event_type = 'decision' AND action_id != ''
    GROUP BY action_id
) AS d USING (action_id);
