"""Every free-text field of the contract is redacted, in the app and in the worker.

The slots are generated from `contract.FREE_TEXT`, so a field added to the contract is
covered without touching this file; the contract test below fails if a str-bearing field
is neither scanned nor named unscanned on purpose.
"""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.redaction import values as V
from llmpulse.ingest import KafkaPublisher, MemoryPublisher
from llmpulse.ingest.redaction_hook import ANNOTATION, RedactionHook, redaction_hook
from llmpulse.processors.redaction import Policy, Redactor
from llmpulse.processors.redaction_config import RedactionSettings
from llmpulse.processors.validate import Valid, validate
from llmpulse.schemas import contract as C

# Formats the detectors know by shape alone, without a keyword nearby.
STANDALONE = {
    "openai_key": V.openai_key, "anthropic_key": V.anthropic_key, "aws_access_key": V.aws_access_key,
    "gcp_api_key": V.gcp_api_key, "gcp_oauth_token": V.gcp_oauth, "azure_client_secret": V.azure_client_secret,
    "github_token": V.github_token, "slack_token": V.slack_token, "stripe_key": V.stripe_key, "jwt": V.jwt,
    "private_key": V.private_key,
}  # fmt: skip
GITHUB = "ghp_7Yt3Rk9Wq2Lp5Zx8Cv1Bn4Mj6Hg0Fd2Sa3Qe"
EMAIL = "ingrid.holm@nordlys-mail.no"

REQUIRED: dict[str, dict[str, Any]] = {
    "prompt": {},
    "tool_call": {"tool_name": "refund"},
    "output": {"status": "ok", "latency_ms": 12.0},
    "eval": {"eval_name": "faithfulness"},
    "change": {"change_kind": "config"},
    "decision": {"decision": "deny", "checked": "model", "control_kind": "model_block"},
}


def base(etype: str) -> dict:
    return {"event_id": "e-1", "ts": 1_764_000_000_000, "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331", "workflow": "support", "tenant": "acme", "event_type": etype,
            **REQUIRED[etype]}


def _field_types(cls: type) -> dict[str, msgspec.inspect.Type]:
    return {f.name: f.type for f in msgspec.inspect.type_info(cls).fields}


def slots() -> list[tuple[str, str, str, str]]:
    """(event type, field, sub, how): every place a string of FREE_TEXT can sit."""
    out = []
    for etype, fields in C.FREE_TEXT.items():
        types = _field_types(C.EVENT_CLASSES[etype])
        for name, scan in fields.items():
            if isinstance(scan, dict):
                out += [(etype, name, sub, "struct") for sub in scan]
                continue
            t = types[name]
            kinds = {type(u).__name__ for u in (t.types if isinstance(t, msgspec.inspect.UnionType) else (t,))}
            if "DictType" in kinds:
                out += [(etype, name, "", "dict_value"), (etype, name, "", "dict_key")]
            if "ListType" in kinds:
                out.append((etype, name, "", "list"))
            if "StrType" in kinds:
                out.append((etype, name, "", "str"))
    return out


SLOTS = slots()


def scan_of(etype: str, name: str, sub: str) -> str:
    scan = C.FREE_TEXT[etype][name]
    return scan[sub] if isinstance(scan, dict) else scan  # type: ignore[return-value]


def plant(etype: str, name: str, sub: str, how: str, value: str) -> dict:
    e = base(etype)
    if how == "struct":
        msg = {"role": "user", "content": "hello"}
        msg[sub] = value
        e[name] = [{"role": "system", "content": "You are support."}, msg]
    elif how == "dict_value":
        e[name] = {"note": value, "n": "3"}
    elif how == "dict_key":
        e[name] = {value: "1"}
    elif how == "list":
        e[name] = ["search_kb", value]
    else:
        e[name] = value
    return e


def worker_pass(event: dict, redactor: Redactor | None = None) -> bytes:
    result = validate(orjson.dumps(event))
    assert isinstance(result, Valid), result
    redacted, _ = (redactor or Redactor()).redact_event(result.event)
    return C.encode_event(redacted)


def holds(data: bytes | str, value: str) -> bool:
    text = data.decode() if isinstance(data, bytes) else data
    return value in text or json.dumps(value)[1:-1] in text


# -- the list itself ----------------------------------------------------------------------
def test_every_str_bearing_field_is_scanned_or_unscanned_on_purpose() -> None:
    for etype, cls in C.EVENT_CLASSES.items():
        for name, t in _field_types(cls).items():
            if C._holds_str(t):
                assert name in C.FREE_TEXT[etype] or name in C.NOT_SCANNED, (etype, name)
            else:
                assert name not in C.FREE_TEXT[etype], (etype, name)


