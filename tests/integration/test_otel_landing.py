"""OpenTelemetry spans land as the expected rows in ClickHouse: real broker, real worker.

Both ways in, each with spans from the real `opentelemetry-instrumentation-openai-v2`
around the real `openai` client (the local OpenAI-compatible server and span helpers
of test_otel.py), plus hand-made GenAI spans (a deprecated provider attribute, cache
and reasoning tokens, a tool span, an evaluation event):

- in process: LlmpulseSpanExporter → KafkaPublisher (with the SDK redaction hook);
- any language: the official OTLP/HTTP exporter → GatewayThread → KafkaPublisher.

Then `llm.events` → worker → ClickHouse, checked row by row.
"""

from __future__ import annotations

import time

import pytest


from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from llmpulse.ingest import KafkaPublisher  # noqa: E402
from llmpulse.ingest.otel_exporter import LlmpulseSpanExporter  # noqa: E402
from llmpulse.ingest.otlp_gateway import GatewayConfig, GatewayThread  # noqa: E402
from llmpulse.ingest.redaction_hook import redaction_hook  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for  # noqa: E402
from llmpulse.ingest.otel_gateway_config import ApiKey, hash_key  # noqa: E402
from tests.integration.test_otel import client, make_spans, openai_server, provider  # noqa: E402, F401

pytestmark = pytest.mark.integration

COLUMNS = ("event_type", "tenant", "app", "workflow", "provider", "model", "response_model", "status",
           "finish_reason", "content", "messages", "input_tokens", "output_tokens", "cache_read_tokens",
           "cache_write_tokens", "reasoning_tokens", "price_usd", "tool_name", "tool_call_id", "error_type",
           "eval_name", "score", "passed", "latency_ms", "span_id", "parent_span_id")


@pytest.fixture(scope="module")
def landing_worker(kafka, tmp_path_factory):
    """One worker for the module; the tests tell their rows apart by trace id."""
    tmp = tmp_path_factory.mktemp("otel-landing")
    settings = isolated_settings(kafka.bootstrap, tmp / "state", batch_max_seconds=0.2)
    w = WorkerProcess(settings, tmp / "worker.log").start()
    yield w
    w.stop()


def trace_ids(spans) -> set[str]:
    return {format(s.get_span_context().trace_id, "032x") for s in spans}


def landed(worker: WorkerProcess, trace_id: str, n: int) -> list[dict]:
    sql = f"SELECT {', '.join(COLUMNS)} FROM {{db}}.events WHERE trace_id = '{trace_id}' ORDER BY ts, event_type"
    wait_for(lambda: len(worker.query(sql)) >= n, 60, what=f"{n} rows of trace {trace_id}")
    time.sleep(0.5)  # a duplicate, if any, would show now
    return [dict(zip(COLUMNS, r)) for r in worker.query(sql)]


def check_rows(rows: list[dict], app: str, tenant: str) -> None:
    """What make_spans() emits: a workflow with an agent, two chats, an eval and a failed tool."""
    assert sorted(r["event_type"] for r in rows) == ["eval", "output", "output", "prompt", "prompt", "tool_call"]
    assert {r["workflow"] for r in rows} == {"support"}
    assert {(r["app"], r["tenant"]) for r in rows} == {(app, tenant)}
    outputs = {r["model"]: r for r in rows if r["event_type"] == "output"}
    gpt = outputs["gpt-4o"]
    assert (gpt["provider"], gpt["response_model"], gpt["status"], gpt["finish_reason"]) == (
        "openai", "gpt-4o-2024-08-06", "ok", "stop")
    assert (gpt["input_tokens"], gpt["output_tokens"]) == (1200, 40)
    assert gpt["content"] == "Refunds take 5 days." and gpt["latency_ms"] > 0
    assert gpt["price_usd"] and gpt["price_usd"] > 0  # priced by the worker from the landed usage
    claude = outputs["claude-sonnet-4"]
    assert (claude["provider"], claude["finish_reason"]) == ("anthropic", "tool_use")  # from gen_ai.system
    assert (claude["input_tokens"], claude["output_tokens"], claude["cache_read_tokens"],
            claude["cache_write_tokens"], claude["reasoning_tokens"]) == (5000, 300, 4096, 512, 120)
    prompts = {r["model"]: r for r in rows if r["event_type"] == "prompt"}
    assert "How long do refunds take?" in prompts["gpt-4o"]["messages"]
    (tool,) = [r for r in rows if r["event_type"] == "tool_call"]
    # (The span's error.type is not kept: the contract's tool_call has no error_type.)
    assert (tool["tool_name"], tool["tool_call_id"], tool["status"]) == ("search_kb", "call_9", "error")
    (evaluation,) = [r for r in rows if r["event_type"] == "eval"]
    assert (evaluation["eval_name"], evaluation["score"], evaluation["passed"]) == ("relevance", 0.9, True)
    assert all(r["parent_span_id"] for r in rows)  # children of the agent span


