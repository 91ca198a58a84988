"""SDK-side redaction: a publisher hook that redacts an event before it leaves the app.

    from llmpulse.ingest.redaction_hook import redaction_hook
    pub = KafkaPublisher(bootstrap, hooks=[redaction_hook()])            # mask everything
    pub = KafkaPublisher(bootstrap, hooks=[redaction_hook(Policy(pii="hash"), hash_key=key)])
    pub = KafkaPublisher(bootstrap, hooks=[redaction_hook(settings=cfg.redaction)])  # per scope

The same detectors and the same field rules as the worker's pass (processors/redaction.py,
`Redactor.redact_event`), applied to the plain dict the publisher is about to encode:

- free-text fields are redacted: prompt `messages` and `params`, tool `arguments` and
  `result`, output `content`, eval `comment`, change `description`/`from_value`/`to_value`,
  and `attributes` (keys and values);
- fields the contract does not know for the event's type (they land in `extra`) are
  redacted too, judged also by their key (`{"customer_email": ...}`);
- identity and metadata (ids, tenant, workflow, user/session, model, status, usage, ...)
  are left alone, as in the worker: do not put personal data there.

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
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol

import msgspec

from llmpulse.processors.redaction import Policy, Redactor
from llmpulse.schemas.contract import EVENT_CLASSES, BaseEvent

log = logging.getLogger("llmpulse.sdk")

ANNOTATION = "llmpulse.redacted"  # attribute naming what the SDK redacted: [[class, field, count], ...]
FAILED = "llmpulse.redaction"  # attribute set to "failed" on an event redacted by dropping content

# Free text, redacted whatever it looks like (the worker's Redactor.redact_event does the same).
CONTENT_FIELDS = frozenset(
    {"messages", "params", "arguments", "result", "content", "comment", "description", "from_value", "to_value",
     "attributes"}
)
_BASE_FIELDS = frozenset(BaseEvent.__struct_fields__) | {"event_type"}
# Per event type: the metadata the contract knows (left alone); anything else not in
# CONTENT_FIELDS is an unknown field, redacted like the worker redacts `extra`.
_METADATA: dict[str, frozenset[str]] = {
    name: (frozenset(cls.__struct_fields__) | {"event_type"}) - CONTENT_FIELDS for name, cls in EVENT_CLASSES.items()
}
_SCALARS = (str, int, float, bool, type(None))
_INDEX = re.compile(r"\[\d+\]")
_MAX_REDACTORS = 1024  # tenants (or tenant x workflow scopes) kept compiled


class RedactorSource(Protocol):
    """Anything that gives the redactor of a scope: `RedactionSettings` (worker config) is one."""

    def redactor_for(self, tenant: str, workflow: str) -> Redactor: ...


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
        metadata = _METADATA.get(event.get("event_type"), _BASE_FIELDS)  # type: ignore[arg-type]
        found: Counter = Counter()
        changed: dict[str, Any] = {}
        for name, value in event.items():
            if name in metadata or value is None or isinstance(value, bool):
                continue
            # Content fields: no key hint, as in the worker. Unknown fields: the key may
            # tell what the value is ({"customer_email": ...}, {"pin": 1234}).
            before = len(found)
            if name == "messages" and isinstance(value, list):
                new = _messages(redactor, value, found)
            else:
                new = _walk(redactor, value, name, None if name in CONTENT_FIELDS else name, found)
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


def _messages(r: Redactor, messages: list, found: Counter) -> list:
    # The bulk of most events: roles are metadata, content is text (as in the worker).
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and len(m) <= 2 and isinstance(m.get("content", ""), str) and "role" in m:
            content = m.get("content")
            if content:
                new = r._value(content, f"messages[{i}].content", None, found)
                if new is not content:
                    m = {**m, "content": new}
            out.append(m)
        else:  # tool calls, content parts, or something malformed: walk it all
            out.append(_walk(r, m, f"messages[{i}]", None, found))
    return out


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
    """Keep what analytics needs (metadata, message roles and lengths), drop all content."""
    metadata = _METADATA.get(event.get("event_type"), _BASE_FIELDS)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for name, value in event.items():
        if name in metadata:
            if isinstance(value, _SCALARS):
                out[name] = value
            elif name == "usage" and isinstance(value, dict):
                out[name] = {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, int)}
            elif name == "tools_offered" and isinstance(value, list):
                out[name] = [v for v in value if isinstance(v, str)]
            elif not isinstance(value, (dict, list, tuple, set)):
                out[name] = value  # e.g. a datetime `ts`
        elif name == "messages" and isinstance(value, (list, tuple)):
            out[name] = [_dropped_message(m) for m in value]
        elif name in CONTENT_FIELDS and name not in ("attributes", "params") and isinstance(value, str):
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


__all__ = ["ANNOTATION", "CONTENT_FIELDS", "FAILED", "HookStats", "RedactionHook", "drop_content", "redaction_hook"]
