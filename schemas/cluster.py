"""The migrations' cluster form: what `clickhouse_cluster` (e.g. `llmpulse`) turns them into.

Pure text work on the statement templates (`{db}` and `{ttl_days}` still in them); the
migration runner (store.py) renders and runs the result. Without a cluster the runner does
not call this module at all, so a single server or chDB gets exactly today's statements.

On a cluster every table `X` of a migration becomes two, created `ON CLUSTER`:
- `X_local` on every node, the MergeTree engine in its Replicated form, its Keeper path
  `/clickhouse/tables/{shard}/{database}/X_local` and replica `{replica}` (each node's macros);
- `X`, a `Distributed` table over the `X_local`s, so every reader and writer keeps the name
  it uses today (inserts are routed to a shard, reads gather all shards).

ReplacingMergeTree collapses rows of equal sort key only inside one part set, i.e. inside one
shard, and `FINAL` on a Distributed table is applied per shard. So rows of one sort key must
land on one shard: each table's sharding key (SHARDING_KEYS) is a hash of columns of its
ORDER BY, and a test holds every table to that. Views read the Distributed tables (cluster-wide
answers). A materialized view fires on the inserts into the *local* source table of the node
that stores the block, so it reads `X_local` and writes the target's `_local` table; both keys
must agree, so a row's copy lands on the shard the Distributed target would have chosen.
A DELETE (lightweight, not supported through Distributed) runs on the local tables of every
node, its subqueries on the local tables too, which is correct because the rows it compares
share the sharding key. Statement kinds without a cluster form here fail loudly.
"""

from __future__ import annotations

import re

LOCAL_SUFFIX = "_local"

# Table -> Distributed sharding key. Dedup keys (ORDER BY) collapse only within a shard, so
# each key hashes columns of the table's ORDER BY. `events` and `event_ids` both by event_id:
# the id view (0004) then writes each id on the shard of its event, and the 0004 cleanup of
# duplicate event_ids finds every copy of an id on one shard.
SHARDING_KEYS = {
    "events": "cityHash64(event_id)",
    "event_ids": "cityHash64(event_id)",
    "dead_letters": "cityHash64(kafka_topic, kafka_partition, kafka_offset)",
    "findings": "cityHash64(finding_id)",
    "control_actions": "cityHash64(action_id)",
}

# One record for the whole cluster: every node is a replica of one Keeper path (shard-free), so
# a migration recorded through any node is recorded on all. Needs `{replica}` unique per node.
SCHEMA_MIGRATIONS_PATH = "/clickhouse/tables/all/{database}/schema_migrations"

_NAME = r"\{db\}\.`?(\w+)`?"
_CREATE_TABLE = re.compile(rf"^(CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?){_NAME}(\s*\(.*)$", re.I | re.S)
# The engine clause right after the column list: `) ENGINE = ReplacingMergeTree[(args)]`.
_ENGINE = re.compile(r"\)\s*ENGINE\s*=\s*(\w*MergeTree)\b(?:\(([^()]*)\))?", re.I)
_CREATE_VIEW = re.compile(rf"^(CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?{{db}}\.`?\w+`?)(\s+AS\s+.*)$",
                          re.I | re.S)
_CREATE_MV = re.compile(rf"^(CREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?{{db}}\.`?\w+`?)"
                        rf"\s+TO\s+{_NAME}(\s+AS\s+.*)$", re.I | re.S)
_ALTER = re.compile(rf"^ALTER\s+TABLE\s+{_NAME}\s+(.*)$", re.I | re.S)
_COLUMN_ACTION = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)
_DELETE = re.compile(rf"^DELETE\s+FROM\s+{_NAME}(\s+WHERE\s+.*)$", re.I | re.S)
_INSERT_SELECT = re.compile(r"^INSERT\s+INTO\s+\{db\}\.", re.I)
_TABLE_REF = re.compile(_NAME)


class NoClusterForm(ValueError):
    """A migration statement this module cannot turn into its cluster form."""


