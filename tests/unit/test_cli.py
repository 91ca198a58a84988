"""The CLI as a user meets it, run as a subprocess: messages, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
from hypothesis import given, strategies as st

from llmpulse.commands.output import write_result
from llmpulse.testing import free_port


def _run(*args: str, cwd: Path, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    out = subprocess.run([sys.executable, "-m", "llmpulse", *args], cwd=cwd, capture_output=True, text=True,
                         env={**base, "LLMPULSE_STATE_DIR": str(cwd / "state"), "COLUMNS": "120", **(env or {})},
                         input=stdin, timeout=120)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    return out


def test_version_and_help_show_flags_as_flags(tmp_path: Path) -> None:
    from importlib.metadata import version

    from typer.testing import CliRunner

    from llmpulse.cli import app

    out = _run("--version", cwd=tmp_path)  # the installed entry point, as a user runs it
    assert out.returncode == 0 and out.stdout.strip() == f"llmpulse {version('llmpulse')}"
    runner = CliRunner()
    for command in ([], ["demo"], ["replay"], ["otlp-gateway", "keygen"], ["sql"], ["config", "check"]):
        text = runner.invoke(app, [*command, "--help"], terminal_width=120).output
        assert "<bool>" not in text and "--no-" not in text, text
    assert "--keep-running  " in runner.invoke(app, ["demo", "--help"]).output
    assert "--format" in runner.invoke(app, ["sql", "--help"]).output


def test_config_check_prints_the_effective_configuration_with_secrets_masked(tmp_path: Path) -> None:
    (tmp_path / "llmpulse.yaml").write_text("retention_days: 7\nclickhouse_password: hunter2\n"
                                            "budgets:\n  - {period: day, limit_usd: 5}\n")
    out = _run("config", "check", cwd=tmp_path, env={"LLMPULSE_GRAFANA_TOKEN": "glsa_secret"})
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and "glsa_secret" not in out.stdout
    header, body = out.stdout.split("\n", 1)
    assert "valid" in header and "llmpulse.yaml" in header
    import yaml

    effective = yaml.safe_load(body)
    assert effective["retention_days"] == 7 and effective["clickhouse_password"] == "**********"
    assert effective["grafana_token"] == "**********" and effective["budgets"][0]["limit_usd"] == 5


def test_config_errors_are_messages_in_every_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget:\n  - {period: day, limit_usd: 5}\n")
    for command in (["config", "check", str(bad)], ["-c", str(bad), "sql", "SELECT 1"],
                    ["-c", str(bad), "migrate"], ["-c", str(bad), "kafka", "status"],
                    ["-c", str(bad), "worker"]):
        out = _run(*command, cwd=tmp_path)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "budget: unknown key (did you mean `budgets`?)" in out.stderr, (command, out.stderr)
    bad.write_text("budgets:\n  - {period: day, limit_usd: -1}\n")
    out = _run("config", "check", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "budgets[0].limit_usd: must be > 0 (got -1)" in out.stderr
    out = _run("-c", str(tmp_path / "missing.yaml"), "sql", "SELECT 1", cwd=tmp_path)
    assert out.returncode == 2 and "missing.yaml not found" in out.stderr


def test_sql_formats_and_the_default_database(tmp_path: Path) -> None:
    out = _run("sql", "--format", "json", "SELECT count() AS n, currentDatabase() AS db FROM events", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 0, "db": "llmpulse"}]
    out = _run("sql", "-f", "csv", "SELECT number AS n, concat('a,', toString(number)) AS s FROM numbers(3)",
               cwd=tmp_path)
    assert list(csv.reader(io.StringIO(out.stdout))) == [["n", "s"], ["0", "a,0"], ["1", "a,1"], ["2", "a,2"]]
    out = _run("sql", "-f", "jsonl", "SELECT number AS n FROM numbers(2)", cwd=tmp_path)
    assert [json.loads(line) for line in out.stdout.splitlines()] == [{"n": 0}, {"n": 1}]
    out = _run("sql", "-f", "xml", "SELECT 1", cwd=tmp_path)
    assert out.returncode == 2 and "table, csv, json, jsonl" in out.stderr


def test_backtest_of_an_empty_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    out = _run("backtest", "empty.jsonl", cwd=tmp_path)
    assert out.returncode == 1 and "is empty" in out.stderr


def test_kafka_status_is_a_table_and_dead_services_are_one_line(tmp_path: Path) -> None:
    port = free_port()
    out = _run("kafka", "status", cwd=tmp_path, env={"LLMPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    assert out.returncode == 1
    rows = dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())
    assert rows["bootstrap"].strip() == f"127.0.0.1:{port}" and rows["answering"].strip() == "no"
    out = _run("migrate", cwd=tmp_path, env={"LLMPULSE_CLICKHOUSE_DSN": f"http://127.0.0.1:{port}"})
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert "cannot reach ClickHouse" in out.stderr and "connection refused" in out.stderr


_CELLS = st.none() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text() | st.booleans()


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4, unique=True).flatmap(
    lambda cols: st.tuples(st.just(cols), st.lists(st.lists(_CELLS, min_size=len(cols), max_size=len(cols)),
                                                   max_size=5))))
def test_every_format_keeps_every_value(data: tuple[list[str], list[list]]) -> None:
    columns, rows = data
    result = {"columns": columns, "rows": rows}
    out = io.StringIO()
    write_result(result, "jsonl", out)
    assert [list(orjson.loads(line).values()) for line in out.getvalue().split("\n")[:-1]] == rows
    out = io.StringIO()
    write_result(result, "json", out)
    assert [list(o.values()) for o in orjson.loads(out.getvalue())] == rows
    out = io.StringIO()
    write_result(result, "csv", out)
    parsed = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert parsed[0] == columns and len(parsed) == len(rows) + 1
    assert parsed[1:] == [["" if v is None else str(v) for v in row] for row in rows]


def test_integers_past_64_bits_are_text_in_json() -> None:
    out = io.StringIO()
    write_result({"columns": ["big", "arr"], "rows": [[2**100, [2**70, 1]]]}, "jsonl", out)
    assert orjson.loads(out.getvalue()) == {"big": str(2**100), "arr": [str(2**70), 1]}


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # no Grafana there
    out = _run("grafana", "sync", "--url", url, "--token", "t", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.startswith("llmpulse grafana sync: "), out.stderr
    assert "--debug" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    debug = subprocess.run([sys.executable, "-m", "llmpulse", "--debug", "grafana", "sync", "--url", url,
                            "--token", "t"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@given(st.binary(max_size=200) | st.builds(lambda v: orjson.dumps(v), st.recursive(
    st.none() | st.integers(-5, 5) | st.text(max_size=5), lambda i: st.lists(i, max_size=3)
    | st.dictionaries(st.text(max_size=4), i, max_size=3), max_leaves=6)))
def test_replay_rejects_exactly_the_lines_that_are_not_json_objects(line: bytes) -> None:
    from llmpulse.cli import _unparsable

    why = _unparsable(line)
    try:
        is_object = isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        is_object = False
    assert (why == "") == (is_object or not line.strip())


@given(st.integers(0, 2**42), st.integers(0, 90 * 86_400_000))
def test_a_fitted_range_holds_the_data_within_its_bounds(first: int, span: int) -> None:
    from llmpulse.commands.report import MAX_FIT, MIN_FIT, fit_range

    start, end = fit_range(first, first + span)
    assert start % 60_000 == 0 and end % 60_000 == 0 and end > first + span
    assert MIN_FIT.total_seconds() * 1000 <= end - start <= max(MAX_FIT.total_seconds() * 1000,
                                                                 MIN_FIT.total_seconds() * 1000)
    if span + 120_000 <= MAX_FIT.total_seconds() * 1000:
        assert start <= first  # all of it fits
