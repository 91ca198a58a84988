"""Duplicates out before anything counts them: an event_id already stored is dropped once, here.

The idempotency key is `event_id` alone. An app that re-publishes an event (same id, maybe
a new `ts`, another partition) must not get a second row, nor a second count in any
detector. The pipeline asks a `Deduper` which events of a batch are fresh, after validation
and before the detectors and the insert:

    deduper = Deduper(settings.dedup, lookup=lambda ids: stored_event_ids(client, db, ids))
    fresh = deduper.split([e.event_id for e in events], newest_ts_ms=max(e.ts for e in events))
    events = [e for e, keep in zip(events, fresh) if keep]      # or: deduper.fresh(events)

(`deduper_for` in processors/runtime/dedup_store.py builds that Deduper; `MemoryIdStore`
below is the store for tests and replays.)

Rules of `split`:

- an id seen earlier in the same batch is a duplicate (the first occurrence is kept);
- an id the Bloom filter has never seen is fresh, with no lookup;
- the ids the Bloom filter "may have seen" are asked of the store in one `lookup` call, and
  the store's answer is the truth;
- every fresh id is then in the filter.

Correctness comes from the lookup, speed from the filter. A filter that holds ids the store
does not (a batch that failed after `split` and is read again) only costs a lookup. The one
thing that would be wrong is a stored id missing from the filter, so:

- until `primed` (the store's ids loaded, processors/runtime/dedup_store.py `load_bloom`),
  every id is looked up;
- a full generation is followed by a new one and the older ones are kept; a generation is
  dropped only when its newest event is older than the horizon (the store's retention:
  its rows are gone too). At the memory bound (`max_generations`) the newest generation
  keeps filling: its false-positive rate, hence the lookup rate, rises; correctness does not
  change;
- ids other workers stored after the load are not in this filter: after a partition is
  assigned, refresh the filter from the store (`refresh_bloom`), and periodically for
  duplicates that can arrive on another partition (`refresh_seconds`).

The filter hashes with Python's `hash()` of the id (SipHash, keyed per process, cached on
the string): the filter never leaves the process, it is rebuilt from the store at start.
It is blocked: one 64-bit word per id holds all of its k bits, so a test or an add reads
one word, at the price of more bits per id than a classic Bloom filter for the same rate
(12 instead of 9.6 at 1 %; `bits_per_id`). Measurements: bench/bench_dedup.py.

Pure: no I/O import. Not thread-safe: one Deduper per pipeline, driven by one thread.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from functools import lru_cache
from typing import Callable, Iterable, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

Lookup = Callable[[list[str]], "set[str]"]  # which of these ids are already stored (exactly)
T = TypeVar("T")

_WORD = 64
_MASK_BITS = 16  # mask patterns are drawn from a table of 2**16 per k
_DAY_MS = 86_400_000


class DedupConfig(BaseModel):
    """The `dedup:` section. Memory: `max_generations` x `generation_bytes()`
    (defaults: 3 x ~14.3 MiB for 10 M ids each at 1 %)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Ids per generation of the Bloom filter; past it a new generation starts.
    expected_ids: PositiveInt = 10_000_000
    # Target false-positive rate of one generation: the share of fresh ids looked up.
    fp_rate: float = Field(0.01, gt=0, lt=0.5)
    # Memory bound, in generations; at the bound the newest one fills past its capacity.
    max_generations: PositiveInt = 3
    # How far back a duplicate is caught; None: the store's retention_days.
    horizon_days: PositiveInt | None = None
    # Ids per lookup query (the store's IN list).
    lookup_chunk: PositiveInt = 2_000
    # Reload ids other workers stored since the last load, every this many seconds (0: only
    # on partition assignment). A duplicate that reaches another worker than its original
    # within this time can be missed there (that worker's filter lacks the id yet).
    refresh_seconds: float = Field(60.0, ge=0)

    def generation_bytes(self) -> int:
        return BloomFilter.size_for(self.expected_ids, self.fp_rate)[0] * 8


# --- the filter --------------------------------------------------------------------------


