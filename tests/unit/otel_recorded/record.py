"""Record one instrumentation's spans against the fake provider, as JSON for the unit tests.

For releases that cannot be installed beside the pinned ones (ingest/OTEL.md): in a scratch
venv with that release, `opentelemetry-sdk` and the client,

    python tests/unit/otel_recorded/record.py openllmetry-openai tests/unit/otel_recorded/openllmetry-openai-0.40.14.json

Times are kept relative to each span's start (ns), so the recording is stable.
"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
from fake_provider import FakeProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

lib = sys.argv[1]
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
os.environ.setdefault("TRACELOOP_TRACE_CONTENT", "true")
tp = TracerProvider(); mem = InMemorySpanExporter(); tp.add_span_processor(SimpleSpanProcessor(mem))
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "description": "Find an order",
          "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}}]
ATOOLS = [{"name": "lookup_order", "description": "Find an order", "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}}}]

def instrument():
    if lib == "official-openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as I
    elif lib == "official-genai-openai":
        from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor as I
    elif lib == "official-genai-anthropic":
        from opentelemetry.instrumentation.genai.anthropic import AnthropicInstrumentor as I
    elif lib == "openinference-openai":
        from openinference.instrumentation.openai import OpenAIInstrumentor as I
    elif lib == "openinference-anthropic":
        from openinference.instrumentation.anthropic import AnthropicInstrumentor as I
    elif lib == "openllmetry-openai":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor as I
    elif lib == "openllmetry-anthropic":
        from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor as I
    elif lib == "logfire-openai":  # Logfire's own instrumentation, kept local (nothing is sent to Logfire)
        import logfire
        logfire.configure(send_to_logfire=False, console=False, additional_span_processors=[SimpleSpanProcessor(mem)])
        logfire.instrument_openai()
        return
    else:
        return
    I().instrument(tracer_provider=tp)

instrument()
with FakeProvider() as fp:
    if "anthropic" in lib:
        import anthropic
        c = anthropic.Anthropic(base_url=fp.anthropic_url, api_key="sk-x", max_retries=0)
        for marker in ("", "[filter]", "[tool]"):
            kw = {"tools": ATOOLS} if marker == "[tool]" else {}
            c.messages.create(model="claude-sonnet-4-5", max_tokens=100, system="You are support.",
                              messages=[{"role": "user", "content": f"How long do refunds take? {marker}"}], **kw)
    elif lib.startswith("pydantic-ai"):
        from pydantic_ai import Agent
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider
        from pydantic_ai.models.instrumented import InstrumentationSettings
        ver = int(os.environ.get("PAI_VERSION", "0")) or None
        settings = InstrumentationSettings(tracer_provider=tp, include_content=True, **({"version": ver} if ver else {}))
        model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(base_url=fp.openai_url, api_key="sk-x"))
        agent = Agent(model, name="support")
        agent.instrument = settings
        @agent.tool_plain
        def lookup_order(order_id: str) -> str:
            return "shipped"
        for marker in ("", "[reason]", "[tool]", "[filter]"):
            try:
                agent.run_sync(f"How long do refunds take? {marker}")
            except Exception as e:
                print("run error", marker, type(e).__name__, e, file=sys.stderr)
    else:
        import openai
        c = openai.OpenAI(base_url=fp.openai_url, api_key="sk-x", max_retries=0)
        for marker in ("", "[filter]", "[reason]", "[tool]"):
            kw = {"tools": TOOLS} if marker == "[tool]" else {}
            c.chat.completions.create(model="gpt-4o-mini", temperature=0.2, messages=[
                {"role": "system", "content": "You are support."},
                {"role": "user", "content": f"How long do refunds take? {marker}"}], **kw)
        s = c.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                      messages=[{"role": "user", "content": "How long do refunds take? [reason]"}])
        for _ in s: pass

def val(v):
    return list(v) if isinstance(v, tuple) else v
out = []
tp.force_flush()
if lib.startswith("logfire"):
    import logfire
    logfire.force_flush()
for s in mem.get_finished_spans():
    out.append({"name": s.name, "scope": s.instrumentation_scope.name if s.instrumentation_scope else "",
                "status": s.status.status_code.name, "duration_ns": s.end_time - s.start_time,
                "span_id": format(s.context.span_id, "016x"), "parent_span_id": format(s.parent.span_id, "016x") if s.parent else "",
                "attributes": {k: val(v) for k, v in (s.attributes or {}).items()},
                "events": [{"name": e.name, "offset_ns": e.timestamp - s.start_time,
                            "attributes": {k: val(v) for k, v in (e.attributes or {}).items()}} for e in s.events]})
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(lib, len(out), "spans")
