"""The OTLP gateway lets no one in and tells the truth, shown with the official OTLP/HTTP exporter.

- no key or an unknown key → 401, which the exporter reports as a failure without retrying;
- a key's tenant wins over whatever the resource or span claims (counted), unless the key is
  trusted; keys rotate by editing the keys file (or SIGHUP), without a restart;
- a burst past a key's rate limit → 429 + Retry-After, which the exporter honours;
- spans past a limit (a 1.5 MB prompt, 300 levels of nesting, a zero clock, the year 2099) are counted in
  `partial_success` with the reason, never a silent 200;
- native TLS; and a property test: no body makes the request parser answer 500.

Spans go into a MemoryPublisher; only the CLI test needs the broker.
"""

from __future__ import annotations

import gzip
import http.client
import urllib.error
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmpulse.ingest.otel_gateway_config import ApiKey, GatewayConfig, RateLimit, TlsConfig, hash_key, key_line
from llmpulse.ingest.otel_mapping import validate
from llmpulse.ingest.otlp_gateway import GatewayThread
from llmpulse.ingest.publisher import MemoryPublisher
from llmpulse.processors.validate import Limits
from llmpulse.testing import free_port, wait_for
from tests.integration.test_otel import post as _post

ACME, GLOBEX, COLLECTOR = "lpk_acme-key", "lpk_globex-key", "lpk_collector-key"
KEYS = [ApiKey(id="acme-1", tenant="acme", hash=hash_key(ACME)),
        ApiKey(id="globex-1", tenant="globex", hash=hash_key(GLOBEX)),
        ApiKey(id="edge", tenant="default", hash=hash_key(COLLECTOR), trusted=True)]


@pytest.fixture
def gateway():
    started: list[GatewayThread] = []

    def make(sink=None, **config) -> GatewayThread:
        config.setdefault("keys", KEYS)
        g = GatewayThread(sink if sink is not None else MemoryPublisher(), config=GatewayConfig(**config)).start()
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


def genai_spans(resource: dict | None = None, *specs: dict) -> list:
    """Finished SDK spans: one chat span per spec (its attributes), under one resource."""
    tp = TracerProvider(resource=Resource.create({"service.name": "billing-svc", **(resource or {})}))
    raw = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(raw))
    tracer = tp.get_tracer("app")
    with tracer.start_as_current_span("invoke_agent billing", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "billing"}):
        for attrs in specs or ({},):
            op = attrs.get("gen_ai.operation.name", "chat")
            with tracer.start_as_current_span(f"{op} gpt-4o", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100,
                    "gen_ai.usage.output_tokens": 10, **attrs}):
                pass
    tp.shutdown()
    return list(raw.get_finished_spans())


def post(url: str, body: bytes, ctype: str = "application/x-protobuf", **kw):
    kw.setdefault("key", ACME)
    return _post(url, body, ctype, **kw)


def exporter(gw: GatewayThread, key: str | None = None, header: str = "authorization", **kw) -> OTLPSpanExporter:
    headers = {} if key is None else {header: f"Bearer {key}" if header == "authorization" else key}
    return OTLPSpanExporter(endpoint=f"{gw.url}/v1/traces", headers=headers, timeout=kw.pop("timeout", 10), **kw)


def response(body: bytes) -> ExportTraceServiceResponse:
    resp = ExportTraceServiceResponse()
    resp.ParseFromString(body)
    return resp


