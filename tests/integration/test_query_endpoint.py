"""The worker's /query/ endpoint against a real worker: only this state directory's CLI gets
in, and only to read. Every refused request is followed by a check that nothing happened."""

from __future__ import annotations

import http.client
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmpulse.query import query_token_path
from llmpulse.testing import WorkerProcess, isolated_settings


def post(worker: WorkerProcess, body: bytes | str, headers: dict[str, str]) -> tuple[int, dict]:
    """A raw request, every header as given (urllib would set Host and Content-Type itself)."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.settings.worker_web_port, timeout=60)
    try:
        conn.putrequest("POST", "/query/", skip_host=True, skip_accept_encoding=True)
        data = body.encode() if isinstance(body, str) else body
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            conn.putheader(k, v)
        conn.endheaders(data)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, {"raw": raw.decode(errors="replace")}
    finally:
        conn.close()


def good_headers(worker: WorkerProcess) -> dict[str, str]:
    token = query_token_path(worker.settings).read_text()
    return {"Host": f"127.0.0.1:{worker.settings.worker_web_port}", "Content-Type": "application/json",
            "Authorization": f"Bearer {token}"}


def sql_body(sql: str) -> str:
    return json.dumps({"sql": sql})


def intact(worker: WorkerProcess) -> None:
    status, result = post(worker, sql_body("SELECT name FROM system.tables WHERE database = 'llmpulse'"),
                          good_headers(worker))
    assert status == 200, result
    assert {"events", "dead_letters", "findings", "traces"} <= {r[0] for r in result["rows"]}
    status, result = post(worker, sql_body("SELECT count() FROM llmpulse.dead_letters"), good_headers(worker))
    assert (status, result["rows"]) == (200, [[0]])


def test_token_file_is_private_and_reads_work(worker: WorkerProcess) -> None:
    path = query_token_path(worker.settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) >= 40  # token_urlsafe(32)
    status, result = post(worker, sql_body("SELECT count() FROM llmpulse.events"), good_headers(worker))
    assert (status, result["rows"]) == (200, [[0]])
    # A browser from this origin may send Origin; it is the same origin.
    same = {**good_headers(worker), "Origin": f"http://localhost:{worker.settings.worker_web_port}",
            "Host": f"localhost:{worker.settings.worker_web_port}"}
    assert post(worker, sql_body("SELECT 1"), same)[0] == 200


def test_writes_files_and_network_are_refused_and_nothing_changes(worker: WorkerProcess, tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    out = tmp_path / "outputs" / "out"
    attacks = [
        "DROP TABLE llmpulse.events",
        "TRUNCATE TABLE llmpulse.events",
        "INSERT INTO llmpulse.dead_letters (reason, kafka_topic) VALUES ('forged', 'x')",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT file('/etc/passwd')",
        f"INSERT INTO FUNCTION file('{out}.csv', 'CSV') SELECT 1",
        "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
        f"SELECT 1 INTO OUTFILE '{out}.txt'",
        "SELECT 1; DROP TABLE llmpulse.events",
        "SELECT * FROM executable('id', 'LineAsString', 'x String')",
        "SET readonly = 0",
        "SELECT 1 SETTINGS readonly = 0",
        "KILL QUERY WHERE 1",
        "SELECT * FROM python(settings)",
    ]
    for sql in attacks:
        status, result = post(worker, sql_body(sql), good_headers(worker))
        assert 400 <= status < 500 and result.get("error"), (sql, status, result)
    assert list((tmp_path / "outputs").iterdir()) == []
    intact(worker)
    # Over the row limit: refused mid-result, and the next query still gets a clean answer.
    status, result = post(worker, sql_body("SELECT number FROM numbers(3000000)"), good_headers(worker))
    assert status == 400 and "limit" in result["error"].lower(), result
    intact(worker)
    # The worker still ingests and answers (its writing session was never touched).
    assert worker.stats().get("ready")


def test_no_or_wrong_token_is_401(worker: WorkerProcess) -> None:
    headers = good_headers(worker)
    del headers["Authorization"]
    assert post(worker, sql_body("DROP TABLE llmpulse.events"), headers)[0] == 401
    for wrong in ("Bearer nope", "Bearer " + good_headers(worker)["Authorization"][7:-1], "Basic abc", "Bearer"):
        assert post(worker, sql_body("SELECT 1"), {**headers, "Authorization": wrong})[0] == 401, wrong
    intact(worker)


def test_foreign_host_or_origin_is_403_even_with_the_token(worker: WorkerProcess) -> None:
    port = worker.settings.worker_web_port
    h = good_headers(worker)
    drop = sql_body("DROP TABLE llmpulse.events")
    # DNS rebinding: the browser's Host is the attacker's name, resolved to 127.0.0.1.
    assert post(worker, drop, {**h, "Host": f"evil.example:{port}"})[0] == 403
    assert post(worker, drop, {**h, "Host": "127.0.0.1"})[0] == 403  # another port's origin
    # No Host at all: HTTP/1.1 requires one, aiohttp answers 400 before the endpoint runs.
    assert post(worker, drop, {k: v for k, v in h.items() if k != "Host"})[0] in (400, 403)
    assert post(worker, drop, {**h, "Origin": "http://evil.example"})[0] == 403
    assert post(worker, drop, {**h, "Origin": "null"})[0] == 403
    assert post(worker, drop, {**h, "Sec-Fetch-Site": "cross-site"})[0] == 403
    intact(worker)


def test_text_plain_simple_request_is_refused(worker: WorkerProcess) -> None:
    port = worker.settings.worker_web_port
    drop = sql_body("DROP TABLE llmpulse.events")
    # What a cross-origin page can send without a preflight: text/plain, its own Origin and Host.
    browser = {"Host": f"evil.example:{port}", "Origin": "http://evil.example", "Content-Type": "text/plain"}
    assert post(worker, drop, browser)[0] == 403
    # Even with the right host and token, only JSON is read.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert post(worker, drop, {**good_headers(worker), "Content-Type": ctype})[0] == 415, ctype
    assert post(worker, "not json", good_headers(worker))[0] == 400
    assert post(worker, json.dumps({"query": "SELECT 1"}), good_headers(worker))[0] == 400
    intact(worker)


def _cli(env: dict[str, str], sql: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmpulse", "sql", sql], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_reads_through_the_worker_and_refuses_with_one_message(worker: WorkerProcess) -> None:
    ok = _cli(worker.env, "SELECT count() AS n FROM llmpulse.events")
    assert ok.returncode == 0 and " n " in ok.stdout and "0" in ok.stdout, ok.stdout + ok.stderr
    bad = _cli(worker.env, "DROP TABLE llmpulse.events")
    assert bad.returncode == 1 and "refused" in bad.stderr and "Traceback" not in bad.stdout + bad.stderr
    typo = _cli(worker.env, "SELEC 1")
    assert typo.returncode == 1 and "Syntax error" in typo.stderr and "Traceback" not in typo.stdout + typo.stderr
    # A wrong token file (another worker's, an old one) is one clear message too.
    query_token_path(worker.settings).write_text("stale")
    stale = _cli(worker.env, "SELECT 1")
    assert stale.returncode == 1 and "refused the token" in stale.stderr, stale.stdout + stale.stderr


def test_cli_without_a_worker_applies_the_same_check(tmp_path: Path) -> None:
    s = isolated_settings("127.0.0.1:1", tmp_path / "state")
    env = {**WorkerProcess(s, tmp_path / "unused.log").env}
    ok = _cli(env, "SELECT count() FROM llmpulse.events")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for sql in ("DROP TABLE llmpulse.events", f"SELECT 1 INTO OUTFILE '{tmp_path}/x'", "SELECT file('/etc/passwd')"):
        bad = _cli(env, sql)
        assert bad.returncode == 1 and "refused" in bad.stderr and "Traceback" not in bad.stdout + bad.stderr, sql
    assert not (tmp_path / "x").exists()
    assert "events" in _cli(env, "SHOW TABLES FROM llmpulse").stdout
