"""What the dashboards show: one spec per panel, its SQL and what its visualisation needs.

`build.py` turns these into grafana-foundation-sdk builders; the integration test runs
every `sql` here against seeded ClickHouse with the macros expanded as the plugin does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .sql import (
    BUDGET_FINDING,
    CALLS_FILTER,
    CONTROLS_FILTER,
    COST_USD,
    EVENTS_FILTER,
    FINDINGS_FILTER,
    LOOP_FINDING,
    REPORTED_COST_USD,
    SCOPE_FILTER,
    UNPRICED,
    open_findings,
    var_filter,
)

Viz = Literal["timeseries", "stat", "table", "barchart", "piechart"]

UID_PREFIX = "llmpulse-"
TRACE_UID = "llmpulse-trace"
FOLDER_UID = "llmpulse"
FOLDER_TITLE = "llmpulse"


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    viz: Viz
    sql: str
    unit: str = ""
    width: int = 12
    height: int = 8
    #: columns whose values link to the trace explorer
    trace_link_column: str | None = None
    #: the seed in the test has data for it, so the result must not be empty
    expect_rows: bool = True

    @property
    def query_type(self) -> str:
        return "timeSeries" if self.viz == "timeseries" else "table"


@dataclass(frozen=True)
class VariableSpec:
    name: str
    label: str
    sql: str | None = None  # None: a text box
    multi: bool = True
    include_all: bool = True


@dataclass(frozen=True)
class AnnotationSpec:
    name: str
    sql: str
    color: str = "orange"


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    panels: tuple[PanelSpec, ...]
    variables: tuple[VariableSpec, ...] = ()
    annotations: tuple[AnnotationSpec, ...] = ()
    time_from: str = "now-6h"
    refresh: str = "30s"
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- variables

STANDARD_VARIABLES: tuple[VariableSpec, ...] = (
    VariableSpec(
        "tenant", "Tenant",
        "SELECT DISTINCT tenant FROM events WHERE $__timeFilter(ts) AND tenant != '' ORDER BY tenant",
    ),
    VariableSpec(
        "workflow", "Workflow",
        "SELECT DISTINCT workflow FROM events WHERE $__timeFilter(ts) AND workflow != '' AND "
        + var_filter("tenant") + " ORDER BY workflow",
    ),
    VariableSpec(
        "model", "Model",
        "SELECT DISTINCT model FROM events WHERE $__timeFilter(ts) AND model != '' AND "
        + var_filter("tenant", "workflow") + " ORDER BY model",
    ),
    VariableSpec(
        "environment", "Environment",
        "SELECT DISTINCT environment FROM events WHERE $__timeFilter(ts) AND environment != '' ORDER BY environment",
    ),
)

TRACE_VARIABLE = VariableSpec("trace_id", "Trace id", None, multi=False, include_all=False)

# ---------------------------------------------------------------- 1. Overview (SRE)

_OVERVIEW = DashboardSpec(
    uid=UID_PREFIX + "overview",
    title="LLM apps: overview (SRE)",
    description=(
        "Is the LLM fleet healthy right now? Call rate, error and refusal rates, latency "
        "percentiles, open findings by severity, and the health of the llmpulse pipeline "
        "itself (ingest delay, dead letters). Start here when paged."
    ),
    tags=("llmpulse", "sre"),
    variables=STANDARD_VARIABLES,
    annotations=(
        AnnotationSpec(
            "Kill switches",
            "SELECT created_at AS time, concat(kind, ' (', mode, ', ', who, '): ', reason) AS text, "
            "arrayStringConcat(arrayFilter(x -> x != '', [kind, mode, state, workflow]), ',') AS tags "
            f"FROM control_audit WHERE $__timeFilter(created_at) AND {CONTROLS_FILTER} ORDER BY time",
            color="red",
        ),
    ),
    panels=(
        PanelSpec(
            "Calls in range", "Model calls (output events) in the selected range.", "stat",
            f"SELECT count() AS calls FROM events FINAL WHERE event_type = 'output' AND $__timeFilter(ts) AND {EVENTS_FILTER}",
            unit="short", width=6, height=4,
        ),
        PanelSpec(
            "Error rate", "Share of model calls that ended in error or timeout.", "stat",
            "SELECT countIf(status IN ('error', 'timeout')) / greatest(count(), 1) AS error_rate "
            f"FROM events FINAL WHERE event_type = 'output' AND $__timeFilter(ts) AND {EVENTS_FILTER}",
            unit="percentunit", width=6, height=4,
        ),
        PanelSpec(
            "p95 latency", "95th percentile of model call latency in the range.", "stat",
            "SELECT quantile(0.95)(latency_ms) AS p95_latency_ms "
            f"FROM events FINAL WHERE event_type = 'output' AND $__timeFilter(ts) AND {EVENTS_FILTER}",
            unit="ms", width=6, height=4,
        ),
        PanelSpec(
            "Open critical/high findings", "Findings of severity critical or high that have not resolved.", "stat",
            "SELECT count() AS open_findings FROM ("
            + open_findings(f"severity IN ('critical', 'high') AND {FINDINGS_FILTER}") + ")",
            unit="short", width=6, height=4,
        ),
        PanelSpec(
            "Calls per second", "Model calls per second, from the per-minute rollup.", "timeseries",
            "SELECT $__timeInterval(minute) AS time, sum(calls) / greatest($__interval_s, 60) AS calls_per_s "
            f"FROM calls_per_minute WHERE $__timeFilter(minute) AND {CALLS_FILTER} "
            "GROUP BY time ORDER BY time",
            unit="reqps",
        ),
        PanelSpec(
            "Error and refusal rate", "Errors (error, timeout) and refusals as a share of calls.", "timeseries",
            "SELECT $__timeInterval(minute) AS time, "
            "sum(errors) / greatest(sum(calls), 1) AS error_rate, "
            "sum(refusals) / greatest(sum(calls), 1) AS refusal_rate "
            f"FROM calls_per_minute WHERE $__timeFilter(minute) AND {CALLS_FILTER} "
            "GROUP BY time ORDER BY time",
            unit="percentunit",
        ),
        PanelSpec(
            "Latency p50 / p95 / p99", "Model call latency percentiles, exact over raw events.", "timeseries",
            "SELECT $__timeInterval(ts) AS time, quantile(0.5)(latency_ms) AS p50, "
            "quantile(0.95)(latency_ms) AS p95, quantile(0.99)(latency_ms) AS p99 "
            f"FROM events FINAL WHERE event_type = 'output' AND $__timeFilter(ts) AND {EVENTS_FILTER} "
            "GROUP BY time ORDER BY time",
            unit="ms",
        ),
        PanelSpec(
            "Open findings by severity", "Unresolved findings of every severity.", "barchart",
            "SELECT severity, count() AS open_findings FROM ("
            + open_findings(FINDINGS_FILTER)
            + ") GROUP BY severity ORDER BY indexOf(['critical', 'high', 'medium', 'low', 'info'], severity)",
            unit="short",
        ),
        PanelSpec(
            "Open findings", "Unresolved findings, newest first; the trace id opens the trace explorer.", "table",
            "SELECT opened_at, severity, kind, tenant, workflow, model, title, value, threshold, trace_id FROM ("
            + open_findings(FINDINGS_FILTER)
            + ") ORDER BY opened_at DESC LIMIT 100",
            width=24, trace_link_column="trace_id",
        ),
        PanelSpec(
            "Kill switches", "Control actions created in range, newest first (llmpulse.control_audit): who or "
            "which policy threw them, on what scope, in which mode, their state now, and what their "
            "enforced decisions refused in the apps. The trace id opens the trace explorer.", "table",
            "SELECT created_at, kind, mode, state, who, reason, tenant, workflow, model, tool, user_id, trace_id, "
            "route_to, expires_at, ended_at, ended_by, denied, routed, approvals_requested, finding_id "
            f"FROM control_audit WHERE $__timeFilter(created_at) AND {CONTROLS_FILTER} "
            "ORDER BY created_at DESC LIMIT 100",
            width=24, trace_link_column="trace_id",
        ),
        PanelSpec(
            "Events per second by type", "Every event type the pipeline stored, per second.", "timeseries",
            "SELECT $__timeInterval(minute) AS time, event_type, sum(events) / greatest($__interval_s, 60) AS events_per_s "
            f"FROM events_per_minute WHERE $__timeFilter(minute) AND {SCOPE_FILTER} "
            "GROUP BY time, event_type ORDER BY time",
            unit="reqps", width=8,
        ),
        PanelSpec(
            "Ingest delay p95 (pipeline lag)",
            "Time from event to row in ClickHouse (ingested_at - ts): the consumer lag of the pipeline in seconds.",
            "timeseries",
            "SELECT $__timeInterval(ts) AS time, "
            "quantile(0.95)(dateDiff('millisecond', ts, ingested_at)) / 1000 AS ingest_delay_p95_s "
            f"FROM events FINAL WHERE $__timeFilter(ts) AND {EVENTS_FILTER} GROUP BY time ORDER BY time",
            unit="s", width=8,
        ),
        PanelSpec(
            "Dead letters per minute", "Messages that failed validation and went to the DLQ.", "timeseries",
            "SELECT $__timeInterval(received_at) AS time, count() * 60 / $__interval_s AS dead_letters_per_min "
            "FROM dead_letters FINAL WHERE $__timeFilter(received_at) GROUP BY time ORDER BY time",
            unit="short", width=8,
        ),
        PanelSpec(
            "Dead letter reasons", "Why messages were rejected (the payloads stay in the DLQ topic).", "table",
            "SELECT reason, kafka_topic, count() AS messages, max(received_at) AS last_seen "
            "FROM dead_letters FINAL WHERE $__timeFilter(received_at) "
            "GROUP BY reason, kafka_topic ORDER BY messages DESC LIMIT 50",
            width=24, height=6,
        ),
    ),
)

# ---------------------------------------------------------------- 2. Cost & budgets

_OUTPUTS = f"event_type = 'output' AND $__timeFilter(ts) AND {EVENTS_FILTER}"

_COST = DashboardSpec(
    uid=UID_PREFIX + "cost",
    title="LLM apps: cost & budgets",
    description=(
        "Where does the money go? Spend (priced by llmpulse from token usage, not the "
        "app-reported cost) by tenant, workflow, model and prompt version, budget burn per "
        "scope, cost per call, spend wasted in agent loops, models llmpulse cannot price, "
        "and how far the apps' own cost figures drift from ours."
    ),
    tags=("llmpulse", "cost"),
    variables=STANDARD_VARIABLES,
    panels=(
        PanelSpec("Spend in range", "Total priced spend of model calls.", "stat",
                  f"SELECT sum({COST_USD}) AS spend_usd FROM events FINAL WHERE {_OUTPUTS}",
                  unit="currencyUSD", width=6, height=4),
        PanelSpec("Cost per call", "Average spend per priced model call.", "stat",
                  f"SELECT sum({COST_USD}) / greatest(countIf(NOT ({UNPRICED})), 1) AS cost_per_call_usd "
                  f"FROM events FINAL WHERE {_OUTPUTS}",
                  unit="currencyUSD", width=6, height=4),
        PanelSpec("Wasted in loops", "Spend attributed to loop findings in the range.", "stat",
                  f"SELECT sum(ifNull(wasted_usd, 0)) AS wasted_usd FROM findings FINAL "
                  f"WHERE {LOOP_FINDING} AND status = 'open' AND $__timeFilter(event_ts) AND {FINDINGS_FILTER}",
                  unit="currencyUSD", width=6, height=4),
        PanelSpec("Unpriced calls", "Model calls llmpulse could not price: their spend is missing from every total.",
                  "stat",
                  f"SELECT countIf({UNPRICED}) AS unpriced_calls FROM events FINAL WHERE {_OUTPUTS}",
                  unit="short", width=6, height=4),
        PanelSpec("Spend by model", "Spend per interval, one series per model.", "timeseries",
                  f"SELECT $__timeInterval(ts) AS time, model, sum({COST_USD}) AS spend_usd "
                  f"FROM events FINAL WHERE {_OUTPUTS} GROUP BY time, model ORDER BY time",
                  unit="currencyUSD"),
        PanelSpec("Cost per call over time", "Average spend per model call.", "timeseries",
                  f"SELECT $__timeInterval(ts) AS time, sum({COST_USD}) / greatest(count(), 1) AS cost_per_call_usd "
                  f"FROM events FINAL WHERE {_OUTPUTS} GROUP BY time ORDER BY time",
                  unit="currencyUSD"),
        PanelSpec("Priced vs reported cost",
                  "Our price (price_usd) against the cost the apps reported (cost_usd), per interval: "
                  "a gap means stale prices on one side or unreported usage.", "timeseries",
                  "SELECT $__timeInterval(minute) AS time, sum(ifNull(spend_usd, 0)) AS priced_usd, "
                  "sum(ifNull(reported_cost_usd, 0)) AS reported_usd "
                  f"FROM calls_per_minute WHERE $__timeFilter(minute) AND {CALLS_FILTER} "
                  "GROUP BY time ORDER BY time",
                  unit="currencyUSD", width=24),
        PanelSpec("Spend by tenant", "Who spends what.", "barchart",
                  f"SELECT tenant, sum({COST_USD}) AS spend_usd FROM events FINAL WHERE {_OUTPUTS} "
                  "GROUP BY tenant ORDER BY spend_usd DESC LIMIT 20",
                  unit="currencyUSD", width=8),
        PanelSpec("Spend by workflow", "Which workflows cost most.", "barchart",
                  f"SELECT workflow, sum({COST_USD}) AS spend_usd FROM events FINAL WHERE {_OUTPUTS} "
                  "GROUP BY workflow ORDER BY spend_usd DESC LIMIT 20",
                  unit="currencyUSD", width=8),
        PanelSpec("Spend by model (share)", "Share of spend per model.", "piechart",
                  f"SELECT model, sum({COST_USD}) AS spend_usd FROM events FINAL WHERE {_OUTPUTS} "
                  "GROUP BY model ORDER BY spend_usd DESC",
                  unit="currencyUSD", width=8),
        PanelSpec("Spend by tenant, workflow, model and prompt version",
                  "The breakdown behind the totals: calls, tokens, spend and cost per call.", "table",
                  "SELECT tenant, workflow, model, prompt_version, count() AS calls, "
                  "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
                  f"sum({COST_USD}) AS spend_usd, sum({COST_USD}) / greatest(count(), 1) AS cost_per_call_usd "
                  f"FROM events FINAL WHERE {_OUTPUTS} "
                  "GROUP BY tenant, workflow, model, prompt_version ORDER BY spend_usd DESC LIMIT 200",
                  width=24),
        PanelSpec("Budget burn per scope",
                  "Latest budget finding per scope: spend (value) against the budget (threshold).", "table",
                  "SELECT tenant, workflow, kind, argMax(status, detected_at) AS status, "
                  "argMax(value, detected_at) AS spend_usd, argMax(threshold, detected_at) AS budget_usd, "
                  "argMax(value, detected_at) / nullIf(argMax(threshold, detected_at), 0) AS burn, "
                  "max(detected_at) AS last_seen "
                  f"FROM findings FINAL WHERE {BUDGET_FINDING} AND $__timeFilter(event_ts) AND {FINDINGS_FILTER} "
                  "GROUP BY tenant, workflow, kind ORDER BY burn DESC",
                  width=12),
        PanelSpec("Unpriced models",
                  "Models llmpulse has no price for (add a price override); reported_cost_usd is what the apps said.",
                  "table",
                  "SELECT provider, model, count() AS unpriced_calls, "
                  f"sum({REPORTED_COST_USD}) AS reported_cost_usd, max(ts) AS last_seen "
                  f"FROM events FINAL WHERE {_OUTPUTS} AND {UNPRICED} "
                  "GROUP BY provider, model ORDER BY unpriced_calls DESC",
                  width=12),
        PanelSpec("Wasted spend in loops", "Loop findings with their wasted spend; open the trace to see the loop.",
                  "table",
                  "SELECT detected_at, tenant, workflow, model, title, value AS repeats, wasted_usd, status, trace_id "
                  f"FROM findings FINAL WHERE {LOOP_FINDING} AND $__timeFilter(event_ts) AND {FINDINGS_FILTER} "
                  "ORDER BY wasted_usd DESC LIMIT 100",
                  width=24, trace_link_column="trace_id"),
    ),
)

# ---------------------------------------------------------------- 3. Agents & loops

_TOOLS = f"event_type = 'tool_call' AND $__timeFilter(ts) AND {EVENTS_FILTER}"

_AGENTS = DashboardSpec(
    uid=UID_PREFIX + "agents",
    title="LLM apps: agents & loops",
    description=(
        "How do agents behave? Steps per trace, the mix of tool calls and their error "
        "rates and latency, and loop findings with links to the trace that looped."
    ),
    tags=("llmpulse", "agents"),
    variables=STANDARD_VARIABLES,
    panels=(
        PanelSpec("Steps per trace (p50 / p95 / max)", "Prompts and tool calls per trace, by trace start.",
                  "timeseries",
                  "SELECT $__timeInterval(started_at) AS time, quantile(0.5)(steps) AS p50_steps, "
                  "quantile(0.95)(steps) AS p95_steps, max(steps) AS max_steps "
                  f"FROM traces WHERE $__timeFilter(started_at) AND {SCOPE_FILTER} GROUP BY time ORDER BY time",
                  unit="short"),
        PanelSpec("Traces by number of steps", "How many traces took N steps.", "barchart",
                  "SELECT toString(steps) AS steps_per_trace, count() AS trace_count FROM traces "
                  f"WHERE $__timeFilter(started_at) AND {SCOPE_FILTER} GROUP BY steps ORDER BY steps",
                  unit="short"),
        PanelSpec("Tool-call mix", "Share of tool calls per tool.", "piechart",
                  f"SELECT tool_name, count() AS calls FROM events FINAL WHERE {_TOOLS} "
                  "GROUP BY tool_name ORDER BY calls DESC",
                  unit="short", width=8),
        PanelSpec("Tool error rate", "Errors and timeouts as a share of calls, per tool.", "timeseries",
                  "SELECT $__timeInterval(ts) AS time, tool_name, "
                  "countIf(status IN ('error', 'timeout')) / greatest(count(), 1) AS error_rate "
                  f"FROM events FINAL WHERE {_TOOLS} GROUP BY time, tool_name ORDER BY time",
                  unit="percentunit", width=16),
        PanelSpec("Tools", "Calls, error rate, latency and side effects per tool.", "table",
                  "SELECT tool_name, count() AS calls, countIf(status IN ('error', 'timeout')) AS errors, "
                  "errors / greatest(calls, 1) AS error_rate, quantile(0.95)(duration_ms) AS p95_duration_ms, "
                  "countIf(side_effect IN ('write', 'irreversible')) AS writes, "
                  "countIf(side_effect = 'irreversible' AND approved_by = '') AS unapproved_irreversible "
                  f"FROM events FINAL WHERE {_TOOLS} GROUP BY tool_name ORDER BY calls DESC",
                  width=24),
        PanelSpec("Loop findings", "Detected tool/agent loops; the trace id opens the trace explorer.", "table",
                  "SELECT detected_at, severity, status, tenant, workflow, title, value AS repeats, wasted_usd, trace_id "
                  f"FROM findings FINAL WHERE {LOOP_FINDING} AND $__timeFilter(event_ts) AND {FINDINGS_FILTER} "
                  "ORDER BY detected_at DESC LIMIT 100",
                  width=24, trace_link_column="trace_id"),
        PanelSpec("Longest traces", "Traces with the most steps.", "table",
                  "SELECT started_at, tenant, workflow, trace_id, steps, tool_calls, duration_ms, spend_usd, errors, trace_status "
                  f"FROM traces WHERE $__timeFilter(started_at) AND {SCOPE_FILTER} ORDER BY steps DESC LIMIT 50",
                  width=24, trace_link_column="trace_id"),
    ),
)

# ---------------------------------------------------------------- 4. Quality & changes

_EVALS = f"event_type = 'eval' AND $__timeFilter(ts) AND {var_filter('tenant', 'workflow', 'environment')}"
_CHANGES = f"event_type = 'change' AND $__timeFilter(ts) AND {var_filter('tenant', 'environment')}"
_DEPLOYS = _CHANGES + " AND change_kind != 'eval_gate'"  # a gate's decision is evidence, not a change

_QUALITY = DashboardSpec(
    uid=UID_PREFIX + "quality",
    title="LLM apps: quality & changes",
    description=(
        "Did a change make things better or worse? Eval pass rates over time with every "
        "model swap, prompt edit, config change and rollback drawn as an annotation, and a "
        "before/after comparison around the latest change."
    ),
    tags=("llmpulse", "quality"),
    variables=STANDARD_VARIABLES,
    annotations=(
        AnnotationSpec(
            "Changes",
            "SELECT ts AS time, concat(change_kind, ': ', description) AS text, "
            "arrayStringConcat(arrayFilter(x -> x != '', [change_kind, workflow, actor]), ',') AS tags "
            f"FROM events FINAL WHERE {_CHANGES} ORDER BY time",
        ),
    ),
    panels=(
        PanelSpec("Eval pass rate", "Share of evals that passed, per eval.", "timeseries",
                  "SELECT $__timeInterval(ts) AS time, eval_name, "
                  "countIf(passed) / greatest(countIf(passed IS NOT NULL), 1) AS pass_rate "
                  f"FROM events FINAL WHERE {_EVALS} GROUP BY time, eval_name ORDER BY time",
                  unit="percentunit", width=16),
        PanelSpec("Evals", "Pass rate and mean score per eval.", "table",
                  "SELECT eval_name, count() AS evals, countIf(passed) / greatest(countIf(passed IS NOT NULL), 1) AS pass_rate, "
                  f"avg(score) AS mean_score FROM events FINAL WHERE {_EVALS} GROUP BY eval_name ORDER BY eval_name",
                  width=8),
        PanelSpec("Before / after the latest change",
                  "Calls, latency, errors, cost and eval pass rate before and after the latest change in range.",
                  "table",
                  "WITH (SELECT max(ts) FROM events FINAL WHERE " + _DEPLOYS + ") AS change_ts "
                  "SELECT if(ts < change_ts, 'before', 'after') AS period, change_ts, "
                  "countIf(event_type = 'output') AS calls, "
                  "quantileIf(0.95)(latency_ms, event_type = 'output') AS p95_latency_ms, "
                  "countIf(event_type = 'output' AND status IN ('error', 'timeout')) / greatest(calls, 1) AS error_rate, "
                  f"sumIf({COST_USD}, event_type = 'output') / greatest(calls, 1) AS cost_per_call_usd, "
                  "countIf(passed) / greatest(countIf(passed IS NOT NULL), 1) AS eval_pass_rate "
                  f"FROM events FINAL WHERE event_type IN ('output', 'eval') AND $__timeFilter(ts) AND {EVENTS_FILTER} "
                  "GROUP BY period ORDER BY period DESC",
                  width=24),
        PanelSpec("Changes", "Every change event in range, who made and approved it, and its eval gate "
                  "(eval_gate rows are the gate decisions).", "table",
                  "SELECT ts, change_kind, workflow, description, from_value, to_value, actor, approved_by, "
                  "gate_result, gate_id "
                  f"FROM events FINAL WHERE {_CHANGES} ORDER BY ts DESC LIMIT 100",
                  width=24),
        PanelSpec("Latency p95 by prompt version", "Whether a prompt version changed latency.", "timeseries",
                  "SELECT $__timeInterval(ts) AS time, prompt_version, quantile(0.95)(latency_ms) AS p95_latency_ms "
                  f"FROM events FINAL WHERE {_OUTPUTS} GROUP BY time, prompt_version ORDER BY time",
                  unit="ms", width=24),
    ),
)

# ---------------------------------------------------------------- 5. Trace explorer

_TRACE = "trace_id = ${trace_id:sqlstring}"

_TRACE_EXPLORER = DashboardSpec(
    uid=TRACE_UID,
    title="LLM apps: trace explorer",
    description=(
        "One trace from prompt to tool calls to output: the timeline with tokens, cost, "
        "latency and status of every step, and the findings raised on it. Set trace_id, "
        "or follow a trace link from any other llmpulse dashboard."
    ),
    tags=("llmpulse", "traces"),
    variables=(TRACE_VARIABLE,),
    time_from="now-24h",
    refresh="",
    panels=(
        PanelSpec("Trace summary", "Start, end, steps, tokens and status of the trace.", "table",
                  "SELECT trace_id, tenant, workflow, started_at, ended_at, duration_ms, steps, tool_calls, "
                  "input_tokens, output_tokens, spend_usd, unpriced_outputs, models, errors, trace_status "
                  f"FROM traces WHERE {_TRACE}",
                  width=24, height=5),
        PanelSpec("Timeline", "Every event of the trace in order: what was asked, called and answered.", "table",
                  "SELECT ts, dateDiff('millisecond', min(ts) OVER (), ts) AS offset_ms, event_type, span_id, "
                  "parent_span_id, if(event_type = 'tool_call', tool_name, model) AS name, status, "
                  "coalesce(latency_ms, duration_ms) AS duration_ms, input_tokens, output_tokens, "
                  "price_usd, "
                  "substring(multiIf(event_type = 'prompt', messages, event_type = 'tool_call', "
                  "concat(arguments, ' -> ', result), event_type = 'eval', concat(eval_name, ': ', comment), content), 1, 300) AS detail "
                  f"FROM events FINAL WHERE {_TRACE} ORDER BY ts, event_type",
                  width=24, height=12),
        PanelSpec("Tokens and cost along the trace", "Cumulative tokens and spend as the trace runs.", "timeseries",
                  "SELECT ts AS time, sum(input_tokens + output_tokens) OVER (ORDER BY ts, event_id) AS tokens, "
                  f"sum({COST_USD}) OVER (ORDER BY ts, event_id) AS spend_usd "
                  f"FROM events FINAL WHERE {_TRACE} ORDER BY time",
                  unit="short", width=12),
        PanelSpec("Findings on this trace", "Loops, budget and contract findings raised on the trace.", "table",
                  "SELECT detected_at, kind, severity, status, title, value, threshold, wasted_usd "
                  f"FROM findings FINAL WHERE {_TRACE} ORDER BY detected_at",
                  width=12),
        PanelSpec("Recent traces", "Pick a trace: the id sets trace_id on this dashboard.", "table",
                  "SELECT started_at, tenant, workflow, trace_id, steps, duration_ms, trace_status "
                  "FROM traces WHERE $__timeFilter(started_at) ORDER BY started_at DESC LIMIT 100",
                  width=24, trace_link_column="trace_id"),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (_OVERVIEW, _COST, _AGENTS, _QUALITY, _TRACE_EXPLORER)
