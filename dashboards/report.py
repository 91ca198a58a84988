"""A static HTML report of the dashboards, for people without Grafana.

`render_report(rows_for_sql, start_ms, end_ms)` runs every panel query of
`definitions.DASHBOARDS`, expanded by `macros.expand` exactly as Grafana and the
ClickHouse data source would expand it for that time range (variables at All unless
given), and renders one self-contained page: plotly.js is embedded (no CDN, works
offline and from `file://`), time series become line charts, bar and pie charts stay
bar and pie charts, stats become big numbers and tables HTML tables, grouped by
dashboard with the dashboards' and panels' own descriptions.

`rows_for_sql(sql)` returns `{"columns", "types", "rows"}` like `llmpulse.query.run_query`;
the SQL names tables without a database, the way the data source's `defaultDatabase`
resolves them (`qualify_tables` adds the database for a connection that has none).
A panel whose query fails shows the error in place; the rest of the report still renders.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from .definitions import DASHBOARDS, TRACE_VARIABLE, DashboardSpec, PanelSpec
from .macros import ALL, QueryContext, Variable, VarInput, expand

RowsForSql = Callable[[str], dict]

#: Grafana's classic palette, so the report's series look like the dashboards'.
PALETTE = ("#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
           "#508642", "#CCA300", "#447EBC", "#C15C17")
#: Interval choices for `$__interval`, like Grafana's rounding; never below the rollups' minute.
NICE_INTERVALS_S = (60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
                    7 * 86400)
MAX_POINTS = 120
MAX_TABLE_ROWS = 30
MAX_TRACE_SECTIONS = 8  # linked traces that get a section of their own; the rest link to the explorer
PX_PER_GRID_ROW = 30  # Grafana's grid row height

_NUMERIC = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal|Bool)")
_TIME = re.compile(r"^(Nullable\()?(DateTime|DateTime64|Date)\b")
_STRING = re.compile(r"^(Nullable\()?(LowCardinality\()?(Nullable\()?(String|FixedString|Enum)")

#: A trace worth opening in the trace explorer: the worst recent finding's, else the longest.
PICK_TRACE_SQL = """
SELECT trace_id FROM (
    SELECT trace_id, 0 AS pri, indexOf(['critical', 'high', 'medium', 'low', 'info'], severity) AS sev,
           toDateTime(detected_at) AS t, 0 AS steps
    FROM findings FINAL WHERE trace_id != '' AND $__timeFilter(event_ts)
    UNION ALL
    SELECT trace_id, 1 AS pri, 0 AS sev, toDateTime(started_at) AS t, steps
    FROM traces WHERE trace_id != '' AND $__timeFilter(started_at)
)
ORDER BY pri, sev, steps DESC, t DESC
LIMIT 1
"""


# ---------------------------------------------------------------------------- context


def pick_interval(start_ms: int, end_ms: int, max_points: int = MAX_POINTS) -> timedelta:
    """The `$__interval` Grafana would roughly choose: about `max_points` buckets, rounded."""
    span_s = max((end_ms - start_ms) / 1000, 1)
    for s in NICE_INTERVALS_S:
        if span_s / s <= max_points:
            return timedelta(seconds=s)
    return timedelta(seconds=NICE_INTERVALS_S[-1])


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)




def qualify_tables(sql: str, database: str, tables: Iterable[str]) -> str:
    """`FROM events` → `FROM llmpulse.events` for the given table names (what the data
    source's defaultDatabase does), for connections whose default database is another."""
    names = sorted(set(tables), key=len, reverse=True)
    if not names:
        return sql
    rx = re.compile(r"(?i)\b(FROM|JOIN)(\s+)(" + "|".join(map(re.escape, names)) + r")\b(?!\s*\.)(?!\s*\()")
    return rx.sub(lambda m: f"{m.group(1)}{m.group(2)}{database}.{m.group(3)}", sql)


# ---------------------------------------------------------------------------- results


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "Result":
        columns = list(raw["columns"])
        types = list(raw.get("types") or ["String"] * len(columns))
        rows = [list(r) for r in raw.get("rows") or []]
        for i, t in enumerate(types):  # over HTTP/JSON times arrive as strings
            if _TIME.match(t):
                for r in rows:
                    r[i] = _as_datetime(r[i])
        return cls(columns, types, rows)

    def kind(self, i: int) -> str:
        t = self.types[i]
        if _TIME.match(t):
            return "time"
        if _NUMERIC.match(t):
            return "number"
        if _STRING.match(t):
            return "string"
        return "other"

    def indexes(self, kind: str) -> list[int]:
        return [i for i in range(len(self.columns)) if self.kind(i) == kind]


def _as_datetime(v: Any) -> Any:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    if isinstance(v, str) and v:
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError:
            return v
        return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
    return v


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, str) and not v:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN: a gap


