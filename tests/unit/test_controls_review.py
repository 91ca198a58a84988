"""Review of issue 15 (kill switches): CLI misuse is one clear line, before any broker is asked."""

from __future__ import annotations

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
