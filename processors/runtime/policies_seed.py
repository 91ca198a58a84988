"""After a restart: the policies' active actions, read back from ClickHouse.

The `control_actions` table is the policies' changelog (rows land before offsets commit),
so a restarted or rebuilt worker knows which actions it took are still active: their
expiry rows are written when the watermark passes them, a resolving finding still lifts
the action it caused, and a repeated finding does not act twice.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec

from llmpulse.processors.policies import Policies
from llmpulse.schemas.controls import ControlAction
from llmpulse.schemas.rows import CONTROL_ACTION_COLUMNS

_TIMES = ("created_at", "updated_at", "expires_at")


def _ms(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp() * 1000)
    return value


def active_policy_actions(client: Any, database: str) -> list[ControlAction]:
    """Each policy action's latest record, where that record says active."""
    cols = ", ".join(CONTROL_ACTION_COLUMNS)
    rows = client.query(
        f"SELECT {cols} FROM (SELECT {cols} FROM {database}.control_actions FINAL WHERE source = 'policy' "
        "ORDER BY updated_at DESC, state = 'active' LIMIT 1 BY action_id) WHERE state = 'active' "
        "ORDER BY created_at, action_id"
    ).named_results()
    out = []
    for row in rows:
        fields = {k: (_ms(v) if k in _TIMES else v) for k, v in row.items()}
        out.append(msgspec.convert({k: v for k, v in fields.items() if v is not None and v != ""}, ControlAction))
    return out


def restore_policies(policies: Policies, client: Any, database: str) -> int:
    return policies.restore(active_policy_actions(client, database))
