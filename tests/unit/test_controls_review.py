"""Review of issue 15 (kill switches): CLI misuse is one clear line, before any broker is asked."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from llmpulse.commands.control import expires_at
from llmpulse.schemas.contract import MAX_TS_MS
from llmpulse.schemas.controls import ControlError

AT = 1_780_000_000_000


@pytest.mark.parametrize("text", ["", "  ", "99999999999d", "80000w", "9" * 400 + "s"])
def test_a_bad_for_is_one_line_about_the_duration(text, monkeypatch) -> None:
    from llmpulse.cli import app

    monkeypatch.setenv("LLMPULSE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached
    out = CliRunner().invoke(app, ["control", "pause", "--workflow", "w", "--reason", "r", "--for", text,
                                   "--actor", "alice"])
    assert out.exit_code == 1, out.output
    assert out.output.count("\n") <= 2 and "duration" in out.output and "Traceback" not in out.output
    assert "Expected" not in out.output  # not the decoder's words


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=12),
                 st.builds(lambda n, u: f"{n}{u}", st.integers(-10, 10**12) | st.floats(0, 1e9).map(str),
                           st.sampled_from(["ms", "s", "m", "h", "d", "w", "y", ""])),
                 st.integers(300, 500).map(lambda n: "9" * n + "m")))
def test_any_for_is_an_expiry_after_now_and_before_2100_or_a_duration_error(text) -> None:
    try:
        got = expires_at(AT, text)
    except ControlError as exc:
        assert "duration" in str(exc) and repr(text) in str(exc)
    else:
        assert got is not None and AT < got <= MAX_TS_MS


def test_no_for_is_until_lifted() -> None:
    assert expires_at(AT, None) is None


def test_the_audit_retries_a_store_that_is_not_there_yet_and_skips_rows_it_refuses(chdb_client, caplog) -> None:
    """The worker's audit of llm.controls: a transient ClickHouse error (the table missing until
    the migration runs) is retried with the one backoff, never a crashed agent; a row the
    engine refuses for good is logged and skipped, the others are stored."""
    import asyncio

    from llmpulse.processors.runtime.controls_audit import store_rows
    from llmpulse.processors.runtime.retry import RetryConfig
    from llmpulse.schemas.controls import new_action
    from llmpulse.schemas.rows import CONTROL_ACTION_COLUMNS, control_action_row
    from llmpulse.schemas.store import migrate

    db = "ctl_review"
    chdb_client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    now = time.time_ns() // 1_000_000  # within the table's TTL
    good = [control_action_row(new_action("pause_workflow", reason="r", at=now + i, actor="alice", workflow=f"w{i}"))
            for i in range(3)]
    bad = list(good[0])
    bad[CONTROL_ACTION_COLUMNS.index("created_at")] = "not a time"
    waits: list[float] = []

    async def sleep(delay: float) -> None:  # the store comes up while the audit waits
        waits.append(delay)
        migrate(chdb_client, db, 90)

    def insert(rows: list[list]) -> None:
        chdb_client.insert(f"{db}.control_actions", rows, column_names=CONTROL_ACTION_COLUMNS)

    async def run() -> int:
        async def call(rows):
            insert(rows)
        return await store_rows([good[0], bad, *good[1:]], call, RetryConfig(initial_seconds=0.01), sleep)

    stored = asyncio.run(run())
    assert waits, "the missing table was not retried"
    assert stored == 3
    ids = {r[0] for r in chdb_client.query(f"SELECT action_id FROM {db}.control_actions").result_rows}
    assert ids == {r[CONTROL_ACTION_COLUMNS.index("action_id")] for r in good}
    assert "not audited" in caplog.text


def test_v1_controls_spells_out_mode_and_state_for_apps_not_in_python(tmp_path) -> None:
    """A poller in another language that enforces `mode == "enforce"` must find the field: the
    contract's encoder leaves defaults out, the HTTP body must not."""
    import requests

    from llmpulse.ingest import MemoryPublisher
    from llmpulse.ingest.controls import ControlState
    from llmpulse.ingest.enforce import FixedView
    from llmpulse.ingest.otel_gateway_config import GatewayConfig, key_line, new_key
    from llmpulse.ingest.otlp_gateway import GatewayThread
    from llmpulse.schemas.controls import encode_action, new_action, scope_key

    now = time.time_ns() // 1_000_000
    state = ControlState()
    for mode in ("enforce", "dry_run"):
        a = new_action("pause_workflow", reason="r", at=now, actor="alice", workflow="bot", mode=mode)
        state.apply(scope_key(a), encode_action(a))
    key = new_key()
    keys = tmp_path / "keys.yaml"
    keys.write_text(key_line(key, "acme", "acme-1") + "\n")
    with GatewayThread(MemoryPublisher(), config=GatewayConfig(keys_file=keys), controls=FixedView(state)) as gw:
        body = requests.get(gw.url + "/v1/controls", headers={"x-api-key": key}, timeout=5).json()
    assert sorted(a["mode"] for a in body["actions"]) == ["dry_run", "enforce"]
    assert {a["state"] for a in body["actions"]} == {"active"}
    assert all("expires_at" in a and "tenant" in a for a in body["actions"])


@pytest.mark.parametrize("duration", ["36500d", "9000w"])
def test_a_policy_for_longer_than_the_contract_allows_still_acts(duration) -> None:
    """`for: 36500d` loads; the rule must then act (expiring at the contract's last instant),
    not fail silently on every finding."""
    from llmpulse.processors.policies import Policies
    from llmpulse.schemas.findings import Finding, finding_id

    p = Policies.from_config({"rules": [{"findings": ["tool_loop"], "action": "halt_trace", "for": duration}]})
    f = Finding(finding_id=finding_id("tool_loop", "acme", "bot", "t1", AT), detected_at=AT, event_ts=AT,
                kind="tool_loop", severity="high", status="open", tenant="acme", workflow="bot", model="m",
                trace_id="t1", title="loop", evidence={})
    [a] = p.evaluate([f])
    assert a.kind == "halt_trace" and a.trace_id == "t1" and a.expires_at == MAX_TS_MS
