"""`GET /v1/controls` on the OTLP gateway: the active kill switches, for apps not in Python.

Authenticated like the gateway's other routes (the same API keys); a key sees the actions of
its own tenant and the fleet-wide ones (tenant ""), a trusted key sees all. Optional
`?workflow=NAME` keeps the actions that can apply to that workflow.

Poll it with `If-None-Match`: the ETag moves whenever the view changes (a new action, a lift,
an expiry) or its freshness flips, and an unchanged view answers `304 Not Modified` with no
body. The body:

    {"stale": false, "actions": [<ControlAction as in schemas/controls.py, every field>, ...]}

`stale` is the gateway's own view of `llm.controls` (ingest/controls.py); an app applies its
workflow's fail_mode when it is true or the gateway cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import msgspec
from aiohttp import web

_NONCE = os.urandom(4).hex()  # generations restart with the process; ETags must not repeat
_encoder = msgspec.json.Encoder()


class ControlsEndpoint:
    def __init__(self, gateway: Any, view: Any) -> None:
        self.gateway = gateway
        self.view = view
        self._cache: dict[tuple, tuple[str, bytes]] = {}  # (who, workflow, generation, stale) -> (etag, body)

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/controls", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        caller = self.gateway._authenticate(request)
        if caller is None:
            return self.gateway._unauthorized(request, True)
        workflow = request.query.get("workflow")
        stale = self.view.stale()
        state = self.view.state
        key = ("*" if caller.trusted else caller.tenant, workflow, state.generation, stale)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._render(key, caller, workflow, stale)
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[key] = hit
        etag, body = hit
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/json", headers=headers)

    def _render(self, key: tuple, caller: Any, workflow: str | None, stale: bool) -> tuple[str, bytes]:
        now = time.time_ns() // 1_000_000
        actions = [a for a in self.view.state.active(now)
                   if (caller.trusted or a.tenant in ("", caller.tenant))
                   and (workflow is None or a.workflow in ("", workflow))]
        actions.sort(key=lambda a: (a.created_at, a.action_id))
        # Every field spelled out (the topic's encoding leaves defaults such as mode "enforce" out):
        # a poller in another language reads what it sees, not the contract's defaults.
        body = _encoder.encode({"stale": stale, "actions": [msgspec.structs.asdict(a) for a in actions]})
        digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
        return f'"{_NONCE}-{digest}"', body


def _etags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}
