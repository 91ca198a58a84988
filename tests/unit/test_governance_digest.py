"""Metadata-only capture keeps digests, not text (processors/governance.py `content_digest`):
loops stay visible, nothing of the text stays, the SDK hook and the worker agree."""

from __future__ import annotations

import re
import time
import uuid

import msgspec
import orjson
from hypothesis import given, settings as hsettings, strategies as st

from llmpulse.processors.governance import ContentPolicy, GovernanceConfig, strip_content, strip_content_dict
from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.processors.validate import Valid, validate
from llmpulse.schemas.contract import decode_event
from llmpulse.schemas.rows import EVENT_COLUMNS
from llmpulse.settings import Settings

NOW = int(time.time() * 1000) - 3_600_000
GOVERNANCE = {"workflows": {"billing": {"content": {"capture": "metadata"}}}}
DIGEST = re.compile(r"~h:[a-z]{14}")


def search(i: int, query: str, trace: str = "tr-1") -> dict:
    return {"event_type": "tool_call", "event_id": f"t{i}", "ts": NOW + i * 10, "trace_id": trace,
            "workflow": "billing", "tool_name": "search",
            "arguments": {"query": query, "request_id": str(uuid.uuid4()), "filters": ["docs", 3, True]},
            "result": f"found {query} at 2026-12-03T10:{i:02d}:00Z"}


def loop_findings(events: list[dict]) -> list:
    p = Pipeline.from_settings(Settings(governance=GOVERNANCE, stages=["loops"]), replay=True)
    out = p.run([RawMessage(orjson.dumps(e), "llm.events", 0, i) for i, e in enumerate(events)])
    assert len(out.rows) == len(events) and not out.dead_letters
    return [f for f in out.findings if f.kind == "tool_loop"], out.rows


def test_twelve_different_searches_in_a_metadata_only_trace_are_no_tool_loop() -> None:
    found, rows = loop_findings([search(i, f"invoice {i} of ACME Corp") for i in range(12)])
    assert found == []
    args = [orjson.loads(dict(zip(EVENT_COLUMNS, r))["arguments"]) for r in rows]
    assert len({a["query"] for a in args}) == 12 and all(DIGEST.fullmatch(a["query"]) for a in args)
    assert set(args[0]) == {"query", "request_id", "filters"} and len(args[0]["filters"]) == 3  # structure kept
    assert "ACME" not in repr(rows)


def test_twelve_identical_searches_differing_in_a_request_id_are_one_tool_loop() -> None:
    found, rows = loop_findings([search(i, "invoice of ACME Corp") for i in range(12)])
    assert len(found) == 1 and found[0].trace_id == "tr-1"
    assert "ACME" not in repr(rows) and "ACME" not in repr(found)


def test_equal_values_in_other_traces_get_other_digests() -> None:
    a = strip_content(decode_event(orjson.dumps(search(1, "same query", trace="tr-a"))))
    b = strip_content(decode_event(orjson.dumps(search(1, "same query", trace="tr-b"))))
    assert a.arguments["query"] != b.arguments["query"] and a.result != b.result


texts = st.text(min_size=8, max_size=60)


@hsettings(max_examples=200, deadline=None)
@given(texts, st.sampled_from(["tr-1", "x" * 100]))
def test_no_eight_characters_of_any_text_stay(text: str, trace: str) -> None:
    events = [
        {"event_type": "prompt", "event_id": "p", "ts": NOW, "trace_id": trace, "workflow": "billing",
         "messages": [{"role": "user", "content": text}], "params": {"k": text}, "attributes": {"a": text}},
        {"event_type": "tool_call", "event_id": "t", "ts": NOW, "trace_id": trace, "workflow": "billing",
         "tool_name": "search", "arguments": {"q": text, "n": [text, {"deep": text}]}, "result": text},
        {"event_type": "tool_call", "event_id": "s", "ts": NOW, "trace_id": trace, "workflow": "billing",
         "tool_name": "search", "arguments": text},
        {"event_type": "output", "event_id": "o", "ts": NOW, "trace_id": trace, "workflow": "billing",
         "status": "ok", "latency_ms": 1.0, "content": text, "error_type": text, "extra_field": text},
    ]
    policy = ContentPolicy(GovernanceConfig.model_validate(GOVERNANCE))
    for ev in events:
        valid = validate(orjson.dumps(ev))
        assert isinstance(valid, Valid)
        event, extra = policy.apply(valid.event, valid.extra)  # the worker's step
        for stored in ({**msgspec.to_builtins(event), **extra}, policy.hook(ev)):
            kept = " ".join(leaves({k: v for k, v in stored.items() if k not in IDENTITY}))
            for i in range(len(text) - 7):
                assert text[i:i + 8] not in kept


IDENTITY = ("event_type", "event_id", "ts", "trace_id", "workflow", "tool_name", "status", "latency_ms")


def leaves(value) -> list[str]:
    """Every value the event still holds, as text (keys are the contract's and the test's own)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in leaves(v)]
    return [str(value)]


@hsettings(max_examples=200, deadline=None)
@given(texts, st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans(), st.sampled_from(["tr-9", "y" * 100]))
def test_the_sdk_hook_and_the_worker_store_the_same_digests(text: str, number, trace: str) -> None:
    events = [
        {"event_type": "tool_call", "event_id": "t", "ts": NOW, "trace_id": trace, "workflow": "billing",
         "tool_name": "search", "arguments": {"q": text, "n": number, "l": [text, None, ""]}, "result": text},
        {"event_type": "prompt", "event_id": "p", "ts": NOW, "trace_id": trace, "workflow": "billing",
         "messages": [{"role": "system", "content": text}, {"role": "user"}]},
        {"event_type": "output", "event_id": "o", "ts": NOW, "trace_id": trace, "workflow": "billing",
         "status": "ok", "latency_ms": 2.5, "content": text},
    ]
    hook = ContentPolicy(GovernanceConfig.model_validate(GOVERNANCE)).hook
    for ev in events:
        from_sdk = hook(ev)
        assert from_sdk == strip_content_dict(ev)
        worker = strip_content(decode_event(orjson.dumps(ev)))
        sdk = decode_event(orjson.dumps(from_sdk))
        assert sdk == worker  # one function, one digest
