"""The instrumentations people already use, for real: their spans land with every field.

Each pinned library (pyproject's dev extra) wraps the real `openai` / `anthropic` client or
runs a real pydantic-ai agent against the local fake provider (fake_provider.py: a plain
answer, a content-filter stop, reasoning tokens, a tool call, cached input tokens, streaming).
Spans go out through the official OTLP/HTTP exporter to the real gateway, which maps them and
publishes into a MemoryPublisher; the events it published are checked field by field.
Previous major versions, which cannot be installed beside these, are checked on their recorded
attributes in tests/unit/test_otel_mapping.py (see ingest/OTEL.md).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llmpulse.ingest
from llmpulse.ingest.instrument import CONTENT_ENV
from llmpulse.ingest.otel_gateway_config import ApiKey, hash_key
from llmpulse.ingest.otel_mapping import TOOL_CALLS_ATTR, validate
from llmpulse.ingest.otlp_gateway import GatewayConfig, GatewayThread
from llmpulse.ingest.publisher import MemoryPublisher
from tests.integration import fake_provider as fake
from tests.integration.fake_provider import FakeProvider
from tests.integration.test_no_secret_leaks import read_topic

KEY = "lpk_test-key-of-libraries"
OPENAI_TOOLS = [{"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}}]
ANTHROPIC_TOOLS = [{"name": "lookup_order", "description": "Find an order",
                    "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def provider_api():
    with FakeProvider() as fp:
        yield fp


@pytest.fixture(scope="module")
def gateway():
    sink = MemoryPublisher()
    gw = GatewayThread(sink, config=GatewayConfig(keys=[ApiKey(id="libs", tenant="acme", hash=hash_key(KEY))])).start()
    yield gw, sink
    gw.stop()


class Traced:
    """A tracer provider exporting over OTLP/HTTP to the gateway (and to memory, for span times)."""

    def __init__(self, gateway, service: str) -> None:
        self.gw, self.sink = gateway
        self.tp = TracerProvider(resource=Resource.create({"service.name": service}))
        self.raw = InMemorySpanExporter()
        self.tp.add_span_processor(SimpleSpanProcessor(self.raw))
        self.tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=f"{self.gw.url}/v1/traces", headers={"x-api-key": KEY}, timeout=10)))
        self.cases: dict[str, str] = {}

    @contextmanager
    def case(self, name: str):
        """A root span per case, so each case's events are told apart by trace id."""
        with self.tp.get_tracer("test").start_as_current_span(f"case {name}") as span:
            self.cases[name] = format(span.get_span_context().trace_id, "032x")
            yield

    def landed(self) -> dict[str, dict[str, list[dict]]]:
        """{case: {event_type: [events]}} of what the gateway published; spans by id in `self.spans`."""
        assert self.tp.force_flush(10_000)
        stats = self.gw.gateway.stats
        assert stats.malformed == 0 and stats.rejected_spans == 0, stats
        self.spans = {format(s.get_span_context().span_id, "016x"): s for s in self.raw.get_finished_spans()}
        out: dict[str, dict[str, list[dict]]] = {}
        for name, trace_id in self.cases.items():
            by_type: dict[str, list[dict]] = {}
            for e in self.sink.events:
                if e["trace_id"] == trace_id:
                    assert validate(e) == "", e
                    by_type.setdefault(e["event_type"], []).append(e)
            out[name] = by_type
        return out

    def latency_ms(self, event: dict) -> float:
        s = self.spans[event["span_id"]]
        return (s.end_time - s.start_time) / 1e6


def _instrumentor(name: str):
    if name == "official-openai":
        from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor
        return OpenAIInstrumentor()
    if name == "official-anthropic":
        from opentelemetry.instrumentation.genai.anthropic import AnthropicInstrumentor
        return AnthropicInstrumentor()
    if name == "openinference-openai":
        from openinference.instrumentation.openai import OpenAIInstrumentor
        return OpenAIInstrumentor()
    if name == "openinference-anthropic":
        from openinference.instrumentation.anthropic import AnthropicInstrumentor
        return AnthropicInstrumentor()
    if name == "openllmetry-openai":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
        return OpenAIInstrumentor()
    if name == "openllmetry-anthropic":
        from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
        return AnthropicInstrumentor()
    raise KeyError(name)


