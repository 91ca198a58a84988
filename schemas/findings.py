"""Finding contract: what every detector emits (topic `llm.findings`, table `findings`).

A finding is about one condition in one scope. `finding_id` is derived from
(kind, scope, opened-at key) so a replay or a restarted worker emits the same id
and ClickHouse deduplicates it; detectors emit one `open` row per condition and
one `resolved` row when it clears, never one per event.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

Severity = Literal["critical", "high", "medium", "low", "info"]
Status = Literal["open", "resolved"]
SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low", "info")


class Finding(msgspec.Struct, kw_only=True, omit_defaults=False):
    finding_id: str
    detected_at: int  # epoch ms, wall clock of the detector (not part of the identity)
    event_ts: int  # epoch ms, event time of the event that triggered it
    kind: str
    severity: Severity
    status: Status = "open"
    tenant: str = ""
    workflow: str = ""
    model: str = ""
    trace_id: str = ""
    title: str = ""
    value: float | None = None
    threshold: float | None = None
    evidence: dict[str, Any] = {}
    wasted_usd: float | None = None


def finding_id(kind: str, *scope: object) -> str:
    """Stable id of one condition in one scope: same inputs, same id, on replay too."""
    key = "\x1f".join([kind, *(str(s) for s in scope)])
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Finding)


def encode_finding(f: Finding) -> bytes:
    return _encoder.encode(f)


def decode_finding(raw: bytes) -> Finding:
    return _decoder.decode(raw)
