"""Redaction: detectors, checksums, policies, whole events, findings, config, CLI."""

from __future__ import annotations

import msgspec
import pytest

from llmpulse.processors import redaction_scan
from llmpulse.processors.redaction import Detection, Policy, Redactor, detection_findings, redact_text
from llmpulse.processors.redaction_config import RedactionSettings
from llmpulse.processors.redaction_rules import RULES, iban_valid, key_class, luhn_valid
from llmpulse.processors.redaction_scan import Scanner, gate_width
from llmpulse.schemas.contract import Change, Eval, Message, Output, Prompt, ToolCall, encode_event
from llmpulse.schemas.findings import encode_finding

# Well-formed fakes: right prefixes, alphabets, lengths and checksums; none is live.
OPENAI = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5q" * 4 + "T3BlbkFJ" + "Zy8xWv7uTs6rQp5o" * 4
ANTHROPIC = "sk-ant-api03-" + "aB3_cD4-eF5gH6iJ7kL8" * 4 + "mN9oP0qR1sT2uV3wX4y" + "AA"
AWS_ID = "AKIAZ2QX7JHRT4MWN5PB"
AWS_SECRET = "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"
GCP = "AIzaSyD4x9Qm2T7bLk3Vn8Rw5Pz1Hc6Js0Fg-Ye"
GITHUB = "ghp_4Zk9Qm2T7bLk3Vn8Rw5Pz1Hc6Js0FgYeUa2x"
SLACK = "xoxb-123456789012-1234567890123-Ab3dEf6hIj9kLm2nOp5qRs7t"
STRIPE = "sk_live_51Hq7Jc2vKp9Lm4TzRb8Nw1YfHs6Gd3Ue5Ao"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx7Jc2vKp9Lm4TzRb8Nw1YfHs6Gd3Ue5Ao0IiZ\n"
    "q9Lm4TzRb8Nw1Yf==\n-----END RSA PRIVATE KEY-----"
)
AZURE_KEY = "Xq7/Jc2vKp9+Lm4TzRb8" * 4 + "Nw1YfH=="
AZURE_CS = f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={AZURE_KEY};EndpointSuffix=core.windows.net"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"

SECRET_CASES = [
    ("export OPENAI_API_KEY=" + OPENAI, "openai_key", OPENAI),
    ("use " + ANTHROPIC + " for claude", "anthropic_key", ANTHROPIC),
    ("aws_access_key_id = " + AWS_ID, "aws_access_key", AWS_ID),
    ("aws_secret_access_key = " + AWS_SECRET, "aws_secret_key", AWS_SECRET),
    ("maps?key=" + GCP, "gcp_api_key", GCP),
    ("GITHUB_TOKEN=" + GITHUB, "github_token", GITHUB),
    ("SLACK_BOT_TOKEN=" + SLACK, "slack_token", SLACK),
    ('stripe.api_key = "' + STRIPE + '"', "stripe_key", STRIPE),
    ("Authorization: Bearer " + JWT, "jwt", JWT),
    ("key:\n" + PEM + "\n", "private_key", PEM),
    ("postgres://app:S3cr3t!pw@db.internal:5432/prod", "url_password", "S3cr3t!pw"),
    ("Server=db;User ID=svc;Password=Pa55w0rd!x;Encrypt=true", "password", "Pa55w0rd!x"),
    ('{"password": "correct horse 9"}', "password", "correct horse 9"),
    ("PGPASSWORD=Tiger7973! psql -h db", "password", "Tiger7973!"),
    ("my password is Rocket7056$ ok", "password", "Rocket7056$"),
    ('"clientSecret": "Zq8abcDEF123ghiJKL456mno"', "generic_secret", "Zq8abcDEF123ghiJKL456mno"),
    ("DATADOG_API_KEY=8f14e45fceea167a5a36dedd4bea2543", "generic_secret", "8f14e45fceea167a5a36dedd4bea2543"),
    (AZURE_CS, "azure_storage_key", AZURE_KEY),
]

