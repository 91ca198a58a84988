"""Control actions: the kill-switch contract (topic `llm.controls`, table `control_actions`).

One vocabulary for people (`llmpulse control ...`) and policies (findings -> actions in the
worker); the SDK enforces it in the app (ingest/controls.py, ingest/enforce.py).

Transport: `llm.controls` is a compacted topic. Every record is one whole `ControlAction`
keyed by `scope_key(action)`; the latest record of a key is that scope's current state, so a
reader that starts at offset 0 rebuilds all of it. A lift or an expiry is a new record of the
same action (same `action_id`, same key) with `state` "lifted" / "expired". A record whose
value is empty (a tombstone) forgets the key. Expiry needs no message to take effect: every
reader treats an action past `expires_at` as expired (`is_active`); the record that says so
is written for the audit.

Kinds and their scope (empty = every value; `SCOPES` says which fields each kind takes):

    halt_trace        trace_id            refuse every further model and tool call of one run
    pause_workflow    workflow            refuse new model and tool calls (per tenant or all)
    disable_tool      tool                refuse calls of a tool (per workflow or everywhere)
    route_model       model -> route_to   use `route_to` instead of `model`
    require_approval  (tool)              tool calls with side effect write/irreversible (or
                                          calls of `tool`) need an approval
    block_spend       tenant/workflow/model/user_id (at least one): refuse model calls
    approve           trace_id (, tool)   a person's approval of such calls in one run

Source: a person (`source="person"`, `actor`) or a policy (`source="policy"`, `finding_id`
that fired it, `policy` = the rule's name). Automatic actions must expire (`expires_at`).
Mode: `enforce`, or `dry_run` (the SDK decides, publishes the would-be decision, allows).

Enforced decisions are contract events of type `decision` on `llm.events`
(schemas/contract.py `Decision`), stored in `events` like every event; their `action_id`
joins them to `control_actions`.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

from llmpulse.schemas.contract import MAX_TS_MS, MIN_TS_MS

CONTROLS_VERSION = "1"
ControlKind = Literal["halt_trace", "pause_workflow", "disable_tool", "route_model",
                      "require_approval", "block_spend", "approve"]
KINDS: tuple[str, ...] = ControlKind.__args__  # type: ignore[attr-defined]
Mode = Literal["enforce", "dry_run"]
State = Literal["active", "lifted", "expired"]
Source = Literal["person", "policy"]

SCOPE_FIELDS = ("tenant", "workflow", "model", "tool", "user_id", "trace_id")
# Per kind: (scope fields it takes, fields it requires; "any" = at least one of the taken ones).
SCOPES: dict[str, tuple[frozenset[str], frozenset[str] | Literal["any"]]] = {
    "halt_trace": (frozenset({"tenant", "workflow", "trace_id"}), frozenset({"trace_id"})),
    "pause_workflow": (frozenset({"tenant", "workflow"}), frozenset({"workflow"})),
    "disable_tool": (frozenset({"tenant", "workflow", "tool"}), frozenset({"tool"})),
    "route_model": (frozenset({"tenant", "workflow", "model"}), frozenset({"model"})),
    "require_approval": (frozenset({"tenant", "workflow", "tool"}), frozenset()),
    "block_spend": (frozenset({"tenant", "workflow", "model", "user_id"}), "any"),
    "approve": (frozenset({"tenant", "workflow", "tool", "trace_id"}), frozenset({"trace_id"})),
}
assert set(SCOPES) == set(KINDS)

Name = Annotated[str, Meta(max_length=256)]
Ms = Annotated[int, Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]


class ControlError(ValueError):
    """An action that breaks the contract; the message says which rule and which field."""


# gc=False: fields are strings and ints only, and an SDK holding 100,000 actions must not make
# every cyclic-GC pass of the app walk them.
class ControlAction(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    action_id: Annotated[str, Meta(min_length=1, max_length=64)]
    kind: ControlKind
    reason: Annotated[str, Meta(min_length=1, max_length=500)]
    source: Source
    created_at: Ms  # epoch ms
    updated_at: Ms  # epoch ms of this record: created_at, or when it was lifted / expired
    # Scope ("" = any).
    tenant: Name = ""
    workflow: Name = ""
    model: Name = ""
    tool: Name = ""
    user_id: Name = ""
    trace_id: Name = ""
    route_to: Name = ""  # route_model: the model to use instead
    actor: Name = ""  # source person: who
    finding_id: Name = ""  # source policy: the finding that fired it
    policy: Name = ""  # source policy: the rule's name
    expires_at: Union[Ms, None] = None  # epoch ms; None = until lifted (people only)
    mode: Mode = "enforce"
    state: State = "active"
    ended_by: Name = ""  # lifted: who; expired: "expiry"
    ended_reason: Annotated[str, Meta(max_length=500)] = ""
    version: Literal["1"] = CONTROLS_VERSION

    def __post_init__(self) -> None:
        problems = problems_of(self)
        if problems:
            raise ControlError(f"{self.kind} action: " + "; ".join(problems))


def problems_of(a: ControlAction) -> list[str]:
    """Every rule the action breaks, in words (empty: valid)."""
    out: list[str] = []
    takes, needs = SCOPES[a.kind]
    given = {f for f in SCOPE_FIELDS if getattr(a, f)}
    if extra := sorted(given - takes):
        out.append(f"takes no {', '.join(extra)} (scope fields of {a.kind}: {', '.join(sorted(takes))})")
    if needs == "any":
        if not given & takes:
            out.append(f"needs at least one of {', '.join(sorted(takes))}")
    elif missing := sorted(needs - given):
        out.append(f"needs {', '.join(missing)}")
    if a.kind == "route_model":
        if not a.route_to:
            out.append("needs route_to (the model to use instead)")
        elif a.route_to == a.model:
            out.append("route_to must differ from model")
    elif a.route_to:
        out.append("route_to is for route_model only")
    if a.source == "person":
        if not a.actor:
            out.append("a person's action needs actor")
        if a.finding_id or a.policy:
            out.append("a person's action has no finding_id or policy")
    else:
        if not a.finding_id:
            out.append("a policy's action needs the finding_id that fired it")
        if a.expires_at is None:
            out.append("an automatic action needs expires_at")
        if a.kind == "approve":
            out.append("only a person approves")
    if a.expires_at is not None and a.expires_at <= a.created_at:
        out.append("expires_at must be after created_at")
    if a.updated_at < a.created_at:
        out.append("updated_at must not be before created_at")
    if a.state == "active" and (a.ended_by or a.ended_reason):
        out.append("an active action has no ended_by or ended_reason")
    if a.state != "active" and not a.ended_by:
        out.append(f"a {a.state} record needs ended_by")
    return out


# -- identity --------------------------------------------------------------------------------

def scope_key(a: ControlAction) -> str:
    """The Kafka key: the kind, every scope field, the mode and the origin (a person, or the
    finding that fired it). Two actions of one key supersede each other; a policy's lift
    therefore never lifts a person's action on the same scope, nor another finding's."""
    origin = "person" if a.source == "person" else "finding:" + a.finding_id
    return "\x1f".join(["v1", a.kind, *(getattr(a, f) for f in SCOPE_FIELDS), a.mode, origin])


def action_id_for(kind: str, finding_id: str = "", *scope: object) -> str:
    """A policy's action id is stable (the same finding fires the same id on a replay); a
    person's is random (two pauses of one workflow are two actions in the audit)."""
    if not finding_id:
        return os.urandom(8).hex()
    key = "\x1f".join(["control", kind, finding_id, *(str(s) for s in scope)])
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def new_action(kind: str, *, reason: str, at: int, actor: str = "", finding_id: str = "",
               policy: str = "", expires_at: int | None = None, mode: str = "enforce",
               route_to: str = "", **scope: str) -> ControlAction:
    """A new active action, validated (raises ControlError naming the broken rule)."""
    unknown = set(scope) - set(SCOPE_FIELDS)
    if unknown:
        raise ControlError(f"unknown scope field(s): {', '.join(sorted(unknown))}")
    if kind not in SCOPES:
        raise ControlError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if mode not in ("enforce", "dry_run"):
        raise ControlError(f"mode must be enforce or dry_run, got {mode!r}")
    return _build(
        action_id=action_id_for(kind, finding_id, *(scope.get(f, "") for f in SCOPE_FIELDS)),
        kind=kind, reason=reason, source="policy" if finding_id else "person",
        created_at=at, updated_at=at, actor=actor, finding_id=finding_id, policy=policy,
        expires_at=expires_at, mode=mode, route_to=route_to, **scope)


