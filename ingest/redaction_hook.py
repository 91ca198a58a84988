"""SDK-side redaction: a publisher hook that redacts an event before it leaves the app.

    from llmpulse.ingest.redaction_hook import redaction_hook
    pub = KafkaPublisher(bootstrap, hooks=[redaction_hook()])            # mask everything
    pub = KafkaPublisher(bootstrap, hooks=[redaction_hook(Policy(pii="hash"), hash_key=key)])
    pub = KafkaPublisher(bootstrap, hooks=[redaction_hook(settings=cfg.redaction)])  # per scope

`KafkaPublisher` (alias `Publisher`) installs `redaction_hook()` by default; pass
`redaction=False` to turn it off, or `redaction=redaction_hook(...)` for another policy.

The same detectors and the same field rules as the worker's pass (processors/redaction.py,
`Redactor.redact_event`), applied to the plain dict the publisher is about to encode. Which
fields are scanned, and how, is said once in the contract (`schemas/contract.py`,
`FREE_TEXT`):

- texts (messages' content, params, arguments, result, content, error_type, comment, the
  change texts, attributes' keys and values) are redacted under the whole policy;
- names (user/session ids, app, workflow, model, tool and eval names, message roles, ...)
  are scanned for secrets only: a token pasted as a user id does not pass, an e-mail used
  as a user id stays (see `contract.NAME_FIELDS`);
- fields the contract does not know for the event's type (they land in `extra`) are
  redacted like texts, judged also by their key (`{"customer_email": ...}`);
- ids (event, trace, span, tenant) and enums are left alone; a value that is not what the
  contract admits there (an unknown status, a string token count) is scanned like a text,
  since it reaches Kafka before the worker dead-letters it.

`redact_bytes` does the same for `publish_raw`: a JSON object is decoded, redacted and
re-encoded (unchanged bytes when nothing was found); anything else is scrubbed as text
with every other byte kept, for the worker to dead-letter.

Hashes are keyed per tenant exactly as in the worker, so a value hashed in the app and one
hashed by the worker for a producer that bypassed the SDK join. What was found (class and
field, never the value) is counted in `hook.stats` and, with `annotate=True`, recorded on
the event as the attribute `llmpulse.redacted` (a JSON list of [class, field, count]) so the
worker can still report where a secret was caught.

The hook never raises into the app. If redaction itself fails, it fails closed: content
fields are replaced by `[CONTENT DROPPED len=N]`, unknown fields are removed, and the
failure is counted; if even that fails the event is dropped (the publisher counts it).

Light on purpose: msgspec and the standard library only (Hyperscan when installed).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

import msgspec

from llmpulse.processors.redaction import _CLEAN_NAMES, ANNOTATION, MARKER_HEADER, Policy, Redactor
from llmpulse.processors.redaction_rules import key_class
from llmpulse.schemas.contract import EVENT_CLASSES, FREE_TEXT, BaseEvent

log = logging.getLogger("llmpulse.sdk")

FAILED = "llmpulse.redaction"  # attribute set to "failed" on an event redacted by dropping content

_ONLY_STR = frozenset({str}).issuperset  # of an iterable of classes: C speed, no generator
_ONLY_INT = frozenset({int}).issuperset  # bool is not int here: True is walked like any other value


def _admits(t: msgspec.inspect.Type) -> Callable[[Any], bool]:
    """A check of what the contract admits for a field it does not scan (ids, enums, numbers)."""
    mi = msgspec.inspect
    if isinstance(t, mi.LiteralType):
        words = frozenset(t.values)
        return lambda v: v.__class__ is str and v in words
    if isinstance(t, mi.StrType):  # NOT_SCANNED ids
        return lambda v: v.__class__ is str
    if isinstance(t, (mi.IntType, mi.FloatType)):
        return lambda v: v.__class__ is int or v.__class__ is float
    if isinstance(t, mi.BoolType):
        return lambda v: v.__class__ is bool
    if isinstance(t, mi.NoneType):
        return lambda v: v is None
    if isinstance(t, mi.UnionType):
        checks = [_admits(u) for u in t.types if not isinstance(u, mi.NoneType)]  # None: admitted before any check
        if len(checks) == 1:
            return checks[0]
        return lambda v: any(c(v) for c in checks)
    if isinstance(t, mi.StructType):  # usage: token counts under the struct's own keys (no text in a key)
        keys = frozenset(f.name for f in t.fields)
        return lambda v: v.__class__ is dict and v.keys() <= keys and _ONLY_INT(map(type, v.values()))
    return lambda v: False  # e.g. a datetime string for `ts`: scanned


def _admitted_classes(t: msgspec.inspect.Type) -> frozenset[type]:
    """Classes whose every value the contract admits for a field: the check's fast path."""
    mi = msgspec.inspect
    if isinstance(t, mi.UnionType):
        return frozenset().union(*(_admitted_classes(u) for u in t.types))
    if isinstance(t, mi.StrType):
        return frozenset({str})
    if isinstance(t, (mi.IntType, mi.FloatType)):
        return frozenset({int, float})
    if isinstance(t, mi.BoolType):
        return frozenset({bool})
    if isinstance(t, mi.NoneType):
        return frozenset({type(None)})
    return frozenset()  # literals, structs: the check decides


