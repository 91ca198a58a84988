"""Expand a panel's SQL the way Grafana + `grafana-clickhouse-datasource` do, so tests
(and the static report) run exactly the SQL ClickHouse would receive.

The order is the plugin's:

1. frontend, `applyConditionalAll`: every `$__conditionalAll(cond, $var)` becomes `cond`,
   or `1=1` when `$var` is set to All (`$__all`) or empty; scanned from the last one back,
   arguments split on top-level commas only;
2. frontend, Grafana's template service: `$var`, `${var}`, `${var:format}`, `[[var]]`;
   a multi-value without an explicit format is rendered by the plugin's own format
   function (`'a','b'`), a single value is inserted raw; All expands to every option
   (or the variable's custom all value);
3. backend (sqlds / sqlutil.Interpolate with the plugin's macro table): `$__name` or
   `$__name(args)`, where arguments are taken only when `(` follows the name directly and
   are split on top-level commas and trimmed; `$__name` needs a word boundary after it, so
   `$__timeFilter` does not match `$__timeFilter_ms`.

Only what the plugin defines is expanded; an unknown `$__x` stays as written (and fails in
ClickHouse, which is what a test should see).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Mapping, Sequence, Union

ALL = "$__all"


class MacroError(ValueError):
    """A macro was called with the wrong arguments or an unclosed bracket."""


@dataclass(frozen=True)
class Variable:
    """A dashboard variable's current selection.

    `value` is one string, a list of strings (multi-value), or `ALL`. `options` are the
    values All stands for; `all_value` is the variable's custom all value, if set.
    """

    value: Union[str, Sequence[str]]
    options: Sequence[str] = ()
    all_value: str | None = None
    type: str = "query"

    def is_all(self) -> bool:
        v = self.value
        if isinstance(v, str):
            return v == ALL
        return list(v) == [ALL]

    def values(self) -> list[str] | str:
        """The selection as Grafana's template service sees it (list for multi)."""
        if self.is_all():
            if self.all_value is not None:
                return self.all_value
            return list(self.options)
        return self.value if isinstance(self.value, str) else list(self.value)


VarInput = Union[Variable, str, Sequence[str]]


def _as_variable(v: VarInput) -> Variable:
    if isinstance(v, Variable):
        return v
    return Variable(value=v)


@dataclass(frozen=True)
class QueryContext:
    """Time range and interval of one query, as the data source receives them."""

    time_from: datetime
    time_to: datetime
    interval: timedelta = timedelta(seconds=60)
    variables: Mapping[str, VarInput] = field(default_factory=dict)

    @classmethod
    def last(cls, span: timedelta, *, now: datetime | None = None, interval: timedelta | None = None,
             variables: Mapping[str, VarInput] | None = None) -> "QueryContext":
        now = now or datetime.now(timezone.utc)
        return cls(now - span, now, interval or timedelta(seconds=60), dict(variables or {}))


# ---------------------------------------------------------------- argument parsing


def _split_top_level(args: str) -> list[str]:
    """Split on commas outside brackets (sqlutil keeps `f(a, b)` as one argument)."""
    out: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(args):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(args[start:i])
            start = i + 1
    out.append(args[start:])
    return out


def _parse_args(text: str, open_at: int) -> tuple[str, int]:
    """`text[open_at]` is '('; return the raw argument text and the index after ')'."""
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i], i + 1
    raise MacroError(f"missing closing bracket after {text[max(0, open_at - 20):open_at + 20]!r}")


# ---------------------------------------------------------------- step 1: conditionalAll


