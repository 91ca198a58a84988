"""The `scale:` section: one worker (the default) or a scaled-out topology (README "Scaling out")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ScaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # single: today's worker, everything in one process. process: the trace and the scope stage
    # (N of them share the topics' partitions). writer: the one process that owns the embedded
    # store and inserts the finished rows of `rows_topic`. all: process + writer in one.
    role: Literal["single", "process", "writer", "all"] = "single"
    scope_topic: str = "llm.scope"  # repartition by scope (schemas/scope.py)
    rows_topic: str = "llm.rows"  # finished rows for the writer
    # Compacted: each scope partition's budget spend, committed with its offsets, so a takeover
    # knows the period's spend and what fired beyond the replay window (schemas/scope.py ScopeState).
    state_topic: str = "llm.scope.state"
    scope_partitions: int = Field(4, ge=1)
    # Names this process's transactional producers; stable across its restarts so a restart
    # fences the dead one's open transaction at once. Default: host and web port.
    instance: str = ""
    # A Kafka transaction left open by a killed worker is aborted by the broker after this, so
    # read_committed readers of its partitions wait at most this long.
    transaction_timeout_ms: int = Field(10_000, ge=1_000)
    session_timeout_ms: int = Field(6_000, ge=1_000)  # a dead member's partitions move after this
    # The scope stage's watermark waits this long for a silent source partition (longer than a
    # takeover: session timeout + replay), then goes on without it.
    idle_source_ms: int = Field(30_000, ge=1_000)