@pytest.fixture
def traced(gateway, monkeypatch):
    """traced(library) → Traced, with that instrumentation on (and off again after the test)."""
    # Content on spans, as each library spells it (all of them leave it off by default).
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    monkeypatch.setenv("TRACELOOP_TRACE_CONTENT", "true")
    made = []

    def make(library: str) -> Traced:
        t = Traced(gateway, service=library)
        inst = _instrumentor(library)
        inst.instrument(tracer_provider=t.tp)
        made.append((inst, t))
        return t

    yield make
    for inst, t in made:
        inst.uninstrument()
        t.tp.shutdown()


# What each OpenAI-client instrumentation gives; a field a library does not emit is None.
OPENAI_LIBS = {
    "official-openai": {"stream_reasoning": fake.REASONING_TOKENS, "tool": "tool_calls"},
    "openinference-openai": {"stream_reasoning": fake.REASONING_TOKENS, "tool": "tool_calls"},
    # OpenLLMetry: its streaming path drops the usage details (reasoning tokens), and it
    # reports finish reasons in the conventions' words (`tool_call`).
    "openllmetry-openai": {"stream_reasoning": None, "tool": "tool_call"},
}


def _ask_openai(t: Traced, client: openai.OpenAI) -> None:
    for case in ("plain", "filter", "reason", "tool"):
        with t.case(case):
            client.chat.completions.create(
                model="gpt-4o-mini", temperature=0.2, tools=OPENAI_TOOLS if case == "tool" else openai.omit,
                messages=[{"role": "system", "content": "You are support."},
                          {"role": "user", "content": f"How long do refunds take? [{case}]"}])
    with t.case("stream"):
        for _ in client.chat.completions.create(
                model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "How long do refunds take? [reason]"}]):
            pass


@pytest.mark.parametrize("library", sorted(OPENAI_LIBS))
def test_openai_instrumentations_land_every_field(library, traced, provider_api):
    t = traced(library)
    _ask_openai(t, openai.OpenAI(base_url=provider_api.openai_url, api_key="sk-test", max_retries=0))
    got = t.landed()
    expect = OPENAI_LIBS[library]
    for case, ev in got.items():
        (prompt,), (out,) = ev["prompt"], ev["output"]
        for e in (prompt, out):
            assert (e["tenant"], e["app"], e["provider"], e["model"]) == ("acme", library, "openai", "gpt-4o-mini"), e
        assert out["response_model"] == "gpt-4o-mini-2024-07-18"
        assert out["latency_ms"] == pytest.approx(t.latency_ms(out), abs=0.01) and out["latency_ms"] > 0
        assert out["usage"]["input_tokens"] == fake.PROMPT_TOKENS and out["usage"]["output_tokens"] == fake.COMPLETION_TOKENS
        assert out["usage"]["cache_read_tokens"] == fake.CACHED_TOKENS, (case, out)
        assert prompt["messages"][-1]["content"].startswith("How long do refunds take?")
    plain, filt, reason, tool, stream = (got[c]["output"][0] for c in ("plain", "filter", "reason", "tool", "stream"))
    assert (plain["status"], plain["finish_reason"], plain["content"]) == ("ok", "stop", "Refunds take 5 days.")
    assert "reasoning_tokens" not in plain["usage"]
    assert (filt["status"], filt["finish_reason"]) == ("filtered", "content_filter")
    assert reason["usage"]["reasoning_tokens"] == fake.REASONING_TOKENS
    assert tool["finish_reason"] == expect["tool"] and tool["attributes"][TOOL_CALLS_ATTR] == "lookup_order"
    assert got["tool"]["prompt"][0]["tools_offered"] == ["lookup_order"]
    assert got["plain"]["prompt"][0]["params"]["temperature"] == 0.2
    assert stream["usage"].get("reasoning_tokens") == expect["stream_reasoning"]
    assert got["stream"]["prompt"][0]["params"]["stream"] is True
    assert stream["content"] == "Refunds take 5 days." and stream["finish_reason"] == "stop"
    assert 0 < stream["ttft_ms"] <= stream["latency_ms"]


