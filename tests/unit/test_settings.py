from __future__ import annotations

from pathlib import Path

from llmpulse.settings import Settings


def test_env_overrides_yaml_file_which_overrides_defaults(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "llmpulse.yaml"
    config.write_text("kafka_bootstrap: broker:9092\nretention_days: 7\nbudgets:\n  - {scope: {tenant: acme}, period: day, limit_usd: 50}\n")
    monkeypatch.setenv("LLMPULSE_CONFIG_FILE", str(config))
    monkeypatch.setenv("LLMPULSE_RETENTION_DAYS", "30")
    s = Settings()
    assert s.kafka_bootstrap == "broker:9092"
    assert s.retention_days == 30
    assert s.budgets[0]["limit_usd"] == 50


def test_default_dsn_is_embedded_chdb_under_the_state_dir(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path)
    assert s.embedded and s.dsn == f"chdb://{tmp_path / 'chdb'}"
    assert not Settings(clickhouse_dsn="http://ch:8123").embedded
