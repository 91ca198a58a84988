"""Pricing: the USD cost of an `output` event, from overrides or the genai-prices catalog.

Token accounting follows the contract (OTel GenAI): `input_tokens` includes cache reads
and cache writes, `output_tokens` includes reasoning. Each token is priced exactly once:

    cost = (input - cache_read - cache_write) * input_rate
         + cache_read * cache_read_rate + cache_write * cache_write_rate
         + (output - reasoning) * output_rate + reasoning * reasoning_rate
         + per-request fee

A rate the catalog does not list falls back to its parent (cache reads to the input rate,
reasoning to the output rate), which is how genai-prices decomposes usage too.

Hot path: `calc_price` costs ~60-170 µs a call (Decimal arithmetic, lookups), so each
(provider, model) is resolved once into float rates (`_Plan`) and cached; time-dependent
catalog prices (a price change on a date, off-peak hours) are chosen per event from the
*event* time, so a replay prices identically. An unknown model costs None (never 0) and
raises one `unpriced_model` finding per (provider, model) per UTC day.

The catalog is the snapshot genai-prices holds when the Pricer is built; build a new
Pricer to pick up newer prices (the cache goes with it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import genai_prices
import msgspec
from genai_prices import data_snapshot
from genai_prices import types as gp
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from llmpulse.schemas.contract import Output, Usage
from llmpulse.schemas.findings import Finding, finding_id

PRICE_SOURCE_OVERRIDE = "override"
PRICE_SOURCE_CATALOG = "genai-prices"
DAY_MS = 86_400_000

# OTel `gen_ai.provider.name` values that genai-prices' own provider matching misses.
PROVIDER_ALIASES = {
    "x_ai": "x-ai",
    "gcp.gen_ai": "google",
    "azure.ai.inference": "azure",
}


# --- configuration -------------------------------------------------------------------


class PriceOverride(BaseModel):
    """One override, USD per million tokens. Overrides win over the catalog.

    `model` is matched case-insensitively against `response_model` (else `model`); a
    glob (`llama-3.1-*`) matches families. An empty `provider` matches any provider.
    A rate left out falls back as in the catalog: cache rates to `input_mtok`,
    `reasoning_mtok` to `output_mtok`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    provider: str = ""
    input_mtok: NonNegativeFloat
    output_mtok: NonNegativeFloat
    cache_read_mtok: NonNegativeFloat | None = None
    cache_write_mtok: NonNegativeFloat | None = None
    reasoning_mtok: NonNegativeFloat | None = None
    request_usd: NonNegativeFloat = 0.0  # flat fee per call

    @property
    def version(self) -> str:
        # Content hash: rows priced by an entry can be found and repriced when it changes.
        body = json.dumps(self.model_dump(), sort_keys=True).encode()
        return "override:" + hashlib.sha256(body).hexdigest()[:12]

    def matches(self, provider: str, model: str) -> bool:
        if self.provider and self.provider.lower() != provider.lower():
            return False
        return fnmatch.fnmatchcase(model.lower(), self.model.lower())


class PriceOverrides(BaseModel):
    """The `prices:` config section: a list of `PriceOverride`, first match wins.

    YAML, inline in the llmpulse config or in a separate file (same list, or a mapping
    with a `prices:` key)::

        prices:
          - {provider: vllm, model: llama-3.1-70b*, input_mtok: 0.20, output_mtok: 0.60}
          - {provider: openai, model: gpt-4o, input_mtok: 2.0, output_mtok: 8.0,
             cache_read_mtok: 1.0}     # negotiated rate
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    overrides: tuple[PriceOverride, ...] = ()

    @classmethod
    def from_config(
        cls, raw: list[dict[str, Any]] | None = None, file: str | Path | None = None
    ) -> PriceOverrides:
        """Inline entries first (they win), then the file's."""
        entries = list(raw or [])
        if file is not None:
            entries += _read_overrides_file(Path(file))
        return cls(overrides=tuple(PriceOverride.model_validate(e) for e in entries))

    def find(self, provider: str, model: str) -> PriceOverride | None:
        for entry in self.overrides:
            if entry.matches(provider, model):
                return entry
        return None


def _read_overrides_file(path: Path) -> list[dict[str, Any]]:
    import yaml  # config load at start-up only, never on the event path

    data = yaml.safe_load(path.read_text()) or []
    if isinstance(data, dict):
        data = data.get("prices") or []
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of price overrides or a `prices:` list")
    return data


