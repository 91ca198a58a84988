"""The control-action contract (schemas/controls.py): validation, keys, lifts, the wire, rows."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from llmpulse.schemas.controls import (
    KINDS, SCOPE_FIELDS, SCOPES, ControlAction, ControlError, decode_action, encode_action, expire,
    is_active, lift, new_action, parse_duration, problems_of, scope_key,
)
from llmpulse.schemas.rows import CONTROL_ACTION_COLUMNS, control_action_row
from llmpulse.schemas.store import migrate

T0 = 1_795_000_000_000


def test_each_kind_names_what_its_scope_lacks() -> None:
    with pytest.raises(ControlError, match="halt_trace action: needs trace_id"):
        new_action("halt_trace", reason="loop", at=T0, actor="alice", workflow="bot")
    with pytest.raises(ControlError, match="needs workflow"):
        new_action("pause_workflow", reason="r", at=T0, actor="alice", tenant="acme")
    with pytest.raises(ControlError, match="takes no trace_id"):
        new_action("pause_workflow", reason="r", at=T0, actor="alice", workflow="w", trace_id="t")
    with pytest.raises(ControlError, match="needs route_to"):
        new_action("route_model", reason="r", at=T0, actor="alice", model="gpt-4o")
    with pytest.raises(ControlError, match="route_to must differ"):
        new_action("route_model", reason="r", at=T0, actor="alice", model="a", route_to="a")
    with pytest.raises(ControlError, match="needs at least one of model, tenant, user_id, workflow"):
        new_action("block_spend", reason="r", at=T0, actor="alice")
    with pytest.raises(ControlError, match="unknown scope field"):
        new_action("disable_tool", reason="r", at=T0, actor="alice", tool="x", region="eu")
    with pytest.raises(ControlError, match="kind must be one of"):
        new_action("nuke", reason="r", at=T0, actor="alice")


def test_sources_rules() -> None:
    with pytest.raises(ControlError, match="needs actor"):
        new_action("disable_tool", reason="r", at=T0, tool="x")
    with pytest.raises(ControlError, match="automatic action needs expires_at"):
        new_action("halt_trace", reason="r", at=T0, finding_id="f1", trace_id="t")
    with pytest.raises(ControlError, match="only a person approves"):
        new_action("approve", reason="r", at=T0, finding_id="f1", trace_id="t", expires_at=T0 + 1)
    with pytest.raises(ControlError, match="expires_at must be after created_at"):
        new_action("halt_trace", reason="r", at=T0, actor="a", trace_id="t", expires_at=T0)
    with pytest.raises(ControlError, match="reason"):
        new_action("halt_trace", reason="", at=T0, actor="a", trace_id="t")
    a = new_action("halt_trace", reason="tool_loop", at=T0, finding_id="f1", policy="halt-loops",
                   trace_id="t", workflow="bot", expires_at=T0 + 60_000)
    assert a.source == "policy" and a.state == "active"
    # A policy's id is stable across a replay; a person's is new each time.
    again = new_action("halt_trace", reason="tool_loop", at=T0 + 5, finding_id="f1", policy="halt-loops",
                       trace_id="t", workflow="bot", expires_at=T0 + 60_000)
    assert again.action_id == a.action_id
    p1 = new_action("pause_workflow", reason="r", at=T0, actor="a", workflow="w")
    p2 = new_action("pause_workflow", reason="r", at=T0, actor="a", workflow="w")
    assert p1.action_id != p2.action_id and scope_key(p1) == scope_key(p2)


def test_keys_separate_people_findings_and_modes() -> None:
    person = new_action("pause_workflow", reason="r", at=T0, actor="a", workflow="w")
    policy = new_action("pause_workflow", reason="r", at=T0, finding_id="f", workflow="w", expires_at=T0 + 1)
    other = new_action("pause_workflow", reason="r", at=T0, finding_id="g", workflow="w", expires_at=T0 + 1)
    dry = new_action("pause_workflow", reason="r", at=T0, actor="a", workflow="w", mode="dry_run")
    assert len({scope_key(x) for x in (person, policy, other, dry)}) == 4
    # Fields that are not scope (reason, actor, times) do not move the key.
    assert scope_key(person) == scope_key(new_action("pause_workflow", reason="other", at=T0 + 9,
                                                     actor="b", workflow="w"))


def test_lift_and_expiry_are_records_of_the_same_action() -> None:
    a = new_action("disable_tool", reason="refunds broken", at=T0, actor="alice", tool="issue_refund",
                   expires_at=T0 + 1000)
    assert is_active(a, T0) and is_active(a, T0 + 999) and not is_active(a, T0 + 1000)
    lifted = lift(a, by="bob", reason="fixed", at=T0 + 10)
    assert (lifted.action_id, scope_key(lifted), lifted.state, lifted.ended_by) == (a.action_id, scope_key(a), "lifted", "bob")
    assert not is_active(lifted, T0 + 11)
    ended = expire(a)
    assert (ended.state, ended.updated_at, ended.ended_by) == ("expired", T0 + 1000, "expiry")
    forever = new_action("disable_tool", reason="r", at=T0, actor="a", tool="x")
    with pytest.raises(ControlError, match="does not expire"):
        expire(forever)


def test_decode_refuses_with_the_reason() -> None:
    with pytest.raises(ControlError, match="Object contains unknown field `colour`"):
        decode_action(orjson.dumps({"action_id": "x", "kind": "halt_trace", "colour": "red"}))
    with pytest.raises(ControlError, match="JSON"):
        decode_action(b"{not json")
    with pytest.raises(ControlError, match="a lifted record needs ended_by"):
        decode_action(orjson.dumps({"action_id": "x", "kind": "halt_trace", "reason": "r", "source": "person",
                                    "actor": "a", "trace_id": "t", "created_at": T0, "updated_at": T0,
                                    "state": "lifted"}))
    with pytest.raises(ControlError, match="Expected `int` >= "):
        decode_action(orjson.dumps({"action_id": "x", "kind": "halt_trace", "reason": "r", "source": "person",
                                    "actor": "a", "trace_id": "t", "created_at": 5, "updated_at": 5}))


def test_durations() -> None:
    assert parse_duration("30m") == 1_800_000
    assert parse_duration("1.5h") == 5_400_000
    assert parse_duration("90s") == 90_000
    assert parse_duration("7d") == 7 * 86_400_000
    for bad in ("30", "m", "-5m", "0s", "5 parsecs", ""):
        with pytest.raises(ControlError, match="duration"):
            parse_duration(bad)


# -- property tests ----------------------------------------------------------------------------

_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def actions(draw) -> ControlAction:
    kind = draw(st.sampled_from(KINDS))
    takes, needs = SCOPES[kind]
    scope = {f: draw(_names) for f in sorted(takes) if draw(st.booleans())}
    for f in (needs if needs != "any" else ()):
        scope.setdefault(f, draw(_names))
    if needs == "any" and not scope:
        scope[sorted(takes)[0]] = draw(_names)
    at = draw(st.integers(T0, T0 + 10**9))
    policy = kind != "approve" and draw(st.booleans())
    expires = draw(st.one_of(st.none(), st.integers(1, 10**8))) if not policy else draw(st.integers(1, 10**8))
    extra = {"route_to": draw(_names) + "-b"} if kind == "route_model" else {}
    if kind == "route_model" and extra["route_to"] == scope.get("model"):
        extra["route_to"] += "x"
    return new_action(kind, reason=draw(_names), at=at, mode=draw(st.sampled_from(["enforce", "dry_run"])),
                      expires_at=None if expires is None else at + expires,
                      **({"finding_id": draw(_names)} if policy else {"actor": draw(_names)}), **extra, **scope)


@hsettings(max_examples=300, deadline=None)
@given(actions(), st.integers(0, 10**9))
def test_round_trip_and_lift_keep_identity(a: ControlAction, later: int) -> None:
    assert decode_action(encode_action(a)) == a
    lifted = lift(a, by="someone", at=a.created_at + later)
    assert scope_key(lifted) == scope_key(a) and lifted.action_id == a.action_id
    assert decode_action(encode_action(lifted)) == lifted
    assert not is_active(lifted, a.created_at)
    assert is_active(a, a.created_at) and (a.expires_at is None or not is_active(a, a.expires_at))


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["action_id", "kind", "reason", "source", "created_at", "updated_at",
                                        "expires_at", "state", "mode", "actor", "finding_id", "route_to",
                                        "ended_by", *SCOPE_FIELDS]),
                       st.one_of(st.text(max_size=5), st.integers(-2**63, 2**63 - 1), st.none(), st.sampled_from(KINDS),
                                 st.sampled_from(["person", "policy", "active", "lifted", "enforce"]),
                                 st.integers(T0, T0 + 1000))))
def test_arbitrary_records_decode_or_fail_with_control_error(doc: dict) -> None:
    try:
        a = decode_action(orjson.dumps(doc))
    except ControlError as exc:
        assert str(exc)
    else:
        assert problems_of(a) == []  # a decoded action satisfies every rule


@hsettings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_control_error(raw: bytes) -> None:
    try:
        decode_action(raw)
    except ControlError:
        pass


def test_every_record_is_a_row(chdb_client) -> None:
    migrate(chdb_client, "ctl", 90)
    a = new_action("route_model", reason="errors", at=T0, finding_id="f9", policy="reroute", workflow="bot",
                   model="gpt-4o", route_to="gpt-4o-mini", expires_at=T0 + 60_000)
    rows = [control_action_row(r) for r in (a, lift(a, by="bob", reason="ok again", at=T0 + 5000))]
    chdb_client.insert("ctl.control_actions", rows, column_names=CONTROL_ACTION_COLUMNS)
    chdb_client.insert("ctl.control_actions", rows, column_names=CONTROL_ACTION_COLUMNS)  # redelivered
    audit = chdb_client.query("SELECT action_id, kind, state, who, ended_by, route_to FROM ctl.control_audit").result_rows
    assert audit == [(a.action_id, "route_model", "lifted", "policy reroute", "bob", "gpt-4o-mini")]
    n = chdb_client.query("SELECT count() FROM ctl.control_actions FINAL").result_rows[0][0]
    assert n == 2
    assert set(CONTROL_ACTION_COLUMNS) == set(msgspec.structs.asdict(a)) - {"version"}


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=80), actions().map(encode_action)), max_size=8))
def test_the_worker_audits_every_valid_record_and_skips_the_rest(values) -> None:
    from llmpulse.processors.runtime.controls_audit import audit_rows

    rows = audit_rows(values)
    valid = []
    for v in values:
        try:
            valid.append(decode_action(v)) if v else None
        except ControlError:
            pass
    assert rows == [control_action_row(a) for a in valid]


@given(st.integers(1, 10**6), st.sampled_from(["ms", "s", "m", "h", "d", "w"]), st.sampled_from(["", " "]))
def test_durations_are_number_times_unit(n: int, unit: str, space: str) -> None:
    per = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}[unit]
    assert parse_duration(f"{n}{space}{unit}") == n * per


@given(st.text(max_size=12))
def test_any_duration_text_parses_or_says_how(text: str) -> None:
    try:
        assert parse_duration(text) > 0
    except ControlError as exc:
        assert "duration" in str(exc)