# -- who gets in --------------------------------------------------------------------------------
def test_no_key_or_an_unknown_key_is_401_and_not_retried(gateway):
    gw = gateway()
    spans = genai_spans()
    assert exporter(gw).export(spans) == SpanExportResult.FAILURE
    assert exporter(gw, "lpk_guessed").export(spans) == SpanExportResult.FAILURE
    assert exporter(gw, hash_key(ACME)).export(spans) == SpanExportResult.FAILURE  # the hash is not the key
    assert gw.gateway.stats.unauthorized == 3 and gw.gateway.stats.requests == 3  # 401 is permanent: no retries
    status, headers, body = post(gw.url, b"", key=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and b"API key required" in body
    status, _, body = post(gw.url, b"", "application/json", key="lpk_guessed")
    assert status == 401 and json.loads(body)["message"].startswith("unknown API key")
    assert post(gw.url, b"", key=None, headers={"Authorization": f"Basic {ACME}"})[0] == 401
    assert gw.sink.events == []


def test_the_key_decides_the_tenant_whatever_the_spans_claim(gateway, monkeypatch):
    gw = gateway()
    spans = genai_spans({"llmpulse.tenant": "globex"}, {}, {"llmpulse.tenant": "initech"})
    assert exporter(gw, ACME).export(spans) == SpanExportResult.SUCCESS
    events = gw.sink.events
    assert len(events) == 4 and {e["tenant"] for e in events} == {"acme"}
    assert all(validate(e) == "" for e in events)
    stats = gw.gateway.stats
    assert stats.tenant_overridden == 2 and stats.rejected_spans == 0
    assert gw.gateway.keys.callers()["acme-1"].stats.tenant_overridden == 2

    # The same through the environment, as OTEL_EXPORTER_OTLP_HEADERS configures any SDK.
    gw.sink.events.clear()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", f"x-api-key={GLOBEX}")
    env_exporter = OTLPSpanExporter(endpoint=f"{gw.url}/v1/traces", timeout=10)
    assert env_exporter.export(spans) == SpanExportResult.SUCCESS
    assert {e["tenant"] for e in gw.sink.events} == {"globex"}
    assert stats.tenant_overridden == 3  # resource said globex: only the initech span lied


def test_a_trusted_collector_keeps_the_resource_tenant(gateway):
    gw = gateway()
    assert exporter(gw, COLLECTOR).export(genai_spans({"llmpulse.tenant": "globex"})) == SpanExportResult.SUCCESS
    assert exporter(gw, COLLECTOR).export(genai_spans()) == SpanExportResult.SUCCESS
    assert [e["tenant"] for e in gw.sink.events] == ["globex", "globex", "default", "default"]
    assert gw.gateway.stats.tenant_overridden == 0


def test_keys_rotate_by_editing_the_file_without_a_restart(gateway, tmp_path):
    keys = tmp_path / "otlp-keys.yaml"
    old, new = "lpk_old-acme-key", "lpk_new-acme-key"
    keys.write_text(key_line(old, "acme", "acme-2026-11") + "\n")
    gw = gateway(keys=[], keys_file=keys, keys_check_s=0.2)
    spans = genai_spans()
    assert exporter(gw, old).export(spans) == SpanExportResult.SUCCESS
    assert exporter(gw, new).export(spans) == SpanExportResult.FAILURE

    # Step 1: the new key is added beside the old one; both work while clients move over.
    with open(keys, "a") as f:
        f.write(key_line(new, "acme", "acme-2026-12") + "\n")
    wait_for(lambda: post(gw.url, b"", key=new)[0] == 200, 5, what="the new key to be accepted")
    assert exporter(gw, old).export(spans) == SpanExportResult.SUCCESS
    assert exporter(gw, new).export(spans) == SpanExportResult.SUCCESS
    # Step 2: the old key is removed.
    keys.write_text(key_line(new, "acme", "acme-2026-12") + "\n")
    wait_for(lambda: post(gw.url, b"", key=old)[0] == 401, 5, what="the old key to be refused")
    assert exporter(gw, old).export(spans) == SpanExportResult.FAILURE
    assert exporter(gw, new).export(spans) == SpanExportResult.SUCCESS
    # A broken edit keeps the keys in force rather than locking everyone out.
    keys.write_text("- {id: oops, tenant: acme, hash: 'paste the key here'}\n")
    wait_for(lambda: post(gw.url, b"", key=new)[0] == 200 and gw.gateway.keys.reload_errors >= 1, 5,
             what="the broken file to be seen (at a request)")
    assert exporter(gw, new).export(spans) == SpanExportResult.SUCCESS
    assert {e["tenant"] for e in gw.sink.events} == {"acme"}


# -- how much ----------------------------------------------------------------------------------
def test_a_burst_past_the_rate_limit_gets_429_and_retry_after(gateway):
    limited = ApiKey(id="acme-limited", tenant="acme", hash=hash_key(ACME),
                     rate_limit=RateLimit(spans_per_second=2, burst=4))
    gw = gateway(keys=[limited, KEYS[1]])
    payload = encode_spans(genai_spans(None, {}, {}, {})).SerializeToString()  # 4 spans: agent + 3 chats
    assert post(gw.url, payload)[0] == 200
    status, headers, body = post(gw.url, payload)
    assert status == 429 and headers["Retry-After"] == "2", body  # 4 spans, refilled at 2 a second
    assert b"acme-limited" in body
    assert post(gw.url, payload, key=GLOBEX)[0] == 200  # the limit is per key
    stats = gw.gateway.stats
    assert stats.rate_limited == 1 and gw.gateway.keys.callers()["acme-limited"].stats.rate_limited == 1

    # The official exporter retries a 429 after Retry-After and gets through.
    started = time.monotonic()
    assert exporter(gw, ACME).export(genai_spans(None, {}, {}, {})) == SpanExportResult.SUCCESS
    assert time.monotonic() - started >= 1.0 and stats.rate_limited == 2
    # One that cannot wait that long reports the failure.
    assert exporter(gw, ACME, timeout=0.5).export(genai_spans(None, {}, {}, {})) == SpanExportResult.FAILURE


def test_a_request_rate_limit_refuses_before_reading_the_body(gateway):
    key = ApiKey(id="slow", tenant="acme", hash=hash_key(ACME), rate_limit=RateLimit(requests_per_second=1, burst=2))
    gw = gateway(keys=[key])
    codes = [post(gw.url, b"\xff" * 100)[0] for _ in range(4)]  # not even protobuf
    assert codes == [400, 400, 429, 429]
    assert gw.gateway.stats.malformed == 2  # the refused bodies were never parsed


# -- what is said about the spans ------------------------------------------------------------
def _deep_json(depth: int) -> str:
    return "{\"a\": " * depth + "1" + "}" * depth


def test_rejected_spans_are_reported_in_partial_success(gateway):
    gw = gateway()
    prompt = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "x" * 1_500_000}]}])
    spans = genai_spans(
        None,
        {},  # a good chat
        {"gen_ai.input.messages": prompt},  # a 1.5 MB prompt
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup",
         "gen_ai.tool.call.arguments": _deep_json(300)},  # 300 levels of nesting
    )
    payload = encode_spans(spans).SerializeToString()
    status, _, body = post(gw.url, payload)
    assert status == 200
    ps = response(body).partial_success
    assert ps.rejected_spans == 2
    assert "2 spans rejected" in ps.error_message
    assert "value_too_large" in ps.error_message and "gen_ai.input.messages" in ps.error_message
    assert "too_deep" in ps.error_message and "arguments" in ps.error_message
    stats = gw.gateway.stats
    assert stats.rejected_by_reason == {"value_too_large": 1, "too_deep": 1}
    assert gw.gateway.keys.callers()["acme-1"].stats.rejected_spans == 2
    # Only the good span's events were published, and none of the rejected ones.
    good_ids = {e["span_id"] for e in gw.sink.events}
    assert len(gw.sink.events) == 2 and len(good_ids) == 1

    # OTLP/JSON says the same.
    gw.sink.events.clear()
    from google.protobuf import json_format

    doc = json_format.MessageToDict(encode_spans(spans))
    import base64

    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64decode(s[k]).hex()
    status, _, body = post(gw.url, json.dumps(doc).encode(), "application/json")
    assert status == 200 and json.loads(body)["partialSuccess"]["rejectedSpans"] == "2"

    # The official exporter treats a partial success as delivered; the gateway counted it.
    assert exporter(gw, ACME).export(spans) == SpanExportResult.SUCCESS
    assert stats.rejected_spans == 6 and stats.rejected_by_reason == {"value_too_large": 3, "too_deep": 3}