# --- resolved prices -------------------------------------------------------------------


class Priced(msgspec.Struct, frozen=True, gc=False):
    # A Struct, not a NamedTuple: built once per event, 5x cheaper to create.
    cost_usd: float | None  # None: unknown model or no usage reported; never a made-up 0
    price_source: str  # "override" | "genai-prices" | "" when unpriced
    price_version: str  # "genai-prices==0.2.3" or "override:<hash>"; "" when unpriced


UNPRICED = Priced(None, "", "")


class _Rates:
    """USD per million tokens for each token kind, plus a per-call fee in USD."""

    __slots__ = ("inp", "cache_read", "cache_write", "out", "reasoning", "request")

    def __init__(self, inp, cache_read, cache_write, out, reasoning, request):
        self.inp, self.cache_read, self.cache_write = inp, cache_read, cache_write
        self.out, self.reasoning, self.request = out, reasoning, request


class _Plan:
    """One resolved price: base rates, optional input-size tiers, where it came from."""

    __slots__ = ("base", "tiers", "source", "version")

    def __init__(self, base: _Rates, tiers: tuple[tuple[int, _Rates], ...], source: str, version: str):
        self.base = base
        self.tiers = tiers  # (start, rates), highest start first; cliff on total input
        self.source = source
        self.version = version

    def cost(self, u: Usage) -> float:
        inp = u.input_tokens
        r = self.base
        if self.tiers:
            for start, rates in self.tiers:
                if inp > start:
                    r = rates
                    break
        cr, cw, out, rs = u.cache_read_tokens, u.cache_write_tokens, u.output_tokens, u.reasoning_tokens
        # Subparts are contained in their totals; clamp so a producer bug never goes negative.
        plain_in = inp - cr - cw
        if plain_in < 0:
            plain_in = 0
        plain_out = out - rs
        if plain_out < 0:
            plain_out = 0
        mtok = (
            plain_in * r.inp
            + cr * r.cache_read
            + cw * r.cache_write
            + plain_out * r.out
            + rs * r.reasoning
        )
        return mtok / 1_000_000 + r.request


class _Timed:
    """Catalog prices that depend on the request time: last active option wins.

    The answer only changes at known instants (a start date, a daily hour), so the last
    one is kept with the interval it holds for: events in time order rarely re-resolve.
    """

    __slots__ = ("options", "fallback", "edges", "lo", "hi", "plan")

    def __init__(self, options: list[tuple[Any, _Plan]], fallback: _Plan, edges: tuple, daily: tuple):
        self.options = options  # (predicate on epoch ms or None, plan), latest first
        self.fallback = fallback
        self.edges = (edges, daily)  # absolute ms; ms of day (UTC)
        self.lo, self.hi, self.plan = 0, 0, fallback  # empty interval: resolve first time

    def at(self, ts_ms: int) -> _Plan:
        if self.lo <= ts_ms < self.hi:
            return self.plan
        plan = self.fallback
        for active, option in self.options:
            if active is None or active(ts_ms):
                plan = option
                break
        absolute, daily = self.edges
        day = ts_ms - ts_ms % DAY_MS
        points = [*absolute, day, day + DAY_MS, *(day + d for d in daily), *(day + DAY_MS + d for d in daily)]
        self.lo = max((p for p in points if p <= ts_ms), default=0)
        self.hi = min(p for p in points if p > ts_ms)
        self.plan = plan
        return plan


_UNKNOWN = object()  # cached negative lookup


# --- the processor ---------------------------------------------------------------------


