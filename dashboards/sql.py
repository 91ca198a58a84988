"""SQL shared by the dashboards, the alert rules and their tests.

Queries name tables without a database: the data source's `defaultDatabase` (the
configured `database`, `llmpulse` by default) resolves them, so the same JSON works for
any database name.
"""

from __future__ import annotations

# --- cost: one place that says which cost column the panels read ---------------------
#: Cost of one output event in USD, as priced by llmpulse (`price_usd`, migration 0003,
#: processors/pricing.py). The app-reported `cost_usd` stays beside it and is shown only
#: where the two are compared (REPORTED_COST_USD).
COST_USD = "ifNull(price_usd, 0)"
#: An output event llmpulse could not price (unknown model or provider, no usage).
UNPRICED = "price_usd IS NULL"
#: What the application itself reported; compared with our price, never summed into spend.
REPORTED_COST_USD = "ifNull(cost_usd, 0)"

# --- finding kinds the panels single out ----------------------------------------------
LOOP_FINDING = "kind LIKE '%loop%'"
BUDGET_FINDING = "kind LIKE 'budget%'"

# --- dashboard variable filters -------------------------------------------------------
FILTER_VARS = ("tenant", "workflow", "model", "environment")


def var_filter(*columns: str, prefix: str = "") -> str:
    """`$__conditionalAll` clauses for the dashboard variables, one per column.

    A column is filtered by the variable of the same name; All (or nothing selected)
    turns the clause into `1=1`. `${var:singlequote}` quotes single and multi values.
    """
    parts = []
    for col in columns:
        if col not in FILTER_VARS:
            raise ValueError(f"no dashboard variable for column {col!r}")
        parts.append(f"$__conditionalAll({prefix}{col} IN (${{{col}:singlequote}}), ${col})")
    return " AND ".join(parts)


#: events carry all four; the rollup views and findings carry fewer.
EVENTS_FILTER = var_filter("tenant", "workflow", "model", "environment")
CALLS_FILTER = var_filter("tenant", "workflow", "model")
SCOPE_FILTER = var_filter("tenant", "workflow")
FINDINGS_FILTER = var_filter("tenant", "workflow")
#: a control action's empty scope field means "every": a switch on all tenants shows under each.
CONTROLS_FILTER = " AND ".join(
    f"($__conditionalAll({c} IN (${{{c}:singlequote}}), ${c}) OR {c} = '')" for c in ("tenant", "workflow"))

#: open findings: finding ids with no `resolved` row yet.
OPEN_FINDINGS = """
SELECT
    finding_id,
    any(kind)        AS kind,
    any(severity)    AS severity,
    any(tenant)      AS tenant,
    any(workflow)    AS workflow,
    any(model)       AS model,
    any(trace_id)    AS trace_id,
    any(title)       AS title,
    min(detected_at) AS opened_at,
    max(value)       AS value,
    max(threshold)   AS threshold,
    max(wasted_usd)  AS wasted_usd
FROM (SELECT * FROM findings FINAL WHERE {where})
GROUP BY finding_id
HAVING countIf(status = 'resolved') = 0
"""


def open_findings(where: str) -> str:
    return OPEN_FINDINGS.format(where=where).strip()