def apply_conditional_all(sql: str, variables: Mapping[str, VarInput]) -> str:
    macro = "$__conditionalAll("
    idx = sql.rfind(macro)
    while idx != -1:
        raw, end = _parse_args(sql, idx + len(macro) - 1)
        params = _split_top_level(raw)
        if len(params) != 2:
            # The plugin gives up and leaves the query as it is.
            return sql
        phrase = params[0]
        m = re.search(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+", params[1].strip())
        if m:
            var = variables.get(m.group(0))
            if var is not None:
                v = _as_variable(var)
                cur = v.value if isinstance(v.value, str) else ",".join(v.value)
                if cur in ("", ALL):
                    phrase = "1=1"
        sql = sql[:idx] + phrase + sql[end:]
        idx = sql.rfind(macro)
    return sql


# ---------------------------------------------------------------- step 2: template variables

# Grafana's variable regex: $var, [[var:fmt]], ${var.field:fmt}
_VAR_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


def _sql_escape(s: str) -> str:
    return s.replace("'", "''")


def _plugin_format(value: list[str] | str) -> str:
    """The plugin's `format()` passed to templateSrv.replace."""
    if isinstance(value, list):
        return "'" + "','".join(value) + "'"
    return value


def _format(value: list[str] | str, fmt: str | None) -> str:
    if fmt is None:
        return _plugin_format(value)
    vals = value if isinstance(value, list) else [value]
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in vals)
    if fmt == "sqlstring":
        return ",".join("'" + _sql_escape(v) + "'" for v in vals)
    if fmt == "csv":
        return ",".join(vals)
    if fmt == "pipe":
        return "|".join(vals)
    if fmt == "raw":
        return value if isinstance(value, str) else ",".join(vals)
    if fmt == "text":
        return " + ".join(vals)
    raise MacroError(f"variable format {fmt!r} is not supported here")


def apply_template_variables(sql: str, ctx: QueryContext) -> str:
    builtins: dict[str, str] = {
        "__from": str(int(ctx.time_from.timestamp() * 1000)),
        "__to": str(int(ctx.time_to.timestamp() * 1000)),
        "__interval_ms": str(int(ctx.interval.total_seconds() * 1000)),
        "__interval": _grafana_interval(ctx.interval),
    }

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name in builtins and name not in ctx.variables:
            return builtins[name]
        var = ctx.variables.get(name)
        if var is None:
            return m.group(0)  # not a variable (e.g. a backend macro): left for step 3
        return _format(_as_variable(var).values(), fmt)

    return _VAR_RE.sub(repl, sql)


def _grafana_interval(iv: timedelta) -> str:
    s = int(iv.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % n == 0:
            return f"{s // n}{unit}"
    if s:
        return f"{s}s"
    return f"{int(iv.total_seconds() * 1000)}ms"


# ---------------------------------------------------------------- step 3: backend macros


def _date_time(t: datetime) -> str:
    return f"toDateTime({int(t.timestamp())})"


def _date_time64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(round(t.timestamp() * 1000))})"


def _date(t: datetime) -> str:
    return f"toDate('{t.astimezone(timezone.utc).strftime('%Y-%m-%d')}')"


def _need(args: list[str], n: int, name: str) -> None:
    if len(args) != n:
        raise MacroError(f"$__{name}: expected {n} argument(s), received {len(args)}")


def _m_time_filter(ctx: QueryContext, a: list[str]) -> str:
    _need(a, 1, "timeFilter")
    return f"{a[0]} >= {_date_time(ctx.time_from)} AND {a[0]} <= {_date_time(ctx.time_to)}"


def _m_time_filter_ms(ctx: QueryContext, a: list[str]) -> str:
    _need(a, 1, "timeFilter_ms")
    return f"{a[0]} >= {_date_time64(ctx.time_from)} AND {a[0]} <= {_date_time64(ctx.time_to)}"


def _m_date_filter(ctx: QueryContext, a: list[str]) -> str:
    _need(a, 1, "dateFilter")
    return f"{a[0]} >= {_date(ctx.time_from)} AND {a[0]} <= {_date(ctx.time_to)}"


def _m_date_time_filter(ctx: QueryContext, a: list[str]) -> str:
    _need(a, 2, "dateTimeFilter")
    d, t = a
    return (f"({d} >= {_date(ctx.time_from)} AND {d} <= {_date(ctx.time_to)}) AND "
            f"({t} >= {_date_time(ctx.time_from)} AND {t} <= {_date_time(ctx.time_to)})")