class Pricer:
    """Prices output events. State: the (provider, model) cache and the unpriced-model
    findings already emitted per UTC day. Deterministic for a given input order."""

    def __init__(
        self,
        overrides: PriceOverrides | None = None,
        snapshot: data_snapshot.DataSnapshot | None = None,
        max_cache: int = 10_000,
    ):
        self.overrides = overrides or PriceOverrides()
        self.snapshot = snapshot or data_snapshot.get_snapshot()
        self.catalog_version = f"genai-prices=={genai_prices.__version__}"
        if self.snapshot.from_auto_update:
            self.catalog_version += "@" + self.snapshot.timestamp.strftime("%Y%m%dT%H%M%S")
        self.max_cache = max_cache  # model names come from producers: bound the cache
        self._cache: dict[tuple[str, str], Any] = {}
        self._unpriced_seen: dict[int, set[tuple[str, str]]] = {}  # UTC day -> keys

    @classmethod
    def from_config(
        cls, prices: list[dict[str, Any]] | None = None, overrides_file: str | Path | None = None
    ) -> Pricer:
        return cls(PriceOverrides.from_config(prices, overrides_file))

    # Hot path ------------------------------------------------------------------------

    def price_usage(self, provider: str, model: str, usage: Usage | None, ts_ms: int) -> Priced:
        """Price one call. Also the entry point for repricing stored rows."""
        entry = self._cache.get((provider, model))
        if entry is None:
            entry = self._resolve(provider, model)
        if entry.__class__ is not _Plan:
            if entry is _UNKNOWN:
                return UNPRICED
            entry = entry.at(ts_ms)
        if usage is None:
            return Priced(None, entry.source, entry.version)
        return Priced(entry.cost(usage), entry.source, entry.version)

    def price(self, event: Any) -> Priced:
        """Price an Output event (`response_model` when present, else `model`)."""
        # Same as price_usage, inlined: this is the per-event hot path.
        provider, model = event.provider, event.response_model or event.model
        entry = self._cache.get((provider, model))
        if entry is None:
            entry = self._resolve(provider, model)
        if entry.__class__ is not _Plan:
            if entry is _UNKNOWN:
                return UNPRICED
            entry = entry.at(event.ts)
        usage = event.usage
        if usage is None:
            return Priced(None, entry.source, entry.version)
        return Priced(entry.cost(usage), entry.source, entry.version)

    def process(self, event: Any, detected_at: int | None = None) -> tuple[Priced, list[Finding]]:
        """Price an Output event; an unknown model also yields an `unpriced_model` finding
        the first time it is seen on its UTC day (by event time)."""
        if event.__class__ is not Output:  # cheaper than the event_type property
            return UNPRICED, []
        priced = self.price(event)
        if priced.price_source:
            return priced, []
        finding = self._unpriced_finding(event, detected_at)
        return priced, [finding] if finding is not None else []

    # Resolution, once per (provider, model) ---------------------------------------------

    def _resolve(self, provider: str, model: str) -> Any:
        if len(self._cache) >= self.max_cache:
            self._cache.clear()
        entry: Any = _UNKNOWN
        override = self.overrides.find(provider, model)
        if override is not None:
            entry = _override_plan(override)
        elif model:
            entry = self._catalog_entry(provider, model)
        self._cache[(provider, model)] = entry
        return entry

    def _catalog_entry(self, provider: str, model: str) -> Any:
        provider_id = PROVIDER_ALIASES.get(provider.lower(), provider) or None
        try:
            _, info = self.snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            return _UNKNOWN
        if isinstance(info.prices, gp.ModelPrice):
            return _catalog_plan(info.prices, self.catalog_version) or _UNKNOWN
        # Conditional prices: genai-prices tries them last to first, default the first.
        options = [
            (_constraint_predicate(c.constraint), _catalog_plan(c.prices, self.catalog_version))
            for c in reversed(info.prices)
        ]
        fallback = _catalog_plan(info.prices[0].prices, self.catalog_version)
        if fallback is None or any(plan is None for _, plan in options):
            return _UNKNOWN
        edges, daily = _constraint_edges([c.constraint for c in info.prices])
        return _Timed(options, fallback, edges, daily)

    # Findings -----------------------------------------------------------------------------

    def _unpriced_finding(self, event: Any, detected_at: int | None) -> Finding | None:
        day = event.ts // DAY_MS
        model = event.response_model or event.model
        key = (event.provider, model)
        seen = self._unpriced_seen.get(day)
        if seen is None:
            seen = self._unpriced_seen[day] = set()
            # Keep three days: enough for late events, bounded forever.
            for old in [d for d in self._unpriced_seen if d < day - 2]:
                del self._unpriced_seen[old]
        if key in seen:
            return None
        seen.add(key)
        day_str = date.fromordinal(date(1970, 1, 1).toordinal() + day).isoformat()
        return Finding(
            finding_id=finding_id("unpriced_model", event.provider, model, day_str),
            detected_at=event.ts if detected_at is None else detected_at,
            event_ts=event.ts,
            kind="unpriced_model",
            severity="low",
            tenant=event.tenant,
            workflow=event.workflow,
            model=model,
            title=f"No price for {event.provider or '?'}/{model or '?'}: cost left NULL; add a price override",
            evidence={
                "provider": event.provider,
                "model": model,
                "request_model": event.model,
                "day": day_str,
                "event_id": event.event_id,
                "catalog_version": self.catalog_version,
            },
        )


