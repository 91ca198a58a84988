"""Every dashboard panel, variable, annotation and alert query runs against ClickHouse (chDB).

The database is built from the migration files alone (placeholders replaced, split on
`;`), seeded with realistic rows relative to now, and each query is expanded the way
Grafana + grafana-clickhouse-datasource expand it before it reaches ClickHouse.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest


from llmpulse.dashboards import alerts, build  # noqa: E402
from llmpulse.dashboards.definitions import DASHBOARDS, PanelSpec  # noqa: E402
from llmpulse.dashboards.macros import (  # noqa: E402
    ALL,
    MacroError,
    QueryContext,
    Variable,
    expand,
    expand_alert,
    remaining_placeholders,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted((ROOT / "schemas" / "migrations").glob("*.sql"))
assert any(p.name.startswith("0003_") for p in MIGRATIONS), "the cost columns (0003) must be applied too"
DB = "llmpulse_dash_test"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
LOOP_TRACE = "trace-loop-0001"
TENANTS = ("acme", "globex")
WORKFLOWS = ("support-bot", "research-agent")
MODELS = ("gpt-4o", "claude-sonnet-4")
ENVIRONMENTS = ("prod", "staging")


# ------------------------------------------------------------------------- macros alone


def _ctx(**variables) -> QueryContext:
    return QueryContext(
        time_from=datetime(2024, 1, 1, 0, 0, tzinfo=timezone.utc),
        time_to=datetime(2024, 1, 1, 6, 0, tzinfo=timezone.utc),
        interval=timedelta(seconds=20),
        variables=variables,
    )


def test_time_macros_expand_as_the_plugin_does():
    c = _ctx()
    assert expand("WHERE $__timeFilter(ts)", c) == "WHERE ts >= toDateTime(1704067200) AND ts <= toDateTime(1704088800)"
    assert expand("WHERE $__timeFilter_ms(ts)", c) == (
        "WHERE ts >= fromUnixTimestamp64Milli(1704067200000) AND ts <= fromUnixTimestamp64Milli(1704088800000)")
    assert expand("$__fromTime, $__toTime_ms", c) == "toDateTime(1704067200), fromUnixTimestamp64Milli(1704088800000)"
    assert expand("$__timeInterval(ts)", c) == "toStartOfInterval(toDateTime(ts), INTERVAL 20 second)"
    assert expand("$__timeInterval_ms(ts)", c) == "toStartOfInterval(toDateTime64(ts, 3), INTERVAL 20000 millisecond)"
    assert expand("$__interval_s", c) == "20"
    assert expand("$__dateFilter(d)", c) == "d >= toDate('2024-01-01') AND d <= toDate('2024-01-01')"
    assert expand("$__dt(d, t)", c) == (
        "(d >= toDate('2024-01-01') AND d <= toDate('2024-01-01')) AND "
        "(t >= toDateTime(1704067200) AND t <= toDateTime(1704088800))")
    # nested brackets stay one argument
    assert expand("$__timeFilter(toDateTime(ts, 'UTC'))", c).startswith("toDateTime(ts, 'UTC') >= ")
    # no args taken after a space
    assert expand("$__fromTime (1)", c) == "toDateTime(1704067200) (1)"
    with pytest.raises(MacroError):
        expand("$__timeFilter(ts", c)
    with pytest.raises(MacroError):
        expand("$__timeFilter(a, b)", c)


def test_variables_and_conditional_all():
    sql = "WHERE $__conditionalAll(tenant IN (${tenant:singlequote}), $tenant) AND w = '$workflow'"
    assert expand(sql, _ctx(tenant=ALL, workflow="x")) == "WHERE 1=1 AND w = 'x'"
    assert expand(sql, _ctx(tenant=["a", "b'c"], workflow="x")) == (
        "WHERE tenant IN ('a','b\\'c') AND w = 'x'")
    assert expand(sql, _ctx(tenant="", workflow="x")) == "WHERE 1=1 AND w = 'x'"
    # the plugin's own format for multi-values without an explicit format
    assert expand("IN ($tenant)", _ctx(tenant=["a", "b"])) == "IN ('a','b')"
    assert expand("IN (${tenant})", _ctx(tenant=Variable(ALL, options=["a", "b"]))) == "IN ('a','b')"
    assert expand("= ${t:sqlstring}", _ctx(t="it's")) == "= 'it''s'"
    assert expand("$__from $__to", _ctx()) == "1704067200000 1704088800000"
    with pytest.raises(MacroError):
        expand_alert("WHERE tenant = '$tenant'", _ctx())


# ------------------------------------------------------------------------- seeded chDB


def _apply_migrations(client) -> None:
    client.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for path in MIGRATIONS:
        text = path.read_text().replace("{db}", DB).replace("{ttl_days}", "3650")
        text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
        for stmt in text.split(";"):
            if stmt.strip():
                client.command(stmt)


def _ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=(dt.microsecond // 1000) * 1000)


def _seed(client) -> dict:
    events: list[dict] = []
    n = 0

    def ev(**kw):
        nonlocal n
        n += 1
        row = {"event_id": f"e{n:06d}", "schema_version": "1", "kafka_topic": "llm.events",
               "kafka_partition": n % 4, "kafka_offset": n}
        row.update(kw)
        row["ts"] = _ms(row["ts"])
        row["ingested_at"] = _ms(row["ts"] + timedelta(milliseconds=150 + (n % 7) * 40))
        events.append(row)

    for i in range(120):
        tenant = TENANTS[i % 2]
        workflow = WORKFLOWS[(i // 2) % 2]
        model = MODELS[(i // 3) % 2]
        env = ENVIRONMENTS[0] if i % 5 else ENVIRONMENTS[1]
        trace = f"trace-{i:04d}"
        t0 = NOW - timedelta(minutes=170) + timedelta(seconds=80 * i)
        base = dict(trace_id=trace, tenant=tenant, workflow=workflow, environment=env, app="demo",
                    provider="openai" if model.startswith("gpt") else "anthropic", model=model,
                    prompt_version="v2" if i >= 60 else "v1")
        ev(event_type="prompt", ts=t0, span_id=f"{trace}-p", messages='[{"role":"user","content":"hi"}]',
           tools_offered=["search", "fetch"], **base)
        for k in range(i % 3):
            ev(event_type="tool_call", ts=t0 + timedelta(milliseconds=300 + 200 * k), span_id=f"{trace}-t{k}",
               parent_span_id=f"{trace}-p", tool_name=("search", "fetch")[k % 2], tool_call_id=f"{trace}-c{k}",
               arguments='{"q":"x"}', status="error" if (i + k) % 9 == 0 else "ok",
               duration_ms=120.0 + 10 * k, result="ok", side_effect="read", **base)
        status = "error" if (tenant == "acme" and workflow == "support-bot" and i % 3 == 0) else (
            "refusal" if i % 17 == 0 else "ok")
        ev(event_type="output", ts=t0 + timedelta(seconds=2), span_id=f"{trace}-o", parent_span_id=f"{trace}-p",
           status=status, latency_ms=800.0 + 37 * (i % 40), ttft_ms=200.0, finish_reason="stop",
           content="answer", input_tokens=1000 + i, output_tokens=200 + i, cache_read_tokens=100,
           # price_usd: llmpulse's price (None: a model it cannot price); cost_usd: what the app reported
           price_usd=None if i % 10 == 2 else 0.002 + 0.0001 * i,
           cost_usd=None if i % 10 == 4 else round(0.0021 + 0.0001 * i, 6), **base)
        if i % 2 == 0:
            ev(event_type="eval", ts=t0 + timedelta(seconds=3), span_id=f"{trace}-e",
               eval_name="faithfulness", score=0.5 + (i % 5) / 10, passed=(i % 4 != 0),
               evaluator="llm-judge", target_span_id=f"{trace}-o", **base)

    # the last five minutes: a burst with a bad tenant/workflow for the rollup alerts
    for k in range(60):
        bad = k % 2 == 0
        base = dict(trace_id=f"burst-{k:03d}", tenant="acme" if bad else "globex",
                    workflow="support-bot" if bad else "research-agent", environment="prod", app="demo",
                    provider="openai", model="gpt-4o", prompt_version="v2")
        ev(event_type="output", ts=NOW - timedelta(seconds=290 - 4 * k), span_id=f"burst-{k}-o",
           status="error" if bad and k % 4 == 0 else "ok", latency_ms=30_000.0 if bad else 700.0,
           input_tokens=900, output_tokens=150, cost_usd=0.003, price_usd=0.0029, **base)

    # an agent loop: the same tool call eleven times in one trace
    loop_base = dict(trace_id=LOOP_TRACE, tenant="acme", workflow="research-agent", environment="prod",
                     app="demo", provider="openai", model="gpt-4o", prompt_version="v2")
    t0 = NOW - timedelta(minutes=30)
    ev(event_type="prompt", ts=t0, span_id="loop-p", messages='[{"role":"user","content":"find"}]', **loop_base)
    for k in range(11):
        ev(event_type="tool_call", ts=t0 + timedelta(seconds=1 + k), span_id=f"loop-t{k}", parent_span_id="loop-p",
           tool_name="search", tool_call_id=f"loop-c{k}", arguments='{"q":"same"}', status="ok",
           duration_ms=90.0, result="nothing", side_effect="read", **loop_base)
        ev(event_type="output", ts=t0 + timedelta(seconds=1.5 + k), span_id=f"loop-o{k}", parent_span_id="loop-p",
           status="ok", latency_ms=900.0, input_tokens=2000, output_tokens=50, cost_usd=0.01, price_usd=0.0105,
           **loop_base)

    for j, (kind, desc) in enumerate((("prompt_edit", "v1 -> v2"), ("model_swap", "gpt-4o-mini -> gpt-4o"))):
        ev(event_type="change", ts=NOW - timedelta(minutes=90 - 30 * j), trace_id="", tenant="acme",
           workflow="support-bot", environment="prod", change_kind=kind, description=desc,
           from_value="a", to_value="b", actor="deploy-bot")

    # the loop's halt denied three more calls (one aggregated decision event)
    ev(event_type="decision", ts=t0 + timedelta(seconds=13), trace_id=LOOP_TRACE, tenant="acme",
       workflow="research-agent", environment="prod", model="gpt-4o", decision="deny", checked="model",
       control_kind="halt_trace", control_mode="enforce", action_id="a-halt", decision_count=3,
       last_decision_ts=_ms(t0 + timedelta(seconds=15)), reason="tool_loop")

    cols = sorted({k for row in events for k in row})
    defaults = {"attributes": {}, "tools_offered": [], "kafka_partition": 0, "kafka_offset": 0, "decision_count": 0,
                "last_decision_ts": None}
    nullable = {"duration_ms", "latency_ms", "ttft_ms", "cost_usd", "price_usd", "score", "passed"}
    numeric = {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"}
    data = [[row.get(c, defaults.get(c, None if c in nullable else 0 if c in numeric else "")) for c in cols]
            for row in events]
    client.insert(f"{DB}.events", data, column_names=cols)

    dl_cols = ["received_at", "reason", "size_bytes", "kafka_topic", "kafka_partition", "kafka_offset"]
    client.insert(f"{DB}.dead_letters", [
        [_ms(NOW - timedelta(minutes=5 * k)), "unknown field 'foo'" if k % 2 else "ts is not epoch ms",
         300 + k, "llm.events", k % 4, 10_000 + k] for k in range(6)
    ], column_names=dl_cols)

    f_cols = ["finding_id", "detected_at", "event_ts", "kind", "severity", "status", "tenant", "workflow",
              "model", "trace_id", "title", "value", "threshold", "evidence", "wasted_usd"]
    t = _ms(NOW - timedelta(minutes=29))
    findings = [
        ["f-loop", t, t, "tool_loop", "critical", "open", "acme", "research-agent", "gpt-4o", LOOP_TRACE,
         "search called 11 times with the same arguments", 11.0, 5.0, '{"tool":"search"}', 0.1],
        ["f-budget", t, t, "budget_daily", "high", "open", "globex", "support-bot", "", "",
         "daily budget 85% used", 85.0, 100.0, "{}", None],
        ["f-old", t - timedelta(minutes=60), t - timedelta(minutes=60), "tool_loop", "high", "open", "globex",
         "research-agent", "claude-sonnet-4", "trace-0003", "fetch loop", 6.0, 5.0, "{}", 0.02],
        ["f-old", t - timedelta(minutes=40), t - timedelta(minutes=60), "tool_loop", "high", "resolved", "globex",
         "research-agent", "claude-sonnet-4", "trace-0003", "fetch loop", 6.0, 5.0, "{}", 0.02],
        ["f-budget-acme", t, t, "budget_monthly", "medium", "open", "acme", "research-agent", "", "",
         "monthly budget 40% used", 40.0, 100.0, "{}", None],
        ["f-contract", t, t, "contract_violation", "medium", "open", "acme", "support-bot", "gpt-4o", "trace-0004",
         "irreversible tool without approval", 1.0, 0.0, "{}", None],
    ]
    client.insert(f"{DB}.findings", findings, column_names=f_cols)

    # two kill switches: the loop's halt (a policy's), and a person's pause lifted since
    import msgspec

    from llmpulse.schemas.controls import lift, new_action
    from llmpulse.schemas.rows import CONTROL_ACTION_COLUMNS, control_action_row

    at = int(t.timestamp() * 1000)
    halt = new_action("halt_trace", reason="tool_loop: search called 11 times", at=at, finding_id="f-loop",
                      policy="halt-loops", expires_at=at + 3_600_000, tenant="acme", workflow="research-agent",
                      trace_id=LOOP_TRACE)
    halt = msgspec.structs.replace(halt, action_id="a-halt")  # the decision event's action_id
    pause = new_action("pause_workflow", reason="refund storm", at=at - 600_000, actor="alice",
                       expires_at=at + 1_200_000, workflow="support-bot")
    records = [halt, pause, lift(pause, by="bob", reason="fixed", at=at - 300_000)]
    client.insert(f"{DB}.control_actions", [control_action_row(a) for a in records], column_names=CONTROL_ACTION_COLUMNS)
    return {"events": len(events)}


@pytest.fixture(scope="module")
def ch(chdb_client):
    client = chdb_client  # the process's one chDB engine (tests/conftest.py); our own database
    _apply_migrations(client)
    _seed(client)
    previous, client.database = client.database, DB  # the data source's defaultDatabase
    yield client
    client.database = previous


# ------------------------------------------------------------------------- helpers

NUMERIC = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal|Bool)")
TIME = re.compile(r"^(Nullable\()?(DateTime|DateTime64|Date)\b")
STRING = re.compile(r"^(Nullable\()?(LowCardinality\()?(String|FixedString)")

ALL_VARS = {
    "tenant": Variable(ALL, options=list(TENANTS)),
    "workflow": Variable(ALL, options=list(WORKFLOWS)),
    "model": Variable(ALL, options=list(MODELS)),
    "environment": Variable(ALL, options=list(ENVIRONMENTS)),
    "trace_id": LOOP_TRACE,
}
SOME_VARS = {
    "tenant": ["acme"],
    "workflow": ["support-bot", "research-agent"],
    "model": Variable(ALL, options=list(MODELS)),
    "environment": ["prod"],
    "trace_id": LOOP_TRACE,
}


def _context(variables) -> QueryContext:
    return QueryContext.last(timedelta(hours=6), now=NOW + timedelta(minutes=1),
                             interval=timedelta(seconds=60), variables=variables)


def _run(client, sql: str):
    assert not list(remaining_placeholders(sql)), f"unexpanded placeholders in:\n{sql}"
    return client.query(sql)


def _types(result) -> list[str]:
    return [t.name for t in result.column_types]


def _check_viz(panel: PanelSpec, result) -> None:
    names, types = list(result.column_names), _types(result)
    numeric = [n for n, t in zip(names, types) if NUMERIC.match(t)]
    if panel.viz == "timeseries":
        assert TIME.match(types[0]), f"{panel.title}: first column must be a time, got {types}"
        assert numeric, f"{panel.title}: a time series needs a numeric column, got {types}"
        times = [r[0] for r in result.result_rows]
        assert times == sorted(times), f"{panel.title}: time series must be ordered by time"
    elif panel.viz == "stat":
        assert numeric, f"{panel.title}: a stat needs a numeric column, got {types}"
        assert len(result.result_rows) == 1, f"{panel.title}: a stat returns one row"
    elif panel.viz in ("barchart", "piechart"):
        assert STRING.match(types[0]), f"{panel.title}: first column must be the category, got {types}"
        assert numeric, f"{panel.title}: needs a numeric column, got {types}"
    if panel.trace_link_column:
        assert panel.trace_link_column in names


PANELS = [(d.uid, p) for d in DASHBOARDS for p in d.panels]


@pytest.mark.parametrize("variables", [ALL_VARS, SOME_VARS], ids=["all", "selected"])
@pytest.mark.parametrize("uid,panel", PANELS, ids=[f"{u}:{p.title}" for u, p in PANELS])
def test_panel_query_runs(ch, uid, panel, variables):
    result = _run(ch, expand(panel.sql, _context(variables)))
    _check_viz(panel, result)
    if panel.expect_rows:
        assert result.result_rows, f"{uid} / {panel.title}: no rows on seeded data"
        if panel.viz in ("stat",):
            assert any(v not in (None, 0) for v in result.result_rows[0]), f"{panel.title}: zero on seeded data"


def test_selection_narrows_results(ch):
    overview = next(d for d in DASHBOARDS if d.uid.endswith("overview"))
    calls = next(p for p in overview.panels if p.title == "Calls in range")
    everything = _run(ch, expand(calls.sql, _context(ALL_VARS))).result_rows[0][0]
    acme_prod = _run(ch, expand(calls.sql, _context(SOME_VARS))).result_rows[0][0]
    assert 0 < acme_prod < everything


VARIABLES = [(d.uid, v) for d in DASHBOARDS for v in d.variables if v.sql]


@pytest.mark.parametrize("uid,var", VARIABLES, ids=[f"{u}:{v.name}" for u, v in VARIABLES])
def test_variable_query_runs(ch, uid, var):
    result = _run(ch, expand(var.sql, _context(ALL_VARS)))
    assert len(result.column_names) == 1 and STRING.match(_types(result)[0])
    assert result.result_rows


def test_annotation_queries_run(ch):
    anns = [a for d in DASHBOARDS for a in d.annotations]
    assert anns
    for ann in anns:
        result = _run(ch, expand(ann.sql, _context(ALL_VARS)))
        names = list(result.column_names)
        assert names[:2] == ["time", "text"] and TIME.match(_types(result)[0])
        assert len(result.result_rows) == 2


@pytest.mark.parametrize("rule", alerts.RULES, ids=[r.uid for r in alerts.RULES])
def test_alert_query_runs(ch, rule):
    ctx = QueryContext.last(timedelta(seconds=rule.window_s), now=NOW + timedelta(minutes=1))
    result = _run(ch, expand_alert(rule.sql, ctx))
    names, types = list(result.column_names), _types(result)
    # Grafana alerting reads a table as one series per row: string columns are labels,
    # exactly one numeric column is the value.
    assert names == [*rule.label_columns, rule.value_column]
    assert NUMERIC.match(types[-1])
    assert all(STRING.match(t) for t in types[:-1]), types
    rows = [dict(zip(names, r)) for r in result.result_rows]
    if rule.uid == "llmpulse-finding-critical":
        assert [r["finding_id"] for r in rows] == ["f-loop"]
        assert rows[0]["trace_id"] == LOOP_TRACE
    if rule.uid == "llmpulse-finding-high":
        # f-old resolved, so only the budget finding is open
        assert [r["finding_id"] for r in rows] == ["f-budget"]
    if rule.uid == "llmpulse-error-rate":
        firing = {(r["tenant"], r["workflow"]) for r in rows if r["value"] > rule.threshold}
        assert ("acme", "support-bot") in firing
        assert ("globex", "research-agent") not in firing
    if rule.uid == "llmpulse-p95-latency":
        firing = {(r["tenant"], r["workflow"]) for r in rows if r["value"] > rule.threshold}
        assert firing == {("acme", "support-bot")}


def test_alert_rule_shape():
    for rule in alerts.RULES:
        fr = alerts.file_rule(rule)
        assert fr["condition"] == "C" and [d["refId"] for d in fr["data"]] == ["A", "B", "C"]
        assert fr["labels"]["severity"] in ("critical", "high", "medium", "low", "info")
        assert all("$" not in v for v in fr["labels"].values()), "labels are env-expanded by Grafana"
        assert "__dashboardUid__" in fr["annotations"]


# ------------------------------------------------------------------------- drift


def test_generated_dashboards_match_code():
    generated = build.GENERATED_DIR
    expected = build.render_all()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in generated.glob("*.json")}
    assert on_disk == expected, "dashboards/generated drifted: run `python -m llmpulse.dashboards.build`"
    for name, text in expected.items():
        d = json.loads(text)
        assert d["uid"] + ".json" == name and d["description"]


def test_provisioning_files_match_code():
    for name, text in build.render_provisioning().items():
        path = build.PROVISIONING_DIR / name
        assert path.exists() and path.read_text(encoding="utf-8") == text, f"{name} drifted: rebuild"


def test_build_all_writes_to_any_dir(tmp_path):
    written = build.build_all(tmp_path / "out", provisioning_dir=None)
    assert sorted(p.name for p in written) == sorted(build.render_all())


def test_dashboards_round_trip_through_the_sdk():
    from grafana_foundation_sdk.models.dashboard import Dashboard

    from llmpulse.dashboards.clickhouse import ClickHouseQuery

    for text in build.render_all().values():
        model = Dashboard.from_json(json.loads(text))
        targets = [t for p in model.panels for t in (p.targets or [])]
        assert targets and all(isinstance(t, ClickHouseQuery) for t in targets)



def test_cost_panels_read_the_priced_column(ch):
    """Spend comes from price_usd (migration 0003), not the app-reported cost_usd."""
    cost = next(d for d in DASHBOARDS if d.uid.endswith("cost"))
    spend = next(p for p in cost.panels if p.title == "Spend in range")
    unpriced = next(p for p in cost.panels if p.title == "Unpriced calls")
    ctx = _context(ALL_VARS)
    priced = ch.query("SELECT sum(price_usd), countIf(price_usd IS NULL) FROM events FINAL "
                      "WHERE event_type = 'output'").result_rows[0]
    assert _run(ch, expand(spend.sql, ctx)).result_rows[0][0] == pytest.approx(priced[0])
    assert _run(ch, expand(unpriced.sql, ctx)).result_rows[0][0] == priced[1] > 0


def test_kill_switch_panel_says_who_stopped_what_and_what_it_refused(ch):
    overview = next(d for d in DASHBOARDS if d.uid.endswith("overview"))
    panel = next(p for p in overview.panels if p.title == "Kill switches")
    result = _run(ch, expand(panel.sql, _context(ALL_VARS)))
    rows = {r[1]: dict(zip(result.column_names, r)) for r in result.result_rows}
    assert set(rows) == {"halt_trace", "pause_workflow"}
    halt, pause = rows["halt_trace"], rows["pause_workflow"]
    assert (halt["state"], halt["who"], halt["trace_id"], halt["denied"]) == ("active", "policy halt-loops", LOOP_TRACE, 3)
    assert (pause["state"], pause["who"], pause["ended_by"]) == ("lifted", "alice", "bob")
    # A switch on every tenant shows under any tenant selected; one on another workflow does not.
    narrowed = _run(ch, expand(panel.sql, _context({**SOME_VARS, "workflow": ["support-bot"]})))
    assert [r[1] for r in narrowed.result_rows] == ["pause_workflow"]
