"""SDK-side redaction hook: what must not leave the app does not; fast; never raises."""

from __future__ import annotations

import base64
import copy
import enum
import json
import subprocess
import sys
from dataclasses import dataclass

import msgspec
import orjson
import pytest

from llmpulse.ingest import MemoryPublisher
from llmpulse.ingest.redaction_hook import ANNOTATION, FAILED, drop_content, redaction_hook
from llmpulse.processors.redaction import Policy, Redactor, detection_findings
from llmpulse.processors.redaction_config import RedactionSettings
from llmpulse.processors.validate import Valid, validate

# Well-formed fakes (right prefixes, lengths, checksums); none is live.
OPENAI = "sk-proj-" + "Qw3eRt5yUi7oPa9sDf2g" * 4 + "T3BlbkFJ" + "Hj4kLz6xCv8bNm1q" * 4
GITHUB = "ghp_7Yt3Rk9Wq2Lp5Zx8Cv1Bn4Mj6Hg0Fd2Sa3Qe"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQ0MiIsImlhdCI6MTcwMDAwMDAwMH0"
       ".dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk0")
PEM_BODY = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2Nc8eFyBs"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\nq9Lm4TzRb8Nw1Yf==\n-----END RSA PRIVATE KEY-----"
DB_PASSWORD = "Vx9!kQ2mRw7z"
EMAIL = "ingrid.holm@nordlys-mail.no"
CARD = "5555 5555 5555 4444"
IBAN = "GB82 WEST 1234 5698 7654 32"
PHONE = "+44 20 7946 0958"
SECRETS = [OPENAI, GITHUB, JWT, PEM_BODY, DB_PASSWORD, EMAIL, CARD, IBAN, PHONE]

BASE = {"event_id": "e-1", "ts": 1_764_000_000_000, "trace_id": "t-1", "workflow": "support", "tenant": "acme",
        "user_id": "u-42", "model": "gpt-4o", "provider": "openai"}


def prompt() -> dict:
    return {**BASE, "event_type": "prompt", "messages": [
        {"role": "system", "content": "Use the key " + OPENAI},
        {"role": "user", "content": f"I am {EMAIL}, card {CARD}, call me on {PHONE}"}],
        "params": {"temperature": 0.2, "api_key": GITHUB}, "attributes": {"session.token": JWT, "team": "emea"}}


def tool_call() -> dict:
    return {**BASE, "event_type": "tool_call", "tool_name": "refund",
            "arguments": {"iban": IBAN, "dsn": f"postgres://svc:{DB_PASSWORD}@db.internal:5432/pay",
                          "customer": {"contact": EMAIL}, "items": [{"note": "key " + OPENAI}]},
            "result": "signed with\n" + PEM}


def output() -> dict:
    return {**BASE, "event_type": "output", "status": "ok", "latency_ms": 830.0, "content": f"Mailed {EMAIL}",
            "usage": {"input_tokens": 900, "output_tokens": 120},
            "debug_blob": {"auth": "Bearer " + JWT, "card_number": CARD.replace(" ", "")},  # unknown field
            "raw_card": int(CARD.replace(" ", ""))}  # unknown field, a bare number


def leaked(obj) -> list[str]:
    text = orjson.dumps(obj).decode()
    return [s for s in SECRETS if s in text or json.dumps(s)[1:-1] in text or s.replace(" ", "") in text]


@pytest.mark.parametrize("make", [prompt, tool_call, output])
def test_every_content_field_and_unknown_field_is_redacted(make) -> None:
    event = make()
    hook = redaction_hook()
    out = hook(copy.deepcopy(event))
    assert leaked(event), "the fixture must carry secrets"
    assert leaked(out) == []
    # Metadata is left alone, exactly as the worker leaves it.
    for k in ("event_id", "ts", "trace_id", "workflow", "tenant", "user_id", "model", "provider", "event_type"):
        assert out[k] == event[k]
    assert isinstance(validate(orjson.dumps(out)), Valid)


def test_placeholders_name_the_class_and_metadata_survives() -> None:
    hook = redaction_hook()
    p, t, o = hook(prompt()), hook(tool_call()), hook(output())
    assert p["messages"][0] == {"role": "system", "content": "Use the key [SECRET:openai_key]"}
    assert p["messages"][1]["content"] == "I am [EMAIL], card [CARD], call me on [PHONE]"
    assert p["params"] == {"temperature": 0.2, "api_key": "[SECRET:generic_secret]"}
    assert p["attributes"]["team"] == "emea" and p["attributes"]["session.token"] == "[SECRET:generic_secret]"
    assert t["arguments"]["dsn"] == "postgres://svc:[SECRET:url_password]@db.internal:5432/pay"
    assert t["arguments"]["iban"] == "[IBAN]" and t["result"] == "signed with\n[SECRET:private_key]"
    assert o["usage"] == {"input_tokens": 900, "output_tokens": 120} and o["latency_ms"] == 830.0
    assert o["raw_card"] == "[CARD]" and o["debug_blob"]["card_number"] == "[CARD]"


