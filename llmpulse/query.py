"""Read access for the CLI, the demo and reports, wherever the data lives, read-only.

With a ClickHouse server, query it directly. With embedded chDB the running worker
owns the data directory (one process per path), so ask the worker's `/query/`
endpoint (processors/runtime/query_endpoint.py) with the token it wrote to the state
directory; when no worker runs, open the directory ourselves.

Every path runs the same check (`guarded_query`) on a read-only session
(`schemas/store.py connect_readonly`, ClickHouse `readonly=1`). What the engine's
readonly=1 leaves open (measured on chDB 26.9, see `check_ast`) is refused from the
query's syntax tree as the engine parses it (`formatQuery`, `EXPLAIN AST`), not from
the text:
- one statement only (formatQuery refuses multi-statements, which chDB would run);
- only reads: SELECT/UNION/INTERSECT, SHOW, DESCRIBE, EXISTS, EXPLAIN;
- table functions only from a small list that touches no file, network or process;
- no `file()` or dictionary functions, no INTO OUTFILE, no FORMAT or SETTINGS clause.
The statement run is the one the engine formatted and the check saw.
Reads of `system.*` tables are allowed (`llmpulse report` lists tables there); they
hold the schema and the engine's state, no data beyond what the user can read.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import orjson

from llmpulse.settings import Settings, masked_url


class QueryError(RuntimeError):
    """The query could not run (syntax, unknown table, no worker, ...): one line for the user."""


class QueryRefused(QueryError):
    """The query is not a read-only query this endpoint runs."""


# ---------------------------------------------------------------- the check (pure)

# Statements (the root of EXPLAIN AST) that only read.
READ_STATEMENTS = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTables", "ShowColumns", "ShowProcesslistQuery",
    "DescribeQuery", "ExistsTableQuery", "ExistsDatabaseQuery", "ExistsViewQuery", "ExistsDictionaryQuery",
    "ShowCreateTableQuery", "ShowCreateViewQuery", "ShowCreateDatabaseQuery", "Explain",
})
# Table functions that generate rows or wrap a subquery, nothing else. readonly=1 refuses
# file/url/s3/hdfs/remote/executable/mysql/postgresql/sqlite/redis/filesystem/format/loop/
# dictionary/zeros but lets others through (python, arrowstream, merge, cluster, fuzzQuery,
# mergeTreeIndex), and sqlite() creates its file before it is refused: an allow-list.
SAFE_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "values", "generate_series", "generateseries", "null", "primes", "view",
    "generaterandom",
})
# Ordinary functions that read outside the database: file() reads any path under readonly=1;
# dictionaries can pull from files, URLs, executables or other servers.
FORBIDDEN_FUNCTIONS = frozenset({"file"})
FORBIDDEN_PREFIXES = ("dict",)  # dictGet*, dictHas, dictIsIn, dictGetHierarchy, ...
# Nodes whose Literal child is the INTO OUTFILE path (readonly=1 still writes the file), as is
# a Literal child of any statement's root.
_QUERY_NODES = frozenset({"SelectWithUnionQuery", "Explain"})


@dataclass(frozen=True)
class AstNode:
    kind: str  # "Function", "TableExpression", "Literal", ...
    name: str  # what follows the kind: a function's name, a literal's value
    depth: int
    parent: "AstNode | None"


_SUFFIX = re.compile(r"(?: \(alias [^)]*\))?(?: \(children \d+\))?$")


def parse_ast(lines: Iterable[str]) -> list[AstNode]:
    """EXPLAIN AST output (one node a line, indented one space per level) as nodes with parents."""
    nodes: list[AstNode] = []
    stack: list[AstNode] = []
    for line in lines:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        label = _SUFFIX.sub("", line.strip())
        kind, _, name = label.partition(" ")
        del stack[depth:]
        node = AstNode(kind, name, depth, stack[-1] if stack else None)
        stack.append(node)
        nodes.append(node)
    return nodes


def check_ast(lines: Iterable[str]) -> None:
    """Raise QueryRefused unless the parsed statement (EXPLAIN AST lines) only reads this database."""
    nodes = parse_ast(lines)
    if not nodes:
        raise QueryRefused("empty query")
    root = nodes[0]
    if root.kind not in READ_STATEMENTS:
        raise QueryRefused(f"only read queries run here (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN), not {root.kind}")
    for node in nodes:
        parent = node.parent.kind if node.parent else ""
        if node.kind == "Function":
            name = node.name.lower()
            if parent == "TableExpression" and name not in SAFE_TABLE_FUNCTIONS:
                raise QueryRefused(f"table function {node.name}() is not allowed: it can reach files, the network "
                                   "or other processes (allowed: " + ", ".join(sorted(SAFE_TABLE_FUNCTIONS)) + ")")
            if name in FORBIDDEN_FUNCTIONS or name.startswith(FORBIDDEN_PREFIXES):
                raise QueryRefused(f"function {node.name}() is not allowed: it reads outside the database")
        elif node.kind == "Literal" and (parent in _QUERY_NODES or node.parent is root):
            # SHOW, DESCRIBE and EXISTS take INTO OUTFILE too; no read statement has another literal there.
            raise QueryRefused("INTO OUTFILE is not allowed")
        elif node.kind == "Set":
            raise QueryRefused("SETTINGS clauses are not allowed (the session is read-only)")
        elif node.kind == "Identifier" and parent in _QUERY_NODES and node.parent is root and node.name != "Native":
            raise QueryRefused("FORMAT clauses are not allowed (results come back as JSON rows)")


def referenced_tables(lines: Iterable[str]) -> set[str]:
    """The tables a statement reads by name (`db.table` or a bare `table`; CTE names too)."""
    return {n.name.replace("`", "") for n in parse_ast(lines) if n.kind == "TableIdentifier"}


# Engines whose rows live in this database. Others (File, URL, S3, MySQL, PostgreSQL, Kafka,
# Distributed, Dictionary, Executable, Merge over any of them, ...) read outside it.
_LOCAL_ENGINES = frozenset({"View", "MaterializedView", "Memory", "Log", "TinyLog", "StripeLog", "Null", "Set",
                            "Join", "Buffer"})


def local_engine(engine: str) -> bool:
    return engine.endswith("MergeTree") or engine in _LOCAL_ENGINES or engine.startswith("System")


# Distributed(cluster, database, table[, sharding key]): names quoted or not, as the server shows them.
_DISTRIBUTED = re.compile(r"Distributed\(\s*'?([\w.-]+)'?\s*,\s*'?(\w+)'?\s*,")


def own_cluster_table(engine_full: str, cluster: str, database: str) -> bool:
    """A Distributed table over the configured cluster's copies of this database (schemas/cluster.py
    makes one per table): it reads the same tables on the other nodes, nothing outside."""
    m = _DISTRIBUTED.match(engine_full or "")
    return bool(cluster) and m is not None and m.group(1) == cluster and m.group(2) == database


# ---------------------------------------------------------------- the check on a client

_CODE = re.compile(r"Code: (\d+)\.")
_REFUSED_CODES = {164, 497}  # READONLY, ACCESS_DENIED: the engine's own refusals


def error_message(exc: BaseException) -> str:
    """The engine's message without the driver's noise: its first line, no version suffix."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"\s*\(version [\d.]+\)", "", line)


