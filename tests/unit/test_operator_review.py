"""An operator's mistakes, tried as a new user makes them: each is one located ConfigError
(exit 2 in the CLI), never a bare ValueError/SettingsError or a silently ignored file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from llmpulse.config_errors import ConfigError
from llmpulse.settings import load_settings


def _error(config: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    return str(err.value)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("hello\n", "str"), ("42\n", "int")])
def test_a_file_that_is_no_mapping_is_a_config_error(tmp_path: Path, text: str, kind: str) -> None:
    config = tmp_path / "llmpulse.yaml"
    config.write_text(text)
    message = _error(config)
    assert str(config) in message and "mapping" in message and kind in message


def test_a_config_path_that_is_a_directory_is_an_error_not_ignored(tmp_path: Path) -> None:
    message = _error(tmp_path)
    assert str(tmp_path) in message and "directory" in message


def test_a_duplicate_key_is_an_error_naming_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "llmpulse.yaml"
    config.write_text("database: a\nretention_days: 3\ndatabase: b\nloops:\n  w: {}\n  w: {}\n")
    message = _error(config)
    assert "database: duplicate key (line 3" in message
    assert "loops.w: duplicate key (line 6" in message


def test_merge_keys_may_be_overridden_without_a_duplicate_error(tmp_path: Path) -> None:
    config = tmp_path / "llmpulse.yaml"
    config.write_text("loops:\n  a: &base {tool_loop_n: 5}\n  b:\n    <<: *base\n    tool_loop_n: 7\n")
    assert load_settings(config).loops["b"]["tool_loop_n"] == 7


@pytest.mark.parametrize("var, value", [("LLMPULSE_LOOPS", "notjson"), ("LLMPULSE_STAGES", "redact"),
                                        ("LLMPULSE_BUDGETS", "{bad"), ("LLMPULSE_RETRY", "abc")])
def test_a_structured_env_var_that_is_not_json_is_a_config_error_naming_it(
        tmp_path: Path, monkeypatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert var in message and "JSON" in message and "LLMPULSE_* variables" in message


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_docs = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3), max_leaves=8)
_sections = st.sampled_from(["budgets", "loops", "anomalies", "policies", "governance", "eval_gate",
                             "controls", "contracts", "prices", "stages", "retry", "limits", "dedup"])


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_docs | st.dictionaries(_sections, _docs, max_size=3))
def test_any_yaml_document_loads_or_is_a_config_error(tmp_path: Path, doc) -> None:
    config = tmp_path / "llmpulse.yaml"
    config.write_text(yaml.safe_dump(doc))
    try:
        load_settings(config)
    except ConfigError as exc:
        assert exc.problems and all(p.strip() for p in exc.problems)


# ------------------------------------------------------------ commands that publish, with no broker

import os
import subprocess
import sys
import time


def _cli(*args: str, cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "llmpulse", *args], cwd=cwd, capture_output=True, text=True,
                         env={**base, "LLMPULSE_STATE_DIR": str(cwd / "state"), **env}, timeout=120)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    return out, time.monotonic() - started


def test_replay_and_generate_without_a_broker_say_so_and_exit_1_within_the_wait(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text('{"trace_id": "t1"}\n')
    dead = {"LLMPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LLMPULSE_KAFKA_WAIT_SECONDS": "1"}
    for args in (["replay", "events.jsonl"], ["generate", "--traces", "2"]):
        out, took = _cli(*args, cwd=tmp_path, env=dead)
        assert out.returncode == 1, (args, out.returncode, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "llmpulse kafka up" in lines[0], out.stderr
        assert took < 40, (args, took)  # not replay's 60 s flush nor generate's 10 s close on top


# ------------------------------------------------------------ llmpulse sql

import csv
import io
import json

from llmpulse.commands.output import write_result
from llmpulse.testing import free_port

_json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6),
                            lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


@given(st.lists(_json_values.filter(lambda v: isinstance(v, (list, dict))), min_size=1, max_size=4))
def test_csv_writes_arrays_and_maps_as_json_not_python_repr(cells: list) -> None:
    out = io.StringIO()
    write_result({"columns": [f"c{i}" for i in range(len(cells))], "rows": [cells]}, "csv", out)
    row = list(csv.reader(io.StringIO(out.getvalue(), newline="")))[1]
    assert [json.loads(cell) for cell in row] == cells


def test_sql_empty_result_keeps_its_header_and_a_bad_query_is_one_line_on_stderr(tmp_path: Path) -> None:
    env = {"LLMPULSE_WORKER_WEB_PORT": str(free_port())}  # no worker of someone else's answers
    out, _ = _cli("sql", "-f", "csv", "SELECT 1 AS a, 'x' AS b WHERE 0", cwd=tmp_path, env=env)
    assert out.returncode == 0 and list(csv.reader(io.StringIO(out.stdout))) == [["a", "b"]], out
    out, _ = _cli("sql", "SELEC 1", cwd=tmp_path, env=env)
    assert out.returncode == 1 and out.stdout == "", out.stdout  # a script's output file stays clean
    assert len(out.stderr.strip().splitlines()) == 1 and "Syntax error" in out.stderr


def test_otlp_gateway_option_out_of_range_is_one_located_line(tmp_path: Path) -> None:
    out, _ = _cli("otlp-gateway", "--port", "99999", cwd=tmp_path, env={})
    assert out.returncode == 2
    assert out.stderr.strip() == "llmpulse otlp-gateway: port: must be <= 65535 (got 99999)", out.stderr


def test_config_check_masks_a_password_inside_a_url(tmp_path: Path) -> None:
    env = {"LLMPULSE_CLICKHOUSE_DSN": "http://default:dsn-secret-1@ch:8123",
           "LLMPULSE_ALERTMANAGER_URL": "https://pager:am-secret-2@am.example:9093/x",
           "LLMPULSE_GRAFANA_URL": "http://grafana.example:3000"}
    out, _ = _cli("config", "check", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "dsn-secret-1" not in out.stdout and "am-secret-2" not in out.stdout
    assert "clickhouse_dsn: http://default:**********@ch:8123" in out.stdout
    assert "grafana_url: http://grafana.example:3000" in out.stdout  # nothing to mask stays as is


_userinfo = st.text(st.characters(blacklist_characters="@/:\\ \t\r\n", blacklist_categories=("Cs", "Zs", "Cc")),
                    min_size=1, max_size=12)


@given(user=_userinfo, password=_userinfo, scheme=st.sampled_from(["http", "https", "chdb", "clickhouse+native"]))
def test_a_url_password_never_survives_masking(user: str, password: str, scheme: str) -> None:
    from llmpulse.commands.config import _masked

    shown = _masked({"a": [f"{scheme}://{user}:{password}@host:8123/db"]})["a"][0]
    assert shown == f"{scheme}://{user}:**********@host:8123/db"


def test_a_dsn_password_stays_out_of_the_error_lines(tmp_path: Path) -> None:
    env = {"LLMPULSE_CLICKHOUSE_DSN": f"http://default:dsn-pw-9@127.0.0.1:{free_port()}",
           "LLMPULSE_WORKER_WEB_PORT": str(free_port())}
    for args in (["migrate"], ["sql", "SELECT 1"], ["reprice", "--since", "2026-01-01T00:00Z"]):
        out, _ = _cli(*args, cwd=tmp_path, env=env)
        assert out.returncode != 0 and "dsn-pw-9" not in out.stdout + out.stderr, (args, out.stderr)
        assert "default:**********@127.0.0.1" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("text, where", [("worker_web_port: true\n", "worker_web_port"),
                                         ("batch_max_seconds: yes\n", "batch_max_seconds"),
                                         ("loops:\n  w:\n    tool_loop_n: on\n", "loops.w.tool_loop_n")])
def test_a_yaml_boolean_is_no_number(tmp_path: Path, text: str, where: str) -> None:
    config = tmp_path / "llmpulse.yaml"
    config.write_text(text)  # YAML 1.1 reads yes/on/true as a boolean, which pydantic would take as 1
    assert f"{where}: expected a number, not a boolean" in _error(config)
