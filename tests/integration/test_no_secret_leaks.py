"""Nothing of a seeded secret or personal datum is stored: real broker, real worker, real ClickHouse.

Three producers feed one worker (default policy: mask secrets and PII):

(a) a producer with the SDK's redaction turned off (`redaction=False`), writing raw secrets
    to `llm.events`: the worker must redact them before anything is stored or forwarded;
(b) the SDK as the README shows it, `Publisher(bootstrap)` (redaction on by default):
    the secrets must not even reach `llm.events`;
(c) the same default publisher's `publish_raw` (replays, gateways): likewise.

Each producer seeds its own distinct values of every class (API keys, JWT, PEM key,
passwords in connection strings, a sample of the rule catalogue's formats, email, card,
IBAN, phone) into prompt messages, tool
arguments and results, output content, attributes, an unknown extra field, into malformed
events that end in the DLQ, and into every free-text slot of every event type, generated
from `contract.FREE_TEXT` (so a field added to the contract is seeded without touching this
test): texts get every class, names (user ids, models, tool names, roles: scanned for
secrets only, by design) get a secret. Then every place data goes is searched for every
value: `llm.events` (for (b) and (c)), the DLQ (bytes and headers), `llm.findings`, every
table of the ClickHouse database, and the worker's log.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from llmpulse.ingest import KafkaPublisher, Publisher
from llmpulse.ingest.redaction_hook import ANNOTATION
from bench.redaction.formats import FORMATS
from llmpulse.processors.redaction import CLASS_KIND, Redactor
from llmpulse.schemas.contract import FREE_TEXT
from tests.conftest import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

ALNUM = string.ascii_letters + string.digits
TS = (time.time_ns() // 3_600_000_000_000 - 1) * 3_600_000  # inside the validation window


# A sample of the catalogue's formats (bench/redaction/formats.py), by the class that names them.
CATALOGUE_SAMPLE = {"gitlab_pat": "gitlab_pat", "huggingface_access_token": "huggingface_user",
                    "npm_access_token": "npm_token", "sendgrid_api_token": "sendgrid_key", "groq_api_key": "groq_key",
                    "pypi_upload_token": "pypi_token", "age_secret_key": "age_secret_key",
                    "discord_webhook": "discord_webhook", "vault_service_token": "vault_service_token"}


def _catalogue(r: random.Random, fmt: str) -> tuple[str, tuple[str, ...]]:
    value, a, b = FORMATS[fmt](r)
    return value, (value[a:b],)


# -- seeded values -------------------------------------------------------------------
def _rand(r: random.Random, alphabet: str, n: int) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def _mixed(r: random.Random, n: int) -> str:
    while True:  # lower, upper and digits, like real tokens
        s = _rand(r, ALNUM, n)
        if any(c.islower() for c in s) and any(c.isupper() for c in s) and any(c.isdigit() for c in s):
            return s


def _luhn(r: random.Random, prefix: str, n: int) -> str:
    body = prefix + _rand(r, string.digits, n - len(prefix) - 1)
    for d in string.digits:
        total = 0
        for i, ch in enumerate(reversed(body + d)):
            x = int(ch)
            total += (x * 2 - 9 if x > 4 else x * 2) if i % 2 else x
        if total % 10 == 0:
            return body + d
    raise AssertionError("unreachable")


def _iban(r: random.Random) -> str:
    bban = _rand(r, string.digits, 18)
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    return f"DE{check:02d}{bban}"


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def seed_values(r: random.Random) -> dict[str, tuple[str, tuple[str, ...]]]:
    """class -> (text to seed, needles that must never be stored: the secret part, in every form)."""
    pw, pw2 = _mixed(r, 10) + "!" + _mixed(r, 3), _mixed(r, 12) + "#1"
    card, iban, phone = _luhn(r, "4", 16), _iban(r), _rand(r, "123456789", 8)
    pem = [_rand(r, ALNUM + "+/", 64) for _ in range(3)]
    jwt = ".".join([_b64url(b'{"alg":"HS256","typ":"JWT"}'),
                    _b64url(json.dumps({"sub": _mixed(r, 12), "iat": 1_764_000_000}).encode()),
                    _b64url(r.randbytes(32))])
    email = f"{_rand(r, string.ascii_lowercase, 6)}.{_rand(r, string.ascii_lowercase, 7)}{r.randint(10, 99)}@example-mail.com"
    fmt = lambda v: " ".join(v[i:i + 4] for i in range(0, len(v), 4))  # noqa: E731
    key = lambda v: (v, (v,))  # noqa: E731
    return {
        "openai_key": key("sk-proj-" + _mixed(r, 48) + "T3BlbkFJ" + _mixed(r, 24)),
        "anthropic_key": key("sk-ant-api03-" + _mixed(r, 90) + "AA"),
        "aws_access_key": key("AKIA" + _rand(r, string.ascii_uppercase + string.digits, 16)),
        "github_token": key("ghp_" + _mixed(r, 36)),
        **{cls: _catalogue(r, fmt) for cls, fmt in CATALOGUE_SAMPLE.items()},
        "jwt": (jwt, (jwt, jwt.rsplit(".", 1)[1])),
        "private_key": ("-----BEGIN PRIVATE KEY-----\n" + "\n".join(pem) + "\n-----END PRIVATE KEY-----", tuple(pem)),
        "url_password": (f"postgresql://svc_app:{pw}@db-7.internal:5432/orders", (pw,)),
        "password": (f"Server=sql-3.internal;User Id=svc;Password={pw2};Encrypt=true", (pw2,)),
        "email": key(email),
        "card_number": (fmt(card), (fmt(card), card)),
        "iban": (fmt(iban), (fmt(iban), iban)),
        "phone": (f"+49 30 {phone[:4]} {phone[4:]}", (f"+49 30 {phone[:4]} {phone[4:]}", "4930" + phone)),
    }


CLASSES = list(seed_values(random.Random(0)))  # the detector classes seeded
SECRET_CLASSES = [c for c in CLASSES if CLASS_KIND[c] == "secret"]


class Seeds:
    """Distinct values per (producer, location); remembers where each needle was put."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.where: dict[str, str] = {}  # needle -> "a:prompt.messages:email"

    def text(self, label: str, few: int = 0) -> str:
        """Every class in a sentence; with `few`, four of them in turn (fields bounded as labels)."""
        values = seed_values(self.r)
        if few:
            values = {c: values[c] for c in (CLASSES * 2)[few % len(CLASSES):][:4]}
        for cls, (_, needles) in values.items():
            for n in needles:
                self.where[n] = f"{label}:{cls}"
        return "Context for the agent: " + ", ".join(v[0] for v in values.values()) + ". Thanks!"

    def secret(self, label: str, i: int) -> str:
        """One secret (for a name: scanned for secrets only), the i-th class in turn."""
        cls = SECRET_CLASSES[i % len(SECRET_CLASSES)]
        text, needles = seed_values(self.r)[cls]
        for n in needles:
            self.where[n] = f"{label}:{cls}"
        return text

    def needles(self, prefix: str = "") -> list[str]:
        return [n for n, w in self.where.items() if w.startswith(prefix)]


