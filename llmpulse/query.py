"""Read access for the CLI, the demo and reports, wherever the data lives.

With a ClickHouse server, query it directly. With embedded chDB the running worker
owns the data directory (one process per path), so ask the worker's `/query/`
endpoint; when no worker runs, open the directory ourselves.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson

from llmpulse.settings import Settings


class QueryError(RuntimeError):
    pass


def worker_url(settings: Settings, path: str) -> str:
    return f"http://127.0.0.1:{settings.worker_web_port}{path}"


def worker_stats(settings: Settings, timeout: float = 2.0) -> dict | None:
    """The running worker's counters, or None when no worker answers."""
    try:
        with urllib.request.urlopen(worker_url(settings, "/stats/"), timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def run_query(settings: Settings, sql: str, timeout: float = 60.0) -> dict:
    """Returns {"columns": [...], "types": [...], "rows": [[...], ...]}."""
    if settings.embedded:
        try:
            req = urllib.request.Request(worker_url(settings, "/query/"), data=orjson.dumps({"sql": sql}),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise QueryError(orjson.loads(exc.read()).get("error", str(exc))) from None
        except (urllib.error.URLError, ConnectionError):
            pass  # no worker running: open the data directory directly
    from llmpulse.schemas.store import connect, migrate

    client = connect(settings.dsn, settings.clickhouse_user, settings.clickhouse_password.get_secret_value())
    if settings.embedded:
        migrate(client, settings.database, settings.retention_days)
    try:
        result = client.query(sql)
    except Exception as exc:
        raise QueryError(str(exc)) from None
    return {"columns": list(result.column_names), "types": [t.name for t in result.column_types],
            "rows": [list(r) for r in result.result_rows]}