def _blocked_fp(bits_per_id: float, k: int) -> float:
    """False-positive rate of a 64-bit blocked Bloom filter whose ids set k distinct bits
    of one word each: ids per word are Poisson(64 / bits_per_id); given l ids in the word,
    the k bits of a probe are all set with probability (inclusion-exclusion)
    sum_j (-1)^j C(k, j) (C(64-j, k) / C(64, k))^l."""
    lam = _WORD / bits_per_id
    total_k = math.comb(_WORD, k)
    miss = [math.comb(_WORD - j, k) / total_k for j in range(k + 1)]
    coef = [(-1) ** j * math.comb(k, j) for j in range(k + 1)]
    p = math.exp(-lam)
    total = 0.0
    for load in range(0, 400):
        if load:
            p *= lam / load
        total += p * sum(c * q ** load for c, q in zip(coef, miss))
        if load > lam and p < 1e-18:
            break
    return max(total, 0.0)


@lru_cache(maxsize=None)
def _bits_and_k(fp_rate: float) -> tuple[float, int]:
    """The fewest bits per id (in steps of 1/4) meeting `fp_rate`, and its best k."""
    bits = 4.0
    while True:
        k = min(range(1, 17), key=lambda k: _blocked_fp(bits, k))
        if _blocked_fp(bits, k) <= fp_rate or bits >= 64:
            return bits, k
        bits += 0.25


_MASKS: dict[int, list[int]] = {}


def _mask_table(k: int) -> list[int]:
    """2**16 words with k distinct bits each, the same in every process (fixed seed)."""
    table = _MASKS.get(k)
    if table is None:
        rnd = random.Random(0x11_AB_5E ^ k)
        bits = range(_WORD)
        table = _MASKS[k] = [sum(1 << b for b in rnd.sample(bits, k)) for _ in range(1 << _MASK_BITS)]
    return table


class BloomFilter:
    """A fixed-size blocked Bloom filter of strings: no false negatives, ever.

    `capacity` ids at `fp_rate`; more ids still work, at a higher rate (`estimated_fp`).
    `count` is the number of adds that set a bit (about the distinct ids added)."""

    __slots__ = ("capacity", "fp_rate", "k", "nwords", "words", "count", "_masks")

    def __init__(self, capacity: int, fp_rate: float = 0.01) -> None:
        if capacity <= 0 or not 0 < fp_rate < 0.5:
            raise ValueError("capacity must be > 0 and 0 < fp_rate < 0.5")
        self.capacity = int(capacity)
        self.fp_rate = fp_rate
        self.nwords, self.k = self.size_for(capacity, fp_rate)
        self.words = array("Q", bytes(8 * self.nwords))
        self.count = 0
        self._masks = _mask_table(self.k)

    @staticmethod
    def size_for(capacity: int, fp_rate: float) -> tuple[int, int]:
        """(words, k) for `capacity` ids at `fp_rate`."""
        bits, k = _bits_and_k(fp_rate)
        return max(1, math.ceil(capacity * bits / _WORD)), k

    @property
    def nbytes(self) -> int:
        return 8 * self.nwords

    @property
    def bits_per_id(self) -> float:
        return self.nwords * _WORD / self.capacity

    def estimated_fp(self) -> float:
        """The false-positive rate at the current count."""
        if not self.count:
            return 0.0
        return _blocked_fp(self.nwords * _WORD / self.count, self.k)

    def fill_ratio(self) -> float:
        return int.from_bytes(self.words.tobytes(), "little").bit_count() / (self.nwords * _WORD)

    def add(self, item: str) -> None:
        self.add_many((item,))

    def __contains__(self, item: str) -> bool:
        h = hash(item)
        m = self._masks[h & 0xFFFF]
        return self.words[(h >> _MASK_BITS) % self.nwords] & m == m

    def add_many(self, items: Iterable[str]) -> int:
        """Add every item; returns how many set a new bit."""
        return self.test_and_add_many(items).count(False)

    def load_many(self, items: Sequence[str]) -> None:
        """`add_many` for a bulk load of distinct ids (a third faster: no test, no branch);
        `count` grows by len(items)."""
        words, masks, nwords = self.words, self._masks, self.nwords
        for h in map(hash, items):
            words[(h >> _MASK_BITS) % nwords] |= masks[h & 0xFFFF]
        self.count += len(items)

    def check_many(self, items: Iterable[str]) -> list[bool]:
        """For each item: True if it may have been added, False if it certainly was not."""
        words, masks, nwords = self.words, self._masks, self.nwords
        out = []
        for item in items:
            h = hash(item)
            m = masks[h & 0xFFFF]
            out.append(words[(h >> _MASK_BITS) % nwords] & m == m)
        return out

    def test_and_add_many(self, items: Iterable[str]) -> list[bool]:
        """`check_many`, then add them all, in one pass (one hash and one word per item)."""
        words, masks, nwords = self.words, self._masks, self.nwords
        out = []
        new = 0
        for item in items:
            h = hash(item)
            m = masks[h & 0xFFFF]
            i = (h >> _MASK_BITS) % nwords
            v = words[i]
            if v & m == m:
                out.append(True)
            else:
                words[i] = v | m
                new += 1
                out.append(False)
        self.count += new
        return out