# --- building plans --------------------------------------------------------------------


def _override_plan(o: PriceOverride) -> _Plan:
    inp = o.input_mtok
    rates = _Rates(
        inp,
        inp if o.cache_read_mtok is None else o.cache_read_mtok,
        inp if o.cache_write_mtok is None else o.cache_write_mtok,
        o.output_mtok,
        o.output_mtok if o.reasoning_mtok is None else o.reasoning_mtok,
        o.request_usd,
    )
    return _Plan(rates, (), PRICE_SOURCE_OVERRIDE, o.version)


# Catalog price keys that our usage fields map onto; every other key (audio, images, web
# searches, ...) prices a quantity the contract does not carry, so it contributes 0.
_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok", "output_reasoning_mtok")


def _catalog_plan(mp: gp.ModelPrice, version: str) -> _Plan | None:
    raw = {k: mp.__dict__.get(k) for k in (*_KEYS, "requests_kcount")}
    if all(v is None for v in raw.values()) and any(v is not None for v in mp.__dict__.values()):
        return None  # priced by audio hours, pages, ...: quantities we do not carry
    # (a catalog entry with no prices at all is a free model: 0 is then the true cost)
    starts = sorted({t.start for v in raw.values() if isinstance(v, gp.TieredPrices) for t in v.tiers})
    base = _catalog_rates(raw, None)
    tiers = tuple((s, _catalog_rates(raw, s)) for s in reversed(starts))
    return _Plan(base, tiers, PRICE_SOURCE_CATALOG, version)


def _catalog_rates(raw: dict[str, Any], tier_start: int | None) -> _Rates:
    def rate(key: str) -> float | None:
        v = raw[key]
        if isinstance(v, gp.TieredPrices):
            # Cliff pricing: the tier with the highest start at or below this breakpoint.
            price = v.base
            if tier_start is not None:
                for t in v.tiers:
                    if t.start <= tier_start:
                        price = t.price
            return float(price)
        return None if v is None else float(v)

    inp = rate("input_mtok") or 0.0
    out = rate("output_mtok") or 0.0
    cache_read, cache_write, reasoning = rate("cache_read_mtok"), rate("cache_write_mtok"), rate("output_reasoning_mtok")
    requests = rate("requests_kcount")
    return _Rates(
        inp,
        inp if cache_read is None else cache_read,
        inp if cache_write is None else cache_write,
        out,
        out if reasoning is None else reasoning,
        0.0 if requests is None else requests / 1000,
    )


def _start_ms(d: date) -> int:
    return int(datetime.combine(d, time(), tzinfo=timezone.utc).timestamp() * 1000)


def _constraint_edges(constraints: list[Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Instants where the active price can change: start dates, daily start/end times."""
    edges, daily = [], []
    for c in constraints:
        if isinstance(c, gp.StartDateConstraint):
            edges.append(_start_ms(c.start_date))
        elif isinstance(c, gp.TimeOfDateConstraint):
            daily += [_ms_of_day(c.start_time), _ms_of_day(c.end_time)]
    return tuple(edges), tuple(daily)


def _constraint_predicate(c: Any):
    """Translate a catalog constraint to a test on epoch ms (UTC), as genai-prices does."""
    if c is None:
        return None
    if isinstance(c, gp.StartDateConstraint):
        start_ms = _start_ms(c.start_date)
        return lambda ts: ts >= start_ms
    if isinstance(c, gp.TimeOfDateConstraint):
        lo, hi = _ms_of_day(c.start_time), _ms_of_day(c.end_time)
        if hi < lo:  # interval wraps midnight
            return lambda ts: ts % DAY_MS >= lo or ts % DAY_MS < hi
        return lambda ts: lo <= ts % DAY_MS < hi
    raise TypeError(f"unsupported genai-prices constraint {type(c).__name__}")


def _ms_of_day(t: time) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    utc = datetime.combine(date(1970, 1, 1), t).astimezone(timezone.utc)
    return ((utc.hour * 60 + utc.minute) * 60 + utc.second) * 1000 + utc.microsecond // 1000
