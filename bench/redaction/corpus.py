"""Labelled corpus for redaction: prompts, tool arguments, outputs and logs.

Most text is clean and deliberately tricky (UUIDs, commit hashes, order numbers, dates,
versions, prices, timestamps, MACs, slices); seeded secrets and PII sit in the contexts
they appear in for real (env files, connection strings, headers, JSON, chat). Every
seeded value and every tricky clean value is labelled with its span, so the scorer can
count both misses and false redactions. `generate(seed)` is deterministic.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from bench.redaction import values as V
from llmpulse.schemas.contract import ToolCall

Label = Literal["secret", "pii", "clean"]


@dataclass
class Item:
    start: int
    end: int
    cls: str
    kind: Label


@dataclass
class Doc:
    field: str  # which event field this text stands for
    text: str
    items: list[Item]


@dataclass
class StructSample:
    """A tool call whose arguments are a dict: scored on the encoded event bytes."""

    event: ToolCall
    seeded: list[tuple[str, str, str]]  # (value, class, kind)
    clean: list[str]


@dataclass
class Corpus:
    docs: list[Doc] = field(default_factory=list)
    structs: list[StructSample] = field(default_factory=list)


# ---------------------------------------------------------------- contexts

SECRET_CONTEXTS: dict[str, list[str]] = {
    "openai_key": ["export OPENAI_API_KEY={v}", 'client = OpenAI(api_key="{v}")', "my key is {v} but I get a 401",
                   "OPENAI_API_KEY: {v}", "Authorization: Bearer {v}"],
    "anthropic_key": ["ANTHROPIC_API_KEY={v}", "x-api-key: {v}", "use {v} for the Claude calls"],
    "aws_access_key": ["aws_access_key_id = {v}", "AWS_ACCESS_KEY_ID={v}", '"AccessKeyId": "{v}"',
                       "the key {v} belongs to the ci user"],
    "aws_secret_key": ["aws_secret_access_key = {v}", "AWS_SECRET_ACCESS_KEY={v}", '"SecretAccessKey": "{v}"',
                       "secret_access_key: {v}"],
    "gcp_api_key": ["https://maps.googleapis.com/maps/api/geocode/json?address=Paris&key={v}",
                    "GOOGLE_API_KEY={v}", 'apiKey: "{v}",'],
    "gcp_oauth_token": ["Authorization: Bearer {v}", "access_token={v}", "the token is {v}"],
    "azure_storage_key": ["DefaultEndpointsProtocol=https;AccountName=acmelogs;AccountKey={v};EndpointSuffix=core.windows.net"],
    "azure_client_secret": ["AZURE_CLIENT_SECRET={v}", "client secret {v} expires in 90 days"],
    "github_token": ["git clone https://{v}@github.com/acme/api.git", "GITHUB_TOKEN={v}",
                     "gh auth login --with-token <<< {v}"],
    "slack_token": ["SLACK_BOT_TOKEN={v}", "post the alert to {v} please"],
    "stripe_key": ['stripe.api_key = "{v}"', "STRIPE_SECRET_KEY={v}", "the webhook uses {v}"],
    "jwt": ["Authorization: Bearer {v}", "the id_token is {v}", "Cookie: session={v}; Path=/"],
    "private_key": ["Here is the deploy key:\n{v}\n", '{{"type": "service_account", "private_key": "{j}"}}'],
    "url_password": ["postgres://app:{u}@db.internal:5432/prod", "mongodb+srv://admin:{u}@cluster0.ab1cd.mongodb.net/test",
                     "redis://:{u}@cache:6379/0", "amqp://guest:{u}@rabbit:5672/", "https://deploy:{u}@registry.example.com/v2/"],
    "password": ["password: {v}", "DB_PASSWORD={v}", '"password": "{v}"', "PGPASSWORD={v} psql -h db -U app",
                 "Server=tcp:sql1.database.windows.net,1433;Database=orders;User ID=svc;Password={v};Encrypt=true",
                 "--password={v}", "my password is {v}"],
    "generic_secret": ["api_key={v}", "DATADOG_API_KEY={v}", "X-API-Key: {v}", '"apiKey": "{v}"', "SECRET_KEY = '{v}'",
                       "client_secret={v}", "access_token={v}&expires_in=3600", "auth_token: {v}"],
}  # fmt: skip

PII_CONTEXTS: dict[str, list[str]] = {
    "email": ["You can reach me at {v}.", "Send the invoice to {v}", '"email": "{v}"', "From: Maria <{v}>",
              "cc {v} on the thread", "user {v} reported the bug"],
    "phone": ["Call me at {v}", "my number is {v}", "Phone: {v}", "reach our office on {v} between 9 and 5",
              "WhatsApp {v} if urgent", "customer callback {v}"],
    "card_number": ["card {v} exp 12/27", "charge {v} for the renewal", "Card number: {v}", "pay with {v} please"],
    "iban": ["IBAN: {v}", "wire it to {v} (BIC DEUTDEFF)", "refund to account {v}"],
    "ssn": ["SSN {v}", "social security number {v}", "her SSN is {v}", "ssn: {v}"],
    "nino": ["NI number {v}", "National Insurance: {v}", "nino {v}"],
    "ipv4": ["login from {v}", "client_ip={v}", "ssh admin@{v}", "blocked {v} after 5 failed attempts",
             "GET /api/v1/users 200 {v} 12ms"],
    "ipv6": ["login from {v}", "client_ip={v}", "blocked {v} after 5 failed attempts", "peer [{v}]:443 reset"],
}  # fmt: skip

PII_CLASS = {"ssn": "national_id", "nino": "national_id", "ipv4": "ip_address", "ipv6": "ip_address"}

CLEAN_CONTEXTS = ["see {c}", "({c})", "It was {c} when we checked.", "ID {c}", "value {c} in the log", "at {c}",
                  "reference {c},", "the build {c} failed", "compare with {c}"]  # fmt: skip

PROSE = [
    "Can you summarize the quarterly report for the leadership team?",
    "Refactor this function to use async and await instead of callbacks.",
    "The customer says the export is slow when the table has many rows.",
    "Please draft a polite reply explaining the delay in shipping.",
    "We migrated the service to the new cluster last week and latency improved.",
    "Explain the difference between a left join and an inner join with an example.",
    "The password reset link expires after twenty four hours.",
    "Token usage went up after we enabled the longer system prompt.",
    "The key insight is that retries should back off exponentially.",
    "Use the secret manager to rotate credentials instead of hard-coding them.",
    "Pass the config object to the constructor rather than reading globals.",
    "Our API returns a 429 when the rate limit is exceeded; the client should wait.",
    "Translate the following paragraph into French and keep the tone formal.",
    "The model keeps calling the search tool in a loop without making progress.",
    "List three risks of the proposed migration and how to mitigate each.",
    "The dashboard shows p95 latency by workflow and model over the last day.",
    "Write unit tests for the parser, including malformed input.",
    "I bought the premium plan but the invoice shows the basic tier.",
    "The bearer of this note is authorized to collect the parcel.",
    "Set the temperature lower if the answers drift between runs.",
    "Why does the container restart every few minutes under load?",
    "Summarize the meeting notes and list the action items with owners.",
    "The order was shipped but tracking has not updated since Monday.",
    "Make the tone friendlier and shorten it to two sentences.",
    "The secret to a good sourdough is a long, cold fermentation.",
    "Check whether the index covers the filter on tenant and date.",
    "Our on-call rotation changes every Monday at nine in the morning.",
    "The access pattern is mostly reads, with a nightly batch of writes.",
    "Please classify this support ticket as billing, bug or feature request.",
    "He said the token limit was reached halfway through the document.",
]

ENV_CLEAN = ["LOG_LEVEL=info", "PORT=8080", "MODEL=gpt-4o-mini", "REGION=eu-west-1", "WORKERS=4", "DEBUG=false",
             "MAX_TOKENS=2048", "TOKENIZER=cl100k_base", "PASSWORD_MIN_LENGTH=12", "API_KEY=${API_KEY}",
             "DB_PASSWORD=<changeme>", "SECRET_KEY=os.environ", "TIMEOUT_SECONDS=30"]  # fmt: skip


class _Builder:
    """Appends segments to a text and records the labelled spans inside them."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.items: list[Item] = []
        self.pos = 0

    def add(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def add_framed(self, frame: str, value: str, cls: str, kind: Label, **extra: str) -> None:
        key = next((k for k in ("{v}", "{u}", "{j}", "{c}") if k in frame), "{v}")
        head, tail = frame.split(key, 1)
        head, tail = head.replace("{{", "{").replace("}}", "}"), tail.replace("{{", "{").replace("}}", "}")
        self.add(head)
        self.items.append(Item(self.pos, self.pos + len(value), cls, kind))
        self.add(value)
        self.add(tail)

    def doc(self, fld: str) -> Doc:
        return Doc(fld, "".join(self.parts), self.items)


# Forms no detector here catches, kept so the figures show the limits: a token pasted
# with no key or known prefix, a phone with no separators or keyword, a spelled-out email.
P_HARD_SECRET = 0.005
P_HARD_PII = 0.03


def _seed_secret(r: random.Random, b: _Builder) -> None:
    if r.random() < P_HARD_SECRET:
        b.add_framed("here is the one to use: {v}", V.generic_token(r), "bare_token", "secret")
        return
    cls = r.choice(list(V.SECRETS))
    raw = V.SECRETS[cls](r)
    frame = r.choice(SECRET_CONTEXTS[cls])
    if "{u}" in frame:
        value = quote(raw, safe="")  # a URL carries its password percent-encoded
    elif "{j}" in frame:
        value = raw.replace("\n", "\\n")  # PEM inside a JSON string
    else:
        value = raw
    b.add_framed(frame, value, cls, "secret")


def _seed_pii(r: random.Random, b: _Builder) -> None:
    if r.random() < P_HARD_PII:
        if r.random() < 0.5:
            digits = f"{r.randint(2, 9)}{r.randint(10**8, 10**9 - 1)}"
            b.add_framed("ring me on {v} tomorrow", digits, "phone_bare", "pii")
        else:
            first, last = r.choice(V.FIRST), r.choice(V.LAST)
            b.add_framed("write to {v}", f"{first} dot {last} at example dot com", "email_spelled", "pii")
        return
    name = r.choice(list(V.PII))
    b.add_framed(r.choice(PII_CONTEXTS[name]), V.PII[name](r), PII_CLASS.get(name, name), "pii")


def _seed_clean(r: random.Random, b: _Builder) -> None:
    name = r.choice(list(V.CLEAN))
    b.add_framed(r.choice(CLEAN_CONTEXTS), V.CLEAN[name](r), name, "clean")


def _chat(r: random.Random, p_secret: float, p_pii: float, p_clean: float = 0.6) -> Doc:
    b = _Builder()
    for _ in range(r.randint(4, 14)):
        b.add(r.choice(PROSE))
        b.add(" ")
        roll = r.random()
        if roll < p_secret:
            _seed_secret(r, b)
        elif roll < p_secret + p_pii:
            _seed_pii(r, b)
        elif roll < p_clean:
            _seed_clean(r, b)
        b.add(r.choice([" ", "\n", ". ", "\n\n"]))
    return b.doc(r.choice(["messages[].content", "content", "result", "comment"]))


def _env_file(r: random.Random, p_secret: float = 0.25, p_pii: float = 0.1) -> Doc:
    b = _Builder()
    b.add("Here is my .env, the app still fails to start:\n\n```\n")
    for _ in range(r.randint(5, 14)):
        roll = r.random()
        if roll < p_secret:
            _seed_secret(r, b)
        elif roll < p_secret + p_pii:
            _seed_pii(r, b)
        elif roll < 0.55:
            b.add_framed("BUILD_ID={c}", V.CLEAN[r.choice(list(V.CLEAN))](r), "env", "clean")
        else:
            b.add(r.choice(ENV_CLEAN))
        b.add("\n")
    b.add("```\n")
    return b.doc("messages[].content")


def _log(r: random.Random, p_secret: float = 0.08, p_pii: float = 0.22) -> Doc:
    b = _Builder()
    for _ in range(r.randint(5, 20)):
        b.add(f"{V._date(r)} {r.choice(['INFO', 'WARN', 'ERROR'])} ")
        b.add_framed("trace={c} ", V.rand(r, V.HEX, 32), "trace_id", "clean")
        roll = r.random()
        if roll < p_secret:
            _seed_secret(r, b)
        elif roll < p_secret + p_pii:
            _seed_pii(r, b)
        else:
            b.add(f"GET /api/v{r.randint(1, 3)}/orders/{r.randint(1, 10**6)} {r.choice([200, 201, 404, 500])} ")
            _seed_clean(r, b)
        b.add("\n")
    return b.doc("result")


_JSON_SECRET_KEYS = {"password": "password", "generic_secret": "api_key", "aws_secret_key": "aws_secret_access_key"}
_ARG_CLEAN_KEYS = ["order_id", "created_at", "version", "amount", "request_id", "commit", "sku", "query"]


def _tool_json_text(r: random.Random, p_secret: float = 0.15, p_pii: float = 0.2) -> Doc:
    # Tool arguments that arrive as a JSON string: values sit inside JSON quoting.
    b = _Builder()
    b.add("{")
    n = r.randint(3, 9)
    for i in range(n):
        roll = r.random()
        if roll < p_secret:
            cls = r.choice(["password", "generic_secret", "aws_secret_key", "openai_key", "github_token", "stripe_key"])
            key = _JSON_SECRET_KEYS.get(cls, "token")
            b.add_framed(f'"{key}": "{{v}}"', V.SECRETS[cls](r), cls, "secret")
        elif roll < p_secret + p_pii:
            name = r.choice(["email", "phone", "card_number", "iban", "ipv4"])
            frame = f'"{r.choice(["customer", "contact", "payee", "source"])}_{name}": "{{v}}"'
            b.add_framed(frame, V.PII[name](r), PII_CLASS.get(name, name), "pii")
        else:
            name = r.choice(list(V.CLEAN))
            b.add_framed(f'"{r.choice(_ARG_CLEAN_KEYS)}": "{{c}}"', json.dumps(V.CLEAN[name](r))[1:-1], name, "clean")
        b.add(", " if i < n - 1 else "")
    b.add("}")
    return b.doc("arguments")


def _struct(r: random.Random, i: int) -> StructSample:
    seeded: list[tuple[str, str, str]] = []
    clean: list[str] = []

    def s(cls: str, kind: str, value: str) -> str:
        seeded.append((value, cls, kind))
        return value

    def c(value: str) -> str:
        clean.append(value)
        return value

    note_email = V.email(r)
    args = {
        "order_id": c(V._order(r)),
        "created_at": c(V._date(r)),
        "customer": {"name": "Maria", "email": s("email", "pii", V.email(r)), "phone": s("phone", "pii", V.phone(r))},
        "payment": {"card_number": s("card_number", "pii", V.card_number(r)), "iban": s("iban", "pii", V.iban(r)),
                    "amount": c(V._price(r))},
        "auth": {"password": s("password", "secret", V.password(r)), "apiKey": s("generic_secret", "secret", V.generic_token(r))},
        "notes": f"Customer wrote from {s('email', 'pii', note_email)} about {c(V._order(r))}.",
        "tags": ["vip", c(V._version(r))],
        "client_ip": s("ip_address", "pii", V.ipv4(r)),
    }  # fmt: skip
    ev = ToolCall(
        event_id=f"evt-{i}", ts=1_760_000_000_000 + i, trace_id=f"tr-{i // 3}", workflow="checkout",
        tenant="acme", tool_name="create_refund", arguments=args,
        result=f"refund created for {s('email', 'pii', V.email(r))}, ref {c(V._uuid(r))}",
    )  # fmt: skip
    return StructSample(ev, seeded, clean)


def generate(seed: int = 0, n_docs: int = 4000, n_structs: int = 400) -> Corpus:
    r = random.Random(seed)
    corpus = Corpus()
    for _ in range(n_docs):
        roll = r.random()
        if roll < 0.15:
            corpus.docs.append(_env_file(r))
        elif roll < 0.3:
            corpus.docs.append(_log(r))
        elif roll < 0.45:
            corpus.docs.append(_tool_json_text(r))
        elif roll < 0.7:
            corpus.docs.append(_chat(r, 0.0, 0.0))  # clean chat, tricky tokens only
        else:
            corpus.docs.append(_chat(r, 0.06, 0.08))
    corpus.structs = [_struct(r, i) for i in range(n_structs)]
    return corpus


def generate_traffic(seed: int = 0, n_docs: int = 4000) -> list[str]:
    """Texts with the mix of an LLM app's traffic, for throughput: the same kinds of
    documents and tricky clean values, but sensitive values at rates seen in practice
    (about one field in twenty holds one) rather than the labelled corpus's density."""
    r = random.Random(seed)
    docs: list[Doc] = []
    for _ in range(n_docs):
        roll = r.random()
        if roll < 0.05:
            docs.append(_env_file(r, 0.05, 0.02))
        elif roll < 0.2:
            docs.append(_log(r, 0.002, 0.03))
        elif roll < 0.4:
            docs.append(_tool_json_text(r, 0.005, 0.02))
        else:
            docs.append(_chat(r, 0.002, 0.005, 0.3))
    return [d.text for d in docs]
