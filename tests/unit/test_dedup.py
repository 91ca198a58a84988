"""The Bloom filter never forgets an id it was given; the Deduper's answers are the store's."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from llmpulse.processors.dedup import BloomFilter, DedupConfig, Deduper, MemoryIdStore


def ids(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [f"{rnd.getrandbits(128):032x}" for _ in range(n)]


# --- the filter -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=300),
       st.integers(min_value=1, max_value=500), st.sampled_from([0.2, 0.05, 0.01, 0.001]))
def test_after_add_check_is_true(items: list[str], capacity: int, fp: float) -> None:
    b = BloomFilter(capacity, fp)  # also past its capacity
    third = len(items) // 3
    for x in items[:third]:
        b.add(x)
    b.add_many(items[third:2 * third])
    b.load_many(items[2 * third:])
    assert all(x in b for x in items)
    assert all(b.check_many(items))
    assert all(b.test_and_add_many(items))


@pytest.mark.parametrize("fp", [0.05, 0.01, 0.001])
def test_no_false_negatives_and_the_measured_rate_is_the_configured_one(fp: float) -> None:
    n = 100_000
    b = BloomFilter(n, fp)
    added = ids(n, 1)
    b.add_many(added)
    assert all(b.check_many(added))
    probes = ids(200_000, 2)
    measured = sum(b.check_many(probes)) / len(probes)
    # hash() is keyed per process: allow 4 binomial sigmas; the sizing rounds bits up.
    sigma = (fp / len(probes)) ** 0.5
    assert 0.6 * fp <= measured <= fp + 4 * sigma, (fp, measured)
    assert abs(b.estimated_fp() - measured) <= 4 * sigma + 0.05 * fp, (b.estimated_fp(), measured)


def test_test_and_add_reports_then_adds() -> None:
    b = BloomFilter(1000, 0.01)
    assert b.test_and_add_many(["a", "b"]) == [False, False]
    assert b.test_and_add_many(["a", "c"]) == [True, False]
    assert b.count == 3 and "c" in b


def test_sizing() -> None:
    words, k = BloomFilter.size_for(10_000_000, 0.01)
    assert 11 <= words * 64 / 10_000_000 <= 13 and 3 <= k <= 8  # blocked: ~12 bits per id at 1 %
    assert DedupConfig().generation_bytes() == words * 8
    with pytest.raises(ValueError):
        BloomFilter(0)


# --- the deduper ----------------------------------------------------------------------------


class SpyStore(MemoryIdStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []

    def lookup(self, ids: list[str]) -> set[str]:
        self.asked.append(list(ids))
        return super().lookup(ids)


def cfg(**kw) -> DedupConfig:
    return DedupConfig(**{"expected_ids": 10_000, **kw})


def test_duplicates_within_a_batch_keep_the_first() -> None:
    store = SpyStore()
    d = Deduper(cfg(), store.lookup, primed=True)
    assert d.split(["a", "b", "a", "c", "b", "a"]) == [True, True, False, True, False, False]
    assert store.asked == []  # nothing the filter may have seen: no lookup
    assert d.stats["duplicates_in_batch"] == 3 and d.stats["fresh"] == 3


def test_maybe_seen_ids_are_looked_up_in_one_call_and_the_store_decides() -> None:
    store = SpyStore()
    d = Deduper(cfg(), store.lookup, primed=True)
    first = ids(1000, 3)
    assert all(d.split(first))
    store.record(first[:500])  # the first half was stored; the rest failed and is read again
    batch = first + ids(1000, 4)
    fresh = d.split(batch)
    assert fresh == [False] * 500 + [True] * 1500
    assert len(store.asked) == 1
    asked = set(store.asked[0])
    assert set(first) <= asked  # every id it had seen, and only a few false positives
    assert len(asked) - 1000 < 60
    assert d.stats["duplicates_stored"] == 500


def test_unprimed_looks_everything_up() -> None:
    store = SpyStore()
    store.record(["old"])  # stored before this worker started; its filter does not know
    d = Deduper(cfg(), store.lookup)
    assert d.split(["old", "new", "new"]) == [False, True, False]
    assert store.asked == [["old", "new"]]


def test_lookup_failure_propagates_and_the_batch_can_be_split_again() -> None:
    store = MemoryIdStore()
    store.record(["x"])
    calls = {"n": 0}

    class Unreachable(ConnectionError):
        pass

    def flaky(batch: list[str]) -> set[str]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Unreachable("store down")
        return store.lookup(batch)

    d = Deduper(cfg(), flaky)
    with pytest.raises(Unreachable):
        d.split(["x", "y"])
    assert d.split(["x", "y"]) == [False, True]  # the retry: same answer as without the failure


def test_a_duplicate_after_any_amount_of_traffic_is_found_and_memory_stays_bounded() -> None:
    store = MemoryIdStore()
    c = cfg(expected_ids=20_000, max_generations=2)
    d = Deduper(c, store.lookup, primed=True)
    first = "the-one"
    for i, batch in enumerate([[first]] + [ids(5_000, 100 + i) for i in range(40)]):  # 200,000 more
        fresh = d.split(batch)
        store.record(x for x, f in zip(batch, fresh) if f)
    assert d.nbytes <= d.max_bytes == 2 * c.generation_bytes()
    assert d.stats["saturated"] == 1  # past the bound: the newest generation fills up ...
    assert d.split([first]) == [False]  # ... and answers stay right
    assert d.describe()["estimated_fp"] > c.fp_rate  # only the lookup rate rose


def test_generations_rotate_and_expire_past_the_horizon() -> None:
    now = {"ms": 1_000_000}
    store = MemoryIdStore()
    d = Deduper(cfg(expected_ids=1_000, max_generations=4), store.lookup, primed=True,
                horizon_ms=10_000, clock=lambda: now["ms"])
    old = ids(1_100, 7)  # a few collide in the filter: `count` is a little under the ids
    d.split(old, newest_ts_ms=now["ms"])
    assert len(d.generations) == 2 and d.stats["rotations"] == 1
    now["ms"] += 5_000
    d.split(ids(10, 8), newest_ts_ms=now["ms"])
    assert len(d.generations) == 2  # the old generation is still within the horizon
    now["ms"] += 6_000
    d.split(ids(10, 9), newest_ts_ms=now["ms"])
    assert len(d.generations) == 1 and d.stats["expired"] == 1


def test_fresh_ids_found_only_in_an_older_generation_move_to_the_newest() -> None:
    store = MemoryIdStore()
    d = Deduper(cfg(expected_ids=1_000, max_generations=3), store.lookup, primed=True, horizon_ms=10,
                clock=lambda: 0)
    gen1 = ids(1_100, 11)
    d.split(gen1, newest_ts_ms=0)  # filled: a second generation starts
    assert len(d.generations) == 2
    d.split(gen1[:10], newest_ts_ms=0)  # not stored (their batch failed): fresh again
    assert all(x in d.generations[-1].bloom for x in gen1[:10])


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        DedupConfig(fp_rate=0.7)
    with pytest.raises(ValidationError):
        DedupConfig(expected_id=5)  # a typo fails at load
    with pytest.raises(ValueError):
        Deduper(DedupConfig())


def test_settings_compose_the_section() -> None:
    from llmpulse.settings import Settings

    s = Settings(dedup={"expected_ids": 1234, "fp_rate": 0.02})
    assert s.dedup.expected_ids == 1234 and s.dedup.max_generations == 3
    with pytest.raises(ValidationError):
        Settings(dedup={"expected": 1})


def test_fresh_filters_events_in_order() -> None:
    from llmpulse.schemas.contract import Output

    T0 = 1_760_000_000_000

    def out(eid: str, ts: int) -> Output:
        return Output(event_id=eid, ts=T0 + ts, trace_id="t", workflow="w", status="ok", latency_ms=1.0)

    store = MemoryIdStore()
    store.record(["stored"])
    d = Deduper(cfg(), store.lookup)
    kept = d.fresh([out("a", 5), out("stored", 9), out("a", 7), out("b", 3)])
    assert [(e.event_id, e.ts - T0) for e in kept] == [("a", 5), ("b", 3)]
    assert d.generations[-1].newest_ts_ms == T0 + 9 and d.fresh([]) == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(0, 60), max_size=25), st.booleans()), max_size=30),
    st.booleans(), st.integers(1, 40), st.integers(1, 3),
)
def test_the_deduper_answers_exactly_as_a_set_of_stored_ids(batches, primed, capacity, generations) -> None:
    """Any batches, any of them failing after `split` (not stored, read again later), a
    filter small enough to rotate and saturate: fresh == first in its batch and not stored."""
    store = MemoryIdStore()
    d = Deduper(cfg(expected_ids=capacity, max_generations=generations), store.lookup, primed=primed)
    for numbers, stored_ok in batches:
        batch = [f"id-{n}" for n in numbers]
        expected, seen = [], set()
        for x in batch:
            expected.append(x not in seen and x not in store.ids)
            seen.add(x)
        assert d.split(batch) == expected
        if stored_ok:
            store.record(x for x, keep in zip(batch, expected) if keep)
