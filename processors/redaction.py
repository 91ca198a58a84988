"""Redaction: apply a policy to text and to whole contract events; report what was found.

Pure and I/O-free, with no dependency beyond msgspec and the standard library, so the
app-side SDK can run it before publish and the worker again before storage (producers
that bypass the SDK). The YAML/pydantic side lives in `redaction_config.py`.

What leaves this module never holds a detected value: placeholders carry the class and,
under `hash`, a keyed HMAC; detections carry field path, class and count only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import Counter
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence

import msgspec

from llmpulse.processors import redaction_catalog
from llmpulse.processors.redaction_rules import CLASS_KIND as HAND_CLASS_KIND
from llmpulse.processors.redaction_rules import RULES as HAND_RULES
from llmpulse.processors.redaction_rules import Kind, Rule, Span, key_class, key_hint
from llmpulse.processors.redaction_scan import Scanner
from llmpulse.schemas.contract import FREE_TEXT, Event, FieldScan
from llmpulse.schemas.findings import Finding, finding_id

# Our own rules (redaction_rules: PII, the providers we know best, key=value context) and the
# maintained catalogue's (redaction_catalog: hundreds of secret formats). Overlaps go to the
# higher priority, so a format both know keeps our class name.
CATALOG_RULES: tuple[Rule, ...] = tuple(r.rule for r in redaction_catalog.load()[0])
RULES: tuple[Rule, ...] = HAND_RULES + CATALOG_RULES
CLASS_KIND: dict[str, Kind] = {**HAND_CLASS_KIND, **{r.cls: "secret" for r in CATALOG_RULES if r.cls not in HAND_CLASS_KIND}}

Action = Literal["mask", "hash", "drop_content", "allow"]
ACTIONS: tuple[str, ...] = ("mask", "hash", "drop_content", "allow")
HASH_CHARS = 12  # 48 bits of HMAC: joinable, collisions negligible per tenant
ANNOTATION = "llmpulse.redacted"  # attribute the SDK hook sets: what it redacted, [[class, field, count], ...]
MARKER_HEADER = "llmpulse-redacted"  # Kafka header the SDK sets: the `Redactor.marker` of the pass that ran
_MAX_NOTES = 256  # entries of an annotation read back (a producer could send any number)
_CLEAN_NAMES = 65_536  # name values known to hold no secret, kept per Redactor (few distinct ones repeat)


def marker_of(headers: list[tuple[str, bytes]] | None) -> bytes | None:
    """The `llmpulse-redacted` header of a Kafka message, if any."""
    for key, value in headers or ():
        if key == MARKER_HEADER:
            return value
    return None


# Our own placeholders: never redacted again (a hash can look like a phone or token).
_PLACEHOLDER = re.compile(
    r"\[(?:SECRET:[a-z0-9_]+|[A-Z_]+)(?::[0-9a-f]+)?\]|\[CONTENT DROPPED len=\d+(?: hmac=[0-9a-f]+)?\]"
)

_PII_LABELS = {
    "email": "EMAIL",
    "phone": "PHONE",
    "card_number": "CARD",
    "iban": "IBAN",
    "national_id": "NATIONAL_ID",
    "ip_address": "IP",
}
# The keyed rule yields several classes; the policy may allow some of them.
_RULE_CLASSES = {"keyed_secret": ("password", "aws_secret_key", "generic_secret")}


@dataclass(frozen=True)
class Policy:
    """Action per kind, with per-class overrides (e.g. {"ip_address": "allow"})."""

    secrets: Action = "mask"
    pii: Action = "mask"
    classes: Mapping[str, Action] = field(default_factory=dict)

    def action(self, cls: str, kind: Kind) -> Action:
        act = self.classes.get(cls)
        if act is not None:
            return act
        return self.secrets if kind == "secret" else self.pii

    @classmethod
    def uniform(cls, action: str) -> "Policy":
        if action not in ACTIONS:
            raise ValueError(f"policy must be one of {ACTIONS}, got {action!r}")
        return cls(secrets=action, pii=action)  # type: ignore[arg-type]


class Detection(msgspec.Struct, frozen=True):
    """One class found in one field of one event. Never the value."""

    field: str  # e.g. "messages[2].content", "arguments.customer.email"
    cls: str
    kind: str
    count: int
    action: str


# Bumped whenever the walk over an event changes what it reaches (which fields, which keys),
# so a worker never trusts a pass that would have left something its own pass redacts.
MARKER_VERSION = 2


class Redactor:
    """A policy compiled for one scope: active rules, per-tenant HMAC key."""

    def __init__(
        self,
        policy: Policy = Policy(),
        hash_key: bytes | str = b"",
        tenant: str = "",
        accelerate: Optional[bool] = None,
    ) -> None:
        self.policy = policy
        key = hash_key.encode() if isinstance(hash_key, str) else hash_key
        uses_hash = "hash" in (policy.secrets, policy.pii, *policy.classes.values())
        if uses_hash and not key:
            raise ValueError("the hash action needs a key (redaction.hash_key)")
        # Derive a key per tenant: the same email joins within a tenant, never across.
        self._key = hmac.new(key, b"llmpulse.redaction\x1f" + tenant.encode(), hashlib.sha256).digest() if key else b""
        self._scanner = Scanner(tuple(r for r in RULES if self._rule_active(r)), accelerate)
        self._clean_names: set[str] = set()

    @property
    def accelerated(self) -> bool:
        return self._scanner.accelerated

    @property
    def marker(self) -> bytes:
        """What this redactor's pass is, for an event it redacted (the SDK's Kafka header
        `llmpulse-redacted`): the rule set's digest and this policy's. Equal markers mean the
        same rules under the same actions; a worker trusts nothing else (redaction_config
        `trust_upstream`). Public: it says which redaction ran, it proves nothing."""
        m = self.__dict__.get("_marker")
        if m is None:
            p = self.policy
            digest = hashlib.sha256(repr((p.secrets, p.pii, sorted(p.classes.items()))).encode()).hexdigest()[:16]
            if self._key and "hash" in (p.secrets, p.pii, *p.classes.values()):
                # `hash` output depends on the tenant's key: a keyed fingerprint, which reveals nothing of it
                digest += "." + hmac.new(self._key, b"llmpulse.marker", hashlib.sha256).hexdigest()[:16]
            m = self.__dict__["_marker"] = f"{MARKER_VERSION}:{ruleset_digest()}:{digest}".encode()
        return m

    def _rule_active(self, rule: Rule) -> bool:
        classes = _RULE_CLASSES.get(rule.cls, (rule.cls,))
        return any(self.policy.action(c, rule.kind) != "allow" for c in classes)

    # -- text

    def redact_text(self, text: str) -> tuple[str, dict[str, int]]:
        """Redacted text and {class: count}. Unchanged text is returned as is (fast path)."""
        return self._redact_with(text, False)

    def redact_name(self, name: str) -> tuple[str, dict[str, int]]:
        """A name (user id, model, tool name...): secrets redacted per policy, personal data kept."""
        if name in self._clean_names:
            return name, {}
        new, counts = self._redact_with(name, True)
        if not counts:  # only clean values are remembered: no secret is kept in memory
            if len(self._clean_names) >= _CLEAN_NAMES:
                self._clean_names.clear()
            self._clean_names.add(name)
        return new, counts

    def _redact_with(self, text: str, secrets_only: bool) -> tuple[str, dict[str, int]]:
        if not text:
            return text, {}
        spans = self._scanner.find(text)
        if secrets_only and spans:  # names: every secret rule outranks every PII one, so filtering after overlaps are resolved is exact
            spans = [s for s in spans if s.kind == "secret"]
        if spans and "[" in text:
            spans = _outside_placeholders(text, spans)
        if not spans:
            return text, {}
        counts: Counter[str] = Counter()
        parts: list[str] = []
        pos = 0
        drop = False
        for s in spans:
            act = self.policy.action(s.cls, s.kind)
            if act == "allow":
                continue
            counts[s.cls] += 1
            drop = drop or act == "drop_content"
            parts.append(text[pos : s.start])
            parts.append(self._placeholder(act, s.cls, s.kind, text[s.start : s.end]))
            pos = s.end
        if drop:
            return self._dropped(text), dict(counts)
        parts.append(text[pos:])
        return "".join(parts), dict(counts)

    def find(self, text: str) -> list[Span]:
        """Spans this policy would redact (for scoring and tests)."""
        spans = self._scanner.find(text)
        if spans and "[" in text:
            spans = _outside_placeholders(text, spans)
        return [s for s in spans if self.policy.action(s.cls, s.kind) != "allow"]

    def _placeholder(self, act: str, cls: str, kind: str, value: str) -> str:
        label = f"SECRET:{cls}" if kind == "secret" else _PII_LABELS.get(cls, cls.upper())
        if act == "hash":
            return f"[{label}:{self._hash(_normalise(cls, value))}]"
        return f"[{label}]"

    def _dropped(self, text: str) -> str:
        # Keep only what analytics needs: the length and, with a key, a joinable hash.
        digest = f" hmac={self._hash(text)}" if self._key else ""
        return f"[CONTENT DROPPED len={len(text)}{digest}]"

    def _hash(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:HASH_CHARS]

    # -- structured values

    def _value(self, value: Any, path: str, key: Optional[str], found: Counter) -> Any:
        if isinstance(value, str):
            if key is not None:
                hit = key_class(key, value)
                if hit is not None and self.policy.action(*hit) != "allow":
                    cls, kind = hit
                    found[(path, cls)] += 1
                    act = self.policy.action(cls, kind)
                    return self._dropped(value) if act == "drop_content" else self._placeholder(act, cls, kind, value)
            new, counts = self.redact_text(value)
            for cls, n in counts.items():
                found[(path, cls)] += n
            return new
        if isinstance(value, dict):
            return self._dict(value, path, found)
        if isinstance(value, list):
            return [self._value(v, f"{path}[{i}]", key, found) for i, v in enumerate(value)]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key is not None:
            # {"pin": 1234}, {"card_number": 4111...}: numbers under a telling key.
            as_text = str(value)
            if key_class(key, as_text) is not None:
                return self._value(as_text, path, key, found)
        return value

    def _name(self, value: Any, path: str, found: Counter) -> Any:
        if isinstance(value, str):
            new, counts = self.redact_name(value)
            for cls, n in counts.items():
                found[(path, cls)] += n
            return new
        if isinstance(value, list):
            return [self._name(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
        return self._value(value, path, None, found)  # not what the contract says: scanned as text

    def _field(self, value: Any, path: str, scan: FieldScan, found: Counter) -> Any:
        """One field of an event, scanned as the contract's FREE_TEXT says."""
        if scan == "text":
            return self._value(value, path, None, found)
        if scan == "name":
            return self._name(value, path, found)
        out, touched = [], False  # a list of structs (prompt messages): each subfield by its own scan
        for i, item in enumerate(value):
            changes = {}
            for sub, sub_scan in scan.items():  # type: ignore[union-attr]
                old = getattr(item, sub)
                if old:
                    new = self._field(old, f"{path}[{i}].{sub}", sub_scan, found)
                    if new is not old:
                        changes[sub] = new
            touched = touched or bool(changes)
            out.append(msgspec.structs.replace(item, **changes) if changes else item)
        return out if touched else value

    def _dict(self, d: dict, path: str, found: Counter) -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(k, str):
                k, counts = self.redact_text(k)  # a key can itself be an email
                for cls, n in counts.items():
                    found[(f"{path}.<key>", cls)] += n
            out[k] = self._value(v, f"{path}.{k}", k if isinstance(k, str) else None, found)
        return out

    # -- events

    def redact_event(self, event: Event, precleared: bool = False) -> tuple[Event, list[Detection]]:
        """The event with every free-text field redacted, and what was found where.

        Fields: those of `contract.FREE_TEXT` for the event's type (texts under the whole
        policy, names for secrets only); ids and enums are left alone. The input event is
        not modified. `precleared`: `preclear` found nothing to redact in it.
        """
        scans = FREE_TEXT[event.event_type]
        note = event.attributes.get(ANNOTATION) if event.attributes else None
        if precleared or self._clean(event, scans):
            return event, self._annotated(note, scans) if note else []
        found: Counter = Counter()
        changes: dict[str, Any] = {}
        for name, scan in scans.items():
            old = getattr(event, name)
            if not old:
                continue
            new = self._field(old, name, scan, found)
            if new is not old:
                _replace_if_found(changes, name, new, found)
        detections = []
        for (path, cls), n in found.items():
            kind = CLASS_KIND.get(cls, "secret")
            detections.append(Detection(path, cls, kind, n, self.policy.action(cls, kind)))
        if note:
            detections.extend(self._annotated(note, scans))
        if not changes:
            return event, detections
        return msgspec.structs.replace(event, **changes), detections


    # -- the clean event's fast path

    def _clean(self, event: Event, scans: Mapping[str, Any]) -> bool:
        """True when `redact_event` would find nothing: every text it scans, joined by
        newlines, clears one prefilter pass, and no key announces a class (memoised per key).
        Most events are clean; any doubt takes the full path."""
        texts = self._texts(event, scans)
        return texts is not None and (not texts or not self._scanner.maybe("\n".join(texts)))

    def preclear(self, events: Sequence[Event]) -> list[bool]:
        """Per event: True when `redact_event` of this redactor, or of any with fewer active
        rules and laxer actions, would find nothing. All events' texts go through one
        Hyperscan call (each call releases the GIL: per event, that hand-over is dear)."""
        verdicts = [False] * len(events)
        texts: list[str] = []
        owners: list[int] = []
        for i, event in enumerate(events):
            got = self._texts(event, FREE_TEXT[event.event_type])
            if got is None:
                continue
            verdicts[i] = True
            texts.append("\n".join(got))
            owners.append(i)
        for i, dirty in zip(owners, self._scanner.maybe_each(texts)):
            if dirty:
                verdicts[i] = False
        return verdicts

    def _texts(self, event: Event, scans: Mapping[str, Any]) -> Optional[list[str]]:
        """The texts `redact_event` would scan, or None when a key already tells of a value."""
        texts: list[str] = []
        for name, scan in scans.items():
            old = getattr(event, name)
            if old and not self._gather(old, scan, texts):
                return None
        return texts

    def _gather(self, value: Any, scan: FieldScan, texts: list[str]) -> bool:
        if scan == "text":
            return self._gather_value(value, None, texts)
        if scan == "name":
            if value.__class__ is str:
                if value not in self._clean_names:
                    texts.append(value)
                return True
            if value.__class__ is list and all(v.__class__ is str for v in value):
                texts.extend(v for v in value if v not in self._clean_names)
                return True
            return self._gather_value(value, None, texts)
        for item in value:
            for sub, sub_scan in scan.items():  # type: ignore[union-attr]
                old = getattr(item, sub)
                if old and not self._gather(old, sub_scan, texts):
                    return False
        return True

    def _gather_value(self, value: Any, key: Optional[str], texts: list[str]) -> bool:
        # Mirrors `_value`: False where a key would redact whatever the text scan says.
        if isinstance(value, str):
            if key is not None and key_hint(key) is not None:
                hit = key_class(key, value)
                if hit is not None and self.policy.action(*hit) != "allow":
                    return False
            texts.append(value)
            return True
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str):
                    texts.append(k)
                    if not self._gather_value(v, k, texts):
                        return False
                elif not self._gather_value(v, None, texts):
                    return False
            return True
        if isinstance(value, list):
            return all(self._gather_value(v, key, texts) for v in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key is not None:
            return key_hint(key) is None or key_class(key, str(value)) is None
        return True

    def _annotated(self, note: str, scans: Mapping[str, Any]) -> list[Detection]:
        """What the SDK hook redacted before publish (its annotation), as this pass's detections.

        So an event redacted in the app yields the findings the raw event would have: same
        class and field, hence the same finding id. Fields outside FREE_TEXT (unknown ones,
        stored in `extra`) are not reported by this pass either, and are skipped.
        """
        try:
            notes = msgspec.json.decode(note, type=list[tuple[str, str, int]])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return []
        out = []
        for cls, path, n in notes[:_MAX_NOTES]:
            kind = CLASS_KIND.get(cls)
            if kind is None or n < 1 or _FIELD_HEAD.match(path).group() not in scans:  # type: ignore[union-attr]
                continue
            out.append(Detection(path, cls, kind, n, self.policy.action(cls, kind)))
        return out


_FIELD_HEAD = re.compile(r"[^.\[]*")


@lru_cache(maxsize=1)
def ruleset_digest() -> str:
    """Digest of every rule: patterns, gates, windows, priorities and the validators' code
    (a different Python minor version compiles it differently: a mismatch, so redacted again)."""
    h = hashlib.sha256()
    for r in RULES:
        h.update(repr(_stable(tuple(r))).encode())
    return h.hexdigest()[:16]


def _stable(obj: Any) -> Any:
    # The same value in every process: no addresses, no hash-seeded set order.
    if obj is None or isinstance(obj, (str, bytes, int, float)):
        return obj
    if isinstance(obj, (tuple, list)):
        return tuple(_stable(x) for x in obj)
    if isinstance(obj, (set, frozenset)):
        return ("set", tuple(sorted(repr(_stable(x)) for x in obj)))
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((repr(_stable(k)), repr(_stable(v))) for k, v in obj.items())))
    if isinstance(obj, re.Pattern):
        return ("re", obj.pattern, obj.flags)
    if isinstance(obj, type(_stable.__code__)):
        return ("code", obj.co_code, _stable(obj.co_consts), obj.co_names)
    if callable(obj) and hasattr(obj, "__code__"):
        cells = tuple(_stable(c.cell_contents) for c in obj.__closure__ or ())
        return ("fn", obj.__qualname__, _stable(obj.__code__), cells, _stable(obj.__defaults__))
    return ("obj", type(obj).__qualname__)