_TEXT, _NAME, _STRUCTS, _ADMITTED = range(4)


def _plan(etype: str, cls: type) -> dict[str, tuple]:
    """Per field of the event type: how the hook treats it (FREE_TEXT, or the contract's check).

    An admitted field is (_ADMITTED, check, classes, words): any value of `classes`, or a
    str among the Literal's `words`, passes without the check being called."""
    scans = FREE_TEXT[etype]
    # This plan is only picked for an event whose event_type is `etype` (see `_event_type`).
    plan: dict[str, tuple] = {"event_type": (_ADMITTED, lambda v: v == etype, frozenset({str}), frozenset())}
    for f in msgspec.inspect.type_info(cls).fields:
        if f.name == "event_type":
            continue
        scan = scans.get(f.name)
        if scan is None:
            plan[f.name] = (_ADMITTED, _admits(f.type), _admitted_classes(f.type), _literal_words(f.type))
        elif isinstance(scan, dict):
            plan[f.name] = (_STRUCTS, scan)
        else:
            plan[f.name] = (_TEXT,) if scan == "text" else (_NAME,)
    return plan


def _literal_words(t: msgspec.inspect.Type) -> frozenset[str]:
    mi = msgspec.inspect
    if isinstance(t, mi.UnionType):
        return frozenset().union(*(_literal_words(u) for u in t.types))
    if isinstance(t, mi.LiteralType):
        return frozenset(v for v in t.values if v.__class__ is str)
    return frozenset()


# Per event type; an unknown type gets the base fields' plan (its event_type is then scanned).
_PLANS: dict[str, dict[str, tuple]] = {name: _plan(name, cls) for name, cls in EVENT_CLASSES.items()}
_BASE_PLAN = {k: v for k, v in _PLANS["prompt"].items() if k in BaseEvent.__struct_fields__}
_BASE_PLAN["event_type"] = (_ADMITTED, lambda v: False, frozenset(), frozenset())  # not a known type: scanned
_SCALARS = (str, int, float, bool, type(None))
_INDEX = re.compile(r"\[\d+\]")
_MAX_REDACTORS = 1024  # tenants (or tenant x workflow scopes) kept compiled


class RedactorSource(Protocol):
    """Anything that gives the redactor of a scope: `RedactionSettings` (worker config) is one."""

    def redactor_for(self, tenant: str, workflow: str) -> Redactor: ...

    def strictest_redactor(self) -> Redactor:
        """For bytes whose scope is unknown: the strictest action any scope takes, per class."""
        ...


@dataclass
class HookStats:
    events: int = 0  # events seen
    redacted: int = 0  # events with at least one redaction
    failed_closed: int = 0  # redaction failed: content dropped instead
    dropped: int = 0  # even dropping content failed: event not published
    by_class: Counter = field(default_factory=Counter)  # class -> occurrences
    last_error: str = ""


