"""The `otlp_gateway:` section of the config file, and the API keys file it names.

Kept apart from the gateway so that `llmpulse.settings` can compose it without
importing aiohttp or OpenTelemetry. Example:

    otlp_gateway:
      host: 0.0.0.0
      keys_file: /etc/llmpulse/otlp-keys.yaml   # re-read when it changes, or on SIGHUP
      default_rate_limit: {spans_per_second: 2000, burst: 10000}
      tls: {cert_file: /etc/llmpulse/tls.crt, key_file: /etc/llmpulse/tls.key}

    # /etc/llmpulse/otlp-keys.yaml: a list, one entry a line (`llmpulse otlp-gateway keygen`)
    - {id: acme-2026-12, tenant: acme, hash: "sha256:9f86d08..."}
    - {id: acme-2027-01, tenant: acme, hash: "sha256:60303ae..."}   # rotation: both valid
    - {id: edge-collector, tenant: default, hash: "sha256:...", trusted: true,
       rate_limit: {requests_per_second: 50, burst: 100}}

Only hashes are stored. A key is 32 random bytes (256 bits) from `secrets`, so a plain
SHA-256 is enough: salts and slow hashes (bcrypt, argon2) protect guessable passwords
against dictionary attacks, and there is no dictionary for a random 256-bit key. A fast
unsalted hash also lets the gateway find a key with one dict lookup, where a slow hash would
cost every request (anyone's, before authentication) milliseconds of CPU.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

KEY_PREFIX = "lpk_"  # makes a leaked key recognisable to secret scanners
HASH_SCHEME = "sha256"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_MAX_BODY = 4 * 1024 * 1024  # the OTel Collector's default request limit is in this range


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form stored in config: `sha256:<64 hex>`."""
    # surrogatepass: a header with invalid UTF-8 is an unknown key, not an exception
    return f"{HASH_SCHEME}:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


class RateLimit(BaseModel):
    """A token bucket: `spans_per_second` or `requests_per_second`, refilled continuously,
    holding at most `burst` (default: one second's worth)."""

    model_config = ConfigDict(extra="forbid")

    spans_per_second: Optional[float] = Field(None, gt=0)
    requests_per_second: Optional[float] = Field(None, gt=0)
    burst: Optional[float] = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_unit(self) -> "RateLimit":
        if (self.spans_per_second is None) == (self.requests_per_second is None):
            raise ValueError("give exactly one of spans_per_second, requests_per_second")
        return self

    @property
    def unit(self) -> Literal["spans", "requests"]:
        return "spans" if self.spans_per_second is not None else "requests"

    @property
    def rate(self) -> float:
        return float(self.spans_per_second or self.requests_per_second or 0.0)

    @property
    def capacity(self) -> float:
        return float(self.burst if self.burst is not None else max(self.rate, 1.0))


class ApiKey(BaseModel):
    """One key: its hash, the tenant its spans belong to, and what it may do."""

    model_config = ConfigDict(extra="forbid")

    hash: str
    tenant: str = Field(min_length=1, max_length=128)
    id: str = ""  # shown in stats and logs; defaults to the hash's first 12 hex digits
    rate_limit: Optional[RateLimit] = None
    # A trusted collector forwards many tenants' spans: the resource's `llmpulse.tenant` is kept.
    trusted: bool = False

    @field_validator("hash")
    @classmethod
    def _hash_form(cls, v: str) -> str:
        v = v.strip().lower()
        scheme, _, digest = v.rpartition(":")
        if scheme not in ("", HASH_SCHEME) or not _HEX64.match(digest):
            raise ValueError(f"hash must be '{HASH_SCHEME}:' and 64 hex digits (llmpulse otlp-gateway keygen)")
        return f"{HASH_SCHEME}:{digest}"

    @model_validator(mode="after")
    def _default_id(self) -> "ApiKey":
        if not self.id:
            self.id = self.hash.split(":", 1)[1][:12]
        return self


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path


