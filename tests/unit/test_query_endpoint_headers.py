"""The endpoint's request checks without a worker: Host/Origin (DNS rebinding), the bearer
token, the content type, and what happens when no token file can be written."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from llmpulse.processors.runtime.query_endpoint import QueryEndpoint, authorized, check_origin, write_token
from llmpulse.settings import Settings
from llmpulse.testing import free_port


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
    s = Settings(state_dir=blocked / "state", worker_web_port=free_port())

    async def run() -> tuple[int, dict]:
        async def call(fn, *args):
            raise AssertionError("no query may run")

        async def body() -> bytes:
            return b'{"sql": "SELECT 1"}'

        endpoint = QueryEndpoint(s, call, asyncio.Event())
        assert endpoint.token is None
        return await endpoint.handle({"Host": f"127.0.0.1:{s.worker_web_port}", "Authorization": "Bearer "},
                                     "application/json", body)

    status, body = asyncio.run(run())
    assert status == 503 and "token" in body["error"]


def test_a_second_worker_on_a_taken_port_leaves_the_first_ones_token(tmp_path: Path) -> None:
    import socket

    with socket.socket() as first:  # the first worker's web server
        first.bind(("127.0.0.1", 0))
        first.listen()
        s = Settings(state_dir=tmp_path, worker_web_port=first.getsockname()[1])
        from llmpulse.query import query_token_path

        query_token_path(s).write_text("first-workers-token")
        second = QueryEndpoint(s, None, asyncio.Event())  # type: ignore[arg-type]
        assert second.token is None
        assert query_token_path(s).read_text() == "first-workers-token"
    assert QueryEndpoint(s, None, asyncio.Event()).token == query_token_path(s).read_text()  # type: ignore[arg-type]