# -- events --------------------------------------------------------------------------
def valid_events(seeds: Seeds, path: str, trace: str) -> list[dict]:
    common = {"trace_id": trace, "workflow": "support-bot", "tenant": "acme", "model": "gpt-4o",
              "provider": "openai", "ts": TS}
    return [
        {**common, "event_id": f"{path}-prompt", "event_type": "prompt",
         "messages": [{"role": "system", "content": "You are support."},
                      {"role": "user", "content": seeds.text(f"{path}:messages")}],
         "attributes": {"debug.note": seeds.text(f"{path}:attributes")}},
        {**common, "event_id": f"{path}-tool", "event_type": "tool_call", "tool_name": "refund",
         "arguments": {"request": {"note": seeds.text(f"{path}:arguments")}},
         "result": seeds.text(f"{path}:result")},
        {**common, "event_id": f"{path}-output", "event_type": "output", "status": "ok", "latency_ms": 812.0,
         "content": seeds.text(f"{path}:content"), "usage": {"input_tokens": 900, "output_tokens": 120},
         "customer_context": {"summary": seeds.text(f"{path}:extra")}},  # unknown field -> `extra`
    ]


REQUIRED: dict[str, dict[str, Any]] = {
    "prompt": {}, "tool_call": {"tool_name": "refund"}, "output": {"status": "error", "latency_ms": 3.0},
    "eval": {"eval_name": "faithfulness"}, "change": {"change_kind": "config"},
    "decision": {"decision": "deny", "checked": "model", "control_kind": "model_block"},
}


