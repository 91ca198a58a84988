"""Worker endpoints without a worker: /query/ from another host, dead-letter reason classes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings as hsettings, strategies as st
from pydantic import SecretStr

from llmpulse.processors.runtime.metrics import reason_class
from llmpulse.processors.runtime.query_endpoint import QueryEndpoint
from llmpulse.processors.validate import Invalid, validate
from llmpulse.settings import Settings
from llmpulse.testing import free_port


def _ask(s: Settings, headers: dict, peer: str) -> tuple[int, dict]:
    """One request to a fresh endpoint; "{local}" in a header is its local token file's content."""
    async def run() -> tuple[int, dict]:
        async def call(fn, *args):
            return {"columns": ["x"], "rows": [[1]]}

        async def body() -> bytes:
            return b'{"sql": "SELECT 1"}'

        ready = asyncio.Event()
        ready.set()
        endpoint = QueryEndpoint(s, call, ready)
        given = {k: v.replace("{local}", endpoint.token or "") for k, v in headers.items()}
        return await endpoint.handle(given, "application/json", body, peer)

    return asyncio.run(run())


def test_query_from_another_host_is_refused_unless_a_query_token_is_set(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, worker_web_port=free_port())
    status, body = _ask(s, {"Host": f"127.0.0.1:{s.worker_web_port}"}, "10.1.2.3")
    assert status == 403 and "this machine only" in body["error"]
    # The local token does not open the door to other hosts, even with a forged Host.
    status, _ = _ask(s, {"Host": f"127.0.0.1:{s.worker_web_port}", "Authorization": "Bearer {local}"},
                     "192.0.2.7")
    assert status == 403

    remote = Settings(state_dir=tmp_path / "r", worker_web_port=free_port(), query_token=SecretStr("s3cret-token"))
    assert _ask(remote, {"Host": "worker:6066", "Authorization": "Bearer wrong"}, "10.1.2.3")[0] == 401
    assert _ask(remote, {"Host": "worker:6066", "Authorization": "Bearer s3cret-token"}, "10.1.2.3")[0] == 200
    browser = {"Host": "worker:6066", "Authorization": "Bearer s3cret-token", "Origin": "http://evil.example"}
    assert _ask(remote, browser, "10.1.2.3")[0] == 403
    assert _ask(remote, {"Host": "worker:6066", "Authorization": "Bearer s3cret-token"}, "::ffff:10.0.0.1")[0] == 200
    local = {"Host": f"127.0.0.1:{remote.worker_web_port}", "Authorization": "Bearer s3cret-token"}
    assert _ask(remote, local, "127.0.0.1")[0] == 200  # the configured token works locally too
    assert _ask(s, {"Host": f"127.0.0.1:{s.worker_web_port}", "Authorization": "Bearer {local}"},
                "::1")[0] == 200


_CLASSES = {"malformed_json", "event_time", "size_limit", "integer_range", "unknown_event_type", "no_value",
            "store_rejected", "schema", "other"}


@hsettings(max_examples=300)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_every_validation_reason_has_a_bounded_class(raw: bytes) -> None:
    result = validate(raw)
    if isinstance(result, Invalid):
        assert reason_class(result.reason) in _CLASSES - {"other"}, result.reason


def test_reason_classes_of_known_reasons() -> None:
    assert reason_class(validate(b"{nope").reason) == "malformed_json"
    assert reason_class(validate(b'{"event_type": "prompt"}').reason) == "schema"
    assert reason_class(validate(b'{"event_type": "nope"}').reason) == "unknown_event_type"
    assert reason_class("Code: 53. DB::Exception: Type mismatch") == "store_rejected"
    assert reason_class("something new") == "other"


@given(st.ip_addresses())
def test_only_loopback_peers_count_as_this_machine(address) -> None:
    from llmpulse.processors.runtime.query_endpoint import is_local_peer

    assert is_local_peer(str(address)) == address.is_loopback  # 127.0.0.0/8 and ::1, nothing else
    assert is_local_peer(f"{address}%eth0") == address.is_loopback if address.version == 6 else True
    assert not is_local_peer(None) and not is_local_peer("") and not is_local_peer("worker")
    assert is_local_peer("127.8.9.10") and is_local_peer("::1") and not is_local_peer("10.0.0.1")
