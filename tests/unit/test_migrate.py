"""Migrations verify what they made (a DROP is repaired) and retention follows the config,
against the real engine (chDB)."""

from __future__ import annotations

import logging

from llmpulse.schemas.store import expected_objects, migrate, migration_files, ttl_days_in

ALL = [name for name, _ in migration_files()]


def _tables(client, db: str) -> set[str]:
    return {r[0] for r in client.query(f"SELECT name FROM system.tables WHERE database = '{db}'").result_rows}


def _ttl(client, db: str, table: str) -> int | None:
    rows = client.query(f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = '{table}'").result_rows
    return ttl_days_in(rows[0][0])


def test_dropped_events_table_is_recreated_with_later_columns_and_views(chdb_client, caplog) -> None:
    c, db = chdb_client, "mig_drop"
    assert migrate(c, db, 90) == ALL
    c.command(f"DROP TABLE {db}.events")
    c.command(f"DROP VIEW {db}.traces")
    with caplog.at_level(logging.WARNING, logger="llmpulse.store"):
        reapplied = migrate(c, db, 90)
    # From the file that creates `events` on: 0003 adds its price columns, 0004 its id table.
    assert reapplied == ALL
    assert "events" in caplog.text and "applying again from 0001_events" in caplog.text
    assert {"events", "traces", "dead_letters", "findings", "calls_per_day"} <= _tables(c, db)
    columns = {r[0] for r in c.query(f"SELECT name FROM system.columns WHERE database = '{db}' "
                                     "AND table = 'events'").result_rows}
    assert {"price_usd", "price_source", "price_version"} <= columns
    # The view is 0003's definition (with spend), not 0001's.
    assert "spend_usd" in {r[0] for r in c.query(f"DESCRIBE TABLE {db}.traces").result_rows}
    # Recorded once each, and the next run has nothing to do.
    assert c.query(f"SELECT count() FROM {db}.schema_migrations").result_rows == [(len(ALL),)]
    assert migrate(c, db, 90) == []
    # The recreated table takes writes and still feeds the event-id view (0004).
    c.command(f"INSERT INTO {db}.events (event_id, ts) VALUES ('after-drop', now64(3))")
    assert c.query(f"SELECT count() FROM {db}.events").result_rows == [(1,)]
    assert c.query(f"SELECT count() FROM {db}.event_ids WHERE event_id = 'after-drop'").result_rows == [(1,)]


def test_dropped_column_is_added_again_from_its_migration(chdb_client) -> None:
    c, db = chdb_client, "mig_col"
    migrate(c, db, 90)
    c.command(f"ALTER TABLE {db}.events DROP COLUMN price_version")
    assert migrate(c, db, 90) == [v for v in ALL if v >= "0003"]
    assert c.query(f"SELECT count() FROM system.columns WHERE database = '{db}' AND table = 'events' "
                   "AND name = 'price_version'").result_rows == [(1,)]


def test_changed_retention_is_applied_to_existing_tables(chdb_client) -> None:
    c, db = chdb_client, "mig_ttl"
    migrate(c, db, 90)
    ttl_tables = sorted(expected_objects(migration_files()).ttls)
    assert {"events", "dead_letters", "findings"} <= set(ttl_tables)
    assert {t: _ttl(c, db, t) for t in ttl_tables} == {t: 90 for t in ttl_tables}
    assert migrate(c, db, 30) == []  # nothing to apply, but the TTL changes
    assert {t: _ttl(c, db, t) for t in ttl_tables} == {t: 30 for t in ttl_tables}
    rows = c.query(f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'events'").result_rows
    assert "TTL toDateTime(ts) + toIntervalDay(30)" in rows[0][0]
    # Rows older than the new retention go (the TTL is materialized on the existing parts).
    c.command(f"INSERT INTO {db}.events (event_id, ts) VALUES ('old', now64(3) - INTERVAL 60 DAY), "
              "('new', now64(3) - INTERVAL 1 DAY)")
    c.command(f"OPTIMIZE TABLE {db}.events FINAL")
    assert c.query(f"SELECT event_id FROM {db}.events").result_rows == [("new",)]


def test_expected_objects_follow_drops_and_renames() -> None:
    files = [
        ("0001", "CREATE TABLE IF NOT EXISTS {db}.a (x Int8) ENGINE = MergeTree ORDER BY x "
                 "TTL now() + INTERVAL {ttl_days} DAY;\nCREATE TABLE IF NOT EXISTS {db}.b (x Int8) ENGINE = Log;"),
        ("0002", "ALTER TABLE {db}.a ADD COLUMN IF NOT EXISTS y Int8;\nDROP TABLE IF EXISTS {db}.b;"),
        ("0003", "RENAME TABLE {db}.a TO {db}.c;\n-- a comment\nINSERT INTO {db}.c SELECT 1, 2"),
    ]
    e = expected_objects(files)
    assert e.tables == {"c": "0003"}
    assert e.columns == {("c", "y"): "0003"}
    assert e.ttls == {"c": "now() + INTERVAL {ttl_days} DAY"}