def test_annotation_names_class_and_field_never_the_value_and_matches_worker_findings() -> None:
    hook = redaction_hook()
    for make in (prompt, tool_call):
        raw = make()
        out = hook(raw)
        notes = json.loads(out["attributes"][ANNOTATION])
        assert all(isinstance(n, int) and n >= 1 for _, _, n in notes)
        assert leaked(notes) == []
        # The worker, seeing the same event raw, reports the same (class, field) pairs.
        event = validate(orjson.dumps(raw)).event
        _, detections = Redactor(Policy(), tenant="acme").redact_event(event)
        worker = {(f.evidence["class"], f.evidence["field"]) for f in detection_findings(event, detections)}
        assert {(c, f) for c, f, _ in notes} == worker
    assert hook.stats.redacted == 2 and hook.stats.by_class["email"] >= 1


def test_same_result_as_the_worker_on_content_fields() -> None:
    # One definition of what gets redacted: the worker's pass over the raw event.
    for policy, key in ((Policy(), b""), (Policy(secrets="hash", pii="hash"), b"k" * 32),
                        (Policy(pii="drop_content"), b"k" * 32)):
        hook = redaction_hook(policy, hash_key=key, annotate=False)
        for make in (prompt, tool_call):
            raw = make()
            ours = hook(raw)
            event = validate(orjson.dumps(raw)).event
            theirs = msgspec.to_builtins(Redactor(policy, key, tenant="acme").redact_event(event)[0])
            for name in ("messages", "params", "arguments", "result", "attributes"):
                if name in raw:
                    assert ours[name] == theirs[name], (policy, name)


def test_worker_pass_after_the_hook_changes_nothing_and_reports_the_raw_events_findings() -> None:
    hook = redaction_hook(Policy(pii="hash"), hash_key="k" * 32)
    worker = Redactor(Policy(pii="hash"), "k" * 32, "acme")
    for make in (prompt, tool_call, output):
        raw = make()
        result = validate(orjson.dumps(hook(raw)))
        assert isinstance(result, Valid)
        redacted, detections = worker.redact_event(result.event)
        assert redacted is result.event  # nothing left to redact
        assert ANNOTATION in result.event.attributes  # the annotation survives the second pass
        # The findings are those of the raw event (same ids): the SDK's annotation is read back.
        event = validate(orjson.dumps(raw)).event
        ids = lambda e, d: sorted(f.finding_id for f in detection_findings(e, d))  # noqa: E731
        assert ids(result.event, detections) == ids(event, worker.redact_event(event)[1])


def test_a_forged_or_broken_annotation_yields_no_findings() -> None:
    worker = Redactor()
    for note in ("not json", '[["no_such_class","content",1]]', '[["email","content",0]]',
                 '[["email","customer_context.x",1]]', '{"email": 1}'):
        ev = validate(orjson.dumps({**output(), "debug_blob": None, "raw_card": None, "content": "ok",
                                    "attributes": {ANNOTATION: note}})).event
        assert worker.redact_event(ev)[1] == [], note


def test_hashes_join_with_the_worker_per_tenant() -> None:
    key = "shared-hash-key-" * 2
    hook = redaction_hook(Policy(pii="hash"), hash_key=key)
    a = hook({**output(), "tenant": "acme"})["content"]
    b = hook({**output(), "tenant": "globex"})["content"]
    worker = Redactor(Policy(pii="hash"), key, tenant="acme").redact_text(f"Mailed {EMAIL}")[0]
    assert a == worker and a != b and a.startswith("Mailed [EMAIL:")
    fixed = redaction_hook(Policy(pii="hash"), hash_key=key, tenant="acme")
    assert fixed({**output(), "tenant": "globex"})["content"] == worker


def test_policy_by_scope_from_settings() -> None:
    settings = RedactionSettings.model_validate({"overrides": [
        {"tenant": "acme", "workflow": "support", "classes": {"email": "allow"}},
        {"tenant": "globex", "pii": "drop_content"}], "hash_key": "x" * 32})
    hook = redaction_hook(settings=settings)
    assert hook(output())["content"] == f"Mailed {EMAIL}"  # allowed for acme/support
    assert hook({**output(), "workflow": "billing"})["content"] == "Mailed [EMAIL]"
    assert hook({**output(), "tenant": "globex"})["content"].startswith("[CONTENT DROPPED len=")
    with pytest.raises(ValueError):
        redaction_hook(Policy(), settings=settings)


def test_clean_events_pass_untouched_and_app_objects_are_never_modified() -> None:
    hook = redaction_hook()
    clean = {**BASE, "event_type": "prompt", "messages": [{"role": "user", "content": "How long do refunds take?"}],
             "params": {"temperature": 0.2}, "attributes": {"team": "emea"}}
    assert hook(clean) is clean
    event = prompt()
    before = copy.deepcopy(event)
    hook(event)
    assert event == before


