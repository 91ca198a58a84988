"""The SDK's kill-switch reader settings and their defaults, without pydantic.

`pip install llmpulse` (the app-side SDK) has no pydantic; the worker's `controls:` settings
section (ingest/controls_config.py) validates the same fields and takes its defaults from here.
"""

from __future__ import annotations

import msgspec


class ReaderConfig(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True  # the Publisher reads llm.controls and its traces enforce them
    stale_after_s: float = 30.0  # no word from the broker for this long: the view is stale
    startup_wait_s: float = 2.0  # a new Publisher waits this long for the first full read
    refresh_s: float = 0.5  # how often the reader asks the broker for the topic's end
    aggregate_s: float = 5.0  # repeats of one decision within this window: one event


DEFAULTS = ReaderConfig()