ANTHROPIC_LIBS = {
    # finish reason as each library reports Anthropic's stop_reason; a stream's output tokens and ttft
    "official-anthropic": {"plain": "stop", "tool": "tool_call", "stream_out": fake.COMPLETION_TOKENS, "ttft": True},
    "openinference-anthropic": {"plain": "end_turn", "tool": "tool_use", "stream_out": fake.COMPLETION_TOKENS, "ttft": False},
    # OpenLLMetry adds message_start's output count (1) to the final one when streaming
    "openllmetry-anthropic": {"plain": "stop", "tool": "tool_call", "stream_out": fake.COMPLETION_TOKENS + 1, "ttft": False},
}


@pytest.mark.parametrize("library", sorted(ANTHROPIC_LIBS))
def test_anthropic_instrumentations_land_every_field(library, traced, provider_api):
    t = traced(library)
    client = anthropic.Anthropic(base_url=provider_api.anthropic_url, api_key="sk-test", max_retries=0)
    for case in ("plain", "filter", "tool"):
        with t.case(case):
            client.messages.create(model="claude-sonnet-4-5", max_tokens=100, system="You are support.",
                                   tools=ANTHROPIC_TOOLS if case == "tool" else anthropic.omit,
                                   messages=[{"role": "user", "content": f"How long do refunds take? [{case}]"}])
    with t.case("stream"):  # (the official one records no ttft through the messages.stream() helper)
        chunks = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, system="You are support.", stream=True,
                                        messages=[{"role": "user", "content": "How long do refunds take?"}])
        assert "".join(c.delta.text for c in chunks if c.type == "content_block_delta") == "Refunds take 5 days."
    got = t.landed()
    expect = ANTHROPIC_LIBS[library]
    (stream_out,) = got.pop("stream")["output"]
    assert (stream_out["model"], stream_out["finish_reason"], stream_out["content"]) == (
        "claude-sonnet-4-5", expect["plain"], "Refunds take 5 days.")
    assert stream_out["usage"]["output_tokens"] == expect["stream_out"]
    assert stream_out["usage"]["cache_read_tokens"] == fake.ANTHROPIC_CACHE_READ
    assert ("ttft_ms" in stream_out) == expect["ttft"]
    for case, ev in got.items():
        (prompt,), (out,) = ev["prompt"], ev["output"]
        for e in (prompt, out):
            assert (e["provider"], e["model"]) == ("anthropic", "claude-sonnet-4-5"), e
        assert out["response_model"] == "claude-sonnet-4-5-20250929"
        assert out["latency_ms"] == pytest.approx(t.latency_ms(out), abs=0.01)
        # input_tokens counts cached tokens too (the contract's rule; Anthropic reports them beside it)
        assert out["usage"] == {"input_tokens": fake.ANTHROPIC_INPUT + fake.ANTHROPIC_CACHE_READ + fake.ANTHROPIC_CACHE_WRITE,
                                "output_tokens": fake.COMPLETION_TOKENS, "cache_read_tokens": fake.ANTHROPIC_CACHE_READ,
                                "cache_write_tokens": fake.ANTHROPIC_CACHE_WRITE}, (case, out)
        assert prompt["params"]["max_tokens"] == 100
        assert [m["role"] for m in prompt["messages"]] == ["system", "user"]
    plain, filt, tool = (got[c]["output"][0] for c in ("plain", "filter", "tool"))
    assert (plain["status"], plain["finish_reason"], plain["content"]) == ("ok", ANTHROPIC_LIBS[library]["plain"], "Refunds take 5 days.")
    assert (filt["status"], filt["finish_reason"]) == ("refusal", "refusal")
    assert tool["finish_reason"] == ANTHROPIC_LIBS[library]["tool"]
    assert tool["attributes"][TOOL_CALLS_ATTR] == "lookup_order" and "Let me look." in tool["content"]
    assert got["tool"]["prompt"][0]["tools_offered"] == ["lookup_order"]


