"""`llmpulse reprice --since T [--until T]`: price stored output rows again after a price fix.

A price override added or corrected, or a newer genai-prices catalog: rows already in
ClickHouse keep the price they were written with until they are repriced. This command
recomputes `price_usd`, `price_source` and `price_version` of the `output` rows with
event time in [since, until) with the current Pricer (the same `Pricer.price_usage` the
worker runs: `response_model` when present, else `model`, at the row's event time).

How, and why it is idempotent:
- The range is read under FINAL in windows (one hour by default, never across a month:
  `events` is partitioned by month and an insert into one partition is atomic).
- Each row is priced again; only rows whose (price_usd, price_source, price_version)
  differ are written, as the whole row again with the new price.
- `events` is a ReplacingMergeTree keyed by (tenant, workflow, event_type, ts, event_id)
  without a version column: the newest insert wins under FINAL and at merge time. Every
  reader (FINAL, the views `traces`, `calls_per_minute`, `calls_per_day`) sees one row
  per event with the new price, so nothing is counted twice; the older physical copy
  goes at the next merge.
- A second run finds every price already right and writes nothing (returns 0). A run
  that dies halfway leaves some windows done: run it again.
- Stored usage is five token counts; an event sent without `usage` is stored as zeros.
  Zero usage is priced as "no usage" (NULL, as the worker does) unless the row already
  has a price (explicit zero usage, priced at the per-call fee, usually 0).

Where it can run:
- ClickHouse server DSN (`LLMPULSE_CLICKHOUSE_DSN=http://...`): any time. Restart the
  worker with the fixed prices first (it builds its Pricer at start-up), then reprice up
  to the restart, or rows written in between keep the old price.
- Embedded chDB (the default): the data directory opens in one process only and the
  running worker owns it, so reprice refuses while a worker answers on
  `worker_web_port` (stop it, reprice, start it again). Writes are not routed through
  the worker's read-only `/query/` endpoint.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:  # imported when used: registering the command keeps the CLI start fast
    from llmpulse.processors.pricing import Pricer
    from llmpulse.settings import Settings

HOUR_MS = 3_600_000
_USAGE = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
_PRICE = ("price_usd", "price_source", "price_version")
_NEEDED = ("provider", "model", "response_model", *_USAGE, *_PRICE)


class RepriceError(RuntimeError):
    pass


def parse_time(text: str) -> int:
    """Epoch ms from `1731000000000` (epoch ms), `2026-11-01`, or ISO 8601 (UTC if no offset)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or epoch milliseconds: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


def reprice(settings: Settings, since_ms: int, until_ms: int | None = None, *,
            client: Any = None, pricer: Pricer | None = None, window_ms: int = HOUR_MS) -> int:
    """Reprice output rows with event time in [since_ms, until_ms) (default: until now).
    Returns the number of rows whose price changed. With `client` None, opens the
    configured ClickHouse (see the module doc for embedded mode) and closes it after."""
    until_ms = time.time_ns() // 1_000_000 + 1 if until_ms is None else until_ms
    if pricer is None:
        from llmpulse.processors.pricing import Pricer

        pricer = Pricer.from_config(prices=settings.prices, overrides_file=settings.price_overrides_file)
    if client is not None:
        return reprice_rows(client, settings.database, pricer, since_ms, until_ms, window_ms)
    client = _open(settings)
    try:
        return reprice_rows(client, settings.database, pricer, since_ms, until_ms, window_ms)
    finally:
        client.close()


def _open(settings: Settings) -> Any:
    from llmpulse.query import worker_stats
    from llmpulse.settings import masked_url
    from llmpulse.schemas.store import connect, migrate

    s = settings
    if s.embedded and worker_stats(s) is not None:
        raise RepriceError(
            f"a worker answers on port {s.worker_web_port} and owns the embedded ClickHouse data "
            f"({s.dsn_shown}): stop it, run reprice, start it again (or use a ClickHouse server DSN)")
    try:
        client = connect(s.dsn, s.clickhouse_user, s.clickhouse_password.get_secret_value())
    except Exception as exc:  # chDB: another process (a worker on another port?) holds the directory
        why = "connection refused" if "Connection refused" in str(exc) else masked_url(str(exc))
        raise RepriceError(f"cannot open {s.dsn_shown}: {why}") from None
    if s.embedded:
        migrate(client, s.database, s.retention_days)  # a fresh directory: nothing to reprice, but no error
    return client