def test_spans_with_a_zero_clock_or_dated_2099_are_rejected(gateway):
    """The worker's own event-time bounds, applied at the door (Limits.max_future_seconds)."""
    gw = gateway()
    req = encode_spans(genai_spans(None, {}, {}))
    chat1, chat2 = [s for s in req.resource_spans[0].scope_spans[0].spans if s.name.startswith("chat")]
    chat1.start_time_unix_nano, chat1.end_time_unix_nano = 0, 0
    chat2.start_time_unix_nano = chat2.end_time_unix_nano = 4_070_000_000 * 10**9  # 2098-12
    status, _, body = post(gw.url, req.SerializeToString())
    ps = response(body).partial_success
    assert status == 200 and ps.rejected_spans == 2, ps
    assert "invalid x1" in ps.error_message and "between 2000 and 2100" in ps.error_message
    assert "ts_out_of_bounds x1" in ps.error_message and "max_future_seconds" in ps.error_message
    assert gw.sink.events == [] and gw.gateway.stats.invalid == 2


def test_nesting_past_the_protobuf_limit_is_a_400(gateway):
    gw = gateway()
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id = "chat m", b"\x01" * 16, b"\x02" * 8
    kv = span.attributes.add()
    kv.key, value = "deep", kv.value
    for _ in range(300):
        inner = value.kvlist_value.values.add()
        inner.key, value = "a", inner.value
    value.string_value = "end"
    status, _, body = post(gw.url, req.SerializeToString())
    assert status == 400 and b"nesting deeper" in body


