"""The endpoint's request checks without a worker: Host/Origin (DNS rebinding), the bearer
token, the content type, and what happens when no token file can be written."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from llmpulse.processors.runtime.query_endpoint import QueryEndpoint, authorized, check_origin, write_token
from llmpulse.settings import Settings


def test_check_origin() -> None:
    assert check_origin({"Host": "127.0.0.1:7000"}, 7000) is None
    assert check_origin({"Host": "LOCALHOST:7000", "Origin": "http://localhost:7000"}, 7000) is None
    assert check_origin({"Host": "127.0.0.1:7000", "Sec-Fetch-Site": "same-origin"}, 7000) is None
    assert "Host" in check_origin({"Host": "evil.example:7000"}, 7000)
    assert "Host" in check_origin({"Host": "127.0.0.1:7001"}, 7000)
    assert "Host" in check_origin({}, 7000)
    assert "Origin" in check_origin({"Host": "127.0.0.1:7000", "Origin": "http://evil.example"}, 7000)
    assert "Origin" in check_origin({"Host": "127.0.0.1:7000", "Origin": "http://127.0.0.1:7001"}, 7000)
    assert "Origin" in check_origin({"Host": "127.0.0.1:7000", "Origin": "null"}, 7000)
    assert check_origin({"Host": "127.0.0.1:7000", "Sec-Fetch-Site": "cross-site"}, 7000) == "cross-site request"


def test_authorized() -> None:
    assert authorized("Bearer abc", "abc") and authorized("bearer abc", "abc")
    for header in (None, "", "abc", "Bearer", "Bearer ab", "Bearer abcd", "Basic abc", "Bearer  x"):
        assert not authorized(header, "abc"), header


def test_token_file_is_fresh_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "query.1.token"
    first, second = write_token(path), write_token(path)
    assert first != second and path.read_text() == second and len(second) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_no_token_file_means_503_not_a_crash(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # the state dir cannot be created: a file is in the way
    s = Settings(state_dir=blocked / "state", worker_web_port=7000)

    async def run() -> tuple[int, dict]:
        async def call(fn, *args):
            raise AssertionError("no query may run")

        async def body() -> bytes:
            return b'{"sql": "SELECT 1"}'

        endpoint = QueryEndpoint(s, call, asyncio.Event())
        assert endpoint.token is None
        return await endpoint.handle({"Host": "127.0.0.1:7000", "Authorization": "Bearer "},
                                     "application/json", body)

    status, body = asyncio.run(run())
    assert status == 503 and "token" in body["error"]
