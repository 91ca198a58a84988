"""The gateway's config, keys, rate limits and span limits, without a server."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from llmpulse.ingest import otel_limits as lim
from llmpulse.ingest.otel_auth import KeyRing, TokenBucket, presented_key, retry_after_header
from llmpulse.ingest.otel_gateway_config import (
    ApiKey,
    GatewayConfig,
    KeyConfigError,
    RateLimit,
    hash_key,
    key_line,
    load_keys_file,
    new_key,
)
from llmpulse.ingest.otel_mapping import MapDefaults, OtelEvent, OtelSpan, map_each
from llmpulse.processors.validate import Limits
from llmpulse.config_errors import ConfigError
from llmpulse.settings import load_settings

H1, H2 = hash_key("lpk_one"), hash_key("lpk_two")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- config -------------------------------------------------------------------------------
def test_keys_are_stored_as_sha256_only():
    key = new_key()
    assert key.startswith("lpk_") and len(key) > 40
    h = hash_key(key)
    assert h.startswith("sha256:") and len(h) == 7 + 64 and key not in h
    entry = yaml.safe_load(key_line(key, "acme", "acme-1", trusted=True))[0]
    assert ApiKey.model_validate(entry) == ApiKey(id="acme-1", tenant="acme", hash=h, trusted=True)
    assert ApiKey(tenant="t", hash=h.split(":")[1].upper()).hash == h  # bare hex accepted, normalised
    assert ApiKey(tenant="t", hash=h).id == h[7:19]  # a default id from the hash


@pytest.mark.parametrize("entry, words", [
    ({"tenant": "acme", "hash": "lpk_plaintext-key"}, ["entry 0", "hash", "64 hex"]),
    ({"tenant": "acme", "hash": "md5:" + "0" * 64}, ["entry 0", "sha256"]),
    ({"id": "acme-1", "hash": H1}, ["acme-1", "tenant"]),
    ({"id": "acme-1", "tenant": "acme", "hash": H1, "trusted": "maybe"}, ["acme-1", "trusted"]),
    ({"id": "acme-1", "tenant": "acme", "hash": H1, "rate_limit": {"burst": 3}}, ["acme-1", "exactly one"]),
    ({"id": "acme-1", "tenant": "acme", "hash": H1, "tenannt": "x"}, ["acme-1", "tenannt"]),
])
def test_a_bad_entry_fails_naming_it(tmp_path, entry, words):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([entry]))
    with pytest.raises(KeyConfigError) as err:
        load_keys_file(path)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_duplicates_fail_naming_both_entries(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{id: a, tenant: x, hash: '{H1}'}}\n- {{id: a, tenant: y, hash: '{H2}'}}\n")
    with pytest.raises(KeyConfigError, match=r"entry 1 duplicates key id 'a' \(entry 0\)"):
        load_keys_file(path)
    path.write_text(f"- {{id: a, tenant: x, hash: '{H1}'}}\n- {{id: b, tenant: y, hash: '{H1}'}}\n")
    with pytest.raises(KeyConfigError, match=r"entry 1 \('b'\) has the same hash as 'a'"):
        load_keys_file(path)
    with pytest.raises(ValidationError, match="duplicates key id"):
        GatewayConfig(keys=[ApiKey(id="a", tenant="x", hash=H1), ApiKey(id="a", tenant="x", hash=H2)])
    for text, words in (("{keys: 1}", "expected a list"), ("- [", "not YAML")):
        path.write_text(text)
        with pytest.raises(KeyConfigError, match=words):
            load_keys_file(path)
    with pytest.raises(KeyConfigError, match="No such file"):
        load_keys_file(tmp_path / "missing.yaml")


def test_settings_compose_the_gateway_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "llmpulse.yaml"
    cfg.write_text(yaml.safe_dump({"otlp_gateway": {
        "keys_file": str(tmp_path / "keys.yaml"), "default_rate_limit": {"spans_per_second": 100, "burst": 500},
        "keys": [{"id": "inline", "tenant": "acme", "hash": H1}]}}))
    s = load_settings(cfg)
    assert s.otlp_gateway.keys[0].tenant == "acme" and s.otlp_gateway.keys_file == tmp_path / "keys.yaml"
    assert s.otlp_gateway.default_rate_limit.unit == "spans" and s.otlp_gateway.default_rate_limit.capacity == 500
    assert not s.otlp_gateway.allow_unauthenticated  # secure by default
    cfg.write_text(yaml.safe_dump({"otlp_gateway": {"allow_unauthenticated": True, "keyz": []}}))
    with pytest.raises(ConfigError, match="otlp_gateway.keyz: unknown key"):  # located, not a traceback
        load_settings(cfg)
    monkeypatch.setenv("LLMPULSE_OTLP_GATEWAY__ALLOW_UNAUTHENTICATED", "true")
    cfg.write_text("{}")
    assert load_settings(cfg).otlp_gateway.allow_unauthenticated


def test_no_keys_refuses_to_start_unless_told(tmp_path):
    with pytest.raises(KeyConfigError, match="no API keys configured.*allow_unauthenticated: true"):
        GatewayConfig().check_startable(0)
    GatewayConfig(allow_unauthenticated=True).check_startable(0)
    empty = tmp_path / "keys.yaml"
    empty.write_text("[]")
    with pytest.raises(KeyConfigError, match=f"no API keys configured in {empty}"):
        GatewayConfig(keys_file=empty).check_startable(len(KeyRing(GatewayConfig(keys_file=empty))))


# -- keys at run time -------------------------------------------------------------------------
def test_presented_key_from_either_header():
    assert presented_key({"Authorization": "Bearer abc"}) == "abc"
    assert presented_key({"Authorization": "bearer  abc "}) == "abc"
    assert presented_key({"x-api-key": "abc"}) == "abc"
    assert presented_key({"Authorization": "Basic Zm9v"}) == ""
    assert presented_key({}) == ""
    assert hash_key("lpk_\udcff").startswith("sha256:")  # invalid UTF-8 in a header: unknown, not a crash


def test_keyring_reloads_a_changed_file_and_keeps_keys_when_it_breaks(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(key_line("lpk_one", "acme", "old") + "\n")
    clock = Clock()
    ring = KeyRing(GatewayConfig(keys_file=path, keys_check_s=1.0), clock=clock)
    assert ring.lookup("lpk_one").tenant == "acme" and ring.lookup("lpk_two") is None
    assert ring.lookup("") is None

    # Rotation: the new key joins, both work, then the old one leaves.
    path.write_text(key_line("lpk_one", "acme", "old") + "\n" + key_line("lpk_two", "acme", "new") + "\n")
    assert ring.lookup("lpk_two") is None  # not looked at again within keys_check_s
    clock.t += 1.5
    assert ring.lookup("lpk_two").id == "new" and ring.lookup("lpk_one").id == "old"
    ring.lookup("lpk_one").stats.requests = 7
    path.write_text(key_line("lpk_two", "acme", "new") + "\n")
    os.utime(path, ns=(1, 1))  # a changed mtime is enough, whatever it is
    clock.t += 1.5
    assert ring.lookup("lpk_one") is None and ring.lookup("lpk_two") is not None
    assert ring.callers()["old"].stats.requests == 7  # a removed key's counts stay in stats
    assert ring.reloads == 2

    path.write_text("- {tenant: acme, hash: not-a-hash}\n")
    clock.t += 1.5
    assert ring.lookup("lpk_two") is not None  # a broken edit does not lock everyone out ...
    assert ring.reload_errors == 1 and "hash" in ring.last_reload_error
    path.unlink()
    assert ring.reload() is False and ring.lookup("lpk_two") is not None  # ... nor a deleted file


def test_token_bucket_refills_and_says_how_long_to_wait():
    clock = Clock()
    b = TokenBucket(RateLimit(spans_per_second=10, burst=20), clock)
    assert b.take(15) == 0 and b.take(5) == 0
    assert b.take(10) == pytest.approx(1.0)  # empty: 10 spans need a second
    assert b.wait(1) == pytest.approx(0.1)
    clock.t += 0.5
    assert b.take(5) == 0 and b.take(1) == pytest.approx(0.1)
    # A batch larger than the burst is not refused forever: it waits for a full bucket, then owes.
    clock.t += 10
    assert b.take(50) == 0 and b.take(1) == pytest.approx(3.1)
    assert retry_after_header(0.01) == "1" and retry_after_header(3.1) == "4"
    r = TokenBucket(RateLimit(requests_per_second=2), clock)
    assert r.capacity == 2 and r.take(1) == 0 and r.take(1) == 0 and r.take(1) > 0


# -- span limits ----------------------------------------------------------------------------
def _span(attrs: dict, events=()) -> OtelSpan:
    return OtelSpan(name="chat m", trace_id="ab" * 16, span_id="cd" * 8, start_ns=1_764_000_000_000_000_000,
                    end_ns=1_764_000_001_000_000_000, attributes={"gen_ai.operation.name": "chat", **attrs},
                    events=list(events))


def test_limits_name_what_they_refuse():
    limits = Limits(max_string_bytes=1024, max_event_bytes=4096, max_depth=5)
    assert lim.span_violation(_span({"gen_ai.input.messages": "x" * 100}), limits) is None
    big = lim.span_violation(_span({"gen_ai.input.messages": "é" * 600}), limits)  # 1200 bytes in UTF-8
    assert big.reason == lim.VALUE_TOO_LARGE and "attribute gen_ai.input.messages is 1200 bytes" in big.detail
    in_event = lim.span_violation(_span({}, [OtelEvent("gen_ai.content.prompt", 1, {"gen_ai.prompt": "x" * 2000})]), limits)
    assert in_event.reason == lim.VALUE_TOO_LARGE and "event gen_ai.content.prompt" in in_event.detail
    listed = lim.span_violation(_span({"gen_ai.request.stop_sequences": ["ok", "x" * 2000]}), limits)
    assert "stop_sequences[1]" in listed.detail

    # Events are judged by validation itself (the worker's code), and its reason is kept.
    now = 1_764_000_001_000
    deep = json.dumps(_nested(300))
    (span, events), = map_each([_span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t",
                                       "gen_ai.tool.call.arguments": deep})])
    found = lim.event_violation(events[0], limits, now)
    assert found.reason == lim.TOO_DEEP and "arguments" in found.detail and "max_depth 5" in found.detail
    (_, events), = map_each([_span({"gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "y" * 1000}]}] * 5)})])
    assert lim.event_violation(events[1], limits, now).reason == lim.EVENT_TOO_LARGE
    (_, events), = map_each([_span({"gen_ai.request.model": "m" * 2000})])
    assert lim.event_violation(events[0], Limits(), now).reason == lim.VALUE_TOO_LARGE  # max_label_bytes
    assert lim.event_violation(events[0], Limits(), now_ms=None) is not None
    (_, events), = map_each([_span({})])
    assert lim.event_violation(events[0], Limits(), now) is None
    assert lim.event_violation(events[0], Limits(), now - 3_600_000).reason == lim.TS_OUT_OF_BOUNDS  # an hour ahead
    assert lim.event_violation({**events[0], "ts": 0}, Limits(), now).reason == lim.INVALID
    assert lim.event_violation({**events[0], "params": {"seed": 10**30}}, Limits(), now).reason == lim.INVALID


def _nested(depth: int) -> dict:
    doc: dict = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def test_json_nested_past_the_parser_is_one_spans_failure():
    too_deep = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError
    good, bad = _span({}), _span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t",
                                  "gen_ai.tool.call.arguments": too_deep})
    bad.span_id = "ef" * 8
    (s1, ok), (s2, err) = map_each([good, bad])
    assert isinstance(ok, list) and len(ok) == 2 and isinstance(err, RecursionError)


def test_tenant_from_attributes_only_when_trusted():
    span = _span({"llmpulse.tenant": "evil"})
    span.resource = {"llmpulse.tenant": "other", "service.name": "svc"}
    (_, trusted), = map_each([span], defaults=MapDefaults(tenant="acme"))
    (_, locked), = map_each([span], defaults=MapDefaults(tenant="acme", tenant_from_attributes=False))
    assert {e["tenant"] for e in trusted} == {"evil"} and {e["tenant"] for e in locked} == {"acme"}


# -- CLI ------------------------------------------------------------------------------------
def test_keygen_prints_the_key_once_and_its_hash_line(tmp_path):
    from llmpulse.cli import app

    keys = tmp_path / "keys.yaml"
    runner = CliRunner()
    res = runner.invoke(app, ["otlp-gateway", "keygen", "--tenant", "acme", "--id", "acme-1", "--append", str(keys)])
    assert res.exit_code == 0, res.output
    key = res.stderr.split("shown once): ")[1].split()[0]
    (entry,) = load_keys_file(keys)
    assert (entry.id, entry.tenant, entry.hash, entry.trusted) == ("acme-1", "acme", hash_key(key), False)
    assert key not in keys.read_text() and key not in res.stdout
    assert yaml.safe_load(res.stdout)[0]["hash"] == entry.hash


def test_gateway_command_refuses_to_start_without_keys(tmp_path, monkeypatch):
    from llmpulse.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["otlp-gateway"])
    assert res.exit_code == 2
    (line,) = res.stderr.strip().splitlines()
    assert "no API keys configured" in line and "--insecure-no-auth" in line
    (tmp_path / "keys.yaml").write_text("- {id: acme-1, tenant: acme, hash: abc}\n")
    res = CliRunner().invoke(app, ["otlp-gateway", "--keys-file", str(tmp_path / "keys.yaml")])
    assert res.exit_code == 2 and "acme-1" in res.stderr and "hash" in res.stderr
