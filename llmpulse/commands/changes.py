"""`llmpulse changes [--workflow W] [--since 7d]`: recent changes with who made and approved
them, their eval gate, whether the `governance:` rules accept them, and the workflow's
figures in the `--window` before and after each (calls, error rate, p95 latency of ok
calls, cost per ok call, eval pass rate): the Quality & changes view as a table.

Read-only, through `llmpulse.query.run_query` (the worker's /query/ in embedded mode).
Eval gate decisions (`change_kind` eval_gate) are listed with `--gates`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from llmpulse.commands.gate import _quote, duration_ms, since_ms

if TYPE_CHECKING:
    from llmpulse.settings import Settings

COLUMNS = ["ts", "workflow", "kind", "from", "to", "actor", "approved_by", "gate", "governance",
           "calls", "error_rate", "p95_ms", "usd_per_call", "eval_pass"]
_FIGURES = ("calls", "error_rate", "p95_ms", "usd_per_call", "eval_pass")


def list_changes(settings: Settings, since: int, workflow: str | None, limit: int, gates: bool) -> list[dict]:
    from llmpulse.query import run_query

    db = settings.database
    where = ["event_type = 'change'", f"ts >= fromUnixTimestamp64Milli(toInt64({int(since)}))"]
    if workflow:
        where.append(f"workflow = {_quote(workflow)}")
    if not gates:
        where.append("change_kind != 'eval_gate'")
    sql = (f"SELECT event_id, toUnixTimestamp64Milli(ts), tenant, workflow, change_kind, from_value, to_value, actor, "
           f"approved_by, gate_result, gate_id, model FROM {db}.events FINAL WHERE {' AND '.join(where)} "
           f"ORDER BY ts DESC LIMIT {int(limit)}")
    names = ["event_id", "ts", "tenant", "workflow", "change_kind", "from_value", "to_value", "actor",
             "approved_by", "gate_result", "gate_id", "model"]
    return [dict(zip(names, r)) for r in run_query(settings, sql)["rows"]]


def figures(settings: Settings, change: dict, window_ms: int) -> dict[str, list[Any]]:
    """Per figure: [before, after] over the window on each side of the change."""
    from llmpulse.query import run_query

    t = int(change["ts"])
    at = f"fromUnixTimestamp64Milli(toInt64({t}))"
    parts = []
    for side, cond in (("b", f"ts < {at}"), ("a", f"ts >= {at}")):
        out = f"event_type = 'output' AND {cond}"
        ok = f"{out} AND status = 'ok'"
        parts += [f"countIf({out}) AS calls_{side}",
                  f"round(countIf({out} AND status IN ('error', 'timeout')) / nullIf(countIf({out}), 0), 4)",
                  f"round(quantileIf(0.95)(latency_ms, {ok}), 1)",
                  f"round(avgIf(coalesce(price_usd, cost_usd), {ok}), 6)",
                  f"round(avgIf(toFloat64(passed), event_type = 'eval' AND passed IS NOT NULL AND {cond}), 4)"]
    where = [f"ts >= fromUnixTimestamp64Milli(toInt64({t - window_ms}))",
             f"ts < fromUnixTimestamp64Milli(toInt64({t + window_ms}))", "event_type IN ('output', 'eval')"]
    if change["workflow"]:
        where.append(f"workflow = {_quote(change['workflow'])}")
    row = run_query(settings, f"SELECT {', '.join(parts)} FROM {settings.database}.events FINAL "
                              f"WHERE {' AND '.join(where)}")["rows"][0]
    return {name: [_num(row[i]), _num(row[i + 5])] for i, name in enumerate(_FIGURES)}


def _num(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and v != v) else v


def named_gates(settings: Settings, changes: list[dict]) -> list[dict]:
    """The eval gate decisions the listed changes name in `gate_id`, whenever they were made
    (a gate run before `--since`, or not listed without `--gates`, still approves its change)."""
    from llmpulse.query import run_query

    ids = sorted({c["gate_id"] for c in changes if c["gate_id"]})
    if not ids:
        return []
    sql = (f"SELECT event_id, toUnixTimestamp64Milli(ts), tenant, workflow, gate_result FROM {settings.database}.events "
           f"FINAL WHERE event_type = 'change' AND change_kind = 'eval_gate' "
           f"AND event_id IN ({', '.join(_quote(i) for i in ids)})")
    return [{"event_id": i, "ts": ts, "tenant": t, "workflow": w, "change_kind": "eval_gate", "actor": "",
             "approved_by": "", "gate_result": r, "gate_id": ""} for i, ts, t, w, r in run_query(settings, sql)["rows"]]


def governance_verdicts(settings: Settings, changes: list[dict], gates: list[dict] = ()) -> dict[str, str]:
    """Each change's standing under the configured decision rights as the stream's
    GovernanceChecker judges it: the gates they name first, then the changes oldest first."""
    from llmpulse.processors.governance import GovernanceChecker
    from llmpulse.schemas.contract import Change

    checker = GovernanceChecker(settings.governance)
    found = []
    for c in [*gates, *sorted(changes, key=lambda c: c["ts"])]:
        found += checker.process(Change(event_id=c["event_id"], ts=int(c["ts"]), tenant=c["tenant"],
                                        workflow=c["workflow"], change_kind=c["change_kind"], actor=c["actor"],
                                        approved_by=c["approved_by"], gate_result=c["gate_result"],
                                        gate_id=c["gate_id"]))
    problems = {f.evidence["change_id"]: f.evidence["problems"] for f in found + checker.flush()}
    out: dict[str, str] = {}
    for c in changes:
        governed = checker.config.for_workflow(c["workflow"])
        out[c["event_id"]] = ("unapproved: " + "; ".join(problems[c["event_id"]]) if c["event_id"] in problems
                              else "ok" if governed and c["change_kind"] in governed.approvals else "-")
    return out


def changes_command(
    workflow: Annotated[Optional[str], typer.Option("--workflow", help="only this workflow")] = None,
    since: Annotated[str, typer.Option("--since", help="7d, 12h, ISO 8601 or epoch ms")] = "7d",
    window: Annotated[str, typer.Option("--window", help="figures this long before and after each change")] = "60m",
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 20,
    gates: Annotated[bool, typer.Option("--gates", help="list eval gate decisions too")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table | json")] = "table",
) -> None:
    """Recent changes per workflow: actor, approver, eval gate, governance, figures before -> after."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from llmpulse.cli import _settings
    from llmpulse.query import QueryError

    err = Console(stderr=True)
    if fmt not in ("table", "json"):
        err.print("changes: --format must be table or json", markup=False)
        raise typer.Exit(2)
    try:
        start = since_ms(since)
        window_ms = duration_ms(window)
        if not window_ms:
            raise ValueError(f"--window {window!r}: give a duration such as 30m or 2h")
        settings = _settings()
        rows = list_changes(settings, start, workflow, limit, gates)
        verdicts = governance_verdicts(settings, rows, named_gates(settings, rows))
        for r in rows:
            r["governance"] = verdicts[r["event_id"]]
            r["figures"] = figures(settings, r, window_ms)
    except (ValueError, QueryError, FileNotFoundError) as exc:
        err.print(Text(f"changes: {exc}", style="red"), soft_wrap=True)
        raise typer.Exit(2 if not isinstance(exc, QueryError) else 1)
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from datetime import datetime, timezone

    table = Table(title=f"changes since {since} (figures: {window} before -> after)")
    for c in COLUMNS:
        table.add_column(c, overflow="fold")
    for r in rows:
        when = datetime.fromtimestamp(r["ts"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        figs = [f"{_show(b)} -> {_show(a)}" for b, a in r["figures"].values()]
        cells = [when, r["workflow"] or "(all)", r["change_kind"], r["from_value"], r["to_value"], r["actor"],
                 r["approved_by"], r["gate_result"] or "-", r["governance"], *figs]
        table.add_row(*(Text(str(c)) for c in cells))
    Console().print(table)
    if not rows:
        Console().print("no changes in that range")


def _show(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