def _engine_error(exc: Exception) -> QueryError:
    message = error_message(exc)
    if "Multi-statements are not allowed" in message:  # formatQuery parses one statement
        return QueryRefused("one statement per query")
    m = _CODE.search(message)
    cls = QueryRefused if m and int(m.group(1)) in _REFUSED_CODES else QueryError
    # A syntax error found by formatQuery names the wrapper; the user sent only their text.
    return cls(re.sub(r":? In scope SELECT formatQuery\(.*$", "", message, flags=re.S))


def _check_engines(client: Any, tables: set[str], cluster: str = "") -> None:
    """Refuse reading an existing table whose engine reaches outside the database (such a table
    can only have been made by someone with write access; reading it would still reach out).
    On a cluster, the Distributed tables over `cluster` are the database."""
    if not tables:
        return
    try:
        rows = client.query("SELECT database, name, engine, currentDatabase(), engine_full FROM system.tables "
                            "WHERE name IN {names:Array(String)}",
                            parameters={"names": sorted({t.rpartition(".")[2] for t in tables})}).result_rows
    except Exception as exc:
        raise _engine_error(exc) from None
    for database, name, engine, current, engine_full in rows:
        if not (f"{database}.{name}" in tables or (name in tables and database == current)):
            continue
        if not local_engine(engine) and not (engine == "Distributed" and own_cluster_table(engine_full, cluster, database)):
            raise QueryRefused(f"table {database}.{name} has engine {engine}, which reads outside the database")


