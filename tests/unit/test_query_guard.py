"""The read-only check of `llmpulse sql`, the report and the worker's /query/ endpoint.

Attacks run against the real engine (chDB) on the read-only session the endpoint uses
(`connect_readonly` + `guarded_query`): each must be refused and leave no trace (the
tables intact, no file written, the writing session still writable). Analyst queries
from the README and every dashboard panel of the report must still run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmpulse.query import QueryError, QueryRefused, check_ast, guarded_query, parse_ast
from llmpulse.schemas.store import connect_readonly, migrate

DB = "qg"


@pytest.fixture(scope="module")
def ro(chdb_client):
    """A read-only session on the test process's engine, beside the writing one; and tables with
    engines that read outside the database, as someone with write access could have made them."""
    migrate(chdb_client, DB, 90)
    chdb_client.command(f"CREATE TABLE IF NOT EXISTS {DB}.ext_url (a String) ENGINE = URL('http://127.0.0.1:9/x', CSV)")
    chdb_client.command(f"CREATE TABLE IF NOT EXISTS {DB}.ext_file (a String) ENGINE = File(CSV)")
    path = chdb_client.query("SELECT path FROM system.disks WHERE name = 'default'").result_rows[0][0]
    client = connect_readonly(f"chdb://{path.rstrip('/')}", max_seconds=10)
    yield client
    client.close()


ATTACKS = [
    # writes and DDL
    f"DROP TABLE {DB}.events",
    f"DROP TABLE {DB}.events /*",  # an unclosed comment must not swallow anything appended
    f"TRUNCATE TABLE {DB}.events",
    f"ALTER TABLE {DB}.events DELETE WHERE 1",
    f"DELETE FROM {DB}.events WHERE 1",
    f"INSERT INTO {DB}.dead_letters (reason) VALUES ('forged')",
    f"INSERT INTO {DB}.dead_letters (reason) SELECT 'forged'",
    f"CREATE TABLE {DB}.x (a Int8) ENGINE = Memory",
    f"RENAME TABLE {DB}.events TO {DB}.gone",
    f"DETACH TABLE {DB}.events",
    f"OPTIMIZE TABLE {DB}.events FINAL",
    "SYSTEM STOP MERGES",
    "KILL QUERY WHERE 1",  # readonly=1 lets this run
    f"BACKUP TABLE {DB}.events TO File('backup')",
    f"CREATE DICTIONARY {DB}.d (a UInt64) PRIMARY KEY a SOURCE(FILE(path '/etc/passwd' format 'CSV')) "
    "LAYOUT(FLAT()) LIFETIME(0)",
    f"ATTACH TABLE {DB}.p (a String) ENGINE = File(LineAsString, '/etc/passwd')",
    # session state: lifting readonly, switching database
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT 1 SETTINGS max_execution_time = 0",
    "USE system",
    # several statements: chDB runs all of them
    f"SELECT 1; DROP TABLE {DB}.events",
    "SELECT 1; SELECT file('/etc/passwd')",
    # files
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/passwd')",  # the scalar file() reads any path under readonly=1
    "SELECT length(file('/etc/hostname'))",
    "SELECT arrayMap(x -> file(x), ['/etc/passwd'])",
    "WITH (SELECT file('/etc/passwd')) AS p SELECT p",
    f"SELECT * FROM {DB}.events WHERE event_id IN (SELECT * FROM file('/etc/passwd', 'LineAsString'))",
    "DESCRIBE TABLE file('/etc/passwd', 'LineAsString')",
    "INSERT INTO FUNCTION file('{tmp}/insert.csv', 'CSV') SELECT 1",
    "SELECT 1 INTO OUTFILE '{tmp}/outfile.txt'",  # readonly=1 writes this file
    "EXPLAIN SELECT 1 INTO OUTFILE '{tmp}/explain.txt'",
    f"SHOW TABLES FROM {DB} INTO OUTFILE '{{tmp}}/show.txt'",  # every read statement takes INTO OUTFILE
    "SHOW DATABASES INTO OUTFILE '{tmp}/databases.txt'",
    "SHOW PROCESSLIST INTO OUTFILE '{tmp}/processlist.txt'",
    f"SHOW COLUMNS FROM {DB}.events INTO OUTFILE '{{tmp}}/columns.txt'",
    f"DESCRIBE TABLE {DB}.events INTO OUTFILE '{{tmp}}/describe.txt'",
    f"EXISTS TABLE {DB}.events INTO OUTFILE '{{tmp}}/exists.txt'",
    f"SHOW CREATE TABLE {DB}.events INTO OUTFILE '{{tmp}}/create.txt'",
    "SELECT * FROM view(SELECT * FROM file('/etc/passwd', 'LineAsString'))",
    "SELECT * FROM values('s String', file('/etc/passwd'))",
    "SELECT * FROM sqlite('{tmp}/created.db', 't')",  # creates the file before readonly refuses it
    "SELECT * FROM filesystem('/etc')",
    "SELECT * FROM deltaLakeLocal('/etc')",
    # network, other servers, processes, the worker's memory
    "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
    "SELECT * FROM (SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString'))",
    "SELECT * FROM s3('http://127.0.0.1:9/b/k.csv')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:9/x', 'CSV', 'a String')",
    "SELECT * FROM remote('127.0.0.1:9', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:9', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:9', 'd', 't', 'u', 'p')",
    "SELECT * FROM odbc('DSN=x', 't')",
    "SELECT * FROM jdbc('jdbc:x', 't')",
    "SELECT * FROM redis('127.0.0.1:9', 'k', 'k String')",
    "SELECT * FROM executable('id', 'LineAsString', 'x String')",
    "SELECT * FROM python(settings)",  # chDB reads Python objects of the calling process
    "SELECT * FROM input('a String')",
    "SELECT * FROM viewExplain('EXPLAIN', 'AST', (SELECT 1))",
    # dictionaries (a dictionary can read files, URLs, executables)
    "SELECT * FROM dictionary('d')",
    "SELECT dictGet('d', 'a', toUInt64(1))",
    "SELECT dictHas('d', toUInt64(1))",
    # existing tables whose engine reaches out (the network, a file)
    f"SELECT * FROM {DB}.ext_url",
    f"SELECT count() FROM {DB}.events AS e JOIN {DB}.ext_file AS f ON e.event_id = f.a",
    f"SELECT * FROM (SELECT * FROM `{DB}`.`ext_url`)",
    f"DESCRIBE TABLE {DB}.ext_url",
    # output formats are the endpoint's business
    f"SELECT * FROM {DB}.events FORMAT JSON",
]


# Refused by the parser as a syntax error, before any check (QueryError, not QueryRefused).
NOT_EVEN_PARSED = {f"DROP TABLE {DB}.events /*"}


@pytest.mark.parametrize("sql", ATTACKS)
def test_attack_is_refused_and_leaves_no_trace(ro, chdb_client, tmp_path: Path, sql: str) -> None:
    sql = sql.replace("{tmp}", str(tmp_path))
    with pytest.raises(QueryRefused if sql not in NOT_EVEN_PARSED else QueryError) as refused:
        guarded_query(ro, sql)
    assert str(refused.value)  # one line for the user
    tables = {r[0] for r in chdb_client.query(f"SELECT name FROM system.tables WHERE database = '{DB}'").result_rows}
    assert {"events", "dead_letters", "findings", "traces"} <= tables and not {"x", "gone", "p", "d"} & tables
    assert chdb_client.query(f"SELECT count() FROM {DB}.dead_letters").result_rows == [(0,)]
    assert list(tmp_path.iterdir()) == []
    # Still read-only, and the writing session next to it still writes.
    assert guarded_query(ro, "SELECT getSetting('readonly')")["rows"] == [[1]]
    assert chdb_client.query("SELECT getSetting('readonly')").result_rows == [(0,)]


def test_refusals_are_specific(ro) -> None:
    def why(sql: str) -> str:
        with pytest.raises(QueryRefused) as exc:
            guarded_query(ro, sql)
        return str(exc.value)

    assert "not DropQuery" in why(f"DROP TABLE {DB}.events")
    assert "table function file()" in why("SELECT * FROM file('/etc/passwd')")
    assert "function file()" in why("SELECT file('/etc/passwd')")
    assert "INTO OUTFILE" in why("SELECT 1 INTO OUTFILE '/tmp/never'")
    assert "engine URL" in why(f"SELECT * FROM {DB}.ext_url")
    assert why("SELECT 1; SELECT 2") == "one statement per query"
    assert "readonly" in why("SELECT 1 SETTINGS readonly = 0")  # the engine's own refusal
    with pytest.raises(QueryError) as exc:  # a mistake, not an attack: the parser's message, without our wrapper
        guarded_query(ro, "SELEC 1")
    assert "Syntax error" in str(exc.value) and "formatQuery" not in str(exc.value)
    assert not isinstance(exc.value, QueryRefused)


ACCEPTED = [
    # README
    f"SELECT tenant, workflow, round(sum(spend_usd), 2) AS usd FROM {DB}.calls_per_day "
    "WHERE day >= today() - 7 GROUP BY tenant, workflow ORDER BY usd DESC",
    f"SELECT trace_id, steps, spend_usd, trace_status FROM {DB}.traces ORDER BY spend_usd DESC LIMIT 10",
    f"SELECT model, quantile(0.95)(latency_ms) FROM {DB}.events FINAL "
    "WHERE event_type = 'output' AND ts > now() - INTERVAL 1 HOUR GROUP BY model",
    f"SELECT kind, severity, title, wasted_usd FROM {DB}.findings FINAL WHERE status = 'open'",
    # joins, CTEs, subqueries, unions, windows, arrays
    f"WITH t AS (SELECT trace_id, tenant FROM {DB}.events FINAL) SELECT t.tenant, count() FROM t "
    f"LEFT JOIN {DB}.findings AS f ON f.trace_id = t.trace_id GROUP BY t.tenant",
    f"SELECT * FROM {DB}.events WHERE trace_id IN (SELECT trace_id FROM {DB}.findings WHERE kind = 'tool_loop')",
    f"SELECT count() FROM {DB}.events UNION ALL SELECT count() FROM {DB}.findings",
    f"SELECT event_id, row_number() OVER (PARTITION BY trace_id ORDER BY ts) FROM {DB}.events",
    f"SELECT t FROM {DB}.events ARRAY JOIN tools_offered AS t",
    # the engine's catalog: `llmpulse report` lists tables here
    f"SELECT name, engine FROM system.tables WHERE database = '{DB}'",
    f"SHOW TABLES FROM {DB}",
    f"DESCRIBE TABLE {DB}.events",
    f"EXISTS TABLE {DB}.events",
    f"SHOW CREATE TABLE {DB}.events",
    f"EXPLAIN SELECT count() FROM {DB}.events",
    # generators; names and text that only look dangerous
    "SELECT number FROM numbers(3) AS file",
    "SELECT 'DROP TABLE x; file(''/etc/passwd'')' AS s, 1 AS file",
    "SELECT format('{} {}', 'a', 'b')",
    "SELECT 1 -- a trailing comment",
]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_analyst_query_runs(ro, sql: str) -> None:
    result = guarded_query(ro, sql)
    assert set(result) == {"columns", "types", "rows"}  # ran (chDB sends no columns for zero rows)


def test_the_checked_statement_is_the_one_run(ro) -> None:
    # The result of the engine's formatting of the text, not the raw text: the literal stays a literal.
    assert guarded_query(ro, "SELECT 'a;b' AS s -- ; DROP TABLE x")["rows"] == [["a;b"]]


def test_every_dashboard_panel_of_the_report_passes(ro) -> None:
    from llmpulse.commands.report import report_errors
    from llmpulse.dashboards.report import qualify_tables, render_report

    tables = [r[0] for r in guarded_query(ro, f"SELECT name FROM system.tables WHERE database = '{DB}'")["rows"]]
    now = int(time.time() * 1000)
    page = render_report(lambda sql: guarded_query(ro, qualify_tables(sql, DB, tables)), now - 3_600_000, now)
    assert report_errors(page) == 0


def test_limits_hold_in_the_session(ro) -> None:
    path = ro.query("SELECT path FROM system.disks WHERE name = 'default'").result_rows[0][0]
    own = connect_readonly(f"chdb://{path.rstrip('/')}", max_seconds=7, max_rows=1000)
    try:
        assert guarded_query(own, "SELECT getSetting('max_execution_time'), getSetting('max_result_rows')")["rows"] \
            == [[7, 1000]]
        with pytest.raises(QueryError, match="(?i)limit"):
            guarded_query(own, "SELECT number FROM numbers(2000000)")
    finally:
        # The failed result's rest stays in the handle (the next query on it reads garbage):
        # the worker's endpoint opens a new session after any error.
        own.close()


# ---------------------------------------------------------------- the AST check alone (EXPLAIN AST text)

INTO_OUTFILE = """SelectWithUnionQuery (children 3)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Literal UInt64_1
 Literal '/tmp/x'
 Identifier Native""".splitlines()

ALIASED = """SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function numbers (alias file) (children 1)
       ExpressionList (children 1)
        Literal UInt64_3
 Identifier Native""".splitlines()


def test_parse_ast_tracks_parents_and_strips_aliases() -> None:
    nodes = parse_ast(ALIASED)
    fn = next(n for n in nodes if n.kind == "Function")
    assert (fn.name, fn.parent.kind, fn.depth) == ("numbers", "TableExpression", 6)
    assert nodes[-1].parent is nodes[0]  # back up to the root after the deep branch
    check_ast(ALIASED)


def test_check_ast_alone() -> None:
    with pytest.raises(QueryRefused, match="OUTFILE"):
        check_ast(INTO_OUTFILE)
    with pytest.raises(QueryRefused, match="table function url"):
        check_ast([line.replace("Function numbers (alias file)", "Function url") for line in ALIASED])
    with pytest.raises(QueryRefused, match="dictGetString"):
        check_ast(["SelectWithUnionQuery (children 1)", " ExpressionList (children 1)",
                   "  SelectQuery (children 1)", "   ExpressionList (children 1)", "    Function dictGetString"])
    with pytest.raises(QueryRefused, match="not KillQueryQuery"):
        check_ast(["KillQueryQuery Literal_UInt64_1 ASYNC (children 2)", " Literal UInt64_1"])
    with pytest.raises(QueryRefused, match="empty"):
        check_ast([])


def test_the_demo_summary_queries_pass(ro) -> None:
    from llmpulse.demo import SUMMARY_QUERIES

    for title, sql in SUMMARY_QUERIES.items():
        assert set(guarded_query(ro, sql.format(db=DB))) == {"columns", "types", "rows"}, title


class _FakeServerClient:
    """What connect_readonly sees of an HTTP client: the user's settings, and the session's readonly
    as the server would report it after the client's settings (no server in this test)."""

    def __init__(self, profile: dict[str, tuple[str, int]]) -> None:
        from clickhouse_connect.driver.models import SettingDef

        self.server_settings = {k: SettingDef(name=k, value=v, readonly=ro) for k, (v, ro) in profile.items()}
        self.sent: dict[str, str] = {}
        self.closed = False

    def set_client_setting(self, key: str, value: str) -> None:
        self.sent[key] = value

    def query(self, sql: str):
        assert sql == "SELECT getSetting('readonly')"
        value = self.sent.get("readonly", self.server_settings["readonly"].value)
        return type("R", (), {"result_rows": [(int(value),)]})()

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("profile, sent", [
    # `default` (readonly=0): every request carries readonly=1 and the limits (ClickHouse applies a
    # stricter readonly and other settings of one request together).
    ({"readonly": ("0", 0), "max_execution_time": ("0", 0), "max_result_rows": ("0", 0)},
     {"max_execution_time": "30", "max_result_rows": "5", "readonly": "1"}),
    # grafana_ro (readonly=2 profile, may set max_execution_time): its own readonly stays.
    ({"readonly": ("2", 1), "max_execution_time": ("60", 0), "max_result_rows": ("0", 0)},
     {"max_execution_time": "30", "max_result_rows": "5"}),
    # a readonly=1 profile: nothing can be sent, nothing is.
    ({"readonly": ("1", 1), "max_execution_time": ("0", 1), "max_result_rows": ("0", 1)}, {}),
])
def test_server_session_is_read_only_whatever_the_profile(monkeypatch, profile, sent) -> None:
    from llmpulse.schemas import store

    fake = _FakeServerClient(profile)
    monkeypatch.setattr(store, "connect", lambda *a, **k: fake)
    assert store.connect_readonly("http://ch:8123", "u", "p", max_seconds=30, max_rows=5) is fake
    assert fake.sent == sent and not fake.closed


def test_server_session_that_stays_writable_is_refused(monkeypatch) -> None:
    from llmpulse.schemas import store

    class Ignores(_FakeServerClient):
        def set_client_setting(self, key: str, value: str) -> None:
            pass  # e.g. a proxy that drops settings

    fake = Ignores({"readonly": ("0", 0)})
    monkeypatch.setattr(store, "connect", lambda *a, **k: fake)
    with pytest.raises(RuntimeError, match="readonly=0"):
        store.connect_readonly("http://ch:8123")
    assert fake.closed