def cluster_statements(statements: list[str], cluster: str, sharded: set[str] | None = None) -> list[str]:
    """The cluster form of a migration's statements (templates in, templates out).
    `sharded`: tables made local + Distributed so far (earlier files); updated in place."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cluster):
        raise NoClusterForm(f"not a cluster name: {cluster!r}")
    sharded = set() if sharded is None else sharded
    on = f" ON CLUSTER {cluster}"
    out: list[str] = []
    for statement in statements:
        if m := _CREATE_TABLE.match(statement):
            head, table, rest = m.groups()
            out += _table(head, table, rest, on, cluster)
            sharded.add(table)
        elif m := _CREATE_MV.match(statement):
            head, target, select = m.groups()
            sources = {t for t in _TABLE_REF.findall(select) if t in sharded}
            for source in sources:
                if SHARDING_KEYS[source] != SHARDING_KEYS.get(target):
                    raise NoClusterForm(f"materialized view from {source} to {target}: their sharding "
                                        "keys differ, so the view's rows would land on other shards")
            out.append(f"{head}{on} TO {{db}}.{_local(target, sharded)}{_localize(select, sources)}")
        elif m := _CREATE_VIEW.match(statement):
            out.append(f"{m.group(1)}{on}{m.group(2)}")
        elif m := _ALTER.match(statement):
            table, action = m.groups()
            if table not in sharded:
                out.append(f"ALTER TABLE {{db}}.{table}{on} {action}")
                continue
            out.append(f"ALTER TABLE {{db}}.{table}{LOCAL_SUFFIX}{on} {action}")
            if _COLUMN_ACTION.match(action):  # the Distributed table's columns follow the local ones
                out.append(f"ALTER TABLE {{db}}.{table}{on} {action}")
        elif m := _DELETE.match(statement):
            table, where = m.groups()
            refs = {t for t in _TABLE_REF.findall(where) if t in sharded} | {table}
            if table not in sharded or any(SHARDING_KEYS[t] != SHARDING_KEYS[table] for t in refs):
                raise NoClusterForm(f"DELETE FROM {table}: its subqueries read tables sharded otherwise")
            out.append(f"DELETE FROM {{db}}.{table}{LOCAL_SUFFIX}{on}{_localize(where, refs)}")
        elif _INSERT_SELECT.match(statement):
            out.append(statement)  # through the Distributed tables, from the node that runs it
        else:
            raise NoClusterForm(f"no cluster form for: {' '.join(statement.split())[:120]}")
    return out


def schema_migrations_ddl(database: str, cluster: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations ON CLUSTER {cluster} "
            "(version String, applied_at DateTime DEFAULT now()) "
            f"ENGINE = ReplicatedReplacingMergeTree('{SCHEMA_MIGRATIONS_PATH}', '{{replica}}') ORDER BY version")


def _table(head: str, table: str, rest: str, on: str, cluster: str) -> list[str]:
    if table not in SHARDING_KEYS:
        raise NoClusterForm(f"table {table} has no sharding key: add one (columns of its ORDER BY) "
                            "to SHARDING_KEYS in schemas/cluster.py")
    local = table + LOCAL_SUFFIX
    engine = _ENGINE.search(rest)
    if engine is None:
        raise NoClusterForm(f"table {table}: only MergeTree-family engines have a Replicated form")
    name, args = engine.group(1), engine.group(2)
    path = f"'/clickhouse/tables/{{shard}}/{{database}}/{local}', '{{replica}}'"
    replicated = f") ENGINE = Replicated{name}({path}{', ' + args if args and args.strip() else ''})"
    rest = rest[:engine.start()] + replicated + rest[engine.end():]
    return [
        f"{head}{{db}}.{local}{on}{rest}",
        f"{head}{{db}}.{table}{on} AS {{db}}.{local} "
        f"ENGINE = Distributed({cluster}, {{db}}, {local}, {SHARDING_KEYS[table]})",
    ]


def _local(table: str, sharded: set[str]) -> str:
    return table + LOCAL_SUFFIX if table in sharded else table


def _localize(sql: str, tables: set[str]) -> str:
    return _TABLE_REF.sub(lambda m: f"{{db}}.{_local(m.group(1), tables)}", sql)
