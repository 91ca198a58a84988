"""The pipeline orders the processors; a restarted worker rebuilds their state with `warm`."""

from __future__ import annotations

import time

import orjson

from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.processors.validate import validate
from llmpulse.settings import Settings

# Event time an hour-aligned hour or two ago: inside the validation window whenever the tests run.
T0 = (time.time_ns() // 3_600_000_000_000 - 1) * 3_600_000


def _call(i: int, trace: str = "t-loop") -> dict:
    return {"event_id": f"call-{trace}-{i}", "event_type": "tool_call", "ts": T0 + i * 1000,
            "trace_id": trace, "workflow": "support-bot", "tenant": "acme", "tool_name": "search_kb",
            "arguments": {"query": "refund policy", "request_id": f"req-{i}"}}


def _messages(events: list[dict]) -> list[RawMessage]:
    return [RawMessage(orjson.dumps(e), "llm.events", 0, i) for i, e in enumerate(events)]


def _loop_findings(result) -> list:
    return [f for f in result.findings if f.kind == "tool_loop"]


def test_a_loop_interrupted_by_a_restart_fires_once_after_warm_up(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path)
    live = Pipeline.from_settings(settings)
    assert _loop_findings(live.run(_messages([_call(0), _call(1), _call(2)])))  # baseline: fires at the 3rd

    before = Pipeline.from_settings(settings)
    assert not _loop_findings(before.run(_messages([_call(0), _call(1)])))
    restarted = Pipeline.from_settings(settings)
    assert restarted.warm((validate(orjson.dumps(e)).event, None) for e in [_call(0), _call(1)]) == 2
    after = restarted.run(_messages([_call(2)]))
    assert len(_loop_findings(after)) == 1


def test_warm_up_does_not_raise_findings_again(tmp_path) -> None:
    restarted = Pipeline.from_settings(Settings(state_dir=tmp_path))
    restarted.warm((validate(orjson.dumps(e)).event, None) for e in [_call(0), _call(1), _call(2)])
    assert not _loop_findings(restarted.run(_messages([_call(3)])))


def test_output_rows_carry_our_price_beside_the_reported_cost(tmp_path) -> None:
    from llmpulse.schemas.rows import EVENT_COLUMNS

    out = {"event_id": "o1", "event_type": "output", "ts": T0, "trace_id": "t", "workflow": "w",
           "provider": "openai", "model": "gpt-4o", "status": "ok", "latency_ms": 100.0, "cost_usd": 1.0,
           "usage": {"input_tokens": 1_000_000, "output_tokens": 0}}
    row = dict(zip(EVENT_COLUMNS, Pipeline.from_settings(Settings(state_dir=tmp_path)).run(_messages([out])).rows[0]))
    assert row["cost_usd"] == 1.0
    assert row["price_usd"] == 2.5  # gpt-4o: $2.50 per million input tokens in the catalog
    assert row["price_source"] == "genai-prices" and row["price_version"].startswith("genai-prices")


def _output(i: int, partition_offset_ms: int = 0) -> dict:
    return {"event_id": f"out-{partition_offset_ms}-{i}", "event_type": "output",
            "ts": T0 + i * 2000 + partition_offset_ms, "trace_id": f"t-{partition_offset_ms}-{i}",
            "workflow": "support-bot", "tenant": "acme", "provider": "openai", "model": "gpt-4o", "status": "ok",
            "latency_ms": 800.0, "usage": {"input_tokens": 100, "output_tokens": 50}}


def test_a_partition_with_nothing_stored_holds_the_warmed_watermark_back(tmp_path) -> None:
    # Killed during a backlog read one partition first: partition 0 has 10 minutes stored,
    # partition 1 nothing. Its events, read after the restart, must not arrive as late.
    stored = [validate(orjson.dumps(_output(i))).event for i in range(300)]
    backlog = [RawMessage(orjson.dumps(_output(i, 500)), "llm.events", 1, i) for i in range(300)]
    late = {}
    for progress in ({("llm.events", 0): stored[-1].ts},  # the stored partitions only: wrong
                     {("llm.events", 0): stored[-1].ts, ("llm.events", 1): 0}):
        restarted = Pipeline.from_settings(Settings(state_dir=tmp_path))
        restarted.warm(((e, None) for e in stored), progress)
        restarted.run(backlog)
        restarted.flush()  # release what the watermark still holds
        late[len(progress)] = restarted.windowed[0].late_dropped
    assert late[1] > 250  # the bug this guards against: windows closed by partition 0 alone
    assert late[2] == 0
