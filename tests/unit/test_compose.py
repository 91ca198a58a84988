"""docker-compose.yml cannot run here; keep it consistent with the code instead."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmpulse.cli import app
from llmpulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_stack_has_every_component() -> None:
    services = _compose()["services"]
    assert {"kafka", "clickhouse", "grafana", "worker", "traffic", "alertmanager"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]


def test_llmpulse_env_names_are_real_settings() -> None:
    fields = {f"LLMPULSE_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "traffic", "migrate"):
        env = _compose()["services"][name]["environment"]
        assert set(env) <= fields, set(env) - fields


def test_commands_exist_and_mounted_files_are_in_the_repo() -> None:
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name in ("worker", "traffic", "migrate"):
        assert _compose()["services"][name]["command"][0] in commands
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