def _outside_placeholders(text: str, spans: list[Span]) -> list[Span]:
    marks = [m.span() for m in _PLACEHOLDER.finditer(text)]
    if not marks:
        return spans
    return [s for s in spans if not any(a < s.end and s.start < b for a, b in marks)]


def _replace_if_found(changes: dict, name: str, new: Any, found: Counter) -> None:
    # Rebuilt dicts are always new objects; only swap them in when something was found.
    if any(p == name or p.startswith((name + ".", name + "[")) for p, _ in found):
        changes[name] = new


def _normalise(cls: str, value: str) -> str:
    # Equal values in different spellings hash alike, so joins survive formatting.
    if cls == "email":
        return value.lower()
    if cls in ("phone", "card_number"):
        return ("+" if value.lstrip().startswith("+") else "") + "".join(c for c in value if c.isdigit())
    if cls in ("iban", "national_id"):
        return "".join(c for c in value if c.isalnum()).upper()
    return value


def redact_text(text: str, policy: Policy = Policy(), hash_key: bytes | str = b"") -> str:
    """Convenience for one-off use; build a Redactor once for repeated calls."""
    return Redactor(policy, hash_key).redact_text(text)[0]


# ---------------------------------------------------------------- findings

_INDEX = re.compile(r"\[\d+\]")
FINDING_KINDS = {"secret": "secret_detected", "pii": "pii_detected"}
SEVERITY = {"secret": "high", "pii": "medium"}
MAX_PATHS = 20


