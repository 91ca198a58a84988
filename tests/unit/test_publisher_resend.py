"""A re-sent event is the same event: the SDK fills event_id and ts once, into the app's dict."""

from __future__ import annotations

import time
from types import MappingProxyType

from llmpulse.ingest import MemoryPublisher
from llmpulse.ingest.publisher import _stamp
from llmpulse.schemas.contract import Output


def test_republishing_the_same_dict_sends_the_same_id_and_ts() -> None:
    pub = MemoryPublisher(redaction=False)
    event = {"event_type": "output", "trace_id": "t", "workflow": "w", "status": "ok"}
    assert pub.publish(event)
    time.sleep(0.003)
    assert pub.publish(event)  # e.g. the app retries after a failure it saw
    a, b = pub.events
    assert a["event_id"] == b["event_id"] == event["event_id"]
    assert a["ts"] == b["ts"] == event["ts"]
    assert a is not b and a is not event  # hooks work on a copy


def test_an_event_object_keeps_its_ts() -> None:
    pub = MemoryPublisher(redaction=False)
    ev = Output(event_id="e1", ts=1_700_000_000_000, trace_id="t", workflow="w", status="ok", latency_ms=1.0)
    pub.publish(ev)
    pub.publish(ev)
    assert [e["ts"] for e in pub.events] == [1_700_000_000_000] * 2


def test_what_the_app_set_is_kept_and_a_read_only_mapping_is_not_written() -> None:
    given = {"event_id": "mine", "ts": 0, "trace_id": "t"}
    out = _stamp(given)
    assert out["event_id"] == "mine" and out["ts"] == 0 and out["schema_version"] == "1"
    assert "schema_version" not in given  # only the identity is written back
    frozen = MappingProxyType({"trace_id": "t"})
    out = _stamp(frozen)
    assert out["event_id"] and out["ts"] and "event_id" not in frozen