# ---------------------------------------------------------------------------- formatting


def format_value(v: Any, unit: str = "") -> str:
    """A value as a panel of `unit` shows it (Grafana unit ids)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, datetime):
        if v.timestamp() < 86_400:  # ClickHouse's zero DateTime: no time (max() of nothing, a default)
            return ""
        return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, (list, tuple)):
        return ", ".join(format_value(x) for x in v)
    f = _num(v) if not isinstance(v, str) else None
    if f is None:
        return str(v)
    if unit == "percentunit":
        return f"{f * 100:.1f}%"
    if unit == "currencyUSD":
        if abs(f) >= 100:
            return f"${f:,.0f}"
        if abs(f) >= 1:
            return f"${f:,.2f}"
        return "$0" if f == 0 else f"${f:.4g}"
    if unit == "ms":
        return f"{f / 1000:,.2f} s" if abs(f) >= 1000 else f"{f:,.0f} ms"
    if unit == "s":
        return f"{f:,.2f} s"
    if unit == "reqps":
        return f"{f:,.2f} req/s"
    if f.is_integer() and abs(f) < 1e15:
        return f"{int(f):,}"
    return f"{f:,.2f}" if abs(f) >= 100 else f"{f:.4g}"


def column_unit(name: str, panel_unit: str = "") -> str:
    """Tables carry no unit per column: infer it from the column name."""
    n = name.lower()
    if n.endswith("_usd"):
        return "currencyUSD"
    if n.endswith("_rate") or n in ("burn", "share"):
        return "percentunit"
    if n.endswith("_ms"):
        return "ms"
    if n.endswith("_s"):
        return "s"
    return panel_unit


_AXIS = {
    "percentunit": {"tickformat": ".0%"},
    "currencyUSD": {"tickprefix": "$"},
    "ms": {"ticksuffix": " ms"},
    "s": {"ticksuffix": " s"},
    "reqps": {"ticksuffix": "/s"},
}


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


#: Column-name words shown otherwise; unit suffixes the values already show ($, ms) are dropped.
_WORD = {"id": "ID", "ids": "IDs", "ts": "time", "usd": "", "ms": "", "pct": "%", "mtok": "per M tokens",
         "avg": "average", "num": "number", "min": "min", "max": "max", "llm": "LLM", "dlq": "DLQ"}


def words(column: str) -> str:
    """A column name as a header or legend: `p95_latency_ms` → `p95 latency`, `trace_id` → `Trace ID`."""
    if not re.fullmatch(r"[a-z0-9_]+", column):
        return column  # already words (an alias with spaces, a label value)
    parts = [p for p in (_WORD.get(w, w) for w in column.split("_")) if p] or [column]
    text = " ".join(parts)
    return text if re.match(r"p\d", text) else text[:1].upper() + text[1:]


class ColorBook:
    """One colour per label across the whole report: a model (tenant, workflow, tool) has the
    same colour in every chart, given in order of first appearance. Each dimension (the label's
    column: model, tenant, ...) walks the palette on its own, so the labels of one chart differ."""

    def __init__(self, palette: Sequence[str] = PALETTE) -> None:
        self.palette = palette
        self.colors: dict[tuple[str, str], str] = {}
        self._used: dict[str, int] = {}

    def __call__(self, label: str, dimension: str = "") -> str:
        key = (dimension, label)
        if key not in self.colors:
            n = self._used.get(dimension, 0)
            self.colors[key], self._used[dimension] = self.palette[n % len(self.palette)], n + 1
        return self.colors[key]


# ---------------------------------------------------------------------------- charts


def _figure_html(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "displayModeBar": False, "responsive": True,
                               "staticPlot": False})


def _layout(panel: PanelSpec, height: int, **extra: Any) -> dict:
    layout = dict(
        template="plotly_white", height=height, margin=dict(l=56, r=16, t=8, b=16),
        font=dict(family="-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif", size=11, color="#333"),
        colorway=list(PALETTE), showlegend=True, hovermode="x unified",
        legend=dict(orientation="h", yanchor="top", y=-0.12, x=0, font=dict(size=10)),
        yaxis=dict(rangemode="tozero", **_AXIS.get(panel.unit, {})),
    )
    layout.update(extra)
    return layout


def timeseries_figure(panel: PanelSpec, res: Result, height: int, x_range: Sequence[datetime] | None = None,
                      annotations: Sequence[tuple[datetime, str]] = (), colors: ColorBook | None = None) -> Any:
    """Long format (time, label…, value…) → one line per label value and value column,
    as the data source's timeSeries format does."""
    import plotly.graph_objects as go

    t_idx = res.indexes("time")[0]
    labels = [i for i in res.indexes("string")]
    values = [i for i in res.indexes("number")]
    dimension = ",".join(res.columns[i] for i in labels)
    colors = colors or ColorBook()
    series: dict[str, tuple[list, list, int]] = {}
    color_of: dict[str, str] = {}  # series -> its label's colour (a model's in every chart)
    for r in res.rows:
        key_labels = " ".join(str(r[i]) for i in labels if r[i] not in (None, ""))
        for v in values:
            if labels:
                name = key_labels or "(none)"
                if len(values) > 1:
                    name = f"{name} {words(res.columns[v])}"
                color_of.setdefault(name, colors(key_labels or "(none)", dimension))
            else:
                name = words(res.columns[v])
            xs, ys, _ = series.setdefault(name, ([], [], v))
            xs.append(r[t_idx])
            ys.append(_num(r[v]))
    # a value column orders of magnitude below the first (spend beside tokens) gets its own axis
    secondary: set[int] = set()
    if not labels and len(values) > 1:
        peaks = {v: max((abs(_num(r[v]) or 0) for r in res.rows), default=0) for v in values}
        top = peaks[values[0]]
        secondary = {v for v in values[1:] if top and peaks[v] and top / peaks[v] > 50}
    fig = go.Figure()
    for name, (xs, ys, v) in sorted(series.items(), key=lambda kv: kv[0]) if labels else series.items():
        fig.add_trace(go.Scatter(
            x=xs, y=ys, name=name, mode="lines+markers" if len(xs) <= 40 else "lines",
            line=dict(width=1.6, shape="linear", dash="dash" if v in secondary else "solid", color=color_of.get(name)),
            marker=dict(size=4), connectgaps=False,
            yaxis="y2" if v in secondary else "y",
        ))
    extra: dict = {"xaxis": dict(type="date", showgrid=True, tickformat=_time_format(res.rows, t_idx, x_range),
                                 ticklabeloverflow="hide past domain")}  # no label under the y axis' zero
    if x_range:
        extra["xaxis"]["range"] = [x_range[0], x_range[1]]
    if secondary:
        col = res.columns[min(secondary)]
        extra["yaxis2"] = dict(overlaying="y", side="right", rangemode="tozero", showgrid=False,
                               title=dict(text=words(col), font=dict(size=10)), **_AXIS.get(column_unit(col), {}))
        extra["margin"] = dict(l=56, r=56, t=8, b=8)
    fig.update_layout(**_layout(panel, height, **extra))
    for when, text in annotations:
        fig.add_shape(type="line", x0=when, x1=when, xref="x", y0=0, y1=1, yref="paper",
                      line=dict(color="#EF843C", width=1.2, dash="dot"))
        label = text.split(":", 1)[0][:24]  # the kind; the whole text on hover
        fig.add_annotation(x=when, y=1, xref="x", yref="paper", text=_esc(label), hovertext=_esc(text[:200]),
                           showarrow=False,
                           xanchor="left", yanchor="top", font=dict(size=9, color="#C15C17"),
                           bgcolor="rgba(255,255,255,0.7)")
    return fig