def _interval_s(ctx: QueryContext) -> int:
    return int(max(ctx.interval.total_seconds(), 1))


def _m_time_interval(ctx: QueryContext, a: list[str]) -> str:
    _need(a, 1, "timeInterval")
    return f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {_interval_s(ctx)} second)"


def _m_time_interval_ms(ctx: QueryContext, a: list[str]) -> str:
    _need(a, 1, "timeInterval_ms")
    ms = int(max(ctx.interval.total_seconds() * 1000, 1))
    return f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {ms} millisecond)"


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _m_time_from(ctx: QueryContext, a: list[str]) -> str:  # sqlutil default
    _need(a, 1, "timeFrom")
    return f"{a[0]} >= '{_rfc3339(ctx.time_from)}'"


def _m_time_to(ctx: QueryContext, a: list[str]) -> str:  # sqlutil default
    _need(a, 1, "timeTo")
    return f"{a[0]} <= '{_rfc3339(ctx.time_to)}'"


MacroFn = Callable[[QueryContext, list[str]], str]

#: The plugin's macro table (pkg/macros) plus sqlutil's defaults it does not override.
BACKEND_MACROS: dict[str, MacroFn] = {
    "fromTime": lambda c, a: _date_time(c.time_from),
    "toTime": lambda c, a: _date_time(c.time_to),
    "fromTime_ms": lambda c, a: _date_time64(c.time_from),
    "toTime_ms": lambda c, a: _date_time64(c.time_to),
    "timeFilter": _m_time_filter,
    "timeFilter_ms": _m_time_filter_ms,
    "dateFilter": _m_date_filter,
    "dateTimeFilter": _m_date_time_filter,
    "dt": _m_date_time_filter,
    "timeInterval": _m_time_interval,
    "timeInterval_ms": _m_time_interval_ms,
    "interval_s": lambda c, a: str(_interval_s(c)),
    "timeFrom": _m_time_from,
    "timeTo": _m_time_to,
}


def apply_backend_macros(sql: str, ctx: QueryContext) -> str:
    for name, fn in BACKEND_MACROS.items():
        rgx = re.compile(r"\$__" + re.escape(name) + r"\b")
        pos = 0
        while True:
            m = rgx.search(sql, pos)
            if not m:
                break
            end = m.end()
            args: list[str] = []
            if end < len(sql) and sql[end] == "(":
                raw, end = _parse_args(sql, end)
                args = [s.strip() for s in _split_top_level(raw)] if raw.strip() else [""]
            out = fn(ctx, args)
            sql = sql[: m.start()] + out + sql[end:]
            pos = m.start() + len(out)
    return sql


# ---------------------------------------------------------------- all together


def expand(sql: str, ctx: QueryContext) -> str:
    """The SQL ClickHouse receives for `sql` on a dashboard with `ctx`."""
    sql = apply_conditional_all(sql, ctx.variables)
    sql = apply_template_variables(sql, ctx)
    return apply_backend_macros(sql, ctx)


def expand_alert(sql: str, ctx: QueryContext) -> str:
    """Alert rules run in the backend only: no template variables, no conditionalAll."""
    if "$__conditionalAll" in sql or re.search(r"\$\{?(?!__)\w+", sql):
        raise MacroError("alert queries cannot use dashboard variables")
    return apply_backend_macros(sql, ctx)


def remaining_placeholders(sql: str) -> Iterable[str]:
    """Anything that still looks like a macro or variable after expansion."""
    return re.findall(r"\$__\w+|\$\{\w+[^}]*\}|\$[A-Za-z_]\w*", sql)


__all__ = [
    "ALL", "Variable", "QueryContext", "MacroError", "expand", "expand_alert",
    "apply_conditional_all", "apply_template_variables", "apply_backend_macros",
    "BACKEND_MACROS", "remaining_placeholders",
]
