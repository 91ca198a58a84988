"""The worker's `POST /query/`: read-only SQL for `llmpulse sql` and reports in embedded mode.

chDB lets one process open a data directory, so the worker answers reads for the CLI.
Only the CLI of this state directory, only reads:
- a random token made at start, written to the state directory (mode 0600,
  `llmpulse.query.query_token_path`); the request sends `Authorization: Bearer <token>`,
  compared in constant time, else 401;
- `Host` must be 127.0.0.1:<port> or localhost:<port>, and an `Origin` (or a browser's
  cross-site `Sec-Fetch-Site`) anything else than this origin is 403: a page in a browser
  that rebinds its DNS name to 127.0.0.1 can reach the port but not pass these;
- a peer that is not this machine (the worker bound to 0.0.0.0 in a container) is 403,
  unless `query_token` is set: then it must send that token, and no browser Origin;
- `Content-Type: application/json` only (415), so a form or text/plain "simple request"
  is never read;
- the SQL runs through `llmpulse.query.guarded_query` on a read-only session of its own
  (`connect_readonly`, readonly=1), on the worker's ClickHouse thread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import ipaddress
import secrets
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import faust
import orjson

from llmpulse.query import QueryError, QueryRefused, guarded_query, query_token_path
from llmpulse.settings import Settings

log = logging.getLogger("llmpulse.worker")
T = TypeVar("T")
READY_WAIT_SECONDS = 30.0


def write_token(path: Path) -> str:
    """A fresh token in `path`, readable by this user only (created 0600, then moved in place)."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_origin(headers: Mapping[str, str], port: int) -> str | None:
    """Why a request is not from this machine's CLI (Host/Origin, DNS rebinding), or None."""
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    host = (headers.get("Host") or "").strip().lower()
    if host not in hosts:
        return f"Host {host or '(none)'} is not this worker"
    origin = headers.get("Origin")
    if origin is not None and origin.strip().lower() not in {f"http://{h}" for h in hosts}:
        return f"Origin {origin} is not this worker"
    if (headers.get("Sec-Fetch-Site") or "same-origin").lower() not in ("same-origin", "none"):
        return "cross-site request"
    return None


def is_local_peer(peer: str | None) -> bool:
    try:
        return peer is not None and ipaddress.ip_address(peer.split("%", 1)[0]).is_loopback
    except ValueError:  # a unix socket or an unknown peer: not this machine's CLI for sure
        return False


def authorized(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class QueryEndpoint:
    """State of the endpoint: the token and the read-only session (opened on first use)."""

    def __init__(self, settings: Settings, call: Callable[..., Awaitable[Any]], ready: asyncio.Event) -> None:
        self.settings = settings
        self.call = call  # runs a function on the worker's ClickHouse thread
        self.ready = ready
        self.token_path = query_token_path(settings)
        self.token: str | None = None
        self._client: Any = None
        if _listening(settings.worker_web_port):
            # Another worker has this port (and this file): this one will fail to bind; leave its token be.
            log.warning("port %d is taken, /query/ token in %s left as it is", settings.worker_web_port,
                        self.token_path)
            return
        try:
            self.token = write_token(self.token_path)
        except OSError as exc:  # the pipeline runs without it; /query/ then answers 503
            log.warning("no /query/ token written to %s, the endpoint is off: %s", self.token_path, exc)

    def run(self, sql: str) -> dict:
        """On the ClickHouse thread: the worker has opened (and migrated) the data directory."""
        if self._client is None:
            from llmpulse.schemas.store import connect_readonly

            s = self.settings
            self._client = connect_readonly(s.dsn, s.clickhouse_user, s.clickhouse_password.get_secret_value(),
                                            s.query_max_seconds, s.query_max_rows, s.database)
        try:
            return guarded_query(self._client, sql)
        except Exception:
            # A query that fails mid-result (a row or time limit) leaves the rest of its stream in
            # the chDB handle, read as garbage by the next query: start the next one afresh.
            self._client.close()
            self._client = None
            raise

    async def handle(self, headers: Mapping[str, str], content_type: str, body: Callable[[], Awaitable[bytes]],
                     peer: str | None = "127.0.0.1") -> tuple[int, dict]:
        """(status, JSON body) for one request from address `peer`."""
        remote_token = self.settings.query_token.get_secret_value()
        if not is_local_peer(peer):
            if not remote_token:
                return 403, {"error": "/query/ answers this machine only; set query_token to allow other hosts"}
            if headers.get("Origin") is not None or (headers.get("Sec-Fetch-Site") or "none") != "none":
                return 403, {"error": "browser requests are not accepted from other hosts"}
            if not authorized(headers.get("Authorization"), remote_token):
                return 401, {"error": "missing or wrong bearer token (query_token)"}
        else:
            if why := check_origin(headers, self.settings.worker_web_port):
                return 403, {"error": why}
            if self.token is None:
                return 503, {"error": f"the worker could not write its token to {self.token_path}"}
            given = headers.get("Authorization")
            if not (authorized(given, self.token) or (remote_token and authorized(given, remote_token))):
                return 401, {"error": f"missing or wrong bearer token (see {self.token_path})"}
        if content_type != "application/json":
            return 415, {"error": "Content-Type must be application/json"}
        try:
            sql = orjson.loads(await body()).get("sql")
        except (ValueError, AttributeError):
            sql = None
        if not isinstance(sql, str):
            return 400, {"error": 'the body must be a JSON object {"sql": "..."}'}
        try:
            await asyncio.wait_for(self.ready.wait(), READY_WAIT_SECONDS)
        except asyncio.TimeoutError:
            return 503, {"error": "the worker has not opened ClickHouse yet"}
        try:
            return 200, await self.call(self.run, sql)
        except QueryRefused as exc:
            log.warning("/query/ refused: %s", exc)
            return 403, {"error": str(exc), "refused": True}
        except QueryError as exc:
            return 400, {"error": str(exc)}


def register_query_endpoint(app: faust.App, settings: Settings, call: Callable[..., Awaitable[Any]],
                            ready: asyncio.Event) -> QueryEndpoint:
    endpoint = QueryEndpoint(settings, call, ready)

    @app.page("/query/")
    class Query(faust.web.View):
        async def post(self, request: Any) -> Any:
            status, result = await endpoint.handle(request.headers, request.content_type, request.read,
                                                   request.remote)
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return self.bytes(orjson.dumps(result, default=str), content_type="application/json", status=status,
                              headers=headers)

    return endpoint
