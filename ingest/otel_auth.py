"""Who is calling the gateway, and how much they may send.

- `KeyRing`: API keys by hash, from the config and a keys file that is re-read when it
  changes (or when asked, on SIGHUP). A file that fails to load keeps the previous keys
  and is reported; it never opens the gateway.
- `TokenBucket`: per-key rate limits in spans or requests per second, with a burst.

No web framework here: the gateway hands over header values and counts.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from llmpulse.ingest.otel_gateway_config import ApiKey, GatewayConfig, KeyConfigError, RateLimit, hash_key

log = logging.getLogger("llmpulse.otlp")


def presented_key(headers: Mapping[str, str]) -> str:
    """The key from `Authorization: Bearer <key>` or `x-api-key: <key>` ('' if none)."""
    auth = headers.get("Authorization", "").strip()
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


class TokenBucket:
    """Refills `rate` tokens a second up to `capacity`. A request may take more than the
    capacity when the bucket is full (it then owes the difference), so a batch larger than
    the burst is slowed down, never refused forever."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.rate, self.capacity = limit.rate, limit.capacity
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, n: float) -> float:
        """0.0 when `n` tokens were taken, else the seconds to wait before asking again."""
        return self._take(n, commit=True)

    def wait(self, n: float) -> float:
        """As `take`, without taking: the seconds until `n` tokens could be taken."""
        return self._take(n, commit=False)

    def _take(self, n: float, commit: bool) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            need = min(n, self.capacity)
            if self._tokens >= need:
                if commit:
                    self._tokens -= n
                return 0.0
            return (need - self._tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


@dataclass
class KeyStats:
    tenant: str
    requests: int = 0
    spans: int = 0
    rate_limited: int = 0
    rejected_spans: int = 0
    tenant_overridden: int = 0  # spans whose llmpulse.tenant claimed another tenant


@dataclass
class Caller:
    """The authenticated caller of one request (or the anonymous one, when allowed)."""

    id: str
    tenant: str
    trusted: bool
    bucket: Optional[TokenBucket]
    stats: KeyStats
    last_spans: int = 1  # spans in its last request


@dataclass
class KeyRing:
    """Keys by hash; `lookup` re-reads the keys file at most every `check_s` seconds if it changed."""

    config: GatewayConfig
    clock: Callable[[], float] = time.monotonic
    reloads: int = 0
    reload_errors: int = 0
    last_reload_error: str = ""
    _by_hash: dict[str, Caller] = field(default_factory=dict, repr=False)
    _by_id: dict[str, Caller] = field(default_factory=dict, repr=False)  # survives reloads: stats, buckets
    _signature: tuple = field(default=(), repr=False)
    _checked_at: float = field(default=float("-inf"), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._install(self.config.load_keys())  # raises: a bad file at start-up stops the start
        self._signature = self._file_signature()
        self._checked_at = self.clock()

    # -- loading ------------------------------------------------------------------------
    def _file_signature(self) -> tuple:
        path = self.config.keys_file
        if path is None:
            return ()
        try:
            st = os.stat(path)
        except OSError:
            return ("missing",)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _install(self, keys: list[ApiKey]) -> None:
        by_hash: dict[str, Caller] = {}
        for k in keys:
            limit = k.rate_limit or self.config.default_rate_limit
            old = self._by_id.get(k.id)
            if old is not None and old.tenant == k.tenant:
                stats = old.stats
                # Keep the bucket's level across reloads unless the limit itself changed.
                bucket = old.bucket if old.bucket is not None and limit == old.bucket.limit else None
            else:
                stats, bucket = KeyStats(tenant=k.tenant), None
            if bucket is None and limit is not None:
                bucket = TokenBucket(limit, self.clock)
            caller = Caller(k.id, k.tenant, k.trusted, bucket, stats)
            by_hash[k.hash] = caller
            self._by_id[k.id] = caller
        self._by_hash = by_hash

    def reload(self) -> bool:
        """Re-read the keys now (SIGHUP). False, with the old keys kept, if the file is bad."""
        with self._lock:
            self._checked_at = self.clock()
            self._signature = self._file_signature()
            try:
                keys = self.config.load_keys()
            except KeyConfigError as exc:
                self.reload_errors += 1
                self.last_reload_error = str(exc)
                log.error("llmpulse: keys not reloaded, the previous keys stay in force: %s", exc)
                return False
            self._install(keys)
            self.reloads += 1
            log.info("llmpulse: %d API keys loaded", len(keys))
            return True

    def maybe_reload(self) -> None:
        if self.config.keys_file is None or self.clock() - self._checked_at < self.config.keys_check_s:
            return
        self._checked_at = self.clock()
        if self._file_signature() != self._signature:
            self.reload()

    # -- lookups ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, key: str) -> Optional[Caller]:
        self.maybe_reload()
        return self._by_hash.get(hash_key(key)) if key else None

    def callers(self) -> dict[str, Caller]:
        """Every key seen since start, by id (removed keys keep their counts)."""
        return dict(self._by_id)

    def active_ids(self) -> set[str]:
        return {c.id for c in self._by_hash.values()}


def anonymous_caller(config: GatewayConfig) -> Caller:
    """The caller without a key when `allow_unauthenticated` is set: trusted, as before keys existed."""
    limit = config.default_rate_limit
    return Caller("anonymous", config.tenant, True, TokenBucket(limit) if limit else None, KeyStats(tenant=config.tenant))


__all__ = ["Caller", "KeyRing", "KeyStats", "TokenBucket", "anonymous_caller", "presented_key", "retry_after_header"]
