"""ClickHouse access for the worker and the CLI: connect and migrate (row mapping: rows.py).

`clickhouse-connect` everywhere: `chdb:///path` runs the engine in-process, an
`http://` DSN talks to a server. Migrations are the numbered files in
`migrations/`, applied once each and recorded in `{db}.schema_migrations`.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

MIGRATIONS_PACKAGE = "llmpulse.schemas"


def connect(dsn: str, username: str = "default", password: str = "", **kwargs: Any) -> Client:
    if dsn.startswith("chdb:"):
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    return clickhouse_connect.get_client(dsn=dsn, username=username, password=password, **kwargs)


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath("migrations")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def split_statements(sql: str) -> list[str]:
    body = re.sub(r"^\s*--.*$", "", sql, flags=re.M)
    return [s.strip() for s in body.split(";") if s.strip()]


def render(sql: str, database: str, ttl_days: int) -> str:
    return sql.replace("{db}", database).replace("{ttl_days}", str(int(ttl_days)))


def migrate(client: Client, database: str, ttl_days: int = 90) -> list[str]:
    """Apply pending migrations in order; safe to run on every start. Returns the applied names."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version String, applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {r[0] for r in client.query(f"SELECT version FROM {database}.schema_migrations FINAL").result_rows}
    applied = []
    for version, sql in migration_files():
        if version in done:
            continue
        for statement in split_statements(render(sql, database, ttl_days)):
            client.command(statement)
        client.insert(f"{database}.schema_migrations", [[version]], column_names=["version"])
        applied.append(version)
    return applied