def detection_findings(
    event: Event, detections: list[Detection], *, detected_at: Optional[int] = None
) -> list[Finding]:
    """One finding per (trace, class, field) with list indices folded ("messages[].content").

    The id is stable across replays and across the SDK and worker passes, so ClickHouse
    keeps one row. Evidence holds class, field, counts and action: never the value.
    """
    now = int(time.time() * 1000) if detected_at is None else detected_at
    groups: dict[tuple[str, str], list[Detection]] = {}
    for d in detections:
        groups.setdefault((d.cls, _INDEX.sub("[]", d.field)), []).append(d)
    scope = event.trace_id or event.event_id  # change events carry no trace
    out = []
    for (cls, fld), ds in groups.items():
        kind = ds[0].kind
        fkind = FINDING_KINDS.get(kind, "secret_detected")
        count = sum(d.count for d in ds)
        out.append(
            Finding(
                finding_id=finding_id(fkind, event.tenant, scope, cls, fld),
                detected_at=now,
                event_ts=int(event.ts),
                kind=fkind,
                severity=SEVERITY.get(kind, "high"),  # type: ignore[arg-type]
                tenant=event.tenant,
                workflow=event.workflow,
                model=event.model,
                trace_id=event.trace_id,
                title=f"{cls} in {event.event_type}.{fld}",
                value=float(count),
                evidence={
                    "class": cls,
                    "field": fld,
                    "paths": sorted({d.field for d in ds})[:MAX_PATHS],
                    "count": count,
                    "action": ds[0].action,
                    "event_type": event.event_type,
                    "event_id": event.event_id,
                },
            )
        )
    return out
