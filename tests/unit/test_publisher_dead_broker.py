"""An SDK pointed at a dead broker logs one summary line, not one per reconnect attempt."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

from hypothesis import given, strategies as st

from llmpulse.ingest.kafka_log import BrokerLog
from llmpulse.testing import free_port


def test_a_dead_broker_is_one_warning_line_with_the_address_tried() -> None:
    port = free_port()  # nothing listens there
    code = (
        "import time\n"
        "from llmpulse.ingest import KafkaPublisher\n"
        f"p = KafkaPublisher('127.0.0.1:{port}', 'llm.events')\n"
        "for i in range(50): p.publish({'event_type': 'prompt', 'trace_id': 't', 'workflow': 'w'})\n"
        "time.sleep(4)\n"
        "p.close(timeout=0.1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    unreachable = [ln for ln in lines if "unreachable" in ln]
    assert len(unreachable) == 1, lines
    assert f"127.0.0.1:{port}" in unreachable[0] and "Connection refused" in unreachable[0]
    assert not [ln for ln in lines if "Connect to" in ln], lines  # no raw per-attempt lines
    assert len(lines) <= 3, lines  # the summary and the close() line about undelivered events


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@given(st.lists(st.tuples(st.sampled_from(["FAIL", "ERROR", "METADATA", "CONFWARN"]),
                          st.sampled_from(["Connect to ipv4#x failed: Connection refused", "Disconnected",
                                           "some config warning", "metadata refreshed"])), max_size=40))
def test_only_connection_failures_are_summarised(records: list[tuple[str, str]]) -> None:
    log = logging.getLogger(f"test.brokerlog.{time.monotonic_ns()}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = _Records()
    log.addHandler(handler)
    blog = BrokerLog(log, "h:1")
    for fac, msg in records:
        blog.log(logging.ERROR, "%s [%s] %s", fac, "rdkafka#producer-1", msg)
    warnings = [r for r in handler.records if r.levelno >= logging.WARNING]
    connection = [(f, m) for f, m in records if f in ("FAIL", "ERROR") and m.startswith(("Connect", "Disc"))]
    others = len(records) - len(connection)
    assert len(warnings) == others + (1 if connection else 0)
    assert sum("unreachable" in r.getMessage() for r in warnings) == (1 if connection else 0)
