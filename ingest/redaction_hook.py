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
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

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
            if name in metadata or isinstance(value, (bool, int, float, type(None))):
                continue
            # Content fields: as the worker (no key hint). Unknown fields: the key may tell
            # what the value is ({"customer_email": ...}); Redactor._value is the worker's walk.
            before = len(found)
            hint = None if name in CONTENT_FIELDS else name
            new = redactor._value(value, name, hint, found)
            if len(found) != before or (new is not value and isinstance(value, str)):
                changed[name] = new
        if not changed:
            return event, found
        out = dict(event)  # the app's nested objects are never modified
        out.update(changed)
        if self.annotate:
            attrs = out.get("attributes")
            attrs = dict(attrs) if isinstance(attrs, dict) else {}
            attrs[ANNOTATION] = _annotation(found)
            out["attributes"] = attrs
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
    out, depth = [], 0
    for ch in path:
        if ch == "[":
            depth += 1
            out.append("[]")
        elif ch == "]":
            depth = max(0, depth - 1)
        elif not depth:
            out.append(ch)
    return "".join(out)


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


Hook = Callable[[dict], Optional[dict]]
__all__ = ["ANNOTATION", "CONTENT_FIELDS", "FAILED", "HookStats", "RedactionHook", "drop_content", "redaction_hook"]
