"""The worker bound to 0.0.0.0 as in a container, reached over a real socket from a
non-loopback address of this machine: /metrics and /healthz answer, /query/ does not (even
with the local token) unless query_token is set."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from llmpulse.query import query_token_path
from llmpulse.testing import WorkerProcess, isolated_settings


def _this_machines_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: the kernel picks the outgoing address
        return s.getsockname()[0]


def _post(url: str, token: str) -> int:
    req = urllib.request.Request(url, data=b'{"sql": "SELECT 1"}', headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_worker_on_all_interfaces_keeps_query_local(kafka, tmp_path: Path) -> None:
    address = _this_machines_address()
    assert not address.startswith("127."), address  # the test needs a non-loopback path
    s = isolated_settings(kafka.bootstrap, tmp_path / "state")
    worker = WorkerProcess(s, tmp_path / "worker.log", {"LLMPULSE_WORKER_WEB_HOST": "0.0.0.0"}).start()
    try:
        remote = f"http://{address}:{s.worker_web_port}"
        with urllib.request.urlopen(f"{remote}/metrics", timeout=10) as resp:
            names = {f.name for f in text_string_to_metric_families(resp.read().decode())}
        assert {"llmpulse_events_consumed", "llmpulse_consumer_lag", "process_start_time_seconds"} <= names
        assert urllib.request.urlopen(f"{remote}/healthz", timeout=10).status == 200
        try:  # /stats/ carries error texts: this machine only
            urllib.request.urlopen(f"{remote}/stats/", timeout=10)
            raise AssertionError("/stats/ answered another host")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
        assert urllib.request.urlopen(f"http://127.0.0.1:{s.worker_web_port}/stats/", timeout=10).status == 200
        token = query_token_path(s).read_text().strip()
        assert _post(f"{remote}/query/", token) == 403
        assert _post(f"http://127.0.0.1:{s.worker_web_port}/query/", token) == 200
    finally:
        worker.stop()