PII_CASES = [
    ("write to jane.doe+news@example.co.uk today", "email", "jane.doe+news@example.co.uk"),
    ("call (415) 555-0132 now", "phone", "(415) 555-0132"),
    ("or +44 20 7946 0958 in London", "phone", "+44 20 7946 0958"),
    ("office 030 12345678 Berlin", "phone", "030 12345678"),
    ("phone: 4155550132", "phone", "4155550132"),
    ("card " + CARD + " exp 12/27", "card_number", CARD),
    ("amex 3782-822463-10005 ok", "card_number", "3782-822463-10005"),
    ("IBAN " + IBAN + " thanks", "iban", IBAN),
    ("iban GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
    ("SSN 123-45-6789 on file", "national_id", "123-45-6789"),
    ("ssn: 123456789", "national_id", "123456789"),
    ("NINO AB123456C", "national_id", "AB123456C"),
    ("login from 203.0.113.42 failed", "ip_address", "203.0.113.42"),
    ("peer 2001:db8:85a3::8a2e:370:7334 reset", "ip_address", "2001:db8:85a3::8a2e:370:7334"),
]

CLEAN = [
    "request 550e8400-e29b-41d4-a716-446655440000 done",
    "commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39 merged",
    "trace=0712f08f87d377362193800827c864fd GET /api",
    "order ORD-2024-004512 shipped 2024-03-15T10:22:31Z",
    "price $1,299.99 or €49.00, total 1,234,567",
    "version v2.14.3, Python 3.11.7, Version=4.0.0.0, build 10.2.3.4",
    "listen on 127.0.0.1:8080 and 0.0.0.0:9090",
    "a[1::2] at 12:30:45, mac 00:1a:2b:3c:4d:5e, std::vector<int>",
    "max_tokens=1024 temperature=0.2 token count: 2048 tokens: 512",
    "The password reset link expires; password: reset it. The key insight.",
    "api_key=os.environ['OPENAI_API_KEY'] password=${DB_PASSWORD} token=<YOUR_TOKEN>",
    "logo@2x.png and git@github.com:acme/api.git and @alice",
    "epoch 1710498151000, ISBN 978-0-13-468599-1, 37.7749, -122.4194",
    "model gpt-4o-2024-08-06 and claude-3-5-sonnet-20241022, pod api-7d9f8b6c5-x2kqp",
    "my password is incorrect and the token is expired",
]

KEY = "test-key-0123456789"


@pytest.fixture(params=[True, False], ids=["hyperscan", "plain"])
def redactor(request) -> Redactor:
    if request.param and not redaction_scan.accelerated():
        pytest.fail("hyperscan not installed (it is in the worker extra)")
    return Redactor(Policy(), KEY, accelerate=request.param)


@pytest.mark.parametrize("text,cls,value", SECRET_CASES + PII_CASES, ids=lambda x: x if len(str(x)) < 20 else None)
def test_detector_finds_value(redactor: Redactor, text: str, cls: str, value: str) -> None:
    out, counts = redactor.redact_text(text)
    assert value not in out
    assert counts.get(cls) == 1, counts


@pytest.mark.parametrize("text", CLEAN)
def test_clean_text_is_untouched(redactor: Redactor, text: str) -> None:
    assert redactor.redact_text(text) == (text, {})


def test_plain_and_gated_paths_agree() -> None:
    if not redaction_scan.accelerated():
        pytest.fail("hyperscan not installed (it is in the worker extra)")
    plain, gated = Scanner(RULES, accelerate=False), Scanner(RULES, accelerate=True)
    texts = [t for t, _, _ in SECRET_CASES + PII_CASES] + CLEAN
    blob = " | ".join(texts) + " ünïcödé " + " € ".join(texts)  # non-ASCII shifts offsets
    for t in [*texts, blob]:
        assert plain.find(t) == gated.find(t)


def test_every_gate_is_bounded_or_tracked() -> None:
    # Unbounded gates need start-of-match tracking; the rest must report a width.
    unbounded = {r.cls for r in RULES if gate_width(r.gate) == 0}
    assert unbounded <= {"bearer_token", "basic_auth", "keyed_secret"}


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("1234567812345678")


def test_card_needs_luhn_and_issuer() -> None:
    assert redact_text("card 4111 1111 1111 1112") == "card 4111 1111 1111 1112"  # bad check digit
    assert redact_text("id 1111 1111 1111 1117") == "id 1111 1111 1111 1117"  # no issuer starts with 1


def test_iban_mod97() -> None:
    assert iban_valid("DE89 3704 0044 0532 0130 00")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE88 3704 0044 0532 0130 00")
    assert not iban_valid("DE89 3704 0044 0532 0130")  # wrong length for DE
    assert not iban_valid("XX89370400440532013000")
    assert redact_text("iban DE88370400440532013000") == "iban DE88370400440532013000"


def test_mask_placeholders_are_typed() -> None:
    out = redact_text("jane@example.com " + AWS_ID)
    assert out == "[EMAIL] [SECRET:aws_access_key]"


def test_hash_is_joinable_and_keyed() -> None:
    r = Redactor(Policy(secrets="hash", pii="hash"), KEY, tenant="acme")
    a, _ = r.redact_text("from Jane@Example.com")
    b, _ = r.redact_text("to jane@example.com")
    assert a.split()[-1] == b.split()[-1]  # case-normalised: same person, same token
    assert a.split()[-1].startswith("[EMAIL:")
    other_key = Redactor(Policy(pii="hash"), "another-key", tenant="acme").redact_text("to jane@example.com")[0]
    other_tenant = Redactor(Policy(pii="hash"), KEY, tenant="globex").redact_text("to jane@example.com")[0]
    assert other_key != b and other_tenant != b
    p1 = r.redact_text("call +1 415 555 0132")[0].split()[-1]
    p2 = r.redact_text("call +1-415-555-0132")[0].split()[-1]
    assert p1 == p2


def test_hash_needs_a_key() -> None:
    with pytest.raises(ValueError):
        Redactor(Policy(pii="hash"))


def test_drop_content_keeps_length_and_hash_only() -> None:
    r = Redactor(Policy(pii="drop_content"), KEY)
    text = "Customer jane@example.com wants a refund for order 42."
    out, counts = r.redact_text(text)
    assert out.startswith("[CONTENT DROPPED len=%d hmac=" % len(text))
    assert "jane" not in out and "refund" not in out
    assert counts == {"email": 1}
    assert r.redact_text(text)[0] == out  # deterministic, so joinable
    assert r.redact_text("nothing here")[0] == "nothing here"


def test_allow_and_per_class_overrides() -> None:
    r = Redactor(Policy(pii="allow", classes={"email": "mask"}))
    out, counts = r.redact_text("jane@example.com from 203.0.113.42")
    assert out == "[EMAIL] from 203.0.113.42"
    assert counts == {"email": 1}


def test_redaction_is_idempotent() -> None:
    text = " ".join(t for t, _, _ in SECRET_CASES + PII_CASES)
    for policy in ("mask", "hash"):
        r = Redactor(Policy.uniform(policy), KEY)
        once, _ = r.redact_text(text)
        assert r.redact_text(once) == (once, {})


def test_key_class_for_structured_values() -> None:
    assert key_class("password", "hunter2") == ("password", "secret")
    assert key_class("X-Api-Key", "abc") == ("generic_secret", "secret")
    assert key_class("customer_phone", "020 7946 0958") == ("phone", "pii")
    assert key_class("max_tokens", "1024") is None
    assert key_class("password", "${DB_PASSWORD}") is None
    assert key_class("phone", "n/a") is None


def _seeded_events() -> list:
    base = dict(ts=1_760_000_000_000, trace_id="tr-1", workflow="support", tenant="acme")
    return [
        Prompt(
            event_id="e1",
            messages=[
                Message(role="system", content="You are helpful."),
                Message(role="user", content=f"I am jane@example.com, card {CARD}, key {OPENAI}"),
            ],
            params={"user": "bob@example.org", "temperature": 0.2},
            attributes={"http.request.header.authorization": "Bearer " + JWT, "region": "eu"},
            **base,
        ),
        ToolCall(
            event_id="e2",
            tool_name="refund",
            arguments={
                "customer": {"email": "jane@example.com", "phone": "+44 20 7946 0958", "ssn": "123456789"},
                "auth": {"password": "hunter2x", "apiKey": GITHUB, "pin": 4321},
                "items": [{"iban": IBAN}, "wire to " + IBAN],
                "order_id": "ORD-2024-004512",
            },
            result=f"refund sent to {IBAN}; db postgres://app:S3cr3t!pw@db:5432/x",
            **base,
        ),
        ToolCall(event_id="e3", tool_name="sql", arguments='{"dsn": "postgres://u:Pa55w0rd9@h/db"}', **base),
        Output(event_id="e4", status="ok", latency_ms=12.0, content="Your SSN 123-45-6789 and " + PEM, **base),
        Eval(event_id="e5", eval_name="pii", comment="leaked AKIAZ2QX7JHRT4MWN5PB", **base),
        Change(event_id="e6", ts=1_760_000_000_000, change_kind="config", to_value="STRIPE=" + STRIPE),
    ]


SEEDED = [
    "jane@example.com", "bob@example.org", CARD, OPENAI, JWT, "+44 20 7946 0958", "123456789", "hunter2x",
    GITHUB, "4321", IBAN, IBAN.replace(" ", ""), "S3cr3t!pw", "Pa55w0rd9", "123-45-6789", AWS_ID, STRIPE,
    "MIIEowIBAAKCAQEAx7Jc2vKp9Lm4TzRb8Nw1YfHs6Gd3Ue5Ao0IiZ",
]  # fmt: skip


@pytest.mark.parametrize("policy", ["mask", "hash", "drop_content"])
def test_event_redaction_leaves_no_seeded_value_in_bytes(policy: str) -> None:
    r = Redactor(Policy.uniform(policy), KEY, tenant="acme")
    for ev in _seeded_events():
        before = encode_event(ev)
        red, detections = r.redact_event(ev)
        raw = encode_event(red)
        for value in SEEDED:
            assert value.encode() not in raw, (policy, ev.event_type, value)
            assert msgspec.json.encode(value)[1:-1] not in raw
        assert detections, ev.event_type
        assert encode_event(ev) == before  # the input event is not modified
        if ev.event_id == "e2" and policy != "drop_content":
            assert b"ORD-2024-004512" in raw  # clean values next to the secrets survive


def test_event_detections_name_field_class_count() -> None:
    r = Redactor()
    red, dets = r.redact_event(_seeded_events()[1])
    found = {(d.field, d.cls): d.count for d in dets}
    assert found[("arguments.customer.email", "email")] == 1
    assert found[("arguments.customer.ssn", "national_id")] == 1
    assert found[("arguments.auth.password", "password")] == 1
    assert found[("arguments.auth.pin", "generic_secret")] == 1
    assert found[("arguments.items[0].iban", "iban")] == 1
    assert found[("arguments.items[1]", "iban")] == 1
    assert found[("result", "iban")] == 1
    assert found[("result", "url_password")] == 1
    assert red.arguments["order_id"] == "ORD-2024-004512"  # type: ignore[index]
    assert red.arguments["customer"]["phone"] == "[PHONE]"  # type: ignore[index]


def test_clean_event_is_returned_as_is() -> None:
    ev = Output(
        event_id="e", ts=1_760_000_000_000, trace_id="t", workflow="w", status="ok", latency_ms=1.0, content="fine"
    )
    red, dets = Redactor().redact_event(ev)
    assert red is ev and dets == []


def test_findings_never_hold_the_value_and_are_stable() -> None:
    r = Redactor()
    all_findings = []
    for ev in _seeded_events():
        _, dets = r.redact_event(ev)
        fs = detection_findings(ev, dets, detected_at=1)
        assert fs == detection_findings(ev, dets, detected_at=1)  # same ids on replay
        all_findings += fs
        for f in fs:
            raw = encode_finding(f)
            for value in SEEDED:
                assert value.encode() not in raw
            assert f.kind in ("secret_detected", "pii_detected")
            assert f.severity == ("high" if f.kind == "secret_detected" else "medium")
            assert f.evidence["count"] >= 1 and "[" not in f.evidence["field"].replace("[]", "")
    kinds = {(f.kind, f.evidence["class"]) for f in all_findings}
    assert ("secret_detected", "openai_key") in kinds and ("pii_detected", "email") in kinds


def test_findings_fold_list_indices() -> None:
    ev = _seeded_events()[0]
    dets = [
        Detection("messages[1].content", "email", "pii", 1, "mask"),
        Detection("messages[3].content", "email", "pii", 2, "mask"),
    ]
    (f,) = detection_findings(ev, dets, detected_at=0)
    assert f.evidence["field"] == "messages[].content" and f.value == 3.0
    assert f.trace_id == "tr-1" and f.tenant == "acme"


def test_config_scopes_and_validation() -> None:
    cfg = RedactionSettings.model_validate(
        {
            "hash_key": KEY,
            "defaults": {"secrets": "mask", "pii": "mask"},
            "overrides": [
                {"tenant": "acme", "workflow": "support", "pii": "hash", "classes": {"ip_address": "allow"}},
                {"tenant": "acme", "pii": "drop_content"},
                {"workflow": "support", "secrets": "hash"},
            ],
        }
    )
    p = cfg.policy_for("acme", "support")
    assert (p.secrets, p.pii) == ("hash", "hash")  # tenant+workflow beats tenant-only
    assert p.action("ip_address", "pii") == "allow"
    assert cfg.policy_for("acme", "billing").pii == "drop_content"
    assert (cfg.policy_for("globex", "support").secrets, cfg.policy_for("globex", "support").pii) == ("hash", "mask")
    assert cfg.policy_for("globex", "billing") == Policy()
    assert cfg.redactor_for("acme", "support") is cfg.redactor_for("acme", "support")
    assert RedactionSettings(enabled=False).policy_for("a", "b") == Policy(secrets="allow", pii="allow")
    with pytest.raises(ValueError):
        RedactionSettings.model_validate({"defaults": {"pii": "hash"}})  # hash without a key
    with pytest.raises(ValueError):
        RedactionSettings.model_validate({"defaults": {"classes": {"emails": "allow"}}})


def test_cli_redacts_stdin() -> None:
    import typer
    from typer.testing import CliRunner

    from llmpulse.commands.redact import redact_command

    app = typer.Typer()
    app.command("redact")(redact_command)
    app.command("version")(lambda: None)  # two commands, so "redact" is addressed by name
    res = CliRunner().invoke(app, ["redact"], input=f"mail jane@example.com key {AWS_ID}\n")
    assert res.exit_code == 0, res.output
    assert "[EMAIL]" in res.stdout and "[SECRET:aws_access_key]" in res.stdout
    assert "jane@example.com" not in res.stdout and AWS_ID not in res.stdout
    bad = CliRunner().invoke(app, ["redact", "--policy", "nope"], input="x")
    assert bad.exit_code != 0


# ------------------------------------------------ the clean event's fast path (one prefilter pass)

from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st  # noqa: E402

_SNIPPETS = ["the order shipped", "call me", "ok", "", "line one\nline two", "page 2 of 7", "[EMAIL]",
             "jane.doe@example.com", "+1 415 555 0132", "4111 1111 1111 1111", "ghp_" + "a1B2c3D4e5" * 4,
             "AKIAIOSFODNN7EXAMPLE", "password: hunter2", "s.", "10.0.0.7", "DE89 3704 0044 0532 0130 00",
             "sk-proj-" + "Zq9" * 12, "hunter2", "4111111111111111", "jane", "é ü ß 東京"]
_text = st.lists(st.sampled_from(_SNIPPETS), max_size=4).map(" ".join)
_value = st.recursive(st.one_of(_text, st.integers(-10**17, 10**17), st.none(), st.booleans()),
                      lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
                          st.sampled_from(["q", "password", "customer_email", "pin", "phone", "note", "token_count"]),
                          c, max_size=3)), max_leaves=6)


