"""`llmpulse report --out report.html`: the dashboards as one static HTML page.

Runs the dashboards' own panel queries (dashboards/definitions.py, expanded by
dashboards/macros.py) for a time range through `llmpulse.query.run_query`, so it works
against a ClickHouse server and in embedded mode while the worker holds the chDB
directory. plotly.js is written once beside the page (`plotly-<version>.min.js`, shared by
every report in that folder) so the page itself stays small; `--self-contained` embeds it
instead. Either way the page opens offline, from a file, in any browser.

Without a range the report fits the data: from the first to the last stored event, at
most the last `MAX_FIT` of it, at least `MIN_FIT` wide.

Register with `app.command("report")(report_command)`; the demo calls `write_report`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmpulse.settings import Settings

DEFAULT_LAST = "6h"  # the dashboards' default time range, when nothing is stored
MAX_FIT = timedelta(days=7)
MIN_FIT = timedelta(minutes=10)
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


def fit_range(first_ms: int, last_ms: int) -> tuple[int, int]:
    """A range around stored event times [first_ms, last_ms]: whole minutes (the rollups'
    grain), ending a minute after the last event, at most MAX_FIT and at least MIN_FIT long."""
    minute = 60_000
    end = (last_ms // minute + 2) * minute
    start = max(first_ms // minute * minute, end - int(MAX_FIT.total_seconds() * 1000))
    return min(start, end - int(MIN_FIT.total_seconds() * 1000)), end


def data_range(settings: Settings) -> tuple[int, int] | None:
    """(first, last) stored event time in epoch ms, or None when nothing is stored."""
    from llmpulse.query import run_query

    rows = run_query(settings, f"SELECT count(), toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)) "
                               f"FROM {settings.database}.events")["rows"]
    n, first, last = (int(v) for v in rows[0])
    return (first, last) if n else None


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
                 last: str | None = None, variables: dict | None = None, self_contained: bool = False) -> Path:
    """Render the report for a range (default: the last `last`, else fitted to the stored data)
    and write it to `out`, with plotly.js beside it unless `self_contained`."""
    from llmpulse.dashboards.report import render_report

    if start_ms is None or end_ms is None:
        stored = None if last else data_range(settings)
        start_ms, end_ms = fit_range(*stored) if stored else time_range(last=last)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = None if self_contained else write_plotly_js(out.parent).name
    page = render_report(rows_for_settings(settings), start_ms, end_ms, variables=variables, plotly_src=src)
    out.write_text(page, encoding="utf-8")
    return out


def write_plotly_js(folder: Path) -> Path:
    """plotly.js of the installed plotly, once per folder and version (reports share it)."""
    import plotly
    from plotly.offline import get_plotlyjs

    path = Path(folder) / f"plotly-{plotly.__version__}.min.js"
    js = get_plotlyjs()
    if not path.exists() or path.stat().st_size != len(js.encode()):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(js, encoding="utf-8")
        tmp.replace(path)
    return path


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
    self_contained: Annotated[bool, typer.Option("--self-contained", help="embed plotly.js in the page (~5 MB) "
                                                 "instead of writing it beside the page")] = False,
) -> None:
    """Write the dashboards as a static HTML report with charts (opens offline, no Grafana needed);
    the range fits the stored data unless --since/--until/--last say otherwise."""
    from llmpulse import cli
    from llmpulse.query import QueryError
    from llmpulse.settings import load_settings

    settings = load_settings(cli._config["file"])
    try:
        start_ms, end_ms = time_range(since, until, last) if since or until or last else (None, None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    variables: dict = {name: values for name, values in
                       (("tenant", tenant), ("workflow", workflow), ("model", model), ("environment", environment))
                       if values}
    if trace_id:
        variables["trace_id"] = trace_id
    try:
        path = write_report(settings, out, start_ms=start_ms, end_ms=end_ms, variables=variables,
                            self_contained=self_contained)
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