def reprice_rows(client: Any, database: str, pricer: Pricer, since_ms: int, until_ms: int,
                 window_ms: int = HOUR_MS) -> int:
    """The work, against any clickhouse-connect client. Returns the rows changed."""
    from llmpulse.schemas.contract import Usage

    if until_ms <= since_ms:
        return 0
    columns = _insert_columns(client, database)
    missing = [c for c in ("ts", "event_id", *_NEEDED) if c not in columns]
    if missing:
        raise RepriceError(f"{database}.events lacks {missing}: run `llmpulse migrate`")
    pos = {c: i for i, c in enumerate(columns)}
    i_provider, i_model, i_rmodel = pos["provider"], pos["model"], pos["response_model"]
    i_usage = [pos[c] for c in _USAGE]
    i_price = [pos[c] for c in _PRICE]
    i_ts = pos["ts"]  # read as epoch ms, see _as_stored
    select = ", ".join(_as_stored(c, t) for c, t in columns.items())
    columns = list(columns)
    sql = (f"SELECT {select} FROM {database}.events FINAL "
           "WHERE event_type = 'output' AND ts >= fromUnixTimestamp64Milli({lo:Int64}) "
           "AND ts < fromUnixTimestamp64Milli({hi:Int64})")
    changed = 0
    for lo, hi in _windows(since_ms, until_ms, window_ms):
        rows = client.query(sql, parameters={"lo": lo, "hi": hi}).result_rows
        out = []
        for r in rows:
            counts = [r[i] for i in i_usage]
            old = (r[i_price[0]], r[i_price[1]], r[i_price[2]])
            usage = Usage(**dict(zip(_USAGE, counts))) if any(counts) or old[0] is not None else None
            p = pricer.price_usage(r[i_provider], r[i_rmodel] or r[i_model], usage, r[i_ts])
            new = (p.cost_usd, p.price_source, p.price_version)
            if new == old:
                continue
            row = list(r)
            row[i_price[0]], row[i_price[1]], row[i_price[2]] = new
            out.append(row)
        if out:
            client.insert(f"{database}.events", out, column_names=columns)
            changed += len(out)
    return changed


def _insert_columns(client: Any, database: str) -> dict[str, str]:
    """Every stored column (not MATERIALIZED/ALIAS) and its type: a reinsert must keep them
    all, also ones a later migration adds."""
    rows = client.query(f"DESCRIBE TABLE {database}.events").result_rows
    return {r[0]: r[1] for r in rows if r[2] not in ("MATERIALIZED", "ALIAS", "EPHEMERAL")}


_TICKS = {"3": "toUnixTimestamp64Milli", "6": "toUnixTimestamp64Micro", "9": "toUnixTimestamp64Nano"}


def _as_stored(name: str, ch_type: str) -> str:
    """Times are read and written back as integer ticks: a datetime round trip through the
    client depends on the local time zone and would move the row (ts is in the key)."""
    if ch_type.startswith("DateTime64("):
        fn = _TICKS.get(ch_type[len("DateTime64("):].split(",")[0].split(")")[0].strip())
        if fn is None:
            raise RepriceError(f"events.{name}: unsupported type {ch_type}")
        return f"{fn}(`{name}`)"
    if ch_type.startswith("DateTime"):
        return f"toUnixTimestamp(`{name}`)"
    return f"`{name}`"


def _windows(since_ms: int, until_ms: int, window_ms: int):
    from llmpulse.processors.budgets import period_bounds

    lo = since_ms
    while lo < until_ms:
        month_end = period_bounds("month", lo)[2]
        hi = min(lo + window_ms, month_end, until_ms)
        yield lo, hi
        lo = hi


# -- command line -------------------------------------------------------------------------

def reprice_command(
    since: Annotated[str, typer.Option("--since", help="start of the range: ISO 8601 (UTC unless it has "
                                                        "an offset), a date, or epoch ms")],
    until: Annotated[Optional[str], typer.Option("--until", help="end of the range, exclusive; default now")] = None,
) -> None:
    """Recompute prices of stored output rows in a time range with the current price config (idempotent)."""
    from llmpulse.settings import load_settings

    try:
        since_ms = parse_time(since)
        until_ms = parse_time(until) if until else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        n = reprice(load_settings(), since_ms, until_ms)
    except RepriceError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1)
    typer.echo(f"repriced {n} rows")


if __name__ == "__main__":  # `python -m llmpulse.commands.reprice` until the CLI registers it
    typer.run(reprice_command)