def _time_format(rows: Sequence[Sequence[Any]], t_idx: int, x_range: Sequence[datetime] | None) -> str:
    """One line of tick labels (plotly's default adds the date on a second line)."""
    if x_range:
        lo, hi = x_range[0], x_range[1]
    else:
        times = [r[t_idx] for r in rows if isinstance(r[t_idx], datetime)]
        if not times:
            return ""
        lo, hi = min(times), max(times)
    span = (hi - lo).total_seconds()
    if span <= 600:
        return "%H:%M:%S"
    if span <= 36 * 3600:
        return "%H:%M"
    return "%b %d %H:%M" if span <= 7 * 86400 else "%b %d"


#: Bars of a severity breakdown in the colours people expect.
SEVERITY_COLORS = {"critical": "#E02F44", "high": "#FF780A", "medium": "#F2CC0C", "low": "#5794F2", "info": "#8E8E8E"}


def category_figure(panel: PanelSpec, res: Result, height: int, colors: ColorBook | None = None) -> Any:
    import plotly.graph_objects as go

    colors = colors or ColorBook()
    cats = res.indexes("string")
    values = res.indexes("number")
    c = cats[0] if cats else 0
    labels = [str(r[c]) if r[c] not in (None, "") else "(none)" for r in res.rows]
    if panel.viz == "piechart":
        v = values[0]
        fig = go.Figure(go.Pie(labels=labels, values=[_num(r[v]) or 0 for r in res.rows], hole=0.45,
                               sort=False, marker=dict(colors=[colors(x, res.columns[c]) for x in labels]),
                               textinfo="percent",
                               hovertemplate="%{label}: %{value}<extra></extra>"))
        fig.update_layout(**_layout(panel, height, hovermode="closest",
                                    legend=dict(orientation="v", x=1.02, y=0.5, font=dict(size=10))))
        return fig
    fig = go.Figure()
    by_severity = len(values) == 1 and labels and all(x in SEVERITY_COLORS for x in labels)
    for v in values:
        if by_severity:
            marker = dict(color=[SEVERITY_COLORS[x] for x in labels])
        elif len(values) == 1:  # one bar per label: the label's colour, as in every other chart
            marker = dict(color=[colors(x, res.columns[c]) for x in labels])
        else:
            marker = None
        fig.add_trace(go.Bar(x=labels, y=[_num(r[v]) for r in res.rows], name=words(res.columns[v]),
                             text=[format_value(r[v], panel.unit) for r in res.rows], textposition="auto",
                             marker=marker))
    fig.update_layout(**_layout(panel, height, hovermode="closest", barmode="group", bargap=0.3,
                                showlegend=len(values) > 1, xaxis=dict(type="category")))
    return fig


