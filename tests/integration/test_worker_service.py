"""The worker as a service: /metrics scraped from a real worker and parsed with
prometheus_client's parser, /healthz and /readyz, a clean log, and a clear exit without Kafka."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families

from llmpulse.ingest import KafkaPublisher
from llmpulse.testing import free_port, tool_loop_events, wait_for


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def _samples(port: int) -> dict[tuple[str, tuple], float]:
    status, ctype, text = _get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain") and "version=0.0.4" in ctype
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_health_and_readiness_of_a_running_worker(worker, pipeline_settings) -> None:
    s = pipeline_settings
    port = s.worker_web_port
    assert _get(port, "/healthz")[0] == 200
    status, _, body = _get(port, "/readyz")
    assert status == 200 and '"partitions":{"ok":true' in body and '"clickhouse":{"ok":true' in body

    now = int(time.time() * 1000)
    valid = [{"event_id": uuid.uuid4().hex, "event_type": "prompt", "ts": now, "trace_id": f"t{i}",
              "workflow": "w", "tenant": "acme", "messages": [{"role": "user", "content": "hi"}]} for i in range(40)]
    loop = tool_loop_events(f"loop-{uuid.uuid4().hex[:6]}", start_ms=now)
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic, redaction=False)
    for e in valid + loop:
        pub.publish(e)
    for bad in (b"{not json", b"[1, 2]", b'{"event_type": "prompt"}'):
        pub.publish_raw(bad, "k")
    assert pub.flush(30) == 0
    pub.close()
    total = len(valid) + len(loop) + 3

    samples = wait_for(lambda: (m := _samples(port)) and _value(m, "llmpulse_events_consumed_total") >= total
                       and m, 60, what="all messages consumed")
    assert _value(samples, "llmpulse_events_consumed_total") == total
    assert _value(samples, "llmpulse_events_inserted_total") == len(valid) + len(loop)
    assert _value(samples, "llmpulse_events_dead_lettered_total", reason_class="malformed_json") == 1
    assert _value(samples, "llmpulse_events_dead_lettered_total", reason_class="schema") == 2
    assert _value(samples, "llmpulse_findings_total", kind="tool_loop", severity="medium", status="open") + \
        _value(samples, "llmpulse_findings_total", kind="tool_loop", severity="high", status="open") >= 1
    assert _value(samples, "llmpulse_batch_duration_seconds_count") >= 1
    assert _value(samples, "llmpulse_batches_total") >= 1
    assert _value(samples, "process_resident_memory_bytes") > 50 * 1024 * 1024
    assert _value(samples, "llmpulse_detector_state", detector="LoopDetector", item="traces") >= 1
    assert _value(samples, "llmpulse_partitions_assigned") == s.topic_partitions
    assert _value(samples, "llmpulse_paging_notifications_total", result="failed") == 0
    # Lag per partition from the consumer's watermarks: every partition, caught up.
    lag = wait_for(lambda: {k: v for k, v in _samples(port).items() if k[0] == "llmpulse_consumer_lag"}
                   if len([k for k in _samples(port) if k[0] == "llmpulse_consumer_lag"]) == s.topic_partitions
                   else None, 30, what="lag of every partition")
    assert set(lag.values()) == {0.0}, lag
    assert all(_value(samples, "llmpulse_ready", check=c) == 1 for c in ("clickhouse", "migrated", "partitions",
                                                                          "batches"))

    # Through the worker's /query/, the project's database is the default: `FROM events` works.
    assert worker.scalar("SELECT count() FROM events FINAL") == len(valid) + len(loop)

    # The faust app's data lives under the state directory; the log of a normal start is clean.
    assert (s.state_dir / "faust").is_dir() and not list(s.state_dir.glob("*-data"))
    log = worker.log_path.read_bytes()
    assert b"\x1b" not in log and b"ERROR" not in log and b"Traceback" not in log, log[-2000:]


def test_without_kafka_the_worker_says_what_to_do_and_exits(tmp_path) -> None:
    port = free_port()  # nothing listens there
    env = {"LLMPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "LLMPULSE_KAFKA_WAIT_SECONDS": "3",
           "LLMPULSE_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "llmpulse", "worker"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert out.returncode != 0 and took < 30
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "llmpulse kafka up" in lines[0]
    assert "LLMPULSE_KAFKA_BOOTSTRAP" in lines[0]


def test_readyz_is_503_naming_clickhouse_while_it_cannot_be_reached(kafka, tmp_path) -> None:
    from llmpulse.testing import WorkerProcess, isolated_settings

    s = isolated_settings(kafka.bootstrap, tmp_path / "state", clickhouse_dsn=f"http://127.0.0.1:{free_port()}")
    w = WorkerProcess(s, tmp_path / "worker.log", extra_env={"LLMPULSE_CLICKHOUSE_DSN": s.clickhouse_dsn})
    import subprocess as sp

    w.proc = sp.Popen([sys.executable, "-m", "llmpulse", "worker"], env=w.env, stdout=open(w.log_path, "ab"),
                      stderr=sp.STDOUT, cwd=s.state_dir, start_new_session=True)
    try:
        port = s.worker_web_port
        def live() -> bool:
            w._alive_or_fail()
            try:
                return _get(port, "/healthz")[0] == 200
            except OSError:  # not listening yet
                return False

        wait_for(live, 60, what="liveness")
        status, _, body = _get(port, "/readyz")
        assert status == 503 and '"clickhouse":{"ok":false' in body and '"migrated":{"ok":false' in body, body
        assert _value(_samples(port), "llmpulse_ready", check="clickhouse") == 0
    finally:
        w.stop()