def every_slot_events(seeds: Seeds, path: str, trace: str) -> list[dict]:
    """One event per type with a seeded value in every free-text slot of `FREE_TEXT`."""
    out = []
    for etype, fields in FREE_TEXT.items():
        e: dict[str, Any] = {"event_id": f"{path}-slots-{etype}", "event_type": etype, "trace_id": trace,
                             "tenant": "acme", "ts": TS, **REQUIRED[etype]}
        for i, (name, scan) in enumerate(fields.items()):
            label = f"{path}:slot.{etype}.{name}"
            if isinstance(scan, dict):  # prompt messages: each subfield
                e[name] = [{sub: seeds.text(f"{label}.{sub}") if how == "text" else seeds.secret(f"{label}.{sub}", i)
                            for sub, how in scan.items()}]
            elif name in ("params", "arguments", "attributes"):  # dicts: a value and a key
                e[name] = {"note": seeds.text(label), seeds.secret(f"{label}.<key>", i): "1"}
            elif name == "tools_offered":
                e[name] = ["search_kb", seeds.secret(label, i)]
            elif scan == "text":  # a one-line string: some are bounded as labels (error_type)
                e[name] = seeds.text(label, few=i + 1)
            else:
                e[name] = seeds.secret(label, i)
        out.append(e)
    return out


def malformed_dicts(seeds: Seeds, path: str, trace: str) -> list[dict]:
    """Contract-invalid events (the DLQ's), with secrets in their content."""
    common = {"workflow": "support-bot", "tenant": "acme", "ts": TS}
    return [
        {**common, "event_id": f"{path}-bad-1", "event_type": "prompt",  # no trace_id
         "messages": [{"role": "user", "content": seeds.text(f"{path}:dlq.no-trace")}]},
        {**common, "trace_id": trace, "event_id": f"{path}-bad-2", "event_type": "output", "status": "exploded",
         "latency_ms": 1.0, "content": seeds.text(f"{path}:dlq.bad-status")},
        {**common, "trace_id": trace, "event_id": f"{path}-bad-3", "event_type": "tool_call", "tool_name": "refund",
         "duration_ms": -1, "arguments": {"q": seeds.text(f"{path}:dlq.args")}, "result": seeds.text(f"{path}:dlq.result")},
    ]


def raw_only_malformed(seeds: Seeds, path: str, trace: str) -> list[bytes]:
    """What only a producer writing bytes can send: broken JSON, invalid UTF-8, and values echoed by the validator."""
    truncated = orjson.dumps({"event_id": f"{path}-bad-4", "event_type": "prompt", "trace_id": trace, "workflow": "w",
                              "ts": TS, "messages": [{"role": "user", "content": seeds.text(f"{path}:dlq.truncated")}],
                              "padding": "x" * 40})[:-30]
    not_utf8 = b"\xff\xfe" + seeds.text(f"{path}:dlq.not-utf8").encode() + b"\xc3\x28"
    status_secret = seed_values(seeds.r)["openai_key"][0]
    seeds.where[status_secret] = f"{path}:dlq.reason-status:openai_key"
    email = seed_values(seeds.r)["email"][0]
    seeds.where[email] = f"{path}:dlq.reason-event-type:email"
    return [
        truncated,
        not_utf8,
        # The validator's reason quotes an invalid enum value: a secret there must not reach
        # the DLQ headers or the dead_letters table.
        orjson.dumps({"event_id": f"{path}-bad-5", "event_type": "output", "trace_id": trace, "workflow": "w",
                      "ts": TS, "status": status_secret, "latency_ms": 1.0}),
        orjson.dumps({"event_id": f"{path}-bad-6", "event_type": email, "trace_id": trace, "workflow": "w", "ts": TS}),
    ]