def test_pydantic_ai_agent_lands_every_field(gateway, provider_api):
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.anthropic import AnthropicProvider
    from pydantic_ai.providers.openai import OpenAIProvider

    t = Traced(gateway, service="pydantic-ai-app")
    settings = InstrumentationSettings(tracer_provider=t.tp, include_content=True)
    gpt = Agent(OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(base_url=provider_api.openai_url, api_key="sk-test")),
                name="support")
    gpt.instrument = settings

    @gpt.tool_plain
    def lookup_order(order_id: str) -> str:
        return f"{order_id} shipped"

    claude = Agent(AnthropicModel("claude-sonnet-4-5", provider=AnthropicProvider(
        base_url=provider_api.anthropic_url, api_key="sk-test")), name="claims")
    claude.instrument = settings
    for case in ("plain", "reason", "tool", "filter"):
        with t.case(case):
            try:
                gpt.run_sync(f"How long do refunds take? [{case}]")
            except Exception as exc:  # pydantic-ai raises on a content-filter stop
                assert case == "filter", exc
    with t.case("claude"):
        claude.run_sync("How long do refunds take?")
    got = t.landed()
    t.tp.shutdown()

    for case in ("plain", "reason", "filter"):
        (out,) = got[case]["output"]
        assert (out["workflow"], out["attributes"]["gen_ai.agent.name"]) == ("support", "support")
        assert (out["provider"], out["model"], out["response_model"]) == ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18")
        assert out["usage"]["cache_read_tokens"] == fake.CACHED_TOKENS
        assert out["cost_usd"] > 0  # pydantic-ai's own price, kept for models the worker cannot price
        assert out["latency_ms"] == pytest.approx(t.latency_ms(out), abs=0.01)
    assert got["reason"]["output"][0]["usage"]["reasoning_tokens"] == fake.REASONING_TOKENS  # was 0 (issue 16)
    assert (got["filter"]["output"][0]["status"], got["filter"]["output"][0]["finish_reason"]) == ("filtered", "content_filter")
    assert got["plain"]["prompt"][0]["tools_offered"] == ["lookup_order"]

    first, second = sorted(got["tool"]["output"], key=lambda e: e["ts"])
    assert first["finish_reason"] == "tool_call" and first["attributes"][TOOL_CALLS_ATTR] == "lookup_order"
    assert second["finish_reason"] == "stop"
    (call,) = got["tool"]["tool_call"]
    assert (call["tool_name"], call["tool_call_id"], call["arguments"], call["result"], call["status"]) == (
        "lookup_order", "call_7", fake.TOOL_ARGS, "A-17 shipped", "ok")
    assert call["workflow"] == "support" and call["duration_ms"] == pytest.approx(t.latency_ms(call), abs=0.01)

    (out,) = got["claude"]["output"]
    assert (out["provider"], out["model"], out["workflow"]) == ("anthropic", "claude-sonnet-4-5", "claims")
    assert out["usage"] == {"input_tokens": fake.ANTHROPIC_INPUT + fake.ANTHROPIC_CACHE_READ + fake.ANTHROPIC_CACHE_WRITE,
                            "output_tokens": fake.COMPLETION_TOKENS, "cache_read_tokens": fake.ANTHROPIC_CACHE_READ,
                            "cache_write_tokens": fake.ANTHROPIC_CACHE_WRITE}


# -- llmpulse.ingest.instrument(): the official instrumentations, wired in one line -----------------
@pytest.fixture
def content_env(monkeypatch):
    # instrument(capture_content=...) sets the instrumentations' switch; restore it after the test.
    monkeypatch.setenv(CONTENT_ENV, "NO_CONTENT")