class RedactionHook:
    """Callable publisher hook: `hook(event_dict) -> event_dict | None`. Build once, share freely."""

    def __init__(
        self,
        policy: Optional[Policy] = None,
        hash_key: bytes | str = b"",
        tenant: Optional[str] = None,
        *,
        settings: Optional[RedactorSource] = None,
        annotate: bool = True,
        accelerate: Optional[bool] = None,
    ) -> None:
        if settings is not None and policy is not None:
            raise ValueError("pass a policy or settings, not both")
        self.policy = policy or Policy()
        self.hash_key = hash_key
        self.tenant = tenant  # None: derive hash keys from each event's tenant, as the worker does
        self.settings = settings
        self.annotate = annotate
        self.accelerate = accelerate
        self.stats = HookStats()
        self._lock = threading.Lock()
        self._redactors: dict[Any, Redactor] = {}
        self._headers: dict[tuple, list[tuple[str, bytes]]] = {}  # (tenant, workflow) -> `headers_for`'s answer
        # Fail fast on a bad configuration (e.g. `hash` without a key), at start-up, not per event.
        self._redactor_for(tenant or "default", "")

    # -- scope ------------------------------------------------------------------
    def _redactor_for(self, tenant: str, workflow: str) -> Redactor:
        if self.settings is not None:
            return self.settings.redactor_for(tenant, workflow)  # cached there
        key = self.tenant if self.tenant is not None else tenant
        r = self._redactors.get(key)
        if r is None:
            if len(self._redactors) >= _MAX_REDACTORS:
                self._redactors.clear()
            r = Redactor(self.policy, self.hash_key, key, self.accelerate)
            self._redactors[key] = r
        return r

    # -- the hook ---------------------------------------------------------------
    def __call__(self, event: Any) -> Optional[dict]:
        try:
            if not isinstance(event, dict):
                event = msgspec.to_builtins(event) if isinstance(event, BaseEvent) else dict(event)
            out, found = self._redact(event)
        except Exception as exc:  # never raise into the app: fail closed
            return self._fail_closed(event, exc)
        with self._lock:
            self.stats.events += 1
            if found:
                self.stats.redacted += 1
                for (_, cls), n in found.items():
                    self.stats.by_class[cls] += n
        return out

    def _redact(self, event: dict) -> tuple[dict, Counter]:
        tenant = event.get("tenant")
        workflow = event.get("workflow")
        redactor = self._redactor_for(tenant if isinstance(tenant, str) and tenant else "default",
                                      workflow if isinstance(workflow, str) else "")
        plan = _PLANS.get(_event_type(event), _BASE_PLAN)
        if _clean(redactor, plan, event):
            return event, _NOTHING
        return self._redact_fields(event, redactor, plan)

    def _redact_fields(self, event: dict, redactor: Redactor, plan: Mapping[str, tuple]) -> tuple[dict, Counter]:
        """The full pass: each field as its plan says, copies where something was found."""
        clean_names = redactor._clean_names
        found: Counter = defaultdict(int)  # type: ignore[assignment]  # Counter's own __init__ is Python, per event
        changed: dict[str, Any] = {}
        for name, value in event.items():
            how = plan.get(name)
            if how is None:  # unknown field: the key may tell what the value is ({"customer_email": ...}, {"pin": 1234})
                if value is None or value is True or value is False:
                    continue
                before = len(found)
                new = _walk(redactor, value, name, name, found)
            else:
                kind = how[0]
                # The common cases first, cheapest test first: most fields are ids, numbers,
                # enum words and names seen before.
                if kind == _ADMITTED and (value.__class__ in how[2] or (value.__class__ is str and value in how[3])
                                          or value is None
                                          or value is True or value is False or how[1](value)):
                    continue  # an id, an enum's word, a number: as the contract says
                if kind == _NAME and value.__class__ is str and value in clean_names:
                    continue  # seen before, no secret in it
                if value is None or value is True or value is False:
                    continue
                before = len(found)
                if kind == _ADMITTED:
                    new = _walk(redactor, value, name, None, found)  # anything else is scanned like a text
                elif kind == _NAME:
                    new = _names(redactor, value, name, found)
                elif kind == _TEXT:  # no key hint, as in the worker
                    new = _walk(redactor, value, name, None, found)
                else:
                    new = _messages(redactor, value, how[1], found)
            if len(found) != before or type(new) is not type(value):  # found, or converted
                changed[name] = new
        if not changed:
            return event, found
        out = dict(event)  # the app's nested objects are never modified
        out.update(changed)
        attrs = out.get("attributes", {})
        if self.annotate and found and isinstance(attrs, dict):  # a malformed one stays malformed
            out["attributes"] = {**attrs, ANNOTATION: _annotation(found)}
        return out, found

    def headers_for(self, event: Mapping[str, Any]) -> list[tuple[str, bytes]]:
        """The Kafka header that marks `event` (as this hook returned it) as redacted by this
        hook's pass for its scope: the worker may skip its own pass (`trust_upstream`)."""
        tenant = event.get("tenant")
        workflow = event.get("workflow")
        scope = (tenant if isinstance(tenant, str) and tenant else "default",  # as `_redact` picks it
                 workflow if isinstance(workflow, str) else "")
        headers = self._headers.get(scope)
        if headers is None:  # a scope's marker depends on its policy only: one list per scope
            if len(self._headers) >= _MAX_REDACTORS:
                self._headers.clear()
            headers = self._headers[scope] = [(MARKER_HEADER, self._redactor_for(*scope).marker)]
        return headers

    def redact_bytes(self, value: bytes) -> Optional[bytes]:
        """`publish_raw`'s pass: an event's bytes redacted (None: drop them). Never raises.

        A JSON object is redacted as an event and re-encoded; the bytes come back unchanged
        when nothing was found. Anything else (broken JSON, invalid UTF-8) is scrubbed as
        text with the strictest policy, every other byte kept, for the worker to dead-letter.
        """
        try:
            try:
                event = _decode(value)
            except (msgspec.DecodeError, UnicodeDecodeError):
                event = None
            if isinstance(event, dict):
                out = self(event)
                if out is None or out is event:
                    return None if out is None else value
                return _encode(out)
            return self._scrub_bytes(value)
        except Exception as exc:  # never raise into the app; publish nothing unscanned
            with self._lock:
                self.stats.events += 1
                self.stats.dropped += 1
                self.stats.last_error = type(exc).__name__
            return None

    def _scrub_bytes(self, value: bytes) -> bytes:
        text = value.decode("utf-8", "surrogateescape")  # invalid bytes survive the round trip
        if self.settings is not None:
            redactor = self.settings.strictest_redactor()
        else:
            redactor = self._redactor_for(self.tenant or "default", "")
        new, counts = redactor.redact_text(text)
        with self._lock:
            self.stats.events += 1
            if counts:
                self.stats.redacted += 1
                self.stats.by_class.update(counts)
        return value if not counts else new.encode("utf-8", "surrogateescape")

    def _fail_closed(self, event: Any, exc: BaseException) -> Optional[dict]:
        reason = f"{type(exc).__name__}"  # never str(exc): it may quote the value
        try:
            out = drop_content(event)
        except Exception:
            with self._lock:
                self.stats.events += 1
                self.stats.dropped += 1
                self.stats.last_error = reason
            return None
        with self._lock:
            self.stats.events += 1
            self.stats.failed_closed += 1
            self.stats.last_error = reason
        log.debug("llmpulse: redaction failed (%s); content dropped", reason)
        return out