class _FullPath(Redactor):
    """The same redactor with the fast path off: every field through the full scan."""

    def _clean(self, event, scans):  # type: ignore[no-untyped-def]
        return False


@hyp_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.tuples(st.sampled_from(["system", "user", "jane@example.com"]), _text), max_size=3),
       arguments=st.dictionaries(st.sampled_from(["q", "password", "customer_email", "pin", "note"]), _value, max_size=3),
       result=_text, user=st.sampled_from(["user-7", "jane@example.com", "ghp_" + "a1B2c3D4e5" * 4, ""]),
       attrs=st.dictionaries(st.sampled_from(["route", "api_key", "ip"]), _text, max_size=2),
       policy=st.sampled_from([Policy(), Policy(pii="allow"), Policy(classes={"email": "allow"})]))
def test_the_fast_path_gives_what_the_full_path_gives(messages, arguments, result, user, attrs, policy):
    fast, full = Redactor(policy), _FullPath(policy)
    events = [Prompt(event_id="e1", ts=1_764_000_000_000, trace_id="t1", workflow="w", user_id=user, attributes=attrs,
                     messages=[Message(role=r, content=c) for r, c in messages]),
              ToolCall(event_id="e2", ts=1_764_000_000_000, trace_id="t1", workflow="w", tool_name="lookup", user_id=user,
                       arguments=arguments, result=result)]
    for event in events:
        assert fast.redact_event(event) == full.redact_event(event)
        assert fast.redact_event(event) == full.redact_event(event)  # again: names now remembered clean
    # A batch judged in one scan by the strictest policy: what it clears, no laxer one redacts.
    verdicts = Redactor(Policy()).preclear(events + events[::-1])
    for ok, event in zip(verdicts, events + events[::-1]):
        if ok:
            assert full.redact_event(event) == (event, [])
        assert fast.redact_event(event, precleared=ok) == full.redact_event(event)


def test_the_fast_path_clears_clean_events_only():
    r = Redactor()
    scans = {"arguments": "text", "result": "text"}
    clean = ToolCall(event_id="e", ts=1_764_000_000_000, trace_id="t", workflow="w", tool_name="lookup",
                     arguments={"q": "order 1234", "note": ["shipped"]}, result="ok")
    assert r._clean(clean, scans)
    for arguments in ({"password": "hunter2"}, {"q": "mail jane@example.com"}, {"pin": 1234}, {"jane@example.com": 1}):
        assert not r._clean(msgspec.structs.replace(clean, arguments=arguments), scans)
    batch = [clean, msgspec.structs.replace(clean, result="write to jane@example.com"), clean,
             msgspec.structs.replace(clean, arguments={"password": "hunter2"})]
    assert r.preclear(batch) == [True, False, True, False]