def test_the_named_fields_exist() -> None:
    every = {n for cls in (*C.EVENT_CLASSES.values(), C.Message) for n in cls.__struct_fields__}
    assert C.NAME_FIELDS <= every and C.NOT_SCANNED <= every
    assert not C.NAME_FIELDS & C.NOT_SCANNED


def test_the_slots_cover_the_metadata_fields_of_issue_12() -> None:
    covered = {(e, n, s) for e, n, s, _ in SLOTS}
    for need in [("output", "error_type", ""), ("prompt", "user_id", ""), ("tool_call", "tool_name", ""),
                 ("prompt", "prompt_version", ""), ("prompt", "messages", "role"), ("eval", "evaluator", ""),
                 ("prompt", "attributes", ""), ("change", "actor", "")]:
        assert need in covered, need
    assert len(SLOTS) >= 60


# -- a secret in every slot ----------------------------------------------------------------
@pytest.mark.parametrize("slot", SLOTS, ids=["-".join(x for x in s if x) for s in SLOTS])
def test_a_secret_in_any_free_text_slot_is_redacted_by_the_hook_and_the_worker(slot) -> None:
    event = plant(*slot, f"the token {GITHUB} again")
    hooked = orjson.dumps(redaction_hook()(event))
    assert holds(orjson.dumps(event), GITHUB) and not holds(hooked, GITHUB)
    assert not holds(worker_pass(event), GITHUB)
    assert isinstance(validate(hooked), Valid)


@pytest.mark.parametrize("slot", SLOTS, ids=["-".join(x for x in s if x) for s in SLOTS])
def test_personal_data_is_redacted_in_texts_and_kept_in_names(slot) -> None:
    event = plant(*slot, EMAIL)
    kept = scan_of(slot[0], slot[1], slot[2]) == "name"
    assert holds(orjson.dumps(redaction_hook()(event)), EMAIL) is kept
    assert holds(worker_pass(event), EMAIL) is kept


def test_ids_and_enums_are_left_alone() -> None:
    event = {**base("output"), "parent_span_id": "53995c3f42cd8ad8", "user_id": "u-42", "model": "gpt-4o"}
    out = redaction_hook()(event)
    assert out is event
    assert worker_pass(event) == worker_pass(out)


def test_a_value_the_contract_does_not_admit_is_scanned_before_it_reaches_kafka() -> None:
    # The worker dead-letters these, but they sit on `llm.events` first.
    hook = redaction_hook()
    for field, value in (("status", GITHUB), ("latency_ms", f"took {GITHUB}"), ("usage", {"input_tokens": GITHUB}),
                         ("ts", f"2026-01-01 {GITHUB}"), ("trace_id", {"x": GITHUB}), ("event_type", GITHUB)):
        out = hook({**base("output"), field: value})
        assert not holds(orjson.dumps(out), GITHUB), field
    assert hook.stats.failed_closed == 0


def test_names_are_looked_up_once_per_value() -> None:
    r = Redactor()
    assert r.redact_name("support-bot") == ("support-bot", {})
    assert "support-bot" in r._clean_names
    new, counts = r.redact_name(GITHUB)
    assert new == "[SECRET:github_token]" and counts == {"github_token": 1}
    assert GITHUB not in r._clean_names  # a secret is never remembered


def test_findings_of_name_fields_come_from_both_passes_with_the_same_ids() -> None:
    from llmpulse.processors.redaction import detection_findings

    event = plant("tool_call", "user_id", "", "str", GITHUB)
    raw = validate(orjson.dumps(event)).event
    worker = Redactor()
    direct = detection_findings(raw, worker.redact_event(raw)[1])
    hooked = validate(orjson.dumps(redaction_hook()(event))).event
    via_sdk = detection_findings(hooked, worker.redact_event(hooked)[1])
    assert [f.finding_id for f in direct] == [f.finding_id for f in via_sdk]
    assert direct[0].evidence["field"] == "user_id" and direct[0].evidence["class"] == "github_token"
    assert json.loads(hooked.attributes[ANNOTATION]) == [["github_token", "user_id", 1]]


# -- the property ---------------------------------------------------------------------------
_filler = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slot=st.sampled_from(SLOTS), fmt=st.sampled_from(sorted(STANDALONE)), seed=st.integers(0, 2**32 - 1),
       before=_filler, after=_filler, policy=st.sampled_from(["mask", "hash", "drop_content"]))
