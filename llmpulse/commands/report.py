"""`llmpulse report --out report.html`: the dashboards as one static HTML page.

Runs the dashboards' own panel queries (dashboards/definitions.py, expanded by
dashboards/macros.py) for a time range through `llmpulse.query.run_query`, so it works
against a ClickHouse server and in embedded mode while the worker holds the chDB
directory. The page embeds plotly.js: it opens offline, from a file, in any browser.

Register with `app.command("report")(report_command)`; the demo calls `write_report`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmpulse.settings import Settings

DEFAULT_LAST = "6h"  # the dashboards' default time range
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`90m`, `1h`, `7d`, `30s` → timedelta."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 7d)")
    return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])


def parse_time(text: str) -> int:
    """ISO-8601 (`2026-11-28T10:00`, UTC unless an offset is given) or epoch milliseconds → epoch ms."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO-8601 like 2026-11-28T10:00Z, or epoch ms)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def time_range(since: str | None = None, until: str | None = None, last: str | None = None,
               now_ms: int | None = None) -> tuple[int, int]:
    """(start_ms, end_ms) from --since/--until or --last (default: the last 6 hours)."""
    if last and since:
        raise ValueError("use either --last or --since, not both")
    now = now_ms if now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
    end = parse_time(until) if until else now
    if since:
        start = parse_time(since)
    else:
        start = end - int(parse_duration(last or DEFAULT_LAST).total_seconds() * 1000)
    if start >= end:
        raise ValueError("the start of the range must be before its end")
    return start, end


def rows_for_settings(settings: Settings):
    """`rows_for_sql` over `run_query`, with the panels' bare table names qualified by the
    configured database (what the Grafana data source's defaultDatabase does)."""
    from llmpulse.dashboards.report import qualify_tables
    from llmpulse.query import run_query

    db = settings.database
    listed = run_query(settings, f"SELECT name FROM system.tables WHERE database = '{db}'")["rows"]
    tables = [str(r[0]) for r in listed if not str(r[0]).startswith(".")]

    def rows_for_sql(sql: str) -> dict:
        return run_query(settings, qualify_tables(sql, db, tables))

    return rows_for_sql


def write_report(settings: Settings, out: Path, *, start_ms: int | None = None, end_ms: int | None = None,
                 last: str = DEFAULT_LAST, variables: dict | None = None) -> Path:
    """Render the report for a range (default: the last `last`) and write it to `out`."""
    from llmpulse.dashboards.report import render_report

    if start_ms is None or end_ms is None:
        start_ms, end_ms = time_range(last=last)
    page = render_report(rows_for_settings(settings), start_ms, end_ms, variables=variables)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def report_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="the HTML file to write", dir_okay=False)] = Path(
        "report.html"),
    since: Annotated[Optional[str], typer.Option(help="start: ISO-8601 (UTC unless offset) or epoch ms")] = None,
    until: Annotated[Optional[str], typer.Option(help="end: ISO-8601 or epoch ms; default now")] = None,
    last: Annotated[Optional[str], typer.Option(help="range ending at --until/now, e.g. 30m, 1h, 7d "
                                                     f"(default {DEFAULT_LAST})")] = None,
    tenant: Annotated[Optional[list[str]], typer.Option(help="only these tenants (repeat); default all")] = None,
    workflow: Annotated[Optional[list[str]], typer.Option(help="only these workflows (repeat)")] = None,
    model: Annotated[Optional[list[str]], typer.Option(help="only these models (repeat)")] = None,
    environment: Annotated[Optional[list[str]], typer.Option(help="only these environments (repeat)")] = None,
    trace_id: Annotated[Optional[str], typer.Option(help="the trace explorer's trace; default: the most "
                                                         "severe recent finding's")] = None,
) -> None:
    """Write the dashboards as a static HTML report with charts (opens offline, no Grafana needed)."""
    from llmpulse.query import QueryError
    from llmpulse.settings import load_settings

    try:
        start_ms, end_ms = time_range(since, until, last)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    variables: dict = {name: values for name, values in
                       (("tenant", tenant), ("workflow", workflow), ("model", model), ("environment", environment))
                       if values}
    if trace_id:
        variables["trace_id"] = trace_id
    try:
        path = write_report(load_settings(), out, start_ms=start_ms, end_ms=end_ms, variables=variables)
    except QueryError as exc:
        typer.echo(f"cannot read the data: {exc}", err=True)
        raise typer.Exit(1)
    failed = report_errors(path.read_text(encoding="utf-8"))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)"
               + (f"; {failed} panel queries failed, see the report" if failed else ""))
    if failed:
        raise typer.Exit(2)


def report_errors(page: str) -> int:
    """How many panel queries failed in a rendered report (the page says it on <body>)."""
    m = re.search(r'<body[^>]*\bdata-errors="(\d+)"', page)
    return int(m.group(1)) if m else 0