def test_in_process_exporter_lands_in_clickhouse(landing_worker, provider, client) -> None:
    s = landing_worker.settings
    tp = provider(service="support-svc")
    hook = redaction_hook()
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic, hooks=[hook])
    exporter = LlmpulseSpanExporter(pub, tenant="acme")
    raw = InMemorySpanExporter()
    tp.add_span_processor(exporter.tracker())
    tp.add_span_processor(SimpleSpanProcessor(raw))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        make_spans(tp, client)
        # Personal data in a captured prompt is masked by the SDK hook before it leaves the app.
        with tp.get_tracer("app").start_as_current_span("invoke_agent intake", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "intake"}):
            client.chat.completions.create(model="gpt-4o", messages=[
                {"role": "user", "content": "I am ingrid.holm@nordlys-mail.no, card 4111 1111 1111 1111"}])
        assert pub.flush(30) == 0 and pub.stats.undelivered == 0
    finally:
        pub.close()
    assert exporter.stats.invalid == 0 and exporter.stats.errors == 0 and exporter.stats.rejected == 0

    roots = {sp.name: format(sp.get_span_context().trace_id, "032x") for sp in raw.get_finished_spans()}
    check_rows(landed(landing_worker, roots["invoke_workflow support"], 6), app="support-svc", tenant="acme")

    rows = landed(landing_worker, roots["invoke_agent intake"], 2)
    assert {r["workflow"] for r in rows} == {"intake"}
    (prompt,) = [r for r in rows if r["event_type"] == "prompt"]
    assert "I am [EMAIL], card [CARD]" in prompt["messages"] and "ingrid" not in prompt["messages"]
    assert hook.stats.by_class["email"] == 1 and hook.stats.by_class["card_number"] == 1


def test_official_otlp_exporter_through_gateway_lands_in_clickhouse(landing_worker, provider, client) -> None:
    s = landing_worker.settings
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)
    key = "lpk_test-key-of-globex"
    gw = GatewayThread(pub, config=GatewayConfig(keys=[ApiKey(tenant="globex", hash=hash_key(key))])).start()
    try:
        tp = provider(service="gateway-client")
        raw = InMemorySpanExporter()
        tp.add_span_processor(SimpleSpanProcessor(raw))
        tp.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{gw.url}/v1/traces", compression=Compression.Gzip, timeout=10,
                             headers={"x-api-key": key})))
        make_spans(tp, client)
        assert tp.force_flush(10_000)
        assert pub.flush(30) == 0 and pub.stats.undelivered == 0
        stats = gw.gateway.stats
        assert stats.requests >= 1 and stats.malformed == 0 and stats.invalid == 0 and stats.throttled == 0
    finally:
        gw.stop()
        pub.close()
    (trace_id,) = trace_ids(raw.get_finished_spans())
    check_rows(landed(landing_worker, trace_id, 6), app="gateway-client", tenant="globex")
    # Exactly once: every event id is one physical row.
    assert landing_worker.scalar(
        f"SELECT count() - uniqExact(event_id) FROM {{db}}.events WHERE trace_id = '{trace_id}'") == 0