# -- reading every place data goes -----------------------------------------------------
def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Message]:
    """Every message of the topic, up to its current end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"leak-check-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    try:
        partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
        high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        left = {p for p, h in high.items() if h > 0}
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append(m)
            if m.offset() + 1 >= high[m.partition()]:
                left.discard(m.partition())
        assert not left, f"could not read {topic} to its end"
        return got
    finally:
        c.close()


def message_texts(msgs: list[Message]) -> list[str]:
    out = []
    for m in msgs:
        parts = [m.value() or b"", m.key() or b""] + [v or b"" for _, v in (m.headers() or [])]
        out.extend(p.decode("utf-8", "replace") for p in parts)
    return out


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)
    elif value is not None:
        yield str(value)


def clickhouse_texts(worker: WorkerProcess) -> dict[str, list[str]]:
    """Every cell of every table and view in the llmpulse database, as text."""
    tables = [r[0] for r in worker.query("SELECT name FROM system.tables WHERE database = '{db}'")]
    assert "events" in tables and "dead_letters" in tables and "findings" in tables
    return {t: list(strings(worker.query(f"SELECT * FROM {{db}}.`{t}`"))) for t in tables}


def leaks(texts: list[str], needles: list[str]) -> list[str]:
    """Needles found verbatim, or in their JSON-escaped form."""
    forms = {n: {n, json.dumps(n)[1:-1]} for n in needles}
    return [n for n in needles if any(f in t for t in texts for f in forms[n])]


# -- the test --------------------------------------------------------------------------
def test_no_seeded_secret_or_pii_is_stored_anywhere(worker: WorkerProcess, tmp_path: Path) -> None:
    s = worker.settings
    seed = uuid.uuid4().int & 0xFFFFFFFF
    seeds = Seeds(seed)
    trace_a, trace_b, trace_c = f"trace-a-{seed}", f"trace-b-{seed}", f"trace-c-{seed}"
    valid_a = valid_events(seeds, "a", trace_a) + every_slot_events(seeds, "a", trace_a)
    bad_a, raw_a = malformed_dicts(seeds, "a", trace_a), raw_only_malformed(seeds, "a", trace_a)
    valid_b = valid_events(seeds, "b", trace_b) + every_slot_events(seeds, "b", trace_b)
    bad_b = malformed_dicts(seeds, "b", trace_b)
    valid_c = [orjson.dumps(e) for e in valid_events(seeds, "c", trace_c) + every_slot_events(seeds, "c", trace_c)]
    raw_c = raw_only_malformed(seeds, "c", trace_c) + [orjson.dumps(e) for e in malformed_dicts(seeds, "c", trace_c)]

    # The detectors catch every seeded value in its context; otherwise the rest is moot.
    redactor = Redactor()
    for e in valid_a + bad_a + raw_a:
        text = e.decode("utf-8", "replace") if isinstance(e, bytes) else orjson.dumps(e).decode()
        redacted = redactor.redact_text(text)[0]
        missed = [seeds.where[n] for n in seeds.needles("a:") if n in redacted or json.dumps(n)[1:-1] in redacted]
        assert not missed, f"detector missed {missed} (seed {seed})"

    # (a) a producer that turned the SDK's redaction off.
    raw_pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic, redaction=False)
    for e in valid_a + bad_a:
        assert raw_pub.publish(e)
    for b in raw_a:
        assert raw_pub.publish_raw(b, trace_a)
    # (b) the SDK as the README shows it: redaction on by default, same policy as the worker (mask).
    sdk_pub = Publisher(s.kafka_bootstrap, s.events_topic)
    for e in valid_b + bad_b:
        assert sdk_pub.publish(e)
    # (c) the same publisher's publish_raw: valid events, broken JSON, invalid UTF-8, echoed values.
    for b in valid_c + raw_c:
        assert sdk_pub.publish_raw(b, trace_c)
    for pub in (raw_pub, sdk_pub):
        assert pub.flush(30) == 0 and pub.stats.undelivered == 0
        pub.close()
    hook = sdk_pub.redaction
    assert hook is not None and hook.stats.failed_closed == 0 and hook.stats.dropped == 0
    assert hook.stats.redacted == len(valid_b + bad_b + valid_c + raw_c)

    n_valid = len(valid_a) + len(valid_b) + len(valid_c)
    n_bad = len(bad_a) + len(raw_a) + len(bad_b) + len(raw_c)
    wait_for(lambda: worker.stats().get("consumed", 0) >= n_valid + n_bad, 90, what="all consumed")
    counts = lambda: (worker.scalar("SELECT count() FROM {db}.events"),  # noqa: E731
                      worker.scalar("SELECT count() FROM {db}.dead_letters"))
    try:
        wait_for(lambda: counts() == (n_valid, n_bad), 30, what="rows")
    except AssertionError:
        reasons = worker.query("SELECT reason FROM {db}.dead_letters")
        raise AssertionError(f"events, dead letters: {counts()} != {(n_valid, n_bad)}; reasons: {reasons}") from None

    needles_a, needles_b = seeds.needles("a:"), seeds.needles("b:") + seeds.needles("c:")
    events_topic = message_texts(read_topic(s.kafka_bootstrap, s.events_topic))
    dlq_msgs = read_topic(s.kafka_bootstrap, s.dlq_topic)
    findings_msgs = read_topic(s.kafka_bootstrap, s.findings_topic)
    stored = clickhouse_texts(worker)
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")

    # The test means something: (a)'s raw secrets were on `llm.events`, all messages arrived.
    raw_hits = {seeds.where[n] for n in leaks(events_topic, needles_a)}
    assert raw_hits == {seeds.where[n] for n in needles_a}
    assert len(dlq_msgs) == n_bad

    where = seeds.where
    places = {"llm.events": (events_topic, needles_b), "DLQ": (message_texts(dlq_msgs), needles_a + needles_b),
              "llm.findings": (message_texts(findings_msgs), needles_a + needles_b),
              "worker log": ([worker_log], needles_a + needles_b),
              **{f"ClickHouse {t}": (texts, needles_a + needles_b) for t, texts in stored.items()}}
    found = {place: sorted(where[n] for n in leaks(texts, needles)) for place, (texts, needles) in places.items()}
    assert {p: f for p, f in found.items() if f} == {}, f"seed {seed}"

    # Redacted, not dropped: placeholders name the class where the values were.
    rows = {r[0]: r[1:] for r in worker.query(
        "SELECT event_id, messages, attributes, arguments, result, content, extra FROM {db}.events")}
    for path in ("a", "b", "c"):
        prompt, tool, output = rows[f"{path}-prompt"], rows[f"{path}-tool"], rows[f"{path}-output"]
        for text in (prompt[0], prompt[1]["debug.note"], tool[2], tool[3], output[4], output[5]):
            assert "[SECRET:openai_key]" in text and "[EMAIL]" in text and "[CARD]" in text, (path, text)
            assert "postgresql://svc_app:[SECRET:url_password]@db-7.internal" in text, (path, text)
    # (b): what the SDK redacted is named on the event (class and field, never the value).
    notes = json.loads(rows["b-prompt"][1][ANNOTATION])
    assert {(c, f) for c, f, _ in notes} == {(c, f) for c in CLASSES for f in ("messages[].content", "attributes.debug.note")}

    # Findings for (a): class and field of every seeded value, in the topic and the table.
    findings = [orjson.loads(m.value()) for m in findings_msgs]
    seen = {(f["kind"], f["evidence"]["class"], f["evidence"]["field"]) for f in findings
            if f["kind"] in ("secret_detected", "pii_detected") and f["trace_id"] == trace_a}
    for fld in ("messages[].content", "attributes.debug.note", "arguments.request.note", "result", "content"):
        for cls in CLASSES:
            kind = "secret_detected" if CLASS_KIND[cls] == "secret" else "pii_detected"
            assert (kind, cls, fld) in seen, (kind, cls, fld)
    table = {(k, json.loads(ev)["class"], json.loads(ev)["field"]) for k, ev in worker.query(
        "SELECT kind, evidence FROM {db}.findings WHERE kind IN ('secret_detected', 'pii_detected')")}
    assert seen <= table

    # Every free-text slot gives a finding naming its field, whether the worker redacted it (a)
    # or the SDK did before publish (b, c: read back from the SDK's annotation).
    slot_findings = {(f["trace_id"], f["evidence"]["event_type"], re.match(r"[^.\[]*", f["evidence"]["field"]).group())
                     for f in findings if f["kind"] in ("secret_detected", "pii_detected")
                     and "-slots-" in f["evidence"]["event_id"]}
    missing = [(trace[6], etype, name) for trace in (trace_a, trace_b, trace_c)
               for etype, fields in FREE_TEXT.items() for name in fields if (trace, etype, name) not in slot_findings]
    assert missing == []