def guarded_query(client: Any, sql: str, cluster: str = "") -> dict:
    """Run `sql` on `client` (a read-only session) if `check_ast` passes (`cluster`: the
    configured ClickHouse cluster, whose Distributed tables may be read).

    Returns {"columns": [...], "types": [...], "rows": [[...], ...]}."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRefused("empty query")
    try:
        # A bound parameter: the text reaches the parser as one string literal, whatever it holds.
        statement = client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0]
    except Exception as exc:  # syntax errors, several statements
        raise _engine_error(exc) from None
    try:
        lines = [row[0] for row in client.query(f"EXPLAIN AST {statement}").result_rows]
    except Exception as exc:  # a SETTINGS clause under readonly; a statement without output (SYSTEM ...)
        error = _engine_error(exc)
        if "SYNTAX_ERROR" in str(error):  # it parsed alone, so it is a statement that returns nothing
            raise QueryRefused(f"only read queries run here (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN), "
                               f"not {' '.join(statement.split()[:2])}") from None
        raise error from None
    check_ast(lines)
    _check_engines(client, referenced_tables(lines), cluster)
    try:
        result = client.query(statement)
    except Exception as exc:
        raise _engine_error(exc) from None
    columns, types = list(result.column_names), [t.name for t in result.column_types]
    if not columns and not result.result_rows:  # chDB sends no header with an empty result
        columns, types = _described(client, statement)
    return {"columns": columns, "types": types, "rows": [list(r) for r in result.result_rows]}


def _described(client: Any, statement: str) -> tuple[list[str], list[str]]:
    """The column names and types of a query that returned nothing (none for SHOW and the like)."""
    try:
        rows = client.query(f"DESCRIBE ({statement})").result_rows
    except Exception:
        return [], []
    return [r[0] for r in rows], [r[1] for r in rows]


# ---------------------------------------------------------------- where the query runs

def worker_url(settings: Settings, path: str) -> str:
    return f"http://127.0.0.1:{settings.worker_web_port}{path}"


def query_token_path(settings: Settings) -> Path:
    """Where the worker on `worker_web_port` keeps its /query/ token (mode 0600)."""
    return Path(settings.state_dir) / f"query.{settings.worker_web_port}.token"


def worker_stats(settings: Settings, timeout: float = 2.0) -> dict | None:
    """The running worker's counters, or None when no worker answers."""
    try:
        with urllib.request.urlopen(worker_url(settings, "/stats/"), timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class _NoWorker(Exception):
    pass


def run_query(settings: Settings, sql: str, timeout: float = 60.0) -> dict:
    """Returns {"columns": [...], "types": [...], "rows": [[...], ...]}; raises QueryError."""
    if settings.embedded:
        try:
            return _query_worker(settings, sql, timeout)
        except _NoWorker:
            pass  # no worker running: open the data directory directly
    return _query_directly(settings, sql)


def _query_worker(settings: Settings, sql: str, timeout: float) -> dict:
    token_file = query_token_path(settings)
    try:
        token = token_file.read_text().strip()
    except OSError:
        token = ""  # no worker wrote one; if a worker answers anyway, its 401 says so below
    req = urllib.request.Request(worker_url(settings, "/query/"), data=orjson.dumps({"sql": sql}),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = str(orjson.loads(exc.read()).get("error") or exc)
        except (ValueError, AttributeError, OSError):
            message = str(exc)
        if exc.code == 401:
            raise QueryError(f"the worker on port {settings.worker_web_port} refused the token in {token_file} "
                             f"({message}); is it this state directory's worker?") from None
        raise (QueryRefused if exc.code == 403 else QueryError)(message) from None
    except OSError as exc:  # URLError is one; a timeout while reading is another
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            raise _NoWorker() from None
        raise QueryError(f"the worker on port {settings.worker_web_port} did not answer: {reason}") from None


def _query_directly(settings: Settings, sql: str) -> dict:
    from llmpulse.schemas.store import connect, connect_readonly, migrate

    s = settings
    password = s.clickhouse_password.get_secret_value()
    clients = []
    try:
        try:
            if s.embedded:  # the CLI owns the directory now: bring the schema up to date first
                clients.append(connect(s.dsn))
                migrate(clients[0], s.database, s.retention_days)
            clients.append(connect_readonly(s.dsn, s.clickhouse_user, password, s.query_max_seconds, s.query_max_rows,
                                            s.database))
        except Exception as exc:
            why = "connection refused" if "Connection refused" in str(exc) else masked_url(error_message(exc))
            raise QueryError(f"cannot open {s.dsn_shown}: {why}") from None
        return guarded_query(clients[-1], sql, "" if s.embedded else s.clickhouse_cluster)
    finally:
        for client in reversed(clients):
            client.close()