def lift(a: ControlAction, *, by: str, reason: str = "", at: int) -> ControlAction:
    """The record that lifts `a` (same id and key)."""
    return _replace(a, state="lifted", ended_by=by, ended_reason=reason, updated_at=max(at, a.created_at))


def expire(a: ControlAction) -> ControlAction:
    """The record that says `a` expired (at its expires_at)."""
    if a.expires_at is None:
        raise ControlError("an action without expires_at does not expire")
    return _replace(a, state="expired", ended_by="expiry", updated_at=a.expires_at)


def is_active(a: ControlAction, now_ms: int) -> bool:
    return a.state == "active" and (a.expires_at is None or now_ms < a.expires_at)


def _replace(a: ControlAction, **changes: Any) -> ControlAction:
    return _build(**{**msgspec.structs.asdict(a), **changes})


def _build(**fields: Any) -> ControlAction:
    # Through the decoder's converter so the field constraints (lengths, bounds) apply too.
    try:
        return msgspec.convert(fields, ControlAction)
    except msgspec.ValidationError as exc:
        raise ControlError(str(exc)) from None


# -- wire ------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ControlAction)


def encode_action(a: ControlAction) -> bytes:
    return _encoder.encode(a)


def decode_action(raw: bytes) -> ControlAction:
    """Strict decode; raises ControlError with the reason (unknown fields, broken rules)."""
    try:
        return _decoder.decode(raw)
    except ControlError:
        raise
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ControlError(str(exc)) from None


# -- durations (`--for 30m`, policies' `for:`) -----------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(text: str) -> int:
    """'90s', '30m', '1.5h', '7d' -> milliseconds (> 0)."""
    m = _DURATION.match(str(text))
    if not m:
        raise ControlError(f"duration {text!r}: use a number and a unit, e.g. 90s, 30m, 2h, 7d")
    try:
        ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    except OverflowError:  # hundreds of digits: float infinity
        raise ControlError(f"duration {text!r} is too long") from None
    if ms <= 0:
        raise ControlError(f"duration {text!r} must be positive")
    return ms