def test_bad_configuration_fails_at_start_not_per_event() -> None:
    with pytest.raises(ValueError):
        redaction_hook(Policy(pii="hash"))  # hash needs a key
    with pytest.raises(ValueError):
        redaction_hook("scramble")


def test_never_raises_on_odd_events() -> None:
    hook = redaction_hook()
    odd = [
        {"event_type": "telepathy", "vibe": f"mail {EMAIL}", "n": 10**40},
        {"event_type": "prompt", "messages": "just a string with " + OPENAI},
        {"event_type": "prompt", "messages": [None, 3, {"role": 1, "content": [{"type": "text", "text": EMAIL}]}]},
        {"event_type": "tool_call", "arguments": ("tuple", EMAIL), "result": None, 7: {"k": EMAIL}},
        {"event_type": "output", "content": b"bytes " + EMAIL.encode(), "attributes": {None: EMAIL}},
        {},
    ]
    for event in odd:
        out = hook(event)
        assert out is not None
        assert all(s not in str(out) for s in SECRETS)
    assert hook.stats.failed_closed == 0


@dataclass
class Customer:
    name: str
    email: str
    tags: frozenset = frozenset()


class Tier(enum.Enum):
    GOLD = "gold"


def test_objects_the_encoder_would_write_out_are_redacted_too() -> None:
    # orjson writes dataclasses, enums and datetimes itself: nothing may slip through unscanned.
    hook = redaction_hook()
    out = hook({**tool_call(), "arguments": {"customer": Customer("Ingrid", EMAIL, frozenset({PHONE})),
                                             "tier": Tier.GOLD, "blob": EMAIL.encode()}})
    assert out["arguments"]["customer"] == {"name": "Ingrid", "email": "[EMAIL]", "tags": ["[PHONE]"]}
    assert out["arguments"]["tier"] == "gold"
    assert leaked(out) == [] and base64.b64encode(EMAIL.encode()).decode() not in str(out)
    # What cannot be converted is not published with its content.
    out = hook({**output(), "content": "fine", "debug_blob": object()})
    assert hook.stats.failed_closed == 1 and "debug_blob" not in out and leaked(out) == []


def test_internal_error_fails_closed_and_is_counted(monkeypatch) -> None:
    def broken(self, value, path, key, found):
        raise RuntimeError(f"bug while looking at {value!r}")

    monkeypatch.setattr(Redactor, "_value", broken)
    hook = redaction_hook()
    pub = MemoryPublisher(hooks=[hook])
    for make in (prompt, tool_call, output):
        assert pub.publish(make())
    assert hook.stats.failed_closed == 3 and hook.stats.dropped == 0
    assert EMAIL not in hook.stats.last_error and hook.stats.last_error == "RuntimeError"
    p, t, o = pub.events
    assert leaked(pub.events) == []
    assert p["messages"] == [{"role": "system", "content": f"[CONTENT DROPPED len={len('Use the key ' + OPENAI)}]"},
                             {"role": "user", "content": p["messages"][1]["content"]}]
    assert p["attributes"] == {FAILED: "failed"} and "params" not in p
    assert t["arguments"] == "[CONTENT DROPPED]" and t["tool_name"] == "refund"
    assert o["usage"] == {"input_tokens": 900, "output_tokens": 120} and "debug_blob" not in o
    for e in pub.events:  # still a valid event: metadata and usage reach the worker
        assert isinstance(validate(orjson.dumps(e)), Valid)


def test_if_even_dropping_fails_the_event_is_not_published(monkeypatch) -> None:
    import llmpulse.ingest.redaction_hook as mod

    monkeypatch.setattr(Redactor, "_value", lambda *a: 1 / 0)
    monkeypatch.setattr(mod, "drop_content", lambda e: 1 / 0)
    hook = redaction_hook()
    pub = MemoryPublisher(hooks=[hook])
    assert pub.publish(prompt()) is False
    assert pub.events == [] and pub.stats.invalid == 1
    assert hook.stats.dropped == 1


def test_drop_content_keeps_what_analytics_needs() -> None:
    out = drop_content(output())
    assert out["content"] == f"[CONTENT DROPPED len={len('Mailed ' + EMAIL)}]"
    assert (out["latency_ms"], out["usage"]["input_tokens"], out["model"]) == (830.0, 900, "gpt-4o")
    assert "debug_blob" not in out and "raw_card" not in out


def test_the_sdk_stays_light() -> None:
    code = (
        "import sys, llmpulse.ingest, llmpulse.ingest.redaction_hook\n"
        "from llmpulse.ingest.controls import ControlState\n"  # kill switches decide without pydantic too
        "assert llmpulse.ingest.MemoryPublisher(controls=ControlState()).trace('w').check_model('m').allowed\n"
        "heavy = {'faust', 'chdb', 'pydantic', 'pydantic_settings', 'clickhouse_connect', 'yaml', 'typer',"
        " 'aiohttp', 'opentelemetry', 'genai_prices', 'jsonschema'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