def _call_both(provider_api, marker: str = "") -> None:
    openai.OpenAI(base_url=provider_api.openai_url, api_key="sk-test", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Where is my order? {marker}"}])
    anthropic.Anthropic(base_url=provider_api.anthropic_url, api_key="sk-test", max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": f"Where is my order? {marker}"}])


def test_instrument_wires_both_clients_to_the_exporter(provider_api, content_env):
    sink = MemoryPublisher()
    pulse = llmpulse.ingest.instrument(sink, tenant="acme", app="support-bot", environment="prod", capture_content=True)
    try:
        assert pulse.libraries == ["openai", "anthropic"] and pulse.skipped == {}
        _call_both(provider_api, "[reason]")
        assert pulse.flush()
    finally:
        pulse.shutdown()
    outputs = {e["provider"]: e for e in sink.events if e["event_type"] == "output"}
    prompts = {e["provider"]: e for e in sink.events if e["event_type"] == "prompt"}
    assert set(outputs) == set(prompts) == {"openai", "anthropic"}, sink.events
    for e in sink.events:
        assert validate(e) == "" and (e["tenant"], e["app"], e["environment"]) == ("acme", "support-bot", "prod")
    gpt, claude = outputs["openai"], outputs["anthropic"]
    assert (gpt["model"], gpt["response_model"], gpt["status"], gpt["finish_reason"]) == (
        "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "ok", "stop")
    assert gpt["usage"] == {"input_tokens": fake.PROMPT_TOKENS, "output_tokens": fake.COMPLETION_TOKENS,
                            "cache_read_tokens": fake.CACHED_TOKENS, "reasoning_tokens": fake.REASONING_TOKENS}
    assert (claude["model"], claude["usage"]["cache_write_tokens"]) == ("claude-sonnet-4-5", fake.ANTHROPIC_CACHE_WRITE)
    assert gpt["content"] == claude["content"] == "Refunds take 5 days."
    assert prompts["openai"]["messages"] == [{"role": "user", "content": "Where is my order? [reason]"}]
    assert pulse.exporter.stats.invalid == 0 and pulse.exporter.stats.errors == 0

    # Off again after shutdown: the clients are no longer traced.
    before = len(sink.events)
    _call_both(provider_api)
    assert len(sink.events) == before


def test_instrument_one_library_content_off_by_default(provider_api, content_env):
    sink = MemoryPublisher()
    pulse = llmpulse.ingest.instrument_anthropic(sink)
    try:
        assert pulse.libraries == ["anthropic"]
        _call_both(provider_api, "[tool]")
        pulse.flush()
    finally:
        pulse.shutdown()
    assert {e["provider"] for e in sink.events} == {"anthropic"}  # openai was left alone
    (out,) = [e for e in sink.events if e["event_type"] == "output"]
    assert out["finish_reason"] == "tool_call" and "content" not in out
    (prompt,) = [e for e in sink.events if e["event_type"] == "prompt"]
    assert "messages" not in prompt and "tools_offered" not in prompt  # the definitions are content too


def test_instrument_to_kafka_by_bootstrap_servers(kafka, provider_api, content_env):
    topic = f"llm.events.instrument.{uuid.uuid4().hex[:8]}"
    pulse = llmpulse.ingest.instrument_openai(kafka.bootstrap, topic=topic, tenant="acme")
    try:
        _call_both(provider_api)
        assert pulse.flush()
    finally:
        pulse.shutdown()  # the publisher it made is flushed and closed
    assert pulse.exporter.sink.stats.undelivered == 0
    events = [orjson.loads(m.value()) for m in read_topic(kafka.bootstrap, topic)]
    assert sorted(e["event_type"] for e in events) == ["output", "prompt"]
    assert {(e["tenant"], e["provider"], e["model"]) for e in events} == {("acme", "openai", "gpt-4o-mini")}


def test_instrument_never_raises_for_what_is_missing(monkeypatch, caplog):
    # The official openai instrumentation (and its predecessor) made unimportable.
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.genai.openai", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.openai_v2", None)
    with caplog.at_level(logging.WARNING, logger="llmpulse.instrument"):
        pulse = llmpulse.ingest.instrument(MemoryPublisher(), libraries=["openai", "cohere"])
    try:
        assert pulse.libraries == []
        assert "opentelemetry-instrumentation-genai-openai is not installed" in pulse.skipped["openai"]
        assert "unknown library" in pulse.skipped["cohere"]
        assert "llmpulse[instrument]" in caplog.text and "cohere" in caplog.text
    finally:
        pulse.shutdown()


# -- JavaScript: the same libraries' Node.js packages (tests/js, pinned; `./dev setup` installs them) --
JS = Path(__file__).resolve().parents[1] / "js"

# Per library: finish reasons as it reports them, and what it leaves out (None: not sent).
JS_OPENAI = {
    "official-openai": {"tool": "tool_calls", "cache": None, "reasoning": None, "content": False},
    "openinference-openai": {"tool": "tool_calls", "cache": fake.CACHED_TOKENS, "reasoning": fake.REASONING_TOKENS, "content": True},
    "openllmetry-openai": {"tool": "tool_call", "cache": None, "reasoning": None, "content": True},
}
JS_ANTHROPIC = {
    "openinference-anthropic": {"plain": "end_turn", "tool": "tool_use"},
    "openllmetry-anthropic": {"plain": "stop", "tool": "tool_call"},
    "anthropic-sdk": {"plain": "end_turn", "tool": "tool_use"},  # the SDK's own spans
}


def run_js(library: str, provider_api, gateway) -> dict[str, str]:
    """Run tests/js/emit_spans.js; {case: trace id}."""
    assert (JS / "node_modules").is_dir(), "tests/js/node_modules is missing: run ./dev setup (npm ci in tests/js)"
    gw, _ = gateway
    proc = subprocess.run(["node", str(JS / "emit_spans.js"), library, provider_api.anthropic_url, gw.url, KEY],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def landed_by_case(cases: dict[str, str], gateway) -> dict[str, dict[str, list[dict]]]:
    _, sink = gateway
    out: dict[str, dict[str, list[dict]]] = {}
    for name, trace_id in cases.items():
        for e in sink.events:
            if e["trace_id"] == trace_id:
                assert validate(e) == "", e
                out.setdefault(name, {}).setdefault(e["event_type"], []).append(e)
    return out


@pytest.mark.parametrize("library", sorted(JS_OPENAI))
def test_js_openai_instrumentations_land(library, provider_api, gateway):
    got = landed_by_case(run_js(library, provider_api, gateway), gateway)
    expect = JS_OPENAI[library]
    assert set(got) == {"plain", "filter", "reason", "tool", "stream"}, got
    for case, ev in got.items():
        (prompt,), (out,) = ev["prompt"], ev["output"]
        assert (out["tenant"], out["provider"], out["model"], prompt["model"]) == ("acme", "openai", "gpt-4o-mini", "gpt-4o-mini")
        assert out["latency_ms"] > 0 and out["finish_reason"]
    plain, filt, reason, tool = (got[c]["output"][0] for c in ("plain", "filter", "reason", "tool"))
    assert (plain["status"], plain["finish_reason"], plain["response_model"]) == ("ok", "stop", "gpt-4o-mini-2024-07-18")
    assert plain["usage"]["input_tokens"] == fake.PROMPT_TOKENS and plain["usage"]["output_tokens"] == fake.COMPLETION_TOKENS
    assert plain["usage"].get("cache_read_tokens") == expect["cache"]
    assert (filt["status"], filt["finish_reason"]) == ("filtered", "content_filter")
    assert reason["usage"].get("reasoning_tokens") == expect["reasoning"]
    assert tool["finish_reason"] == expect["tool"]
    assert ("content" in plain) == expect["content"]
    if expect["content"]:
        assert plain["content"] == "Refunds take 5 days." and tool["attributes"][TOOL_CALLS_ATTR] == "lookup_order"
        assert got["tool"]["prompt"][0]["tools_offered"] == ["lookup_order"]


@pytest.mark.parametrize("library", sorted(JS_ANTHROPIC))
def test_js_anthropic_instrumentations_land(library, provider_api, gateway):
    got = landed_by_case(run_js(library, provider_api, gateway), gateway)
    assert set(got) == {"plain", "filter", "tool"}, got
    for case, ev in got.items():
        (out,) = ev["output"]  # one output per call: the SDK's own tracing is off unless it is the library
        assert (out["provider"], out["model"], out["response_model"]) == ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929")
        assert out["usage"] == {"input_tokens": fake.ANTHROPIC_INPUT + fake.ANTHROPIC_CACHE_READ + fake.ANTHROPIC_CACHE_WRITE,
                                "output_tokens": fake.COMPLETION_TOKENS, "cache_read_tokens": fake.ANTHROPIC_CACHE_READ,
                                "cache_write_tokens": fake.ANTHROPIC_CACHE_WRITE}, (case, out)
    plain, filt, tool = (got[c]["output"][0] for c in ("plain", "filter", "tool"))
    assert (plain["status"], plain["finish_reason"]) == ("ok", JS_ANTHROPIC[library]["plain"])
    assert (filt["status"], filt["finish_reason"]) == ("refusal", "refusal")
    assert tool["finish_reason"] == JS_ANTHROPIC[library]["tool"]


# -- all the way down: gateway → Kafka → worker → ClickHouse, for the fields issue 16 found lost -----
ROW = ("event_type", "app", "workflow", "model", "response_model", "status", "finish_reason", "input_tokens",
       "cache_read_tokens", "reasoning_tokens", "cost_usd", "price_usd", "tool_name", "ttft_ms", "latency_ms")


def test_library_spans_land_in_clickhouse(kafka, tmp_path, provider_api, monkeypatch):
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from llmpulse.ingest import KafkaPublisher
    from llmpulse.testing import WorkerProcess, isolated_settings, wait_for

    settings = isolated_settings(kafka.bootstrap, tmp_path / "state", batch_max_seconds=0.2)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    pub = KafkaPublisher(settings.kafka_bootstrap, settings.events_topic)
    gw = GatewayThread(pub, config=GatewayConfig(keys=[ApiKey(id="e2e", tenant="acme", hash=hash_key(KEY))])).start()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "NO_CONTENT")
    try:
        t = Traced((gw, None), service="oi-app")
        inst = _instrumentor("openinference-openai")
        inst.instrument(tracer_provider=t.tp)
        try:
            client = openai.OpenAI(base_url=provider_api.openai_url, api_key="sk-test", max_retries=0)
            with t.case("oi-filter"):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "[filter]"}])
            with t.case("oi-stream"):
                for _ in client.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                                         messages=[{"role": "user", "content": "[reason]"}]):
                    pass
        finally:
            inst.uninstrument()
        agent = Agent(OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(base_url=provider_api.openai_url, api_key="sk-test")),
                      name="support")
        agent.instrument = InstrumentationSettings(tracer_provider=t.tp)

        @agent.tool_plain
        def lookup_order(order_id: str) -> str:
            return "shipped"

        with t.case("pai-reason"):
            agent.run_sync("[reason]")
        with t.case("pai-tool"):
            agent.run_sync("[tool]")
        assert t.tp.force_flush(10_000)
        t.tp.shutdown()
        assert pub.flush(30) == 0 and gw.gateway.stats.rejected_spans == 0

        def rows(case: str, n: int) -> list[dict]:
            sql = f"SELECT {', '.join(ROW)} FROM {{db}}.events WHERE trace_id = '{t.cases[case]}' ORDER BY ts, event_type"
            wait_for(lambda: len(worker.query(sql)) >= n, 60, what=f"{n} rows of {case}")
            return [dict(zip(ROW, r)) for r in worker.query(sql)]

        (_, filt) = rows("oi-filter", 2)
        assert (filt["model"], filt["response_model"], filt["status"], filt["finish_reason"]) == (
            "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "filtered", "content_filter")
        assert filt["cache_read_tokens"] == fake.CACHED_TOKENS and filt["price_usd"] > 0
        (_, stream) = rows("oi-stream", 2)
        assert stream["reasoning_tokens"] == fake.REASONING_TOKENS and 0 < stream["ttft_ms"] <= stream["latency_ms"]
        (_, reason) = rows("pai-reason", 2)
        assert (reason["workflow"], reason["reasoning_tokens"]) == ("support", fake.REASONING_TOKENS)
        assert reason["cost_usd"] > 0 and reason["price_usd"] > 0
        tool_rows = rows("pai-tool", 5)
        assert [r["tool_name"] for r in tool_rows if r["event_type"] == "tool_call"] == ["lookup_order"]
        assert {r["app"] for r in tool_rows} == {"oi-app"}
    finally:
        gw.stop()
        pub.close()
        worker.stop()


# -- Logfire's own client instrumentation (in a child process: logfire.configure() sets the
# process-wide tracer provider, which the other tests must not inherit) ------------------------
LOGFIRE_APP = r"""
import json, sys
import anthropic, logfire, openai
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
provider_url, gateway_url, key = sys.argv[1:4]
logfire.configure(send_to_logfire=False, console=False, service_name="logfire-app",
                  additional_span_processors=[BatchSpanProcessor(OTLPSpanExporter(
                      endpoint=gateway_url + "/v1/traces", headers={"x-api-key": key}))])
oc = openai.OpenAI(base_url=provider_url + "/v1", api_key="sk-test", max_retries=0)
ac = anthropic.Anthropic(base_url=provider_url, api_key="sk-test", max_retries=0)
logfire.instrument_openai(oc)
logfire.instrument_anthropic(ac)
cases = {}
def case(name, call):
    with trace.get_tracer("test").start_as_current_span("case " + name) as span:
        cases[name] = format(span.get_span_context().trace_id, "032x")
        call()
for c in ("plain", "filter", "reason"):
    case(c, lambda: oc.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"Refunds? [{c}]"}]))
case("stream", lambda: list(oc.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                                       messages=[{"role": "user", "content": "Refunds? [reason]"}])))
case("claude", lambda: ac.messages.create(model="claude-sonnet-4-5", max_tokens=50,
                                          messages=[{"role": "user", "content": "Refunds? [tool]"}]))
logfire.force_flush()
print(json.dumps(cases))
"""


def test_logfire_client_instrumentation_lands(provider_api, gateway):
    gw, _ = gateway
    proc = subprocess.run([sys.executable, "-c", LOGFIRE_APP, provider_api.anthropic_url, gw.url, KEY],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = landed_by_case(json.loads(proc.stdout.strip().splitlines()[-1]), gateway)
    for case, ev in got.items():
        (prompt,), (out,) = ev["prompt"], ev["output"]  # a stream too: one prompt, one output
        assert out["app"] == "logfire-app" and out["cost_usd"] > 0
        assert out["latency_ms"] > 0
    plain, filt, reason, stream = (got[c]["output"][0] for c in ("plain", "filter", "reason", "stream"))
    assert (plain["model"], plain["response_model"], plain["finish_reason"]) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "stop")
    assert plain["usage"]["cache_read_tokens"] == fake.CACHED_TOKENS and filt["status"] == "filtered"
    # Logfire keeps reasoning tokens only inside gen_ai.usage.raw (the provider's usage object)
    assert reason["usage"]["reasoning_tokens"] == stream["usage"]["reasoning_tokens"] == fake.REASONING_TOKENS
    assert stream["finish_reason"] == "stop" and stream["content"] == "Refunds take 5 days."
    claude = got["claude"]["output"][0]
    assert (claude["model"], claude["finish_reason"], claude["usage"]["cache_write_tokens"]) == (
        "claude-sonnet-4-5", "tool_use", fake.ANTHROPIC_CACHE_WRITE)
