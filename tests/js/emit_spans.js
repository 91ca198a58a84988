// One JavaScript instrumentation around the real client, against the fake provider, exporting
// with the official OTLP/HTTP (protobuf) exporter to the gateway. Used by
// tests/integration/test_otel_libraries.py:
//   node emit_spans.js LIBRARY PROVIDER_URL GATEWAY_URL API_KEY
// prints {"case": "trace id", ...} for the calls it made (one root span per case).
// With GATEWAY_URL "-" it records instead: the spans go as JSON to the file API_KEY names
// (how tests/unit/otel_recorded/js-*.json were made, in a scratch project with older releases).
const [library, providerUrl, gatewayUrl, apiKey] = process.argv.slice(2);
const recording = gatewayUrl === "-";
process.env.ANTHROPIC_OPEN_TELEMETRY = library === "anthropic-sdk" ? "true" : "false"; // the SDK's own spans
const api = require("@opentelemetry/api");
const { BasicTracerProvider, BatchSpanProcessor, InMemorySpanExporter } = require("@opentelemetry/sdk-trace-base");

const exporter = recording ? new InMemorySpanExporter()
  : new (require("@opentelemetry/exporter-trace-otlp-proto").OTLPTraceExporter)({
    url: `${gatewayUrl}/v1/traces`, headers: { "x-api-key": apiKey } });
const provider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(exporter)] });
api.trace.setGlobalTracerProvider(provider);
// Root spans need a context manager to hold the current span across awaits.
const { AsyncLocalStorageContextManager } = require("@opentelemetry/context-async-hooks");
api.context.setGlobalContextManager(new AsyncLocalStorageContextManager());

const INSTRUMENTATIONS = {
  "official-openai": () => new (require("@opentelemetry/instrumentation-openai").OpenAIInstrumentation)({ captureMessageContent: true }),
  "openinference-openai": () => new (require("@arizeai/openinference-instrumentation-openai").OpenAIInstrumentation)(),
  "openllmetry-openai": () => new (require("@traceloop/instrumentation-openai").OpenAIInstrumentation)({ traceContent: true }),
  "openinference-anthropic": () => new (require("@arizeai/openinference-instrumentation-anthropic").AnthropicInstrumentation)(),
  "openllmetry-anthropic": () => new (require("@traceloop/instrumentation-anthropic").AnthropicInstrumentation)({ traceContent: true }),
  "anthropic-sdk": () => null,
};
const inst = INSTRUMENTATIONS[library]();
const isAnthropic = library.endsWith("anthropic") || library === "anthropic-sdk";
// OpenLLMetry's anthropic instrumentation supports the 0.x SDK only.
const mod = require(isAnthropic ? (library === "openllmetry-anthropic" ? "anthropic-sdk-080" : "@anthropic-ai/sdk") : "openai");
if (inst) {
  inst.setTracerProvider(provider);
  if (inst.setMeterProvider) inst.setMeterProvider(api.metrics.getMeterProvider()); // the official one records metrics
  // The client was required after the instrumentation was made, but patch it explicitly too:
  // require hooks do not see a module loaded through a path alias.
  if (inst.manuallyInstrument) inst.manuallyInstrument(library === "openllmetry-openai" ? mod.OpenAI : mod);
  inst.enable();
}

const tracer = api.trace.getTracer("emit_spans");
const cases = {};
async function traced(name, fn) {
  await tracer.startActiveSpan(`case ${name}`, async (span) => {
    cases[name] = span.spanContext().traceId;
    try { await fn(); } finally { span.end(); }
  });
}
const OPENAI_TOOLS = [{ type: "function", function: { name: "lookup_order", description: "Find an order",
  parameters: { type: "object", properties: { order_id: { type: "string" } } } } }];
const ANTHROPIC_TOOLS = [{ name: "lookup_order", description: "Find an order",
  input_schema: { type: "object", properties: { order_id: { type: "string" } } } }];

function writeRecording(spans, file) {
  // The format tests/unit/test_otel_mapping.py reads; times relative to each span's start.
  const ns = (t) => t[0] * 1e9 + t[1];
  const id = (s) => s.spanContext().spanId;
  const out = spans.filter((s) => !s.name.startsWith("case ")).map((s) => ({
    name: s.name, scope: (s.instrumentationScope || {}).name || "", status: ["UNSET", "OK", "ERROR"][s.status.code],
    duration_ns: ns(s.endTime) - ns(s.startTime), span_id: id(s), attributes: s.attributes,
    events: s.events.map((e) => ({ name: e.name, offset_ns: ns(e.time) - ns(s.startTime), attributes: e.attributes || {} })),
  }));
  require("fs").writeFileSync(file, JSON.stringify(out, null, 1));
}

(async () => {
  if (isAnthropic) {
    const Anthropic = mod.Anthropic || mod.default;
    const client = new Anthropic({ baseURL: providerUrl, apiKey: "sk-test", maxRetries: 0 });
    for (const c of ["plain", "filter", "tool"]) {
      await traced(c, () => client.messages.create({
        model: "claude-sonnet-4-5", max_tokens: 100, system: "You are support.",
        messages: [{ role: "user", content: `How long do refunds take? [${c}]` }],
        ...(c === "tool" ? { tools: ANTHROPIC_TOOLS } : {}) }));
    }
  } else {
    const OpenAI = mod.OpenAI || mod.default;
    const client = new OpenAI({ baseURL: `${providerUrl}/v1`, apiKey: "sk-test", maxRetries: 0 });
    for (const c of ["plain", "filter", "reason", "tool"]) {
      await traced(c, () => client.chat.completions.create({
        model: "gpt-4o-mini", temperature: 0.2,
        messages: [{ role: "system", content: "You are support." }, { role: "user", content: `How long do refunds take? [${c}]` }],
        ...(c === "tool" ? { tools: OPENAI_TOOLS } : {}) }));
    }
    await traced("stream", async () => {
      const stream = await client.chat.completions.create({ model: "gpt-4o-mini", stream: true,
        stream_options: { include_usage: true }, messages: [{ role: "user", content: "How long do refunds take? [reason]" }] });
      for await (const _ of stream) { /* drain */ }
    });
  }
  await provider.forceFlush();
  if (recording) writeRecording(exporter.getFinishedSpans(), apiKey);
  await provider.shutdown();
  process.stdout.write(JSON.stringify(cases));
})().catch((err) => { console.error(err); process.exit(1); });
