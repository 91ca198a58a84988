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


# ------------------------------------------------------------ configuration that cannot be silently wrong

import pytest
import yaml
from hypothesis import given, settings as hsettings, strategies as st

from llmpulse.config_errors import ConfigError
from llmpulse.settings import load_settings


def _problems(tmp_path: Path, text: str) -> list[str]:
    config = tmp_path / "llmpulse.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert str(config) in str(err.value)
    return err.value.problems


def test_an_unknown_top_level_key_names_the_closest_valid_one(tmp_path: Path) -> None:
    assert _problems(tmp_path, "budget:\n  - {period: day, limit_usd: 5}\n") == [
        "budget: unknown key (did you mean `budgets`?)"]
    assert _problems(tmp_path, "kafka_bootstrp: x:1\nzzz: 1\n") == [
        "kafka_bootstrp: unknown key (did you mean `kafka_bootstrap`?)", "zzz: unknown key"]


def test_every_section_is_validated_at_load_and_each_message_names_its_entry(tmp_path: Path) -> None:
    found = _problems(tmp_path, """
budgets:
  - {scope: {tenant: acme, workflw: x}, period: week, limit_usd: -5}
  - {period: day}
contracts:
  support-bot: {allowed_tools: [a], max_steps: -1, max_stepz: 3}
loops:
  agent: {tool_loop_n: "x", order_hold_ms: -1, tool_lop_n: 3}
anomalies:
  agent: {min_calls: 5, alpah: 0.1}
prices:
  - {model: m, input_mtok: -1, output_mtok: 1}
stages: [redact, prise]
retention_days: soon
""")
    expected = [
        "retention_days: input should be a valid integer, unable to parse string as an integer (got 'soon')",
    ]
    assert found == expected  # a field of the settings object itself fails first, alone
    found = _problems(tmp_path, """
budgets:
  - {scope: {tenant: acme, workflw: x}, period: week, limit_usd: -5}
  - {period: day}
contracts:
  support-bot: {allowed_tools: [a], max_steps: -1, max_stepz: 3}
loops:
  agent: {tool_loop_n: "x", order_hold_ms: -1, tool_lop_n: 3}
anomalies:
  agent: {min_calls: 5, alpah: 0.1}
stages: [redact, prise]
""")
    for line in (
        "budgets[0].scope.workflw: unknown key (did you mean `workflow`?)",
        "budgets[0].period: must be one of 'day' or 'month' (got 'week')",
        "budgets[0].limit_usd: must be > 0 (got -5)",
        "budgets[1].limit_usd: required",
        "contracts.support-bot.max_steps: must be > 0 (got -1)",
        "contracts.support-bot.max_stepz: unknown key (did you mean `max_steps`?)",
        "loops.agent.order_hold_ms: must be >= 0 (got -1)",
        "loops.agent.tool_lop_n: unknown key (did you mean `tool_loop_n`?)",
        "anomalies.agent.alpah: unknown key (did you mean `alpha`?)",
    ):
        assert line in found, (line, found)
    assert any(p.startswith("loops.agent.tool_loop_n: ") for p in found)
    assert any(p.startswith("stages[1]: unknown stage `prise` (did you mean `price`?)") for p in found)


def test_prices_and_yaml_syntax_are_messages_too(tmp_path: Path) -> None:
    found = _problems(tmp_path, "prices:\n  - {model: m, input_mtok: 1, output_mtok: 1, bogus: 2}\n")
    assert found[0].startswith("prices[0].bogus: unknown key")
    found = _problems(tmp_path, "budgets: [\n")
    assert len(found) == 1 and found[0].startswith("not valid YAML")
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_a_named_config_file_that_is_missing_is_an_error_not_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMPULSE_CONFIG_FILE", str(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match=r"typo\.yaml not found"):
        load_settings()
    monkeypatch.delenv("LLMPULSE_CONFIG_FILE")
    monkeypatch.chdir(tmp_path)  # the default ./llmpulse.yaml may be absent: env and defaults
    assert load_settings().state_dir


def test_loop_overrides_are_normalised_to_what_the_detector_expects(tmp_path: Path) -> None:
    config = tmp_path / "llmpulse.yaml"
    config.write_text("loops:\n  agent: {tool_loop_n: '4', volatile_keys: [nonce]}\n")
    s = load_settings(config)
    assert s.loops == {"agent": {"tool_loop_n": 4, "volatile_keys": frozenset({"nonce"})}}
    from llmpulse.processors.pipeline import Pipeline

    Pipeline.from_settings(s)  # builds


_KEYS = st.sampled_from(["budgets", "contracts", "loops", "anomalies", "prices", "stages", "retention_days",
                         "budget", "limits", "dedup", "retry"])
_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                           st.sampled_from(["period", "limit_usd", "scope", "tenant", "tool_loop_n", "agent",
                                            "max_steps", "alpha", "model", "x"]), inner, max_size=3),
                       max_leaves=10)


@hsettings(max_examples=150, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_any_yaml_loads_or_fails_with_located_messages_only(tmp_path_factory, data: dict) -> None:
    config = tmp_path_factory.mktemp("cfg") / "llmpulse.yaml"
    config.write_text(yaml.safe_dump(data))
    try:
        load_settings(config)
    except ConfigError as exc:
        assert exc.problems and all(": " in p and "\n" not in p for p in exc.problems), exc.problems