def test_sink_refusals_are_reported(gateway):
    class Refusing(MemoryPublisher):
        def publish(self, event):
            self.stats.last_error = "produce: KafkaException: MSG_SIZE_TOO_LARGE"
            return False

    gw = gateway(Refusing())
    status, _, body = post(gw.url, encode_spans(genai_spans()).SerializeToString())
    ps = response(body).partial_success
    assert status == 200 and ps.rejected_spans == 1 and "sink_refused" in ps.error_message
    assert "MSG_SIZE_TOO_LARGE" in ps.error_message


def test_stats_need_a_key_and_show_only_the_callers_tenant(gateway):
    import urllib.request

    gw = gateway()
    post(gw.url, encode_spans(genai_spans({"llmpulse.tenant": "globex"})).SerializeToString())
    post(gw.url, b"", key="lpk_guessed")

    def stats(key: str | None):
        req = urllib.request.Request(f"{gw.url}/stats", headers={"x-api-key": key} if key else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, None

    assert stats(None)[0] == 401 and stats("lpk_guessed")[0] == 401
    status, own = stats(ACME)
    assert status == 200 and set(own["keys"]) == {"acme-1"}
    assert own["keys"]["acme-1"]["tenant_overridden"] == 1 and own["unauthorized"] == 3
    assert (own["requests"], own["keys_loaded"], own["rejected_spans"]) == (2, 3, 0)
    assert set(stats(COLLECTOR)[1]["keys"]) == {"acme-1", "globex-1", "edge"}  # a trusted key sees all


# -- TLS -------------------------------------------------------------------------------------
def test_native_tls(gateway, tmp_path, monkeypatch):
    # requests lets these variables override the exporter's certificate_file
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    gw = gateway(tls=TlsConfig(cert_file=cert, key_file=key))
    assert gw.url.startswith("https://")
    assert exporter(gw, ACME, certificate_file=str(cert)).export(genai_spans()) == SpanExportResult.SUCCESS
    assert len(gw.sink.events) == 2
    plain = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{gw.port}/v1/traces", headers={"x-api-key": ACME}, timeout=2)
    assert plain.export(genai_spans()) == SpanExportResult.FAILURE


# -- the CLI: refuses without keys, SIGHUP reloads -----------------------------------------------
def test_cli_gateway_reloads_keys_on_sighup(kafka, tmp_path):
    keys, cfg, port = tmp_path / "keys.yaml", tmp_path / "llmpulse.yaml", free_port()
    keys.write_text(key_line(ACME, "acme", "acme-1") + "\n")
    cfg.write_text(json.dumps({"kafka_bootstrap": kafka.bootstrap, "events_topic": f"gw-test-{port}",
                               "otlp_gateway": {"port": port, "keys_file": str(keys), "keys_check_s": 3600}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    proc = subprocess.Popen([sys.executable, "-m", "llmpulse", "-c", str(cfg), "otlp-gateway"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                return post(url, b"", key=ACME)[0] == 200
            except OSError:  # not listening yet
                return False

        wait_for(up, 30, what="the gateway")
        keys.write_text(key_line(GLOBEX, "globex", "globex-1") + "\n")
        assert post(url, b"", key=GLOBEX)[0] == 401  # not looked at for an hour ...
        proc.send_signal(signal.SIGHUP)  # ... unless told
        wait_for(lambda: post(url, b"", key=GLOBEX)[0] == 200, 10, what="the reload")
        assert post(url, b"", key=ACME)[0] == 401
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "1 API keys" in out, out


# -- the request parser never answers 500 -----------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_gateway():
    g = GatewayThread(MemoryPublisher(), config=GatewayConfig(
        keys=[ApiKey(id="fuzz", tenant="acme", hash=hash_key(ACME), rate_limit=RateLimit(requests_per_second=1e6))],
        max_body_bytes=256 * 1024), limits=Limits(max_string_bytes=64 * 1024)).start()
    yield g
    g.stop()


ALLOWED = {200, 400, 413, 415, 429}
CTYPES = st.sampled_from(["application/x-protobuf", "application/json", "application/protobuf", "text/plain", ""])
ENCODINGS = st.sampled_from([None, "gzip", "deflate", "br"])


def _send(gw: GatewayThread, body: bytes, ctype: str, encoding: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    headers = {"x-api-key": ACME}
    if ctype:
        headers["Content-Type"] = ctype
    if encoding:
        headers["Content-Encoding"] = encoding
    try:
        conn.request("POST", "/v1/traces", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _encode(body: bytes, encoding: str | None, compress: bool) -> bytes:
    if compress and encoding == "gzip":
        return gzip.compress(body)
    if compress and encoding == "deflate":
        return zlib.compress(body)
    return body


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.floats(allow_nan=False), st.text(max_size=30))
any_json = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)
hexish = st.one_of(st.text("0123456789abcdef", max_size=34), st.text(max_size=10), json_scalars)
any_value = st.recursive(
    st.one_of(st.fixed_dictionaries({"stringValue": st.one_of(st.text(max_size=50), any_json)}),
              st.fixed_dictionaries({"intValue": st.one_of(st.integers(), st.text(max_size=5))}),
              st.fixed_dictionaries({"doubleValue": json_scalars}),
              st.fixed_dictionaries({"boolValue": json_scalars}), any_json),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"arrayValue": st.fixed_dictionaries({"values": st.lists(inner, max_size=3)})}),
        st.fixed_dictionaries({"kvlistValue": st.fixed_dictionaries({"values": st.lists(
            st.fixed_dictionaries({"key": st.text(max_size=10), "value": inner}), max_size=3)})})),
    max_leaves=10)
GENAI_KEYS = st.sampled_from(["gen_ai.operation.name", "gen_ai.request.model", "gen_ai.usage.input_tokens",
                              "gen_ai.tool.call.arguments", "gen_ai.input.messages", "gen_ai.output.messages",
                              "gen_ai.evaluation.name", "llmpulse.tenant", "llm.invocation_parameters",
                              "openinference.span.kind", "gen_ai.response.finish_reasons", "error.type"])
attribute = st.fixed_dictionaries({"key": st.one_of(GENAI_KEYS, st.text(max_size=10)), "value": any_value})
otlp_span = st.fixed_dictionaries({}, optional={
    "traceId": hexish, "spanId": hexish, "parentSpanId": hexish,
    "name": st.one_of(st.sampled_from(["chat m", "execute_tool t", "invoke_agent a", "gen_ai.evaluation.result"]),
                      st.text(max_size=20), json_scalars),
    "kind": st.one_of(st.integers(-2, 10), st.text(max_size=12)),
    "startTimeUnixNano": st.one_of(st.integers(-1, 2**65), st.text(max_size=20)),
    "endTimeUnixNano": st.one_of(st.integers(-1, 2**65), st.text(max_size=20)),
    "attributes": st.one_of(st.lists(attribute, max_size=6), json_scalars),
    "events": st.lists(st.fixed_dictionaries({"name": st.one_of(st.just("gen_ai.evaluation.result"), st.text(max_size=10)),
                                              "timeUnixNano": st.one_of(st.integers(0, 2**64), st.text(max_size=5)),
                                              "attributes": st.lists(attribute, max_size=4)}), max_size=3),
    "status": st.fixed_dictionaries({}, optional={"code": st.one_of(st.integers(-1, 5), st.text(max_size=8)),
                                                  "message": st.text(max_size=20)}),
    "unknownField": any_json,
})
# Spans that map to events, with hostile values where the mapping reads them.
hostile = st.one_of(
    st.just(_deep_json(40)), st.just(_deep_json(300)), st.just("[" * 5000 + "]" * 5000), st.just("x" * 70_000),
    st.integers(min_value=-2**63, max_value=2**63 - 1), st.just(str(10**30)), st.just("1e309"), st.just("NaN"),
    any_json.map(json.dumps), st.text(max_size=20))
ts = st.one_of(st.just(1_764_000_000_000_000_000), st.integers(1_700_000_000_000_000_000, 1_800_000_000_000_000_000),
               st.integers(0, 2**64 - 1))
genai_attr = st.tuples(GENAI_KEYS | st.sampled_from(["gen_ai.usage.output_tokens", "gen_ai.tool.name",
                                                     "gen_ai.evaluation.score.value", "user.id"]),
                       st.text(max_size=20) | st.integers(0, 10_000) | hostile).map(
    lambda kv: {"key": kv[0], "value": {"intValue": str(kv[1])} if isinstance(kv[1], int) else {"stringValue": kv[1]}})
genai_span = st.fixed_dictionaries({
    "traceId": st.just("ab" * 16), "spanId": st.text("0123456789abcdef", min_size=16, max_size=16),
    "name": st.sampled_from(["chat m", "execute_tool t", "embeddings e", "gen_ai.evaluation.result"]),
    "startTimeUnixNano": ts, "endTimeUnixNano": ts,
    "attributes": st.lists(genai_attr, max_size=6).map(
        lambda a: [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}] + a),
    "events": st.lists(st.fixed_dictionaries({"name": st.just("gen_ai.evaluation.result"), "timeUnixNano": ts,
                                              "attributes": st.lists(genai_attr, max_size=3)}), max_size=2),
})
otlp_doc = st.fixed_dictionaries({"resourceSpans": st.lists(st.fixed_dictionaries({}, optional={
    "resource": st.fixed_dictionaries({"attributes": st.lists(attribute, max_size=3)}),
    "scopeSpans": st.lists(st.fixed_dictionaries({}, optional={
        "scope": st.fixed_dictionaries({"name": st.text(max_size=10)}),
        "spans": st.lists(otlp_span | genai_span, max_size=4)}), max_size=2)}), max_size=2)}) | st.builds(
    lambda spans, resource: {"resourceSpans": [{"resource": {"attributes": resource},
                                                "scopeSpans": [{"scope": {"name": "app"}, "spans": spans}]}]},
    st.lists(genai_span, min_size=1, max_size=4), st.lists(attribute, max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.binary(max_size=3000), ctype=CTYPES, encoding=ENCODINGS, compress=st.booleans())
def test_arbitrary_bytes_never_give_a_500(fuzz_gateway, body, ctype, encoding, compress):
    status = _send(fuzz_gateway, _encode(body, encoding, compress), ctype, encoding)
    event(str(status))
    assert status in ALLOWED
    assert fuzz_gateway.gateway.stats.errors == 0, fuzz_gateway.gateway.stats.last_error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=otlp_doc, protobuf=st.booleans(), encoding=st.sampled_from([None, "gzip"]))
def test_arbitrary_otlp_shaped_bodies_never_give_a_500(fuzz_gateway, doc, protobuf, encoding):
    raw = json.dumps(doc).encode()
    ctype = "application/json"
    if protobuf:  # the same document as protobuf, when it is one
        from llmpulse.ingest.otel_otlp import PayloadError, parse_request

        try:
            raw, ctype = parse_request(raw, True).SerializeToString(), "application/x-protobuf"
        except PayloadError:
            pass
    before = fuzz_gateway.gateway.stats.snapshot()
    status = _send(fuzz_gateway, _encode(raw, encoding, True), ctype, encoding)
    after = fuzz_gateway.gateway.stats.snapshot()
    event(f"{ctype} {status}")
    event(f"events published: {after['events'] > before['events']}")
    event(f"spans rejected: {after['rejected_spans'] > before['rejected_spans']}")
    assert status in ALLOWED
    assert fuzz_gateway.gateway.stats.errors == 0, fuzz_gateway.gateway.stats.last_error
    assert all(validate(e) == "" for e in fuzz_gateway.sink.events)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=200).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\x00" not in b),
       header=st.sampled_from(["Authorization", "x-api-key"]), bearer=st.booleans())
def test_arbitrary_key_headers_give_401_never_500(fuzz_gateway, value, header, bearer):
    conn = http.client.HTTPConnection("127.0.0.1", fuzz_gateway.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/traces")
        conn.putheader("Content-Type", "application/x-protobuf")
        conn.putheader(header, (b"Bearer " if bearer else b"") + value)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status in (400, 401) and fuzz_gateway.gateway.stats.errors == 0  # 400: a header aiohttp refuses