def _unique_keys(keys: list[ApiKey], where: str) -> list[ApiKey]:
    seen_ids: dict[str, int] = {}
    seen_hashes: dict[str, str] = {}
    for i, k in enumerate(keys):
        if k.id in seen_ids:
            raise ValueError(f"{where}: entry {i} duplicates key id {k.id!r} (entry {seen_ids[k.id]})")
        if k.hash in seen_hashes:
            raise ValueError(f"{where}: entry {i} ({k.id!r}) has the same hash as {seen_hashes[k.hash]!r}")
        seen_ids[k.id] = i
        seen_hashes[k.hash] = k.id
    return keys


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(4318, ge=0, le=65535)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY, ge=1024)
    max_pending: int = Field(100_000, ge=1)  # sink.pending() at or above this → 503
    retry_after_s: int = Field(2, ge=1)

    keys: list[ApiKey] = Field(default_factory=list)  # inline keys (fixed until restart)
    keys_file: Optional[Path] = None  # reloaded when its mtime changes, or on SIGHUP
    keys_check_s: float = Field(1.0, gt=0)  # how often the file's mtime is looked at
    default_rate_limit: Optional[RateLimit] = None  # for keys without a rate_limit of their own
    # Without keys the gateway refuses to start unless this is set: then requests without a
    # key are accepted and take the tenant from the spans, else `tenant`.
    allow_unauthenticated: bool = False
    tenant: str = "default"
    environment: str = ""

    # What a span's events may carry is validation's `limits:` section (processors/validate.py).
    tls: Optional[TlsConfig] = None

    @field_validator("keys")
    @classmethod
    def _inline_unique(cls, v: list[ApiKey]) -> list[ApiKey]:
        return _unique_keys(v, "otlp_gateway.keys")

    def load_keys(self) -> list[ApiKey]:
        """Inline keys plus the keys file; raises KeyConfigError naming the bad entry."""
        keys = list(self.keys)
        if self.keys_file is not None:
            keys += load_keys_file(self.keys_file)
        try:
            return _unique_keys(keys, f"otlp_gateway.keys + {self.keys_file}")
        except ValueError as exc:
            raise KeyConfigError(str(exc)) from None

    def check_startable(self, n_keys: int) -> None:
        """Secure by default: no keys and no explicit opt-out is a configuration error."""
        if not n_keys and not self.allow_unauthenticated:
            where = f"in {self.keys_file}" if self.keys_file else "(otlp_gateway.keys_file is not set)"
            raise KeyConfigError(
                f"otlp-gateway: no API keys configured {where}; add one with `llmpulse otlp-gateway keygen "
                f"--tenant NAME`, or set otlp_gateway.allow_unauthenticated: true (--insecure-no-auth)")
        if self.tls is not None:
            for p in (self.tls.cert_file, self.tls.key_file):
                if not p.is_file():
                    raise KeyConfigError(f"otlp-gateway: TLS file {p} not found")


class KeyConfigError(ValueError):
    """The keys configuration cannot be used; the message names the file and entry."""


def load_keys_file(path: Path) -> list[ApiKey]:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or []
    except OSError as exc:
        raise KeyConfigError(f"keys file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise KeyConfigError(f"keys file {path}: not YAML: {str(exc)[:200]}") from None
    if not isinstance(doc, list):
        raise KeyConfigError(f"keys file {path}: expected a list of entries, got {type(doc).__name__}")
    keys = []
    for i, entry in enumerate(doc):
        label = entry.get("id") if isinstance(entry, dict) and entry.get("id") else f"entry {i}"
        try:
            keys.append(ApiKey.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
            raise KeyConfigError(f"keys file {path}: {label}: {problems}") from None
    try:
        return _unique_keys(keys, f"keys file {path}")
    except ValueError as exc:
        raise KeyConfigError(str(exc)) from None


def key_line(key: str, tenant: str, key_id: str = "", trusted: bool = False) -> str:
    """The keys-file line for a key (a YAML flow mapping in a list)."""
    entry = {"id": key_id, "tenant": tenant, "hash": hash_key(key)} if key_id else {"tenant": tenant, "hash": hash_key(key)}
    if trusted:
        entry["trusted"] = True
    return "- " + yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000).strip()