_NOTHING: Counter = Counter()  # what a clean event's pass found (never written to)


def _clean(r: Redactor, plan: Mapping[str, tuple], event: dict) -> bool:
    """True when `_redact` would return the event as it is: every text it would scan, joined
    by newlines, clears one prefilter pass (`Scanner.maybe`, exact for a clean verdict), and
    no key announces a class. One Hyperscan call per event instead of one per text, and no
    walk that builds copies. Any doubt (a key hint, a value the walk converts) is False:
    the full pass decides. Names it clears join the redactor's clean names, as in `_name`."""
    texts: list[str] = []
    names: list[str] = []
    clean_names = r._clean_names
    for name, value in event.items():
        how = plan.get(name)
        cls = value.__class__
        if how is None:  # unknown field: judged by its key too
            if not _gather(r, value, name, texts):
                return False
            continue
        kind = how[0]
        if kind == _ADMITTED:
            if cls in how[2] or (cls is str and value in how[3]) or value is None or cls is bool or how[1](value):
                continue
            if not _gather(r, value, None, texts):
                return False
        elif kind == _NAME:
            if cls is str:
                if value and value not in clean_names:
                    names.append(value)
            elif cls is list and _ONLY_STR(map(type, value)):
                names.extend(v for v in value if v and v not in clean_names)
            elif not _gather(r, value, None, texts):
                return False
        elif kind == _TEXT:
            if cls is str:
                texts.append(value)
            elif not _gather(r, value, None, texts):
                return False
        elif not _gather_messages(r, value, how[1], texts, names, clean_names):
            return False
    if names:
        texts += names
    if texts and r._scanner.maybe(texts[0] if len(texts) == 1 else "\n".join(texts)):
        return False
    if names:  # only clean values are remembered: no secret is kept in memory
        if len(clean_names) + len(names) > _CLEAN_NAMES:
            clean_names.clear()
        clean_names.update(names)
    return True


