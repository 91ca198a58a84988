"""ClickHouse access for the worker and the CLI: connect and migrate (row mapping: rows.py).

`clickhouse-connect` everywhere: `chdb:///path` runs the engine in-process, an
`http://` DSN talks to a server. Migrations are the numbered files in
`migrations/`, applied in order and recorded in `{db}.schema_migrations`.

The record is not trusted alone: every run checks that the tables, views and
columns the migrations leave behind exist (`system.tables`, `system.columns`)
and applies again, from the first migration whose objects are missing, every
migration after it (a recreated `events` needs the columns and views later files
added). So each migration must be idempotent (IF NOT EXISTS, OR REPLACE, a
backfill that is harmless twice). Tables whose TTL is `{ttl_days}` get the
configured retention with MODIFY TTL when it changed.

With a cluster (`clickhouse_cluster`), the files run in their cluster form (cluster.py):
`ON CLUSTER`, Replicated local tables behind Distributed tables of today's names. Without
one, the statements are the files' own, byte for byte.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from llmpulse.schemas.cluster import cluster_statements, schema_migrations_ddl

MIGRATIONS_PACKAGE = "llmpulse.schemas"
log = logging.getLogger("llmpulse.store")


def connect(dsn: str, username: str = "default", password: str = "", **kwargs: Any) -> Client:
    if dsn.startswith("chdb:"):
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    return clickhouse_connect.get_client(dsn=dsn, username=username, password=password, **kwargs)


def connect_readonly(dsn: str, username: str = "default", password: str = "", max_seconds: int = 60,
                     max_rows: int = 1_000_000, database: str = "") -> Client:
    """A client whose every query runs with `readonly=1` and the given limits, checked by asking
    the engine. chDB: a session of its own (a second handle on the process's engine, so the
    worker's writing session is untouched), set once; under readonly=1 the session cannot SET
    them back. A server: the settings go with every request, except those the user's profile
    fixes already (a readonly=1 or 2 user keeps its own). `database`: the session's default
    database, so `FROM events` reads the project's table."""
    limits = {"max_execution_time": int(max_seconds), "max_result_rows": int(max_rows)}
    embedded = dsn.startswith("chdb:")
    client = connect(dsn, username, password, **({"database": database} if database and not embedded else {}))
    try:
        if embedded:
            if database:
                client.command(f"USE `{database.replace('`', '')}`")
            for name, value in limits.items():
                client.command(f"SET {name} = {value}")
            client.command("SET readonly = 1")
        else:
            for name, value in {**limits, "readonly": 1}.items():
                known = client.server_settings.get(name)
                if known is not None and (known.readonly or (name == "readonly" and known.value != "0")):
                    continue  # fixed by the user's profile
                client.set_client_setting(name, str(value))
        readonly = int(client.query("SELECT getSetting('readonly')").result_rows[0][0])
        if readonly < 1:
            raise RuntimeError(f"the session for read-only queries has readonly={readonly}")
    except Exception:
        client.close()
        raise
    return client


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath("migrations")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def split_statements(sql: str) -> list[str]:
    body = re.sub(r"^\s*--.*$", "", sql, flags=re.M)
    return [s.strip() for s in body.split(";") if s.strip()]


def render(sql: str, database: str, ttl_days: int) -> str:
    return sql.replace("{db}", database).replace("{ttl_days}", str(int(ttl_days)))


def cluster_files(files: list[tuple[str, str]], cluster: str) -> list[tuple[str, str]]:
    """The migration files in their cluster form, same shape (version, SQL template). All of
    them, in order: a later file's form depends on the tables earlier files sharded."""
    sharded: set[str] = set()
    return [(version, ";\n".join(cluster_statements(split_statements(sql), cluster, sharded)))
            for version, sql in files]


# ---------------------------------------------------------------- what the migrations leave behind

_NAME = r"\{db\}\.`?(\w+)`?"
_CREATE = re.compile(r"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|(?:MATERIALIZED\s+)?VIEW|DICTIONARY)\s+"
                     rf"(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.I)
_DROP = re.compile(rf"^DROP\s+(?:TABLE|VIEW|DICTIONARY)\s+(?:IF\s+EXISTS\s+)?{_NAME}", re.I)
_RENAME = re.compile(rf"^RENAME\s+TABLE\s+{_NAME}\s+TO\s+{_NAME}", re.I)
_ALTER = re.compile(rf"^ALTER\s+TABLE\s+{_NAME}\s+(?:ON\s+CLUSTER\s+\w+\s+)?(.*)$", re.I | re.S)
_ADD_COLUMN = re.compile(r"^ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?`?(\w+)`?", re.I)
_DROP_COLUMN = re.compile(r"^DROP\s+COLUMN\s+(?:IF\s+EXISTS\s+)?`?(\w+)`?", re.I)
# A later migration's retention clause (`ALTER TABLE ... MODIFY TTL <expr with {ttl_days}>`).
_MODIFY_TTL = re.compile(r"^MODIFY\s+TTL\s+(.*\{ttl_days\}.*)$", re.I | re.S)
_RENAME_COLUMN = re.compile(r"^RENAME\s+COLUMN\s+(?:IF\s+EXISTS\s+)?`?(\w+)`?\s+TO\s+`?(\w+)`?", re.I)
# The retention clause of a CREATE TABLE: `TTL <expr with {ttl_days}>` up to SETTINGS or the end.
_TTL = re.compile(r"\bTTL\s+(.*?\{ttl_days\}.*?)(?:\s+SETTINGS\b.*)?$", re.I | re.S)


@dataclass
class Expected:
    """The objects the migrations leave behind, each with the migration that made it last."""

    tables: dict[str, str] = field(default_factory=dict)  # table or view -> version
    columns: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, column) -> version
    ttls: dict[str, str] = field(default_factory=dict)  # table -> TTL expression template ({ttl_days})


def expected_objects(migrations: list[tuple[str, str]]) -> Expected:
    """Replay the migrations' DDL on names only (pure): CREATE adds an object, DROP and
    RENAME remove or move it, ALTER ADD/DROP/RENAME COLUMN track the columns a later
    file added. Statements of other kinds (INSERT, DELETE) create nothing."""
    out = Expected()
    for version, sql in migrations:
        for statement in split_statements(sql):
            if m := _CREATE.match(statement):
                name = m.group(1)
                out.tables[name] = version
                # A recreated table starts with its own columns; later ADD COLUMNs apply again.
                out.columns = {k: v for k, v in out.columns.items() if k[0] != name}
                ttl = _TTL.search(statement) if re.match(r"^CREATE\s+(?:OR\s+REPLACE\s+)?TABLE", statement, re.I) else None
                if ttl:
                    out.ttls[name] = ttl.group(1).strip()
                else:
                    out.ttls.pop(name, None)
            elif m := _DROP.match(statement):
                _forget(out, m.group(1))
            elif m := _RENAME.match(statement):
                old, new = m.groups()
                _forget(out, new)
                out.tables[new] = version
                out.columns.update({(new, c): version for (t, c) in list(out.columns) if t == old})
                if old in out.ttls:
                    out.ttls[new] = out.ttls[old]
                _forget(out, old)
            elif m := _ALTER.match(statement):
                table, action = m.group(1), m.group(2).strip()
                if c := _ADD_COLUMN.match(action):
                    out.columns[(table, c.group(1))] = version
                elif c := _DROP_COLUMN.match(action):
                    out.columns.pop((table, c.group(1)), None)
                elif c := _RENAME_COLUMN.match(action):
                    out.columns.pop((table, c.group(1)), None)
                    out.columns[(table, c.group(2))] = version
                elif c := _MODIFY_TTL.match(action):
                    out.ttls[table] = c.group(1).strip()
    return out


def _forget(out: Expected, name: str) -> None:
    out.tables.pop(name, None)
    out.ttls.pop(name, None)
    out.columns = {k: v for k, v in out.columns.items() if k[0] != name}


def first_missing(expected: Expected, tables: set[str], columns: set[tuple[str, str]],
                  order: list[str]) -> tuple[str | None, list[str]]:
    """The earliest migration (in `order`) one of whose objects is missing, and what is missing."""
    missing: dict[str, list[str]] = {}
    for name, version in expected.tables.items():
        if name not in tables:
            missing.setdefault(version, []).append(name)
    for (table, column), version in expected.columns.items():
        # A missing table's columns come back when its creator and the files after it run again.
        if table in tables and (table, column) not in columns:
            missing.setdefault(version, []).append(f"{table}.{column}")
    if not missing:
        return None, []
    first = min(missing, key=order.index)
    return first, sorted(x for v in missing.values() for x in v)


def ttl_days_in(engine_full: str) -> int | None:
    """The day count of a table's TTL as ClickHouse shows it (`... + toIntervalDay(90)`)."""
    m = re.search(r"\bTTL\b.*?toIntervalDay\((\d+)\)", engine_full)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- migrate

def migrate(client: Client, database: str, ttl_days: int = 90, cluster: str = "") -> list[str]:
    """Apply pending migrations in order, re-apply those whose objects are gone, and bring
    every `{ttl_days}` TTL to `ttl_days`; safe to run on every start. Returns the names
    applied by this call (pending ones and re-applied ones). `cluster`: the remote_servers
    name the schema is created `ON CLUSTER` (empty: one server or chDB, statements as written)."""
    on = f" ON CLUSTER {cluster}" if cluster else ""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}{on}")
    client.command(
        schema_migrations_ddl(database, cluster) if cluster else
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version String, applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version"
    )
    files = cluster_files(migration_files(), cluster) if cluster else migration_files()
    order = [version for version, _ in files]
    done = {r[0] for r in client.query(f"SELECT version FROM {database}.schema_migrations FINAL").result_rows}
    expected = expected_objects([(v, sql) for v, sql in files if v in done])
    tables, columns = _existing(client, database)
    redo_from, missing = first_missing(expected, tables, columns, order)
    if redo_from is not None:
        log.warning("schema objects missing although their migrations are recorded: %s; "
                    "applying again from %s", ", ".join(missing), redo_from)
    applied = []
    for version, sql in files:
        again = version in done and redo_from is not None and order.index(version) >= order.index(redo_from)
        if version in done and not again:
            continue
        for statement in split_statements(render(sql, database, ttl_days)):
            client.command(statement)
        if version not in done:
            client.insert(f"{database}.schema_migrations", [[version]], column_names=["version"])
        applied.append(version)
    _apply_retention(client, database, ttl_days, expected_objects(files), on)
    return applied


def _existing(client: Client, database: str) -> tuple[set[str], set[tuple[str, str]]]:
    tables = {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = {db:String}",
                                         parameters={"db": database}).result_rows}
    columns = {(r[0], r[1]) for r in client.query("SELECT table, name FROM system.columns WHERE database = {db:String}",
                                                  parameters={"db": database}).result_rows}
    return tables, columns


def _apply_retention(client: Client, database: str, ttl_days: int, expected: Expected, on: str = "") -> None:
    """MODIFY TTL where a table's retention differs from the configured one (CREATE ... IF NOT
    EXISTS leaves an existing table's TTL as it was created). ClickHouse then drops the
    expired rows in the background (materialize_ttl_after_modify)."""
    if not expected.ttls:
        return
    rows = client.query("SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
                        parameters={"db": database}).result_rows
    current = {name: ttl_days_in(engine_full) for name, engine_full in rows}
    for table, template in sorted(expected.ttls.items()):
        if table not in current or current[table] == int(ttl_days):
            continue
        ttl = render(template, database, ttl_days)
        client.command(f"ALTER TABLE {database}.`{table}`{on} MODIFY TTL {ttl}")
        log.warning("retention of %s.%s changed from %s to %d days", database, table, current[table], int(ttl_days))
