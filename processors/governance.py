"""Decision rights and approved models per workflow: who may approve which change, which
models a workflow may call, and what of its content is kept.

Config (`governance:` in the llmpulse YAML)::

    governance:
      groups:                               # group -> people; name a group as "group:NAME"
        ml-leads: [alice, bob]
      approved_models:                      # every workflow may call these
        owner: platform-team                # named in the finding
        models: ["openai/gpt-4o*", "anthropic/*"]    # provider/model or model; * wildcards
      workflows:
        support-bot:
          approvals:                        # change kind -> who may approve it
            model_swap: {approvers: ["group:ml-leads"], require_gate: true}
            prompt_edit: {approvers: [alice, "group:ml-leads"], require_gate: true}
            tool_permission: {approvers: [alice]}
            config: {approvers: [carol]}
            rollback: {approvers: [carol, "group:ml-leads"]}
          approved_models: {owner: support-team, models: ["openai/gpt-4o-mini"]}
          content: {capture: metadata}      # full (default) | sampled (rate: 0.1) | metadata
          retention_days: 30                # its events' per-row TTL
        "*": {...}                          # optional: workflows not listed

Changes. A `change` of a kind the workflow's `approvals` lists needs `approved_by`
naming at least one of its approvers (people, or members of a listed group) other than
the change's `actor`, and, with `require_gate`, a passing eval gate: `gate_result` "pass",
or a `gate_id` naming an `eval_gate` decision of the same workflow seen with result "pass"
(a gate seen with another result overrides what the change claims). A change naming a gate
not read yet waits for it until the event-time watermark passes the change (the gate may be
on a partition read later). Otherwise one `unapproved_change`
finding per change (id from the change's event_id), severity by kind (`SEVERITY`, or the
rule's `severity`). Kinds a workflow does not list, and `eval_gate` decisions, need no
approval.

Models. An `output` whose provider/model matches no pattern of the workflow's list or the
global one (when either list exists; an output naming no model is not judged) raises
`unapproved_model`, once per tenant,
workflow, provider, model and UTC day of event time, naming the owner of the workflow's
list (else the global one). `inherit_global: false` on a workflow's list makes it the
only list that workflow may use.

Retention. `retention_days: 30` on a workflow is stored with each of its rows; the `events`
table's TTL drops a row after its own days (migration 0006), besides the table-wide
`retention_days`, so a workflow can keep its events for less, never for longer.

Content. `capture: metadata` drops the unknown fields and every free-text field of the contract
(`schemas/contract.py` FREE_TEXT, "text" scan) before the row is built, but keeps a digest in
place of each value of the fields the loop detector compares (`DIGESTED`: tool arguments and
results, prompt message contents) and of output content: keys and list structure stay, each
leaf (string, number, bool) becomes `~h:` and 14 letters, a keyed BLAKE2b of its
`loops.canonical` form (`content_digest`). Equal calls stay equal, so loops stay visible, and
different calls differ, so 12 different searches are no `tool_loop`; the key is the event's
trace_id (its event_id without one), so a digest links nothing across traces; letters only,
so the detector's masking of volatile ids (tokens holding digits) leaves it alone. A digest
hides text, not a guessable value: whoever has the trace id can test candidates ("yes", a
customer number) against it. The other text fields (attributes, params, comments,
descriptions, reasons) are emptied. `sampled` keeps
them for `rate` of traces (by a hash of trace_id, the same on every worker and replay). The
worker applies it before a row is built; `ContentPolicy(settings.governance).hook` applies the
same in the app (an SDK hook), so the text is not in Kafka's `llm.events` either. With both,
the worker digests the hook's digests: still equal within a trace, and no app-made string
shaped like a digest passes unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmpulse.processors.loops import canonical
from llmpulse.schemas.contract import FREE_TEXT, BaseEvent
from llmpulse.schemas.findings import Finding, Severity, finding_id

DEFAULT_KEY = "*"
GROUP_PREFIX = "group:"
CHANGE_KINDS = ("model_swap", "prompt_edit", "config", "rollback", "tool_permission")
# What an unreviewed change can do: a new tool permission lets the model act; a model swap
# changes every answer; prompt and config edits change some; a rollback returns to a known state.
SEVERITY: dict[str, Severity] = {"tool_permission": "critical", "model_swap": "high", "prompt_edit": "medium",
                                 "config": "medium", "rollback": "low"}
DAY_MS = 86_400_000


# --- configuration ----------------------------------------------------------------------------


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    approvers: tuple[str, ...] = Field(min_length=1)
    require_gate: bool = False
    severity: Severity | None = None


class ModelList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    owner: str = Field(min_length=1)
    models: tuple[str, ...] = Field(min_length=1)
    inherit_global: bool = True

    def allows(self, provider: str, model: str) -> bool:
        full = f"{provider}/{model}"
        return any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(model, p) for p in self.models)


class Content(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    capture: Literal["full", "sampled", "metadata"] = "full"
    rate: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _rate(self) -> "Content":
        if (self.capture == "sampled") != (self.rate is not None):
            raise ValueError("content: give rate with capture: sampled, and only then")
        return self


class WorkflowGovernance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    approvals: dict[Literal["model_swap", "prompt_edit", "config", "rollback", "tool_permission"], Approval] = {}
    approved_models: ModelList | None = None
    content: Content = Content()
    # Days its events are kept (per-row TTL on `events`); shorter than `retention_days` only,
    # since the table's own TTL still applies.
    retention_days: int | None = Field(None, ge=1, le=65_535)


class GovernanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: dict[str, tuple[str, ...]] = {}
    approved_models: ModelList | None = None
    workflows: dict[str, WorkflowGovernance] = {}

    @model_validator(mode="after")
    def _groups_exist(self) -> "GovernanceConfig":
        for wf, g in self.workflows.items():
            for kind, a in g.approvals.items():
                unknown = [x for x in a.approvers if x.startswith(GROUP_PREFIX)
                           and x[len(GROUP_PREFIX):] not in self.groups]
                if unknown:
                    raise ValueError(f"workflows.{wf}.approvals.{kind}: unknown groups {unknown}; "
                                     f"known: {sorted(self.groups)}")
        return self

    @property
    def active(self) -> bool:
        return bool(self.approved_models or self.workflows)

    def for_workflow(self, workflow: str) -> WorkflowGovernance | None:
        return self.workflows.get(workflow) or self.workflows.get(DEFAULT_KEY)

    def people(self, approvers: tuple[str, ...]) -> frozenset[str]:
        out: set[str] = set()
        for a in approvers:
            out.update(self.groups[a[len(GROUP_PREFIX):]] if a.startswith(GROUP_PREFIX) else (a,))
        return frozenset(out)

    def model_lists(self, workflow: str) -> list[ModelList]:
        g = self.for_workflow(workflow)
        own = g.approved_models if g is not None else None
        if own is not None and not own.inherit_global:
            return [own]
        return [m for m in (own, self.approved_models) if m is not None]


# --- content capture --------------------------------------------------------------------------------


def _text_fields(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(name, scan) for name, scan in spec.items() if scan == "text" or isinstance(scan, dict)]


_TEXT = {etype: _text_fields(spec) for etype, spec in FREE_TEXT.items()}
_IDENTITY = ("event_type", "event_id", "ts", "tenant", "workflow", "trace_id")


def keeps_content(content: Content, trace_id: str) -> bool:
    if content.capture == "full":
        return True
    if content.capture == "metadata":
        return False
    h = int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=8).digest(), "big")
    return h < content.rate * 2**64  # type: ignore[operator]


# Fields whose values the detectors compare (processors/loops.py), plus output content: under
# `metadata` they keep a digest per leaf instead of being emptied. A message list keeps its roles.
DIGESTED = frozenset({("tool_call", "arguments"), ("tool_call", "result"), ("prompt", "messages"),
                      ("output", "content")})
DIGEST_MARK = "~h:"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGEST_LETTERS = 14  # 26**14 > 2**64: every 8-byte digest has its own spelling
_encoder = msgspec.json.Encoder(enc_hook=str, order="sorted")  # the SDK's dicts may hold any object


def digest_key(trace_id: Any, event_id: Any) -> bytes:
    """The BLAKE2b key of an event's digests: its trace (equal values stay equal across the trace's
    events), its own id when it names no trace. BLAKE2b takes at most 64 key bytes."""
    ident = trace_id if isinstance(trace_id, str) and trace_id else event_id
    return (ident if isinstance(ident, str) else "").encode()[:64]


def content_digest(value: Any, key: bytes) -> str:
    """`~h:` and 14 letters for one value: its canonical form (volatile ids and times masked, as the
    loop detector compares it) under a keyed BLAKE2b. Letters only: no digit for the detector's
    volatile-id masking to act on."""
    raw = _encoder.encode(canonical(value))
    n = int.from_bytes(hashlib.blake2b(raw, key=key, digest_size=8).digest(), "big")
    letters = []
    for _ in range(_DIGEST_LETTERS):
        n, r = divmod(n, 26)
        letters.append(_LETTERS[r])
    return DIGEST_MARK + "".join(letters)


def digest_leaves(value: Any, key: bytes) -> Any:
    """The value with dict keys and list structure kept and each leaf digested; None and "" carry no
    content and stay (an empty result is still one)."""
    if isinstance(value, dict):
        return {k: digest_leaves(v, key) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [digest_leaves(v, key) for v in value]
    if value is None or (isinstance(value, str) and not value):
        return value
    return content_digest(value, key)


def _message_text(scan: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    # what each text subfield of a message becomes: its digest where the list is digested, else ""
    return {f: (lambda v: digest_leaves(v, key)) if key is not None else (lambda v: "")
            for f, s in scan.items() if s == "text"}


def strip_content(event: BaseEvent) -> BaseEvent:
    """The event with every free-text field emptied, or digested where `DIGESTED` says (names and
    numbers of the contract stay)."""
    key = digest_key(event.trace_id, event.event_id)
    changes: dict[str, Any] = {}
    for name, scan in _TEXT[event.event_type]:
        value = getattr(event, name)
        digested = (event.event_type, name) in DIGESTED
        if isinstance(scan, dict):  # a list of structs (prompt messages): keep roles
            text = _message_text(scan, key if digested else None)
            changes[name] = [msgspec.structs.replace(m, **{f: fn(getattr(m, f)) for f, fn in text.items()})
                             for m in value]
        elif digested:
            changes[name] = digest_leaves(value, key)
        elif isinstance(value, str):
            changes[name] = ""
        elif isinstance(value, dict):
            changes[name] = {}
        elif isinstance(value, list):
            changes[name] = []
    return msgspec.structs.replace(event, **changes) if changes else event


def strip_content_dict(event: dict) -> dict:
    """The same on an event as the SDK holds it (a dict, before encoding), with the same digests:
    fields the contract does not name (kept as `extra`) dropped as well."""
    from llmpulse.schemas.contract import EVENT_CLASSES

    etype = event.get("event_type")
    cls = EVENT_CLASSES.get(etype) if isinstance(etype, str) else None
    if cls is None:
        return event  # not a contract event: validation will dead-letter it, whatever it holds
    key = digest_key(event.get("trace_id"), event.get("event_id"))
    out = {k: v for k, v in event.items() if k in cls.__struct_fields__ or k == "event_type"}
    for name, scan in _TEXT[etype]:
        value = out.get(name)
        if value is None:
            continue
        digested = (etype, name) in DIGESTED
        if isinstance(scan, dict) and isinstance(value, list):
            text = _message_text(scan, key if digested else None)
            out[name] = [{f: (text[f](v) if f in text else v) for f, v in m.items() if f in scan}
                         if isinstance(m, dict) else {} for m in value]
        elif digested:
            out[name] = digest_leaves(value, key)
        elif isinstance(value, str):
            out[name] = ""
        elif isinstance(value, dict):
            out[name] = {}
        elif isinstance(value, list):
            out[name] = []
    return out


class ContentPolicy:
    """What is kept of a workflow's events, and for how long: `apply(event, extra)` under its
    capture, `retention_days(workflow)` for the row (0: the table's retention)."""

    def __init__(self, config: GovernanceConfig):
        self.config = config

    @property
    def active(self) -> bool:
        return any(g.content.capture != "full" or g.retention_days for g in self.config.workflows.values())

    def retention_days(self, workflow: str) -> int:
        g = self.config.for_workflow(workflow)
        return (g.retention_days or 0) if g is not None else 0

    def hook(self, event: dict) -> dict:
        """An SDK hook (`Publisher(..., hooks=[policy.hook])`): the same capture in the app, so
        the text never reaches Kafka either. Run it before redaction (hooks run first)."""
        wf, trace = event.get("workflow"), event.get("trace_id")
        g = self.config.for_workflow(wf if isinstance(wf, str) else "")
        if g is None or keeps_content(g.content, trace if isinstance(trace, str) else ""):
            return event
        return strip_content_dict(event)

    def dead_letter(self, value: bytes) -> bytes:
        """A dead letter's bytes under its workflow's capture: the contract refused the event, but
        a metadata-only workflow's text stays out of the DLQ topic and table all the same. Bytes
        that name no workflow follow the `"*"` rule."""
        try:
            event = msgspec.json.decode(value)
        except (msgspec.DecodeError, UnicodeError):
            event = None
        if not isinstance(event, dict):
            g = self.config.for_workflow("")
            return value if g is None or g.content.capture == "full" else b'{"content":"not kept (capture)"}'
        wf, trace = event.get("workflow"), event.get("trace_id")
        g = self.config.for_workflow(wf if isinstance(wf, str) else "")
        if g is None or keeps_content(g.content, trace if isinstance(trace, str) else ""):
            return value
        stripped = strip_content_dict(event)
        if stripped is event:  # no contract event type: only what identifies it
            stripped = {k: v for k, v in event.items() if k in _IDENTITY and not isinstance(v, (dict, list))}
        return msgspec.json.encode(stripped)

    def apply(self, event: BaseEvent, extra: dict) -> tuple[BaseEvent, dict]:
        g = self.config.for_workflow(event.workflow)
        if g is None or keeps_content(g.content, event.trace_id):
            return event, extra
        return strip_content(event), {}


# --- the detector ---------------------------------------------------------------------------------


class GovernanceChecker:
    """Findings `unapproved_change` and `unapproved_model` (see the module doc)."""

    def __init__(self, config: GovernanceConfig, max_keys: int = 100_000):
        self.config = config
        self.max_keys = max_keys
        self.gates: dict[str, tuple[str, str]] = {}  # eval_gate event_id -> (workflow, result)
        self.changes_seen: set[str] = set()
        self.pending: dict[str, Any] = {}  # change event_id -> a change waiting for the gate it names
        self.models_fired: dict[tuple[str, str, str, str, int], None] = {}  # insertion-ordered
        self.watermark = 0

    @classmethod
    def from_config(cls, raw: Any) -> "GovernanceChecker":
        return cls(raw if isinstance(raw, GovernanceConfig) else GovernanceConfig.model_validate(raw or {}))

    def process(self, event: BaseEvent, cost_usd: float | None = None) -> list[Finding]:
        if event.ts > self.watermark:
            self.watermark = event.ts
        if event.event_type == "change":
            return self._change(event)
        if event.event_type == "output":
            return self._model(event)
        return []

    def advance(self, watermark_ms: int) -> list[Finding]:
        # Forget model keys of days before yesterday (event time): their finding is out already.
        horizon = max(watermark_ms, self.watermark) // DAY_MS - 1
        stale = [k for k in self.models_fired if k[4] < horizon]
        for k in stale:
            del self.models_fired[k]
        # Every partition is past these changes: a gate they name that is still unseen is not coming.
        return self._release([cid for cid, ev in self.pending.items() if ev.ts <= watermark_ms])

    def flush(self) -> list[Finding]:
        return self._release(list(self.pending))

    def stats(self) -> dict[str, int]:
        return {"gates": len(self.gates), "changes": len(self.changes_seen), "model_keys": len(self.models_fired),
                "pending_changes": len(self.pending)}

    # ------------------------------------------------------------------------------------------

    def _bounded(self, d: Any) -> None:
        while len(d) > self.max_keys:
            if isinstance(d, dict):
                del d[next(iter(d))]
            else:
                d.pop()

    def _release(self, change_ids: list[str]) -> list[Finding]:
        return [f for cid in change_ids for f in self._judge(self.pending.pop(cid))]

    def _rule(self, ev: Any) -> Approval | None:
        g = self.config.for_workflow(ev.workflow)
        return g.approvals.get(ev.change_kind) if g is not None else None

    def _change(self, ev: Any) -> list[Finding]:
        if ev.change_kind == "eval_gate":
            self.gates[ev.event_id] = (ev.workflow, ev.gate_result)
            self._bounded(self.gates)
            return self._release([cid for cid, c in self.pending.items() if c.gate_id == ev.event_id])
        rule = self._rule(ev)
        if rule is None or ev.event_id in self.changes_seen:
            return []
        self.changes_seen.add(ev.event_id)
        self._bounded(self.changes_seen)
        if rule.require_gate and ev.gate_id and ev.gate_id not in self.gates:
            self.pending[ev.event_id] = ev
            if len(self.pending) > self.max_keys:  # judge the oldest with what is known rather than forget it
                return self._release([next(iter(self.pending))])
            return []
        return self._judge(ev)

    def _judge(self, ev: Any) -> list[Finding]:
        rule = self._rule(ev)
        assert rule is not None  # only governed changes are judged
        allowed = self.config.people(rule.approvers)
        given = [a.strip() for a in ev.approved_by.split(",") if a.strip()]
        actor = ev.actor.strip()  # compared as approved_by is read: trimmed
        valid = [a for a in given if a in allowed and a != actor]
        problems = []
        if not given:
            problems.append("no approver")
        elif not valid:
            problems.append(f"approved by {', '.join(given)}, not an allowed approver"
                            + (" (self-approval does not count)" if actor in given else ""))
        seen = self.gates.get(ev.gate_id) if ev.gate_id else None
        gate = ev.gate_result if seen is None else seen[1]
        if rule.require_gate and seen is not None and seen[0] != ev.workflow:
            problems.append(f"eval gate {ev.gate_id} was run for {seen[0] or 'no workflow'}, not {ev.workflow}")
        elif rule.require_gate and gate != "pass":
            problems.append("no passing eval gate" if not gate else f"eval gate {gate}")
        if not problems:
            return []
        severity = rule.severity or SEVERITY[ev.change_kind]
        return [Finding(
            finding_id=finding_id("unapproved_change", ev.tenant, ev.workflow, ev.event_id),
            detected_at=ev.ts, event_ts=ev.ts, kind="unapproved_change", severity=severity,
            # a swap's finding is about the model swapped in: a route_model policy reroutes its calls
            tenant=ev.tenant, workflow=ev.workflow, model=ev.to_value if ev.change_kind == "model_swap" else ev.model,
            title=f"{ev.change_kind} on {ev.workflow or 'all workflows'} went live with {'; '.join(problems)}",
            evidence={"change_id": ev.event_id, "change_kind": ev.change_kind, "actor": ev.actor,
                      "approved_by": given, "allowed_approvers": sorted(rule.approvers),
                      "require_gate": rule.require_gate, "gate_result": gate, "gate_id": ev.gate_id,
                      "from_value": ev.from_value, "to_value": ev.to_value, "problems": problems},
        )]

    def _model(self, ev: Any) -> list[Finding]:
        lists = self.config.model_lists(ev.workflow)
        if not ev.model:  # a call that failed before naming one, or an app that does not say: nothing to judge
            return []
        if not lists or any(m.allows(ev.provider, ev.model) for m in lists):
            return []
        day = ev.ts // DAY_MS
        key = (ev.tenant, ev.workflow, ev.provider, ev.model, day)
        if key in self.models_fired:
            return []
        self.models_fired[key] = None
        self._bounded(self.models_fired)
        owner = lists[0].owner
        return [Finding(
            finding_id=finding_id("unapproved_model", *key),
            detected_at=ev.ts, event_ts=ev.ts, kind="unapproved_model", severity="high",
            tenant=ev.tenant, workflow=ev.workflow, model=ev.model, trace_id=ev.trace_id,
            title=f"{ev.workflow} called {ev.provider}/{ev.model}, not on the list approved by {owner}",
            evidence={"provider": ev.provider, "model": ev.model, "owner": owner,
                      "approved": sorted({p for m in lists for p in m.models}), "day": day * DAY_MS},
        )]