def _gather(r: Redactor, value: Any, key: Optional[str], texts: list[str]) -> bool:
    """The texts `_walk` would scan in `value`; False where it may change the value without a
    text scan finding anything (a key announcing a class, a conversion to builtins)."""
    cls = value.__class__
    if cls is str:
        if key is not None:
            hit = key_class(key, value)
            if hit is not None and r.policy.action(*hit) != "allow":
                return False
        texts.append(value)
        return True
    if cls is dict:
        for k, v in value.items():
            if k.__class__ is not str:
                return False
            texts.append(k)
            if not _gather(r, v, k, texts):
                return False
        return True
    if cls is list:
        for v in value:
            if not _gather(r, v, key, texts):
                return False
        return True
    if cls is int:
        if key is not None and key_class(key, str(value)) is not None:
            return False
        if value >= 1_000_000 or value <= -1_000_000:  # judged by its digits (see `_walk`)
            texts.append(str(value))
        return True
    return cls is float or cls is bool or value is None  # anything else: the walk converts it


def _gather_messages(r: Redactor, messages: Any, scan: Mapping[str, str], texts: list[str],
                     names: list[str], clean_names: set[str]) -> bool:
    # As `_messages`: a plain message's fields by their own scan, anything else walked.
    if messages.__class__ is not list:
        return _gather(r, messages, None, texts)
    for m in messages:
        if m.__class__ is dict and m.keys() <= scan.keys() and _ONLY_STR(map(type, m.values())):
            for sub, value in m.items():
                if not value:
                    continue
                if scan[sub] != "name":
                    texts.append(value)
                elif value not in clean_names:
                    names.append(value)
        elif not _gather(r, m, None, texts):
            return False
    return True


def _event_type(event: Mapping[str, Any]) -> str:
    etype = event.get("event_type")
    return etype if isinstance(etype, str) and etype in FREE_TEXT else ""


def _messages(r: Redactor, messages: Any, scan: Mapping[str, str], found: Counter) -> Any:
    # The bulk of most events: each message's fields as the contract scans them (role: a name,
    # content: text), as in the worker.
    if not isinstance(messages, list):
        return _walk(r, messages, "messages", None, found)
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.keys() <= scan.keys() and all(isinstance(v, str) for v in m.values()):
            new_m = None
            for sub, value in m.items():
                if not value:
                    continue
                path = f"messages[{i}].{sub}"
                new = r._name(value, path, found) if scan[sub] == "name" else r._value(value, path, None, found)
                if new is not value:
                    new_m = new_m or dict(m)
                    new_m[sub] = new
            out.append(new_m or m)
        else:  # tool calls, content parts, or something malformed: walk it all
            out.append(_walk(r, m, f"messages[{i}]", None, found))
    return out


def _names(r: Redactor, value: Any, path: str, found: Counter) -> Any:
    if isinstance(value, str):
        return r._name(value, path, found)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return r._name(value, path, found)
    return _walk(r, value, path, None, found)  # not what the contract admits: scanned as text