# ---------------------------------------------------------------------------- panels


@dataclass
class _Counts:
    panels: int = 0
    charts: int = 0
    empty: int = 0
    errors: list[str] = field(default_factory=list)
    colors: ColorBook = field(default_factory=ColorBook)
    trace_anchor: str = ""  # the trace explorer's section, where trace ids link
    shown_trace: str = ""  # the trace it shows
    linked: dict[str, None] = field(default_factory=dict)  # trace ids linked from tables, in order


def _stat_html(panel: PanelSpec, res: Result) -> str:
    row = res.rows[0] if res.rows else []
    cells = []
    for i in res.indexes("number") or range(len(res.columns)):
        value = row[i] if row else None
        shown = format_value(value, panel.unit) if value is not None else "–"
        cells.append(f'<div class="stat"><div class="stat-value">{_esc(shown)}</div>'
                     f'<div class="stat-label">{_esc(words(res.columns[i]))}</div></div>')
    return '<div class="stats">' + "".join(cells) + "</div>"


def _table_html(panel: PanelSpec, res: Result, max_rows: int, counts: _Counts | None = None) -> str:
    counts = counts or _Counts()
    kinds = [res.kind(i) for i in range(len(res.columns))]
    units = [column_unit(c, panel.unit if panel.viz != "table" else "") for c in res.columns]
    ids = [c == "id" or c.endswith(("_id", "_ids")) for c in res.columns]  # never wrapped mid-word
    head = "".join(f'<th class="{k}" title="{_esc(c)}">{_esc(words(c))}</th>' for c, k in zip(res.columns, kinds))
    body = []
    for r in res.rows[:max_rows]:
        tds = []
        for i, v in enumerate(r):
            text = format_value(v, units[i])
            cls = kinds[i] + (" id" if ids[i] else "")
            cell = _esc(text)
            if res.columns[i] == panel.trace_link_column and text and counts.trace_anchor:
                cls += " trace"
                counts.linked.setdefault(text)
                cell = f'<a href="#{trace_anchor(text)}" title="the trace: timeline, tokens, findings">{cell}</a>'
            tds.append(f'<td class="{cls}" title="{_esc(text) if len(text) > 40 else ""}">{cell}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    more = len(res.rows) - max_rows
    foot = (f'<div class="more">{more:,} more row{"s" if more != 1 else ""} not shown</div>' if more > 0 else "")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{foot}')


def _panel_body(panel: PanelSpec, res: Result, pid: str, counts: _Counts, x_range, annotations,
                max_table_rows: int) -> str:
    height = max(panel.height * PX_PER_GRID_ROW - 60, 140)
    if panel.viz == "stat":
        return _stat_html(panel, res)
    if not res.rows:
        counts.empty += 1
        return '<div class="empty">No data in this range</div>'
    if panel.viz == "table":
        return _table_html(panel, res, max_table_rows, counts)
    if panel.viz == "timeseries":
        if not res.indexes("time") or not res.indexes("number"):
            raise ValueError(f"a time series needs a time and a numeric column, got {res.types}")
        fig = timeseries_figure(panel, res, height, x_range if "$__time" in panel.sql else None, annotations,
                                counts.colors)
    else:
        if not res.indexes("number"):
            raise ValueError(f"a {panel.viz} needs a numeric column, got {res.types}")
        fig = category_figure(panel, res, height, counts.colors)
    counts.charts += 1
    return f'<div class="chart">{_figure_html(fig, pid + "-chart")}</div>'


def _panel_html(panel: PanelSpec, pid: str, rows_for_sql: RowsForSql, ctx: QueryContext, counts: _Counts,
                x_range, annotations, max_table_rows: int) -> str:
    counts.panels += 1
    try:
        res = Result.of(rows_for_sql(expand(panel.sql, ctx)))
        body = _panel_body(panel, res, pid, counts, x_range, annotations, max_table_rows)
        status = "ok"
    except Exception as exc:  # one failing panel must not lose the rest of the report
        counts.errors.append(f"{panel.title}: {exc}")
        body = f'<div class="error">Query failed: {_esc(str(exc)[:600])}</div>'
        status = "error"
    span = min(max(panel.width, 4), 24)
    return (f'<section class="panel viz-{panel.viz}" id="{pid}" data-viz="{panel.viz}" data-status="{status}" '
            f'style="grid-column: span {span}">'
            f'<h3>{_esc(panel.title)}</h3><p class="desc">{_esc(panel.description)}</p>{body}</section>')


# ---------------------------------------------------------------------------- variables


def _resolve_variables(dash: DashboardSpec, rows_for_sql: RowsForSql, ctx: QueryContext,
                       given: Mapping[str, VarInput], cache: dict) -> dict[str, VarInput]:
    """Every variable of the dashboard: as given, else All over the options its query returns."""
    out: dict[str, VarInput] = {}
    for var in dash.variables:
        if var.name in given:
            out[var.name] = given[var.name]
            continue
        if var.sql is None:
            continue
        sql = expand(var.sql, QueryContext(ctx.time_from, ctx.time_to, ctx.interval, out))
        if sql not in cache:
            try:
                cache[sql] = [str(r[0]) for r in (rows_for_sql(sql).get("rows") or [])]
            except Exception:  # options only matter outside $__conditionalAll; All still works
                cache[sql] = []
        out[var.name] = Variable(ALL, options=cache[sql])
    return out


def _pick_trace(rows_for_sql: RowsForSql, ctx: QueryContext) -> str | None:
    try:
        rows = rows_for_sql(expand(PICK_TRACE_SQL, ctx)).get("rows") or []
    except Exception:
        return None
    return str(rows[0][0]) if rows else None


def _annotations(dash: DashboardSpec, rows_for_sql: RowsForSql, ctx: QueryContext) -> list[tuple[datetime, str]]:
    out: list[tuple[datetime, str]] = []
    for ann in dash.annotations:
        try:
            res = Result.of(rows_for_sql(expand(ann.sql, ctx)))
        except Exception:
            continue
        if not res.rows or not {"time", "text"} <= set(res.columns):
            continue  # an empty result may come without a header (chDB)
        ti, xi = res.columns.index("time"), res.columns.index("text")
        out += [(r[ti], str(r[xi])) for r in res.rows if isinstance(r[ti], datetime)]
    return out


def _selection_text(variables: Mapping[str, VarInput]) -> str:
    parts = []
    for name, v in variables.items():
        var = v if isinstance(v, Variable) else Variable(v)
        if var.is_all():
            shown = "All" + (f" ({len(var.options)})" if var.options else "")
        else:
            shown = var.value if isinstance(var.value, str) else ", ".join(var.value)
        parts.append(f"<span><b>{_esc(name)}</b> {_esc(shown)}</span>")
    return " ".join(parts)


# ---------------------------------------------------------------------------- page


def render_report(rows_for_sql: RowsForSql, start_ms: int, end_ms: int, *,
                  variables: Mapping[str, VarInput] | None = None,
                  dashboards: Sequence[DashboardSpec] = DASHBOARDS,
                  title: str = "llmpulse report", interval: timedelta | None = None,
                  max_table_rows: int = MAX_TABLE_ROWS, now: datetime | None = None,
                  plotly_src: str | None = None) -> str:
    """The whole report as one HTML page (plotly.js embedded, or loaded from `plotly_src`, a
    file beside the page; either way no network is needed to view it).

    `variables` selects dashboard variables (`{"tenant": ["acme"]}`, `{"trace_id": "t-1"}`);
    the others are All. Without a trace_id the trace explorer shows the trace of the most
    severe recent finding, else the longest trace in range.
    """
    import plotly
    from plotly.offline import get_plotlyjs

    if end_ms <= start_ms:
        raise ValueError("the report's end must be after its start")
    given = dict(variables or {})
    iv = interval or pick_interval(start_ms, end_ms)
    t_from, t_to = _utc(start_ms), _utc(end_ms)
    base = QueryContext(t_from, t_to, iv, {})
    counts = _Counts()
    option_cache: dict = {}
    sections, toc = [], []
    explorer = next((d for d in dashboards if any(v.name == TRACE_VARIABLE.name for v in d.variables)), None)
    picked = None
    if explorer is not None:
        counts.trace_anchor = explorer.uid
        picked = given.get(TRACE_VARIABLE.name)
        if picked is None:
            picked = _pick_trace(rows_for_sql, base)
        counts.shown_trace = str(picked or "")
    for d_i, dash in enumerate(dashboards):
        vars_ = _resolve_variables(dash, rows_for_sql, base, given, option_cache)
        note = ""
        if dash is explorer and TRACE_VARIABLE.name not in vars_:
            trace = picked
            vars_[TRACE_VARIABLE.name] = trace or ""
            note = ('<p class="note">Showing ' + (f"trace <code>{_esc(trace)}</code>, the trace of the most "
                    "severe recent finding (or the longest trace) in range." if trace else "no trace: none in range.")
                    + "</p>")
        ctx = QueryContext(t_from, t_to, iv, vars_)
        anns = _annotations(dash, rows_for_sql, ctx)
        panels = "".join(_panel_html(p, f"d{d_i}p{p_i}", rows_for_sql, ctx, counts, (t_from, t_to), anns,
                                     max_table_rows)
                         for p_i, p in enumerate(dash.panels))
        anchor = _esc(dash.uid)
        if dash is explorer and picked:
            note += f'<a id="{trace_anchor(str(picked))}"></a>'
        toc.append(f'<a href="#{anchor}">{_esc(dash.title.split(": ", 1)[-1])}</a>')
        ann_note = (f'<p class="note">{len(anns)} change annotation{"s" if len(anns) != 1 else ""} drawn as dotted '
                    "lines on the time series.</p>" if dash.annotations else "")
        sections.append(
            f'<section class="dashboard" id="{anchor}"><header><h2>{_esc(dash.title)}</h2>'
            f'<p class="desc">{_esc(dash.description)}</p>'
            f'<div class="vars">{_selection_text(vars_)}</div>{note}{ann_note}</header>'
            f'<div class="grid">{panels}</div></section>')

    if explorer is not None:  # linked traces: a section each, or the explorer beyond the first few
        extra, covered = _trace_sections(explorer, rows_for_sql, base, counts, (t_from, t_to), max_table_rows)
        sections.append(extra)
        html_so_far = "".join(sections)
        for trace in set(counts.linked) - covered - {counts.shown_trace}:
            html_so_far = html_so_far.replace(f'href="#{trace_anchor(trace)}"', f'href="#{_esc(explorer.uid)}"')
        sections = [html_so_far]
    generated = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    fmt = "%Y-%m-%d %H:%M UTC"
    errors = "".join(f"<li>{_esc(e[:300])}</li>" for e in counts.errors)
    error_box = (f'<div class="error"><b>{len(counts.errors)} panel queries failed</b><ul>{errors}</ul></div>'
                 if counts.errors else "")
    return _PAGE.format(
        title=_esc(title), css=_CSS,
        plotly=(f'<script type="text/javascript" src="{_esc(plotly_src)}" charset="utf-8"></script>' if plotly_src
                else f'<script type="text/javascript">{get_plotlyjs()}</script>'),
        range=f"{t_from.strftime(fmt)} → {t_to.strftime(fmt)}", interval=_esc(_human(iv)),
        generated=generated.strftime(fmt), plotly_version=_esc(plotly.__version__),
        panels=counts.panels, charts=counts.charts, empty=counts.empty, n_errors=len(counts.errors),
        error_box=error_box, toc=" ".join(toc), sections="".join(sections),
    )


def trace_anchor(trace_id: str) -> str:
    """The page anchor of a trace's section (ids may hold any character)."""
    return "trace-" + hashlib.sha1(trace_id.encode()).hexdigest()[:12]


def _trace_sections(explorer: DashboardSpec, rows_for_sql: RowsForSql, ctx: QueryContext, counts: _Counts,
                    x_range, max_table_rows: int) -> tuple[str, set[str]]:
    """A section per linked trace (the explorer's per-trace panels) beyond the one the explorer
    shows, for the first MAX_TRACE_SECTIONS; returns the html and the traces it covers."""
    panels = [p for p in explorer.panels if "${trace_id" in p.sql]
    todo = [t for t in counts.linked if t != counts.shown_trace][:MAX_TRACE_SECTIONS]
    out = []
    # Counted apart (the page's panel counts are the dashboards'); failures still count as failures.
    sub = _Counts(colors=counts.colors, trace_anchor=counts.trace_anchor, shown_trace=counts.shown_trace)
    for n, trace in enumerate(todo):
        tctx = QueryContext(ctx.time_from, ctx.time_to, ctx.interval, {**ctx.variables, TRACE_VARIABLE.name: trace})
        body = "".join(_panel_html(p, f"t{n}p{i}", rows_for_sql, tctx, sub, x_range, [], max_table_rows)
                       for i, p in enumerate(panels))
        out.append(f'<section class="dashboard trace-section" id="{trace_anchor(trace)}"><header>'
                   f'<h2>Trace <code>{_esc(trace)}</code></h2><p class="desc">{_esc(explorer.description)}</p>'
                   f'</header><div class="grid">{body}</div></section>')
    counts.errors += sub.errors
    return "".join(out), set(todo)


def _human(iv: timedelta) -> str:
    s = int(iv.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s % n == 0:
            return f"{s // n} {unit}"
    return f"{s} s"


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f8;color:#222;font:13px/1.45 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
.top{background:#111217;color:#e6e6e6;padding:18px 28px 14px}
.top h1{margin:0 0 4px;font-size:22px;font-weight:600;letter-spacing:.2px}
.top h1 span{color:#f5a623}
.meta{color:#aab;font-size:12.5px}.meta b{color:#fff;font-weight:600}
.toc{margin-top:10px}.toc a{color:#8ab8ff;margin-right:16px;text-decoration:none;font-size:12.5px}
main{padding:8px 22px 40px;max-width:1800px;margin:0 auto}
.dashboard>header{padding:22px 4px 8px}
.dashboard h2{margin:0 0 4px;font-size:18px;font-weight:600}
.desc{margin:0;color:#555}.note{margin:4px 0 0;color:#666;font-size:12px}
.vars{margin-top:6px;display:flex;flex-wrap:wrap;gap:6px}
.vars span{background:#e6e9f0;border-radius:3px;padding:1px 8px;font-size:11.5px;color:#333}
.vars b{font-weight:600;color:#555;margin-right:4px}
.grid{display:grid;grid-template-columns:repeat(24,minmax(0,1fr));gap:10px}
.panel{background:#fff;border:1px solid #dfe2e8;border-radius:4px;padding:10px 12px;min-width:0}
.panel h3{margin:0;font-size:13.5px;font-weight:600}
.panel .desc{font-size:11.5px;color:#777;margin-bottom:6px}
.stats{display:flex;gap:18px;flex-wrap:wrap;padding:4px 0 2px}
.stat-value{font-size:34px;font-weight:600;color:#1f78c1;line-height:1.1;font-variant-numeric:tabular-nums}
.stat-label{font-size:11px;color:#888}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:12px;font-variant-numeric:tabular-nums}
th{position:sticky;top:0;background:#f7f8fa;text-align:left;font-weight:600;color:#444;border-bottom:1px solid #d8dbe2;padding:5px 8px;white-space:nowrap}
td{border-bottom:1px solid #eef0f3;padding:4px 8px;max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
td.string{white-space:normal;overflow-wrap:break-word}
td.id{white-space:nowrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11.5px}
td.trace a{color:#1f60c4;text-decoration:none}td.trace a:hover{text-decoration:underline}
th.string{min-width:70px}
tr:nth-child(even) td{background:#fbfbfd}
td.number,th.number{text-align:right}
td.trace{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11.5px;white-space:nowrap}
.more{font-size:11.5px;color:#888;padding-top:4px}
.empty{color:#999;padding:26px 0;text-align:center;font-style:italic}
.error{background:#fff1f0;border:1px solid #f3b5b0;color:#a12a1f;border-radius:3px;padding:8px 10px;margin:6px 0;font-size:12px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;background:#eef0f4;padding:0 4px;border-radius:3px}
footer{color:#888;font-size:11.5px;text-align:center;padding:18px}
@media print{body{background:#fff}.panel{break-inside:avoid}}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="llmpulse report">
<title>{title}</title>
<style>{css}</style>
{plotly}
</head>
<body data-panels="{panels}" data-charts="{charts}" data-errors="{n_errors}">
<div class="top">
<h1><span>llm</span>pulse report</h1>
<div class="meta"><b>{range}</b> &nbsp;·&nbsp; interval {interval} &nbsp;·&nbsp; {panels} panels, {charts} charts,
{empty} without data, {n_errors} failed &nbsp;·&nbsp; generated {generated}</div>
<nav class="toc">{toc}</nav>
</div>
<main>{error_box}{sections}</main>
<footer>The dashboards' own panel queries, expanded as Grafana's ClickHouse data source expands them.
Charts: plotly.js {plotly_version}.</footer>
</body></html>
"""
