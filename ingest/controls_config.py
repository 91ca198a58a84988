"""The `controls:` section: how the SDK keeps and serves its view of `llm.controls`.

Kept apart from ingest/controls.py so `llmpulse.settings` composes it without importing
confluent-kafka. Example:

    controls:
      stale_after_s: 30      # no word from the broker for this long: the view is stale, and
                             # each workflow's contract fail_mode (open | closed) applies
      startup_wait_s: 2      # a new Publisher waits this long for the first full read
      aggregate_s: 5         # repeats of one decision within this window: one event
      http: {enabled: true}  # GET /v1/controls on the OTLP gateway, for apps not in Python
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llmpulse.ingest.controls_defaults import DEFAULTS as _D


class ControlsHttp(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # served by `llmpulse otlp-gateway`, with its API keys


class ControlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = _D.enabled  # the Publisher reads llm.controls and its traces enforce them
    stale_after_s: float = Field(_D.stale_after_s, gt=0)
    startup_wait_s: float = Field(_D.startup_wait_s, ge=0)
    # How often the reader asks the broker for the topic's end (each answer keeps the view fresh).
    refresh_s: float = Field(_D.refresh_s, gt=0, le=60)
    aggregate_s: float = Field(_D.aggregate_s, gt=0, le=3600)
    http: ControlsHttp = Field(default_factory=ControlsHttp)