class _Generation:
    __slots__ = ("bloom", "newest_ts_ms")

    def __init__(self, bloom: BloomFilter, newest_ts_ms: int) -> None:
        self.bloom = bloom
        self.newest_ts_ms = newest_ts_ms  # newest event time of an id added: drop after horizon


# --- the deduper -------------------------------------------------------------------------


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Deduper:
    """Which ids of a batch are fresh: `split(ids) -> [bool]` (True: fresh, keep it).

    `lookup(ids) -> set` is the store's truth (which of these are stored); its exceptions
    propagate unchanged from `split`, for the caller's retry policy to classify, and the
    Deduper stays valid: call `split` again with the same batch.
    `horizon_ms`: generations whose newest event is older are dropped (None: never).
    `clock`: the time the horizon is measured against (wall ms; event time in a replay).
    """

    def __init__(
        self,
        config: DedupConfig | None = None,
        lookup: Lookup | None = None,
        *,
        horizon_ms: int | None = None,
        primed: bool = False,
        clock: Callable[[], int] = _wall_ms,
    ) -> None:
        self.config = config = config or DedupConfig()
        if lookup is None:
            raise ValueError("a Deduper needs the store's lookup (e.g. MemoryIdStore().lookup)")
        self.lookup = lookup
        if horizon_ms is None and config.horizon_days is not None:
            horizon_ms = config.horizon_days * _DAY_MS
        self.horizon_ms = horizon_ms
        self.clock = clock
        # False: the filter may lack stored ids, so every id is looked up (load_bloom primes).
        self.primed = primed
        self.loaded_at_ms: int | None = None  # store time of the last load (load_bloom)
        self.generations: list[_Generation] = [self._new_generation(config.expected_ids, 0)]
        self.stats = {"ids": 0, "fresh": 0, "duplicates_in_batch": 0, "duplicates_stored": 0,
                      "looked_up": 0, "lookups": 0, "rotations": 0, "expired": 0, "saturated": 0}

    # -- the filter's generations ---------------------------------------------------------
    def _new_generation(self, capacity: int, newest_ts_ms: int) -> _Generation:
        return _Generation(BloomFilter(capacity, self.config.fp_rate), newest_ts_ms)

    @property
    def max_bytes(self) -> int:
        return self.config.max_generations * self.config.generation_bytes()

    @property
    def nbytes(self) -> int:
        return sum(g.bloom.nbytes for g in self.generations)

    def reset(self, expected_ids: int, newest_ts_ms: int = 0) -> BloomFilter:
        """Start over with one generation for `expected_ids` (at least a generation, at most
        the memory bound); returns its filter for a load. Leaves `primed` False."""
        cfg = self.config
        cap = min(max(int(expected_ids), cfg.expected_ids), cfg.expected_ids * cfg.max_generations)
        self.primed = False
        self.generations = [self._new_generation(cap, newest_ts_ms)]
        return self.generations[0].bloom

    def add_loaded(self, ids: Sequence[str], newest_ts_ms: int) -> None:
        """Add ids read from the store (a load or a refresh) to the newest generation."""
        gen = self.generations[-1]
        gen.newest_ts_ms = max(gen.newest_ts_ms, newest_ts_ms)
        gen.bloom.load_many(ids)

    def _maintain(self) -> None:
        now = self.clock()
        if self.horizon_ms is not None:
            keep = [g for g in self.generations[:-1] if g.newest_ts_ms + self.horizon_ms >= now]
            self.stats["expired"] += len(self.generations) - 1 - len(keep)
            self.generations[:-1] = keep
        newest = self.generations[-1]
        if newest.bloom.count < newest.bloom.capacity:
            return
        cfg = self.config
        if self.nbytes + cfg.generation_bytes() <= self.max_bytes:
            self.generations.append(self._new_generation(cfg.expected_ids, newest.newest_ts_ms))
            self.stats["rotations"] += 1
        elif not self.stats["saturated"]:
            self.stats["saturated"] = 1  # at the memory bound: lookups rise from here on

    def __contains__(self, event_id: str) -> bool:
        """The filter's answer alone (False: certainly never added)."""
        return any(event_id in g.bloom for g in self.generations)

    # -- the batch ------------------------------------------------------------------------
    def split(self, ids: Sequence[str], newest_ts_ms: int | None = None) -> list[bool]:
        """For each id, True if fresh (first time: store and count it), False if a duplicate.

        `newest_ts_ms`: the batch's newest event time (default: the clock), which keeps
        the generation holding these ids until they leave the horizon."""
        n = len(ids)
        st = self.stats
        st["ids"] += n
        if not n:
            return []
        fresh = [True] * n
        first: dict[str, int] = {}
        for i, x in enumerate(ids):
            if x in first:
                fresh[i] = False
                st["duplicates_in_batch"] += 1
            else:
                first[x] = i
        unique = list(first)
        newest = self.generations[-1]
        maybe = newest.bloom.test_and_add_many(unique)
        older = self.generations[:-1]
        if older:
            for g in older:
                for j, hit in enumerate(g.bloom.check_many(unique)):
                    if hit:
                        maybe[j] = True
        ts = self.clock() if newest_ts_ms is None else newest_ts_ms
        if ts > newest.newest_ts_ms:
            newest.newest_ts_ms = ts
        ask = unique if not self.primed else [x for x, m in zip(unique, maybe) if m]
        if ask:
            stored = self.lookup(ask)  # raises: nothing below ran, the batch can be split again
            st["lookups"] += 1
            st["looked_up"] += len(ask)
            if stored:
                for x in ask:
                    if x in stored:
                        fresh[first[x]] = False
                        st["duplicates_stored"] += 1
            # Fresh ids another generation answered for must live in the newest one too.
            if older:
                newest.bloom.add_many(x for x in ask if x not in stored)
        st["fresh"] += fresh.count(True)
        self._maintain()
        return fresh

    def fresh(self, events: Sequence[T]) -> list[T]:
        """The events (anything with `event_id` and `ts` in ms) that are not duplicates, in
        order: `split` of their ids, with their newest event time."""
        if not events:
            return []
        keep = self.split([e.event_id for e in events], max(e.ts for e in events))
        return [e for e, k in zip(events, keep) if k]

    def describe(self) -> dict:
        """For /stats/ and logs."""
        return {
            **self.stats,
            "primed": self.primed,
            "generations": len(self.generations),
            "bloom_bytes": self.nbytes,
            "bloom_ids": sum(g.bloom.count for g in self.generations),
            "estimated_fp": round(sum(g.bloom.estimated_fp() for g in self.generations), 6),
        }


class MemoryIdStore:
    """The store's truth in memory, for tests and `llmpulse backtest`: `lookup` for a
    Deduper, `record` the ids the caller stored (what the events insert does for ClickHouse)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def lookup(self, ids: list[str]) -> set[str]:
        return self.ids.intersection(ids)

    def record(self, ids: Iterable[str]) -> None:
        self.ids.update(ids)