def _walk(r: Redactor, value: Any, path: str, key: Optional[str], found: Counter) -> Any:
    """The worker's walk (Redactor._value: text, keys, key hints) plus numbers anywhere.

    The worker reads unknown fields as JSON text, where a bare card or phone number is
    text too; here the same number is judged by its digits.
    """
    if isinstance(value, str):
        return r._value(value, path, key, found)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, str):
                k, counts = r.redact_text(k)  # a key can itself be an email
                for cls, n in counts.items():
                    found[(f"{path}.<key>", cls)] += n
            out[k] = _walk(r, v, f"{path}.{k}", k if isinstance(k, str) else None, found)
        return out
    if isinstance(value, (list, tuple)):
        return [_walk(r, v, f"{path}[{i}]", key, found) for i, v in enumerate(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        before = len(found)
        new = r._value(value, path, key, found)  # {"pin": 1234}: judged by its key
        if len(found) != before or abs(value) < 1_000_000:
            return new
        text, counts = r.redact_text(str(value))  # 4111111111111111, 14155550132
        for cls, n in counts.items():
            found[(path, cls)] += n
        return text if counts else value
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):  # text, not base64 of the secret
        return r._value(bytes(value).decode("utf-8", "replace"), path, key, found)
    # Anything else an encoder could write out (dataclasses, enums, sets, Structs, ...)
    # is walked as the builtins it becomes; what cannot be converted raises, and the
    # hook fails closed.
    return _walk(r, msgspec.to_builtins(value, builtin_types=(bytes, bytearray, memoryview)), path, key, found)


def drop_content(event: Mapping[str, Any]) -> dict:
    """Keep what analytics needs (ids, names, numbers, message roles and lengths), drop all text."""
    plan = _PLANS.get(_event_type(event), _BASE_PLAN)
    out: dict[str, Any] = {}
    for name, value in event.items():
        how = plan.get(name, (None,))[0]
        if how == _ADMITTED or how == _NAME:
            if isinstance(value, _SCALARS):
                out[name] = value if how == _NAME or plan[name][1](value) or not isinstance(value, str) else _dropped(value)
            elif name == "usage" and isinstance(value, dict):
                out[name] = {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, int)}
            elif how == _NAME and isinstance(value, list):
                out[name] = [v for v in value if isinstance(v, str)]
            elif not isinstance(value, (dict, list, tuple, set)):
                out[name] = value  # e.g. a datetime `ts`
        elif name == "messages" and isinstance(value, (list, tuple)):
            out[name] = [_dropped_message(m) for m in value]
        elif how == _TEXT and isinstance(value, str):
            out[name] = _dropped(value)
        elif name == "arguments":
            out[name] = "[CONTENT DROPPED]"
        # params, attributes and unknown fields: removed
    out["attributes"] = {FAILED: "failed"}
    return out


def _dropped_message(m: Any) -> dict:
    role = m.get("role") if isinstance(m, dict) else None
    content = m.get("content") if isinstance(m, dict) else m
    text = content if isinstance(content, str) else ""
    return {"role": role if isinstance(role, str) and len(role) <= 32 else "unknown", "content": _dropped(text)}


def _dropped(text: str) -> str:
    return f"[CONTENT DROPPED len={len(text)}]"


_decode = msgspec.json.Decoder().decode  # big integers survive, unlike float-based decoders
_encode = msgspec.json.Encoder().encode


def _annotation(found: Counter) -> str:
    # Field paths with list indices folded, as in the worker's findings ("messages[].content").
    folded: Counter = Counter()
    for (path, cls), n in found.items():
        folded[(cls, _fold(path))] += n
    return json.dumps(sorted([cls, path, n] for (cls, path), n in folded.items()), separators=(",", ":"))


def _fold(path: str) -> str:
    return _INDEX.sub("[]", path)


def redaction_hook(
    policy: Optional[Policy | str] = None,
    hash_key: bytes | str = b"",
    tenant: Optional[str] = None,
    *,
    settings: Optional[RedactorSource] = None,
    annotate: bool = True,
    accelerate: Optional[bool] = None,
) -> RedactionHook:
    """A publisher hook that redacts events before publish. Raises only on a bad configuration.

    `policy`: a Policy or one action for everything ("mask", "hash", "drop_content", "allow");
    default mask. `hash_key`: needed by `hash`; use the worker's `redaction.hash_key` so hashes
    join. `tenant`: derive the hash key from this tenant for every event (default: each
    event's own tenant, as the worker does). `settings`: a `RedactionSettings` (or anything
    with `redactor_for(tenant, workflow)`) for per-tenant/workflow policies instead of `policy`.
    """
    if isinstance(policy, str):
        policy = Policy.uniform(policy)
    return RedactionHook(policy, hash_key, tenant, settings=settings, annotate=annotate, accelerate=accelerate)


__all__ = ["ANNOTATION", "FAILED", "HookStats", "RedactionHook", "drop_content", "redaction_hook"]
