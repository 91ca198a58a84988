"""`llmpulse redact`: read text on stdin, print it redacted, so a team can try a policy
on its own data before turning it on. What was found (class and count, never the
value) goes to stderr, so stdout stays the redacted text alone.

Register with `app.command("redact")(redact_command)`.
"""

from __future__ import annotations

import secrets
import sys
from typing import Annotated

import typer

from llmpulse.processors.redaction import ACTIONS, Policy, Redactor

POLICY_HELP = "mask | hash | drop_content | allow, applied to every secret and PII class."


def redact_command(policy: Annotated[str, typer.Option("--policy", "-p", help=POLICY_HELP)] = "mask") -> None:
    """Redact secrets and personal data in text read from stdin."""
    if policy not in ACTIONS:
        raise typer.BadParameter(f"must be one of {', '.join(ACTIONS)}", param_hint="--policy")
    redactor = Redactor(Policy.uniform(policy), _hash_key(policy))
    text = sys.stdin.read()
    redacted, counts = redactor.redact_text(text)
    if text.endswith("\n") and not redacted.endswith("\n"):
        redacted += "\n"  # drop_content replaces the whole text; keep the shell prompt tidy
    sys.stdout.write(redacted)
    sys.stdout.flush()
    summary = ", ".join(f"{cls}={n}" for cls, n in sorted(counts.items())) or "nothing"
    typer.echo(f"redacted: {summary}", err=True)


def _hash_key(policy: str) -> str:
    # The configured key makes hashes match the ones the worker stores; without one,
    # a key for this run only: equal values still match within the output.
    if policy not in ("hash", "drop_content"):
        return ""
    from llmpulse.settings import load_settings

    section = getattr(load_settings(), "redaction", None)
    key = getattr(getattr(section, "hash_key", None), "get_secret_value", lambda: "")()
    if key:
        return key
    typer.echo("no redaction.hash_key configured: hashes are only comparable within this run", err=True)
    return secrets.token_hex(32)
