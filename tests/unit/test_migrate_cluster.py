"""Migrations on a ClickHouse cluster (schemas/cluster.py), as far as the real engine allows here.

No ClickHouse server runs on this machine, and chDB refuses ON CLUSTER statements (code 392:
there is no distributed DDL queue in an embedded engine). What chDB does run: the parser, the
shipped cluster config (remote_servers, macros), Replicated tables on its in-memory test Keeper
(created, but read-only: no replication thread) and Distributed tables over a shard that is the
process itself. So:
- without a cluster, migrate sends exactly the files' statements (byte for byte);
- every cluster statement parses, ON CLUSTER kept, and the engines' arguments are well formed;
- on chDB loaded with deploy/clickhouse-cluster's config for clickhouse-1, every CREATE runs:
  the Keeper paths expand to that node's shard and replica, the Distributed tables name the
  shipped cluster and a sharding key over columns of the local table's ORDER BY;
- the whole of `migrate(..., cluster=)` runs through Distributed tables on a one-shard cluster
  (ON CLUSTER dropped, the local engines unreplicated: what chDB cannot run), and the reads,
  writes, the event-id view, the repair and the retention change behave as on one server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from llmpulse.schemas.cluster import LOCAL_SUFFIX, SHARDING_KEYS, NoClusterForm, cluster_statements, schema_migrations_ddl
from llmpulse.schemas.store import cluster_files, migrate, migration_files, render, split_statements

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = ROOT / "deploy" / "clickhouse-cluster"
DB = "llmpulse"


def _cluster_statements(cluster: str = "llmpulse", db: str = DB) -> list[str]:
    return [s for _, sql in cluster_files(migration_files(), cluster) for s in split_statements(render(sql, db, 90))]


def _format(client, sql: str) -> str:
    return client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0]


class _Recording:
    """The real client, with the DDL it was sent written down."""

    def __init__(self, client) -> None:
        self.client, self.commands = client, []

    def command(self, sql, *args, **kwargs):
        self.commands.append(sql)
        return self.client.command(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


# ------------------------------------------------------------------ without a cluster: as before


def test_without_a_cluster_migrate_sends_exactly_the_files_statements(chdb_client) -> None:
    for db, kwargs in (("mig_plain_a", {}), ("mig_plain_b", {"cluster": ""})):
        rec = _Recording(chdb_client)
        migrate(rec, db, 90, **kwargs)
        # What the runner sent before clusters existed, spelled out here rather than imported.
        before = [
            f"CREATE DATABASE IF NOT EXISTS {db}",
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version String, applied_at DateTime "
            "DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version",
        ]
        for _, sql in migration_files():
            body = re.sub(r"^\s*--.*$", "", sql.replace("{db}", db).replace("{ttl_days}", "90"), flags=re.M)
            before += [s.strip() for s in body.split(";") if s.strip()]
        assert rec.commands == before
        assert not any("ON CLUSTER" in c or "Replicated" in c or "Distributed" in c for c in rec.commands)


# ------------------------------------------------------------------ the cluster form parses


def test_every_cluster_statement_parses_with_on_cluster_kept(chdb_client) -> None:
    statements = [f"CREATE DATABASE IF NOT EXISTS {DB} ON CLUSTER llmpulse", schema_migrations_ddl(DB, "llmpulse"),
                  *_cluster_statements()]
    creates = sum(len(re.findall(r"^CREATE\s+TABLE", sql, re.M)) for _, sql in migration_files())
    assert sum(s.startswith("CREATE TABLE") for s in statements) == 2 * creates + 1  # local + Distributed, + record
    for statement in statements:
        formatted = _format(chdb_client, statement)  # raises on a syntax error
        if statement.startswith("INSERT"):
            assert "ON CLUSTER" not in formatted  # runs once, through the Distributed tables
        else:
            assert re.search(r"\bON CLUSTER llmpulse\b", formatted), formatted[:200]


def test_engines_and_their_arguments_are_well_formed(chdb_client) -> None:
    locals_, distributed = {}, {}
    for statement in _cluster_statements():
        formatted = _format(chdb_client, statement)
        if m := re.match(r"CREATE TABLE IF NOT EXISTS llmpulse\.(\w+) ON CLUSTER llmpulse AS llmpulse\.(\w+)\s+"
                         r"ENGINE = Distributed\((.*)\)$", formatted, re.S):
            distributed[m.group(1)] = (m.group(2), m.group(3))
        elif m := re.match(r"CREATE TABLE IF NOT EXISTS llmpulse\.(\w+) ON CLUSTER llmpulse\s*\(.*?\)\s*"
                           r"ENGINE = (\w+)\((.*?)\)\n(.*)$", formatted, re.S):
            name, engine, args, rest = m.groups()
            order_by = re.search(r"^ORDER BY (.*)$", rest, re.M).group(1)
            locals_[name] = (engine, args, order_by)
        elif formatted.startswith("CREATE TABLE"):
            pytest.fail(f"a table neither local nor Distributed: {formatted[:200]}")
    assert set(distributed) == set(SHARDING_KEYS) and set(locals_) == {t + LOCAL_SUFFIX for t in SHARDING_KEYS}
    for table, (source, args) in distributed.items():
        local = table + LOCAL_SUFFIX
        assert source == local
        assert args == f"llmpulse, llmpulse, {local}, {SHARDING_KEYS[table]}"
        engine, replicated_args, order_by = locals_[local]
        assert engine.startswith("Replicated") and engine.endswith("MergeTree")
        assert replicated_args == f"'/clickhouse/tables/{{shard}}/{{database}}/{local}', '{{replica}}'"
        # Rows of one dedup key land on one shard: the key hashes columns of the ORDER BY.
        key_columns = set(re.findall(r"\b(\w+)\b", SHARDING_KEYS[table])) - {"cityHash64"}
        assert key_columns and key_columns <= set(re.findall(r"\w+", order_by)), (table, order_by)


def test_views_read_distributed_tables_and_local_work_stays_local() -> None:
    statements = _cluster_statements()
    views = [s for s in statements if re.match(r"CREATE (OR REPLACE )?VIEW", s)]
    assert views and all("_local" not in v for v in views)  # cluster-wide answers
    mv = next(s for s in statements if s.startswith("CREATE MATERIALIZED VIEW"))
    assert "TO llmpulse.event_ids_local" in mv and "FROM llmpulse.events_local" in mv
    delete = next(s for s in statements if s.startswith("DELETE"))
    assert delete.startswith("DELETE FROM llmpulse.events_local ON CLUSTER llmpulse")
    assert not re.search(r"llmpulse\.events\b(?!_local)", delete)
    alters = [s for s in statements if s.startswith("ALTER")]
    adds = [s for s in alters if "ADD COLUMN" in s]
    # every column reaches the local and the Distributed table, local first
    assert len(adds) % 2 == 0 and all("events_local" in adds[i] and " llmpulse.events " in adds[i + 1]
                                      for i in range(0, len(adds), 2))
    assert all("events_local" in s for s in alters if "MODIFY TTL" in s)


def test_statements_without_a_cluster_form_fail_loudly() -> None:
    with pytest.raises(NoClusterForm, match="no sharding key"):
        cluster_statements(["CREATE TABLE IF NOT EXISTS {db}.other (x Int8) ENGINE = MergeTree ORDER BY x"], "c")
    with pytest.raises(NoClusterForm, match="MergeTree-family"):
        cluster_statements(["CREATE TABLE IF NOT EXISTS {db}.events (x Int8) ENGINE = Log"], "c")
    with pytest.raises(NoClusterForm, match="no cluster form"):
        cluster_statements(["RENAME TABLE {db}.events TO {db}.events2"], "c")
    with pytest.raises(NoClusterForm, match="sharding keys differ"):
        cluster_statements(["CREATE TABLE IF NOT EXISTS {db}.events (event_id String) ENGINE = MergeTree ORDER BY event_id",
                            "CREATE TABLE IF NOT EXISTS {db}.findings (finding_id String) ENGINE = MergeTree ORDER BY finding_id",
                            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv TO {db}.findings AS SELECT event_id AS "
                            "finding_id FROM {db}.events"], "c")


_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


@settings(max_examples=8, deadline=None)
@given(name=_IDENT)
def test_any_cluster_name_renders_statements_that_parse(chdb_client, name) -> None:
    for statement in _cluster_statements(name):
        formatted = _format(chdb_client, statement)
        assert statement.startswith("INSERT") or re.search(rf"ON CLUSTER `?{name}`?\b", formatted)


@given(name=st.text(min_size=0, max_size=30).filter(lambda s: not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s)))
def test_a_cluster_name_that_is_no_identifier_is_refused(name) -> None:
    with pytest.raises(NoClusterForm, match="not a cluster name"):
        cluster_files(migration_files(), name)


# ------------------------------------------------------------------ on the real engine (own process)


def _run_chdb(tmp_path: Path, config_xml: str, config_d: dict[str, Path | str], body: str) -> dict:
    """`body` in a fresh process whose chDB loads `config_xml` plus `config_d` files (chDB
    holds one engine and one config per process, so not the tests' shared one)."""
    (tmp_path / "config.d").mkdir()
    (tmp_path / "config.xml").write_text(config_xml)
    for name, source in config_d.items():
        (tmp_path / "config.d" / name).write_text(source.read_text() if isinstance(source, Path) else source)
    script = textwrap.dedent(f"""
        import json, os, re, sys
        import clickhouse_connect
        from llmpulse.schemas.store import *
        from llmpulse.schemas.cluster import *
        client = clickhouse_connect.get_client(dsn="chdb://{tmp_path / 'data'}",
                                               chdb_options={{"config-file": "{tmp_path / 'config.xml'}"}})
        def rows(sql):
            return [list(r) for r in client.query(sql).result_rows]
        out = {{}}
    """) + textwrap.dedent(body) + textwrap.dedent("""
        print("RESULT " + json.dumps(out, default=str), flush=True)
        os._exit(0)  # chDB's background threads can hang an orderly exit
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "CLICKHOUSE_PASSWORD": "x" * 64, "HOME": str(tmp_path)})
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(line.removeprefix("RESULT "))


def test_the_shipped_cluster_config_and_every_create_on_the_real_engine(tmp_path) -> None:
    out = _run_chdb(tmp_path, "<clickhouse></clickhouse>", {
        "cluster.xml": CLUSTER_DIR / "config.d" / "cluster.xml",
        "macros.xml": CLUSTER_DIR / "macros" / "clickhouse-1.xml",
        # Keeper: chDB's in-memory test Keeper instead of the compose network's clickhouse-keeper
        "zz-test-keeper.xml": '<clickhouse><zookeeper replace="replace"><implementation>testkeeper'
                              '</implementation></zookeeper></clickhouse>',
    }, """
        out["clusters"] = rows("SELECT cluster, shard_num, replica_num, host_name, port FROM system.clusters")
        out["macros"] = rows("SELECT macro, substitution FROM system.macros ORDER BY macro")
        try:
            client.command("CREATE DATABASE x ON CLUSTER llmpulse")
        except Exception as exc:
            out["on_cluster_refused"] = str(exc)[:200]
        strip = lambda s: s.replace(" ON CLUSTER llmpulse", "")
        client.command(strip(f"CREATE DATABASE IF NOT EXISTS llmpulse ON CLUSTER llmpulse"))
        client.command(strip(schema_migrations_ddl("llmpulse", "llmpulse")))
        statements = [s for _, sql in cluster_files(migration_files(), "llmpulse")
                      for s in split_statements(render(sql, "llmpulse", 90))]
        # CREATEs only: ALTERs need a writable replica (a replication thread), views need the
        # columns later ALTERs add, INSERT/DELETE reach the other shard.
        for s in statements:
            if s.startswith("CREATE TABLE") or s.startswith("CREATE MATERIALIZED VIEW"):
                client.command(strip(s))
        out["tables"] = rows("SELECT name, engine, engine_full, sorting_key FROM system.tables "
                             "WHERE database = 'llmpulse' ORDER BY name")
        out["replicas"] = rows("SELECT table, zookeeper_path, replica_name FROM system.replicas "
                               "WHERE database = 'llmpulse' ORDER BY table")
        out["foreground_insert"] = rows("SELECT count() FROM system.settings WHERE name = 'distributed_foreground_insert'")
    """)
    assert out["clusters"] == [["llmpulse", 1, 1, "clickhouse-1", 9000], ["llmpulse", 2, 1, "clickhouse-2", 9000]]
    assert out["macros"] == [["replica", "clickhouse-1"], ["shard", "01"]]
    assert "392" in out["on_cluster_refused"] or "disabled" in out["on_cluster_refused"]
    tables = {name: (engine, full, key) for name, engine, full, key in out["tables"]}
    replicas = {table: (path, replica) for table, path, replica in out["replicas"]}
    assert replicas.pop("schema_migrations") == ("/clickhouse/tables/all/llmpulse/schema_migrations", "clickhouse-1")
    assert set(replicas) == {t + LOCAL_SUFFIX for t in SHARDING_KEYS}
    for table, key in SHARDING_KEYS.items():
        local = table + LOCAL_SUFFIX
        assert replicas[local] == (f"/clickhouse/tables/01/llmpulse/{local}", "clickhouse-1")
        assert tables[local][0].startswith("Replicated")
        assert tables[table][0] == "Distributed"
        assert tables[table][1] == f"Distributed('llmpulse', 'llmpulse', '{local}', {key})"
        key_columns = set(re.findall(r"\b(\w+)\b", key)) - {"cityHash64"}
        assert key_columns <= {c.strip() for c in tables[local][2].split(",")}, (table, tables[local][2])
    assert tables["event_ids_mv"][0] == "MaterializedView"
    assert out["foreground_insert"] == [[1]]


def test_migrate_on_a_cluster_runs_end_to_end_through_distributed_tables(tmp_path) -> None:
    # One shard that is this process (tcp_port makes localhost:9000 local), so Distributed reads
    # and writes run in-process. What chDB cannot run is dropped on the way in: ON CLUSTER, and
    # replication (its Replicated tables stay read-only): the local engines run unreplicated.
    out = _run_chdb(tmp_path, """<clickhouse><tcp_port>9000</tcp_port>
        <remote_servers><llmpulse><shard><replica><host>localhost</host><port>9000</port></replica></shard>
        </llmpulse></remote_servers></clickhouse>""", {"macros.xml": CLUSTER_DIR / "macros" / "clickhouse-1.xml"}, """
        class Embedded:
            def __init__(self, client):
                self.client, self.sent = client, []
            def command(self, sql, *args, **kwargs):
                self.sent.append(sql)
                sql = sql.replace(" ON CLUSTER llmpulse", "")
                sql = re.sub(r"Replicated(\\w*MergeTree)\\('[^']*', '\\{replica\\}'(?:, )?", r"\\1(", sql)
                return self.client.command(sql, *args, **kwargs)
            def __getattr__(self, name):
                return getattr(self.client, name)
        c = Embedded(client)
        out["first"] = migrate(c, "llmpulse", 90, cluster="llmpulse")
        out["all_on_cluster"] = all(" ON CLUSTER llmpulse" in s for s in c.sent if not s.startswith("INSERT"))
        out["engines"] = dict(rows("SELECT name, engine FROM system.tables WHERE database = 'llmpulse'"))
        # The worker's path: inserts into `events`; a re-delivered copy (same sort key) collapses.
        row = "('e1', 'output', '2026-12-01 10:00:00.000', 't1', 'w1', 'tr1', 'gpt-4o', 7)"
        for _ in range(2):
            client.command("INSERT INTO llmpulse.events (event_id, event_type, ts, tenant, workflow, trace_id, model, "
                           f"input_tokens) VALUES {row}")
        client.command("INSERT INTO llmpulse.findings (finding_id, kind, status, event_ts, detected_at) VALUES "
                       "('f1', 'tool_loop', 'open', now64(3), now64(3))")
        out["events"] = rows("SELECT count() FROM llmpulse.events FINAL")
        out["local_parts"] = rows("SELECT count() FROM llmpulse.events_local")
        out["ids"] = rows("SELECT event_id FROM llmpulse.event_ids FINAL")
        out["traces"] = rows("SELECT trace_id, events, input_tokens FROM llmpulse.traces")
        out["calls"] = rows("SELECT calls, input_tokens FROM llmpulse.calls_per_day")
        out["audit"] = rows("SELECT count() FROM llmpulse.control_audit")
        out["findings"] = rows("SELECT finding_id FROM llmpulse.findings FINAL")
        # `llmpulse sql` on a cluster: the Distributed tables over the configured cluster are readable
        from llmpulse.query import QueryRefused, guarded_query
        out["guarded"] = guarded_query(client, "SELECT count() FROM llmpulse.events FINAL", "llmpulse")["rows"]
        for other in ("", "elsewhere"):
            try:
                guarded_query(client, "SELECT count() FROM llmpulse.events", other)
            except QueryRefused as exc:
                out.setdefault("refused", []).append(str(exc))
        out["again"] = migrate(c, "llmpulse", 90, cluster="llmpulse")
        client.command("DROP TABLE llmpulse.events")  # the Distributed table lost: repaired
        out["repaired"] = migrate(c, "llmpulse", 90, cluster="llmpulse")
        out["events_after_repair"] = rows("SELECT count() FROM llmpulse.events FINAL")
        out["distributed_columns"] = rows("SELECT count() FROM system.columns WHERE database = 'llmpulse' "
                                          "AND table = 'events' AND name IN ('price_usd', 'retention_days', 'gate_id')")
        migrate(c, "llmpulse", 30, cluster="llmpulse")
        out["ttl_alters"] = sorted(s for s in c.sent if "MODIFY TTL" in s and "ON CLUSTER" in s and "30 DAY" in s)
        out["events_ttl"] = rows("SELECT engine_full FROM system.tables WHERE database = 'llmpulse' AND name = 'events_local'")
    """)
    assert out["first"] == [v for v, _ in migration_files()]
    assert out["all_on_cluster"]
    for table in SHARDING_KEYS:
        assert out["engines"][table] == "Distributed" and out["engines"][table + LOCAL_SUFFIX].endswith("MergeTree")
    assert out["events"] == [[1]] and out["local_parts"] == [[2]]  # two rows stored, FINAL through Distributed: one
    assert out["ids"] == [["e1"]]  # the id view fired on the local table the Distributed insert wrote
    assert out["traces"] == [["tr1", 1, 7]] and out["calls"] == [[1, 7]]
    assert out["audit"] == [[0]] and out["findings"] == [["f1"]]
    assert out["guarded"] == [[1]]
    assert len(out["refused"]) == 2 and all("engine Distributed" in r for r in out["refused"])
    assert out["again"] == []
    assert out["repaired"] == [v for v, _ in migration_files()]  # from the file that made `events` on
    assert out["events_after_repair"] == [[1]] and out["distributed_columns"] == [[3]]
    assert [re.match(r"ALTER TABLE llmpulse\.`(\w+)`", s).group(1) for s in out["ttl_alters"]] == \
        sorted(t + LOCAL_SUFFIX for t in SHARDING_KEYS)
    assert "toIntervalDay(30)" in out["events_ttl"][0][0]
