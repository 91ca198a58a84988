"""OpenTelemetry in: real instrumentation, real OTLP exporter, our exporter and gateway.

No broker needed: both paths publish into a MemoryPublisher (any EventSink works;
the Kafka → ClickHouse landing reuses these pieces with a KafkaPublisher).

- `opentelemetry-instrumentation-openai-v2` wraps the real `openai` client, which
  talks to a small OpenAI-compatible server started here (stdlib http.server).
- `opentelemetry-exporter-otlp-proto-http` sends spans to the gateway on a free port.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import openai  # noqa: E402

from google.protobuf import json_format  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import Status, StatusCode  # noqa: E402

from llmpulse.ingest.otel_exporter import LlmpulseSpanExporter  # noqa: E402
from llmpulse.ingest.otel_mapping import validate  # noqa: E402
from llmpulse.ingest.otel_gateway_config import ApiKey, hash_key  # noqa: E402
from llmpulse.ingest.otlp_gateway import GatewayConfig, GatewayThread  # noqa: E402
from llmpulse.ingest.publisher import MemoryPublisher  # noqa: E402

CHAT_REPLY = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1_764_000_000,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Refunds take 5 days."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240,
              "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 0}},
}


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        type(self).requests.append(body)
        if body.get("model") == "rate-limited":
            payload, status = {"error": {"message": "slow down", "type": "rate_limit_error"}}, 429
        else:
            payload, status = CHAT_REPLY, 200
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def openai_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(openai_server):
    return openai.OpenAI(base_url=openai_server, api_key="sk-test-not-a-key", max_retries=0)


@pytest.fixture
def provider(monkeypatch):
    """A tracer provider with the openai instrumentation on; content captured on spans."""

    def make(capture: str | None = "SPAN_ONLY", service: str = "support-svc") -> TracerProvider:
        if capture:
            monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", capture)
        else:
            monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
        tp = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment.name": "test"}))
        OpenAIInstrumentor().instrument(tracer_provider=tp)
        made.append(tp)
        return tp

    made: list[TracerProvider] = []
    yield make
    OpenAIInstrumentor().uninstrument()
    for tp in made:
        tp.shutdown()


def agent_span(tp: TracerProvider, name: str):
    return tp.get_tracer("app").start_as_current_span(
        f"invoke_agent {name}", attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name})


def ask(client, model: str = "gpt-4o"):
    return client.chat.completions.create(
        model=model, temperature=0.2,
        messages=[{"role": "system", "content": "You are support."}, {"role": "user", "content": "How long do refunds take?"}])


def by_type(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e["event_type"], []).append(e)
    return out


# -- in-process exporter ----------------------------------------------------------
def test_openai_instrumentation_through_exporter(provider, client):
    tp = provider()
    sink = MemoryPublisher()
    exporter = LlmpulseSpanExporter(sink, tenant="acme")
    raw = InMemorySpanExporter()
    tp.add_span_processor(exporter.tracker())  # agent name known before the chat span ends
    tp.add_span_processor(SimpleSpanProcessor(raw))
    tp.add_span_processor(SimpleSpanProcessor(exporter))  # chat span exported before its parent ends

    with agent_span(tp, "support-bot") as agent:
        reply = ask(client)
    assert reply.choices[0].message.content == "Refunds take 5 days."

    chat_span = next(s for s in raw.get_finished_spans() if s.name.startswith("chat"))
    ev = by_type(sink.events)
    assert set(ev) == {"prompt", "output"}, sink.events
    (prompt,), (output,) = ev["prompt"], ev["output"]
    trace_id = format(agent.get_span_context().trace_id, "032x")
    for e in (prompt, output):
        assert validate(e) == ""
        assert e["trace_id"] == trace_id
        assert e["span_id"] == format(chat_span.get_span_context().span_id, "016x")
        assert e["parent_span_id"] == format(agent.get_span_context().span_id, "016x")
        assert e["workflow"] == "support-bot" and e["attributes"]["gen_ai.agent.name"] == "support-bot"
        assert (e["tenant"], e["app"], e["environment"]) == ("acme", "support-svc", "test")
        assert (e["provider"], e["model"]) == ("openai", "gpt-4o")
    assert prompt["messages"] == [{"role": "system", "content": "You are support."},
                                  {"role": "user", "content": "How long do refunds take?"}]
    assert prompt["params"]["temperature"] == 0.2
    assert output["status"] == "ok" and output["finish_reason"] == "stop"
    assert output["response_model"] == "gpt-4o-2024-08-06"
    assert output["content"] == "Refunds take 5 days."
    assert output["attributes"]["gen_ai.response.id"] == "chatcmpl-abc123"
    assert output["latency_ms"] == pytest.approx((chat_span.end_time - chat_span.start_time) / 1e6)
    assert output["usage"]["input_tokens"] == 1200 and output["usage"]["output_tokens"] == 40
    # The server reports 1024 cached tokens; openai-v2 2.4b0 records them only on its
    # Responses-API path, not for chat completions. Whatever the span carries must land.
    cached = (chat_span.attributes or {}).get("gen_ai.usage.cache_read.input_tokens")
    assert output["usage"].get("cache_read_tokens") == cached
    assert exporter.stats.events == 2 and exporter.stats.invalid == 0


def test_no_content_unless_captured(provider, client):
    tp = provider(capture=None)
    sink = MemoryPublisher()
    tp.add_span_processor(SimpleSpanProcessor(LlmpulseSpanExporter(sink)))
    ask(client)
    ev = by_type(sink.events)
    assert "messages" not in ev["prompt"][0] and "content" not in ev["output"][0]
    assert ev["output"][0]["usage"]["input_tokens"] == 1200
    assert ev["output"][0]["workflow"] == "support-svc"  # no agent span: service.name


def test_openai_error_becomes_error_output(provider, client):
    tp = provider()
    sink = MemoryPublisher()
    tp.add_span_processor(SimpleSpanProcessor(LlmpulseSpanExporter(sink)))
    with pytest.raises(openai.RateLimitError):
        ask(client, model="rate-limited")
    (output,) = by_type(sink.events)["output"]
    assert output["status"] == "error" and "RateLimitError" in output["error_type"]
    assert validate(output) == ""


def test_batch_processor_children_before_parent(provider, client):
    tp = provider()
    sink = MemoryPublisher()
    tp.add_span_processor(BatchSpanProcessor(LlmpulseSpanExporter(sink), schedule_delay_millis=60_000))
    tool = tp.get_tracer("app")
    with agent_span(tp, "billing-agent"):
        ask(client)
        with tool.start_as_current_span("execute_tool lookup_invoice", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_invoice",
                "gen_ai.tool.call.arguments": '{"id": 42}'}):
            pass
    tp.force_flush()  # one batch: chat, tool, then agent; no tracker needed
    assert {e["workflow"] for e in sink.events} == {"billing-agent"}
    (call,) = by_type(sink.events)["tool_call"]
    assert call["tool_name"] == "lookup_invoice" and call["arguments"] == {"id": 42}


class _ExplodingSink(MemoryPublisher):
    def publish(self, event):
        raise RuntimeError("sink bug")


def test_exporter_never_raises(provider, client):
    tp = provider()
    exporter = LlmpulseSpanExporter(_ExplodingSink())
    raw = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(raw))
    ask(client)
    assert exporter.export(raw.get_finished_spans()) == SpanExportResult.FAILURE
    assert exporter.stats.errors == 1 and "sink bug" in exporter.stats.last_error


# -- OTLP/HTTP gateway --------------------------------------------------------------
KEY = "lpk_test-key-of-acme"  # what a client sends; the gateway's config holds only its hash
TEST_KEYS = [ApiKey(id="acme-test", tenant="acme", hash=hash_key(KEY))]


@pytest.fixture
def gateway():
    started: list[GatewayThread] = []

    def make(sink, **config) -> GatewayThread:
        config.setdefault("keys", TEST_KEYS)
        g = GatewayThread(sink, config=GatewayConfig(**config)).start()
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


def post(url: str, body: bytes, ctype: str = "application/x-protobuf", encoding: str | None = None,
         key: str | None = KEY, headers: dict | None = None):
    req = urllib.request.Request(f"{url}/v1/traces", data=body, method="POST", headers={"Content-Type": ctype})
    if encoding:
        req.add_header("Content-Encoding", encoding)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def make_spans(tp: TracerProvider, client) -> None:
    """An agent with a real openai chat, a tool call and an evaluation, as any app would emit."""
    tracer = tp.get_tracer("app")
    with tracer.start_as_current_span("invoke_workflow support", attributes={
            "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "support"}):
        with agent_span(tp, "triage"):
            ask(client)
            with tracer.start_as_current_span("chat claude-sonnet-4", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",  # deprecated provider name
                    "gen_ai.request.model": "claude-sonnet-4", "gen_ai.usage.input_tokens": 5000,
                    "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 4096,
                    "gen_ai.usage.cache_creation.input_tokens": 512, "gen_ai.usage.reasoning.output_tokens": 120,
                    "gen_ai.response.finish_reasons": ["tool_use"]}) as chat:
                chat.add_event("gen_ai.evaluation.result", {
                    "gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.9,
                    "gen_ai.evaluation.score.label": "relevant"})
            with tracer.start_as_current_span("execute_tool search_kb", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search_kb",
                    "gen_ai.tool.call.id": "call_9"}) as tool:
                tool.set_status(Status(StatusCode.ERROR, "index offline"))
                tool.set_attribute("error.type", "KBUnavailable")


def check_gateway_events(events: list[dict]) -> None:
    ev = by_type(events)
    assert sorted(ev) == ["eval", "output", "prompt", "tool_call"], events
    assert len(ev["prompt"]) == 2 and len(ev["output"]) == 2
    assert {e["workflow"] for e in events} == {"support"}
    assert {e["app"] for e in events} == {"gateway-client"}
    assert len({e["trace_id"] for e in events}) == 1
    outputs = {o["model"]: o for o in ev["output"]}
    assert outputs["gpt-4o"]["usage"]["input_tokens"] == 1200
    assert outputs["gpt-4o"]["content"] == "Refunds take 5 days."
    claude = outputs["claude-sonnet-4"]
    assert claude["provider"] == "anthropic" and claude["finish_reason"] == "tool_use"
    assert claude["usage"] == {"input_tokens": 5000, "output_tokens": 300, "cache_read_tokens": 4096,
                               "cache_write_tokens": 512, "reasoning_tokens": 120}
    (tool,) = ev["tool_call"]
    assert (tool["tool_name"], tool["tool_call_id"], tool["status"]) == ("search_kb", "call_9", "error")
    (evaluation,) = ev["eval"]
    assert evaluation["eval_name"] == "relevance" and evaluation["passed"] is True
    assert evaluation["target_span_id"] == claude["span_id"]
    assert all(validate(e) == "" for e in events)


def test_official_otlp_exporter_to_gateway(provider, client, gateway):
    sink = MemoryPublisher()
    gw = gateway(sink)
    tp = provider(service="gateway-client")
    otlp = OTLPSpanExporter(endpoint=f"{gw.url}/v1/traces", compression=Compression.Gzip, timeout=10,
                            headers={"Authorization": f"Bearer {KEY}"})
    tp.add_span_processor(BatchSpanProcessor(otlp))
    make_spans(tp, client)
    assert tp.force_flush(10_000)
    check_gateway_events(sink.events)
    assert gw.gateway.stats.requests >= 1 and gw.gateway.stats.malformed == 0


def _otlp_json(spans) -> bytes:
    # OTLP/JSON: ids are hex, not protobuf JSON's base64.
    doc = json_format.MessageToDict(encode_spans(spans))
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in s:
                        s[key] = base64.b64decode(s[key]).hex()
    return json.dumps(doc).encode()


def test_gateway_json_and_idempotent_retries(provider, client, gateway):
    raw = InMemorySpanExporter()
    tp = provider(service="gateway-client")
    tp.add_span_processor(SimpleSpanProcessor(raw))
    make_spans(tp, client)
    spans = raw.get_finished_spans()

    sink = MemoryPublisher()
    gw = gateway(sink)
    status, headers, body = post(gw.url, _otlp_json(spans), "application/json")
    assert status == 200 and headers["Content-Type"].startswith("application/json"), body
    assert json.loads(body) == {}  # no partial_success: everything mapped
    check_gateway_events(sink.events)

    # A client retry (same spans, protobuf + gzip this time) yields the same event ids.
    first = sorted(e["event_id"] for e in sink.events)
    sink.events.clear()
    status, _, _ = post(gw.url, gzip.compress(encode_spans(spans).SerializeToString()), encoding="gzip")
    assert status == 200
    assert sorted(e["event_id"] for e in sink.events) == first


def test_gateway_size_limit(gateway):
    sink = MemoryPublisher()
    gw = gateway(sink, max_body_bytes=1024)
    assert post(gw.url, b"\x00" * 2048)[0] == 413
    bomb = gzip.compress(b"\x00" * (1 << 20))  # ~1 KB compressed, 1 MiB inflated
    assert len(bomb) < 2048
    assert post(gw.url, bomb, encoding="gzip")[0] == 413
    assert sink.events == [] and gw.gateway.stats.too_large == 2


def test_gateway_malformed(gateway):
    sink = MemoryPublisher()
    gw = gateway(sink)
    assert post(gw.url, b"\xff\xff\xff\xff\xff")[0] == 400
    assert post(gw.url, b"{not json", "application/json")[0] == 400
    assert post(gw.url, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "application/json")[0] == 400
    assert post(gw.url, b"not gzip", encoding="gzip")[0] == 400
    assert post(gw.url, b"x", "text/plain")[0] == 415
    assert gw.gateway.stats.malformed == 4


class _FullSink(MemoryPublisher):
    """Behaves like KafkaPublisher when librdkafka's local queue is full."""

    def publish(self, event):
        self.stats.queue_full += 1
        return False


class _BusySink(MemoryPublisher):
    def pending(self) -> int:
        return 500


def test_gateway_back_pressure(provider, client, gateway):
    raw = InMemorySpanExporter()
    tp = provider()
    tp.add_span_processor(SimpleSpanProcessor(raw))
    ask(client)
    payload = encode_spans(raw.get_finished_spans()).SerializeToString()

    full = gateway(_FullSink(), retry_after_s=3)
    status, headers, _ = post(full.url, payload)
    assert status == 503 and headers["Retry-After"] == "3"
    # Still throttled for Retry-After seconds: refused before reading the body.
    assert post(full.url, payload)[0] == 503
    assert full.gateway.stats.throttled == 2

    busy = gateway(_BusySink(), max_pending=100)
    status, headers, _ = post(busy.url, payload)
    assert status == 503 and "Retry-After" in headers
    assert busy.sink.events == []

    ok = gateway(MemoryPublisher(), max_pending=100)
    assert post(ok.url, payload)[0] == 200 and len(ok.sink.events) == 2
