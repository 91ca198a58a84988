"""Governance through the real broker, a real worker and chDB: content capture, per-workflow
retention, decision rights and approved models, end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from llmpulse.ingest import KafkaPublisher
from llmpulse.schemas.store import migrate, ttl_days_in
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for

pytestmark = pytest.mark.integration

TEXT = "SENTINEL what the customer typed"
CONFIG = {
    "governance": {
        "groups": {"ml-leads": ["alice"]},
        "workflows": {
            "billing": {"content": {"capture": "metadata"}, "retention_days": 7,
                        "approved_models": {"owner": "billing-team", "models": ["openai/gpt-4o-mini"]},
                        "approvals": {"model_swap": {"approvers": ["group:ml-leads"]}}},
        },
    },
}


def trace(workflow: str, i: int, now: int) -> list[dict]:
    base = {"ts": now + i, "trace_id": f"{workflow}-{i}", "workflow": workflow, "tenant": "gov-co",
            "provider": "openai", "model": "gpt-4o-mini"}
    return [
        {**base, "event_type": "prompt", "event_id": f"{workflow}-p{i}",
         "messages": [{"role": "system", "content": TEXT}, {"role": "user", "content": TEXT}], "params": {"x": TEXT}},
        {**base, "event_type": "tool_call", "event_id": f"{workflow}-t{i}", "tool_name": "lookup",
         "arguments": {"q": TEXT}, "result": TEXT},
        {**base, "event_type": "output", "event_id": f"{workflow}-o{i}", "status": "ok", "latency_ms": 12.0,
         "content": TEXT, "custom_note": TEXT, "usage": {"input_tokens": 10, "output_tokens": 5}},
        {**base, "event_type": "eval", "event_id": f"{workflow}-e{i}", "eval_name": "tone", "passed": True,
         "comment": TEXT},
    ]


def test_metadata_only_workflow_stores_no_text_and_carries_its_retention(kafka, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
    config = tmp_path / "llmpulse.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env={"LLMPULSE_CONFIG_FILE": str(config)}).start()
    try:
        now = int(time.time() * 1000)
        pub = KafkaPublisher(settings.kafka_bootstrap, settings.events_topic, redaction=False)
        for i in range(5):
            for ev in trace("billing", i, now) + trace("support-bot", i, now):
                pub.publish(ev)
        pub.publish({"event_type": "output", "event_id": "billing-other", "ts": now, "trace_id": "x", "tenant": "gov-co",
                     "workflow": "billing", "provider": "mistral", "model": "mistral-large", "status": "ok",
                     "latency_ms": 3.0})
        pub.publish({"event_type": "change", "event_id": "swap-1", "ts": now, "tenant": "gov-co", "workflow": "billing",
                     "change_kind": "model_swap", "from_value": "gpt-4o-mini", "to_value": "mistral-large",
                     "actor": "dave"})
        assert pub.flush(30) == 0
        wait_for(lambda: worker.scalar("SELECT count() FROM {db}.events FINAL WHERE tenant = 'gov-co'") == 42, 60,
                 what="rows")
        wait_for(lambda: worker.scalar("SELECT count() FROM {db}.findings FINAL WHERE tenant = 'gov-co'") >= 2, 30,
                 what="findings")
        # nowhere in the database: every table's every row, as text
        tables = [r[0] for r in worker.query("SELECT name FROM system.tables WHERE database = '{db}' "
                                             "AND engine NOT LIKE '%View%'")]
        assert "events" in tables and "findings" in tables
        holding = {t: worker.scalar(f"SELECT countIf(position(toString(tuple(*)), 'SENTINEL') > 0) FROM {{db}}.`{t}`")
                   for t in tables}
        support = worker.scalar("SELECT count() FROM {db}.events FINAL WHERE workflow = 'support-bot' "
                                "AND position(toString(tuple(*)), 'SENTINEL') > 0")
        assert support == 20  # the full-capture workflow's text is there: the search can find it
        assert {t: n for t, n in holding.items() if n and t != "events"} == {}
        assert worker.scalar("SELECT count() FROM {db}.events FINAL WHERE workflow = 'billing' "
                             "AND position(toString(tuple(*)), 'SENTINEL') > 0") == 0
        assert worker.query("SELECT DISTINCT workflow, retention_days FROM {db}.events FINAL "
                            "WHERE tenant = 'gov-co' ORDER BY workflow") == [["billing", 7], ["support-bot", 0]]
        kinds = worker.query("SELECT kind, evidence FROM {db}.findings FINAL WHERE tenant = 'gov-co' ORDER BY kind")
        assert [k for k, _ in kinds] == ["unapproved_change", "unapproved_model"]
        assert "billing-team" in kinds[1][1]
    finally:
        worker.stop()


def test_per_workflow_retention_is_a_row_ttl_that_survives_a_retention_change(chdb_client) -> None:
    c, db = chdb_client, "gov_ttl"
    c.command(f"DROP DATABASE IF EXISTS {db}")
    migrate(c, db, 90)
    migrate(c, db, 30)  # the table-wide retention changed: the workflow rule stays
    engine = c.query(f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'events'").result_rows[0][0]
    assert ttl_days_in(engine) == 30 and "toIntervalDay(retention_days) WHERE retention_days > 0" in engine
    day, now = 86_400_000, int(time.time() * 1000)
    rows = [("a", now - 10 * day, 0), ("b", now - 10 * day, 5), ("c", now - 10 * day, 14), ("d", now - 40 * day, 60)]
    c.insert(f"{db}.events", [[f"e-{w}", "eval", ts, w, days] for w, ts, days in rows],
             column_names=["event_id", "event_type", "ts", "workflow", "retention_days"])
    c.command(f"OPTIMIZE TABLE {db}.events FINAL")
    left = sorted(r[0] for r in c.query(f"SELECT workflow FROM {db}.events").result_rows)
    assert left == ["a", "c"]  # b: past its 5 days; d: past the table's 30 whatever it asked
    c.command(f"DROP DATABASE IF EXISTS {db}")
