"""Run a real worker as a subprocess with its own topics, group, chDB directory and port.

Shared by the integration tests and the benchmarks.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from llmpulse.query import run_query, worker_stats
from llmpulse.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_broker_port() -> int:
    """A port for a broker of our own that a test stops and starts again: it and the next one
    (the controller's) free, below the kernel's ephemeral range, so that while the broker is
    down no outgoing connection (its own clients reconnecting) is handed either of them."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low - 1)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair below the ephemeral range")


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def isolated_settings(bootstrap: str, state_dir: Path, **overrides) -> Settings:
    """Settings with a unique topic set and consumer group, so runs never see each other."""
    tag = uuid.uuid4().hex[:8]
    state_dir.mkdir(parents=True, exist_ok=True)
    return Settings(state_dir=state_dir, kafka_bootstrap=bootstrap, events_topic=f"llm.events.{tag}",
                    dlq_topic=f"llm.events.dlq.{tag}", findings_topic=f"llm.findings.{tag}",
                    controls_topic=f"llm.controls.{tag}",
                    worker_id=f"llmpulse-test-{tag}", worker_web_port=free_port(), **overrides)


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})  # e.g. LLMPULSE_CONFIG_FILE for budgets/contracts
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        s = self.settings
        return {**os.environ, "LLMPULSE_STATE_DIR": str(s.state_dir), "LLMPULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "LLMPULSE_EVENTS_TOPIC": s.events_topic, "LLMPULSE_DLQ_TOPIC": s.dlq_topic,
                "LLMPULSE_FINDINGS_TOPIC": s.findings_topic, "LLMPULSE_CONTROLS_TOPIC": s.controls_topic,
                "LLMPULSE_WORKER_ID": s.worker_id,
                "LLMPULSE_WORKER_WEB_PORT": str(s.worker_web_port),
                "LLMPULSE_BATCH_MAX_EVENTS": str(s.batch_max_events),
                "LLMPULSE_BATCH_MAX_SECONDS": str(s.batch_max_seconds), **self.extra_env}

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "llmpulse", "worker"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.settings.state_dir, start_new_session=True)
        wait_for(lambda: self._alive_or_fail() and (worker_stats(self.settings) or {}).get("ready"), 90,
                 what="worker start")
        return self

    def _alive_or_fail(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return True

    def stats(self) -> dict:
        return worker_stats(self.settings) or {}

    def query(self, sql: str) -> list[list]:
        return run_query(self.settings, sql.replace("{db}", self.settings.database))["rows"]

    def scalar(self, sql: str):
        return self.query(sql)[0][0]

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------- paging: Alertmanager + webhook receiver


def alertmanager_binary() -> str | None:
    """The Alertmanager binary (Debian package `prometheus-alertmanager`), or None."""
    import shutil

    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class WebhookReceiver:
    """A local HTTP endpoint recording every POST body (Alertmanager webhook payloads) with
    its arrival time (`time.monotonic()`, comparable within this process)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        import threading

        self.host = host
        self.notifications: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://{self.host}:{self._server.server_address[1]}/hook"

    def start(self) -> "WebhookReceiver":
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with rec.cond:
                    rec.notifications.append((arrived, body))
                    rec.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alerts(self, status: str | None = None) -> list[tuple[float, str, dict]]:
        """Every alert in every notification so far: (arrival, notification status, alert)."""
        with self.cond:
            return [(t, body.get("status", ""), a) for t, body in self.notifications
                    for a in body.get("alerts", []) if status is None or body.get("status") == status]

    def wait_for(self, predicate, timeout: float) -> list[tuple[float, dict]]:
        """Notifications whose body matches `predicate`, waiting up to `timeout` for the first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [n for n in self.notifications if predicate(n[1])]
                remaining = deadline - time.monotonic()
                if hits or remaining <= 0:
                    return hits
                self.cond.wait(timeout=min(remaining, 0.05))


class LocalAlertmanager:
    """A real Prometheus Alertmanager on a free port, routing every alert to one webhook.

    `group_wait` / `group_interval` bound the paging latency (Alertmanager holds a new
    group for `group_wait` before the first notification); tests and benches set them low.
    Started with clustering off; readiness is `/-/ready`, not a log line.
    """

    def __init__(self, workdir: Path, webhook_url: str, *, group_by: tuple[str, ...] = ("finding_id",),
                 group_wait: str = "0s", group_interval: str = "1s", repeat_interval: str = "1h",
                 send_resolved: bool = True, binary: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.webhook_url = webhook_url
        self.group_by = group_by
        self.group_wait, self.group_interval, self.repeat_interval = group_wait, group_interval, repeat_interval
        self.send_resolved = send_resolved
        self.binary = binary or alertmanager_binary()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "alertmanager.log"

    def config_text(self) -> str:
        return (
            "route:\n"
            "  receiver: hook\n"
            f"  group_by: [{', '.join(repr(g) for g in self.group_by)}]\n"
            f"  group_wait: {self.group_wait}\n"
            f"  group_interval: {self.group_interval}\n"
            f"  repeat_interval: {self.repeat_interval}\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: {self.webhook_url}\n"
            f"        send_resolved: {'true' if self.send_resolved else 'false'}\n"
        )

    def start(self, timeout: float = 20.0) -> "LocalAlertmanager":
        import urllib.request

        if self.binary is None:
            raise FileNotFoundError("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text(self.config_text())
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"alertmanager exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout, interval=0.05, what="alertmanager ready")
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "LocalAlertmanager":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tool_loop_events(trace_id: str, *, n: int = 3, start_ms: int | None = None, tenant: str = "acme",
                     workflow: str = "research-agent", model: str = "gpt-4o", tool: str = "search_kb",
                     arguments: dict | None = None) -> list[dict]:
    """A prompt then `n` identical tool calls in one trace: with the default `tool_loop_n`
    of 3, the LoopDetector raises `tool_loop` on the third call (the last event here)."""
    t0 = start_ms if start_ms is not None else int(time.time() * 1000)
    common = {"trace_id": trace_id, "tenant": tenant, "workflow": workflow, "environment": "prod",
              "provider": "openai", "model": model}
    events = [{**common, "event_id": f"{trace_id}-p", "event_type": "prompt", "ts": t0, "span_id": f"{trace_id}-p",
               "messages": [{"role": "user", "content": "where is order 1234?"}]}]
    for k in range(n):
        events.append({**common, "event_id": f"{trace_id}-t{k}", "event_type": "tool_call", "ts": t0 + 1 + k,
                       "span_id": f"{trace_id}-t{k}", "parent_span_id": f"{trace_id}-p", "tool_name": tool,
                       "tool_call_id": f"{trace_id}-c{k}", "arguments": arguments or {"order_id": "1234"},
                       "status": "ok", "duration_ms": 40.0, "result": "order 1234: in transit",
                       "side_effect": "read"})
    return events