def test_property_a_planted_secret_never_survives(slot, fmt, seed, before, after, policy) -> None:
    secret = STANDALONE[fmt](random.Random(seed))
    text = f"{before} {secret} {after}" if scan_of(*slot[:3]) == "text" or seed % 2 else secret
    event = plant(*slot, text)
    key = "k" * 32
    hooked = redaction_hook(Policy.uniform(policy), hash_key=key)(event)
    assert hooked is not None and not holds(orjson.dumps(hooked), secret), (slot, fmt)
    assert not holds(worker_pass(event, Redactor(Policy.uniform(policy), key, "acme")), secret), (slot, fmt)


# -- the publisher --------------------------------------------------------------------------
def test_publishers_redact_by_default_and_can_be_told_not_to() -> None:
    event = {**base("tool_call"), "user_id": GITHUB}
    on, off = MemoryPublisher(), MemoryPublisher(redaction=False)
    on.publish(dict(event)), off.publish(dict(event))
    assert on.events[0]["user_id"] == "[SECRET:github_token]" and off.events[0]["user_id"] == GITHUB
    assert isinstance(on.redaction, RedactionHook) and off.redaction is None
    mine = redaction_hook(Policy(pii="hash"), hash_key="k" * 32)
    assert MemoryPublisher(redaction=mine).hooks == [mine]
    assert MemoryPublisher(hooks=[mine]).hooks == [mine]  # not a second pass
    with pytest.raises(TypeError):
        MemoryPublisher(redaction="mask")  # type: ignore[arg-type]


def test_publish_raw_redacts_and_passes_undecodable_bytes_scrubbed(monkeypatch) -> None:
    pub = KafkaPublisher("127.0.0.1:1", "t", config={"message.timeout.ms": 1000})
    sent: list[bytes] = []
    monkeypatch.setattr(pub, "_produce", lambda value, key: sent.append(value) or True)
    clean = orjson.dumps(base("output"))
    big = orjson.dumps(base("output"))[:-1] + b',"usage":{"input_tokens":100000000000000000000000000000}}'
    raw = [
        orjson.dumps({**base("output"), "content": f"key {GITHUB}", "error_type": GITHUB}),
        clean,
        b'{"event_type": "output", "content": "key ' + GITHUB.encode() + b'", "trunc',
        b"\xff\xfe not utf-8 " + GITHUB.encode() + b" \xc3\x28",
        b'["a list", "' + GITHUB.encode() + b'"]',
        big,
    ]
    assert all(pub.publish_raw(b, "k") for b in raw)
    assert not any(GITHUB.encode() in b for b in sent)
    assert sent[1] is clean and sent[5] is big  # nothing found: the bytes as they were
    assert isinstance(validate(sent[0]), Valid)
    assert sent[3] == b"\xff\xfe not utf-8 [SECRET:github_token] \xc3\x28"  # other bytes kept
    assert sent[2].endswith(b'"content": "key [SECRET:github_token]", "trunc')
    pub.close(0.1)


def test_publish_raw_never_raises(monkeypatch) -> None:
    pub = KafkaPublisher("127.0.0.1:1", "t", config={"message.timeout.ms": 1000})
    monkeypatch.setattr(Redactor, "redact_text", lambda *a: 1 / 0)
    monkeypatch.setattr(pub, "_produce", lambda value, key: pytest.fail("published unscanned bytes"))
    assert pub.publish_raw(b"\xffbroken " + GITHUB.encode()) is False
    assert pub.stats.invalid == 1 and pub.redaction.stats.dropped == 1
    pub.close(0.1)


# -- bytes of unknown scope -----------------------------------------------------------------
def test_the_strictest_policy_covers_every_scope() -> None:
    s = RedactionSettings.model_validate({
        "hash_key": "x" * 32, "defaults": {"pii": "allow", "secrets": "mask"},
        "overrides": [{"tenant": "acme", "classes": {"email": "drop_content"}}, {"tenant": "b", "pii": "hash"},
                      {"workflow": "w", "secrets": "allow"}]})
    p = s.strictest_policy()
    assert p.action("email", "pii") == "drop_content" and p.action("phone", "pii") == "hash"
    assert p.action("github_token", "secret") == "mask"
    assert RedactionSettings.model_validate({"enabled": False}).strictest_policy().action("email", "pii") == "allow"
    text = f"mail {EMAIL} token {GITHUB}"
    assert s.strictest_redactor().redact_text(text)[0].startswith("[CONTENT DROPPED len=")
    assert s.strictest_redactor() is s.strictest_redactor()
    # The hook built from settings scrubs undecodable bytes with it.
    hook = redaction_hook(settings=RedactionSettings.model_validate(
        {"defaults": {"pii": "allow"}, "overrides": [{"tenant": "acme", "pii": "mask"}]}))
    assert hook.redact_bytes(f"broken {{ {EMAIL}".encode()) == b"broken { [EMAIL]"
