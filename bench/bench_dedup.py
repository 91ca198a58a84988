"""Duplicate suppression cost: the Bloom filter per id, the store lookup per batch, the start-up load.

    .venv/bin/python bench/bench_dedup.py [--ids N ...] [--compare-events]

1. Bloom filter, ns per id on batches of 10,000 random ids (best of 7): `add_many`,
   `check_many` of unseen ids, `test_and_add_many`, and `Deduper.split` (primed, in-memory
   store, 1 % rate); beside it the per-id cost of hashing with blake2b(16) instead of hash().
2. For each N (default 1,000,000): a chDB database migrated as the worker does, N ids in
   `event_ids`, then the median / p95 ms of `stored_event_ids` for a batch of 100 ids that
   the filter may have seen (half stored, half not), and of 1,000 and 10,000 ids; then
   `load_bloom` (the worker's start-up): seconds and ids/s; `refresh_bloom` with nothing new.
   `--compare-events`: the same 100-id lookup against `events` (its bloom_filter skip
   index on event_id), with N events, which event_ids replaces.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time
import uuid

from llmpulse.processors.dedup import BloomFilter, DedupConfig, Deduper, MemoryIdStore

BATCH = 10_000


def rand_ids(n: int, rnd: random.Random) -> list[str]:
    return [f"{rnd.getrandbits(128):032x}" for _ in range(n)]


def best_ns_per_id(fn, batches: list[list[str]], repeat: int = 7) -> float:
    best = float("inf")
    for r in range(repeat):
        batch = batches[r % len(batches)]
        t0 = time.perf_counter_ns()
        fn(batch)
        best = min(best, (time.perf_counter_ns() - t0) / len(batch))
    return best


def bench_bloom() -> None:
    rnd = random.Random(1)
    print(f"Bloom filter, batches of {BATCH:,} ids, ns per id (best of 7)")
    fresh = [rand_ids(BATCH, rnd) for _ in range(8)]
    for fp in (0.01, 0.001):
        b = BloomFilter(1_000_000, fp)
        b.add_many(rand_ids(500_000, rnd))  # half full
        for batch in fresh:  # hash() is cached on the str: warm it like a batch that was validated
            for x in batch:
                hash(x)
        add = best_ns_per_id(lambda ids: BloomFilter(1_000_000, fp).add_many(ids), fresh)
        check = best_ns_per_id(b.check_many, fresh)
        tas = best_ns_per_id(lambda ids: BloomFilter(1_000_000, fp).test_and_add_many(ids), fresh)
        print(f"  fp {fp:<6} {b.bits_per_id:5.2f} bits/id k={b.k}: add {add:6.0f}  check {check:6.0f}  "
              f"test_and_add {tas:6.0f}   ({b.nbytes / 2**20:.1f} MiB per 1M ids)")
    store = MemoryIdStore()
    d = Deduper(DedupConfig(expected_ids=2_000_000), store.lookup, primed=True)
    seen = rand_ids(1_000_000, rnd)
    d.split(seen)
    store.record(seen)
    batches = [rand_ids(BATCH - 20, rnd) + seen[i * 20:(i + 1) * 20] for i in range(8)]  # 0.2 % duplicates
    split = best_ns_per_id(d.split, batches)
    print(f"  Deduper.split (1M ids seen, 0.2 % duplicates, in-memory lookup): {split:6.0f} ns/id, "
          f"{split * BATCH / 1e6:.1f} ms per batch")
    b2 = hashlib.blake2b
    blake = best_ns_per_id(lambda ids: [int.from_bytes(b2(x.encode(), digest_size=16).digest(), "little")
                                        for x in ids], fresh)
    native = best_ns_per_id(lambda ids: [hash(x) for x in [s[:16] + s[16:] for s in ids]], fresh)
    print(f"  hashing alone: blake2b(16) -> int {blake:.0f} ns/id; hash() of a new str {native:.0f} ns/id "
          "(incl. the copy)")


def timed_ms(fn, n: int = 15) -> tuple[float, float]:
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t0) * 1000)
    xs.sort()
    return statistics.median(xs), xs[int(0.95 * (len(xs) - 1))]


def bench_store(n_ids: list[int], compare_events: bool) -> None:
    from llmpulse.processors.runtime.dedup_store import deduper_for, load_bloom, refresh_bloom, stored_event_ids
    from llmpulse.schemas.store import connect, migrate

    client = connect(f"chdb://{tempfile.mkdtemp(prefix='bench-dedup-')}/data")
    rnd = random.Random(2)
    for n in n_ids:
        db = f"bench_{uuid.uuid4().hex[:8]}"
        migrate(client, db)
        t0 = time.perf_counter()
        # Ids as the SDK makes them (32 hex chars), ts spread over the last 30 days.
        client.command(
            f"INSERT INTO {db}.event_ids SELECT lower(hex(MD5(toString(number)))), "
            f"now64(3) - toIntervalMillisecond(number % 2592000000), now64(3) - INTERVAL 1 HOUR "
            f"FROM numbers({n})")
        client.command(f"OPTIMIZE TABLE {db}.event_ids FINAL")
        print(f"\nevent_ids with {n:,} ids (filled in {time.perf_counter() - t0:.1f} s)")
        stored = [hashlib.md5(str(rnd.randrange(n)).encode()).hexdigest() for _ in range(10_000)]
        for size in (100, 1_000, 10_000):
            asks = [stored[:size // 2] + rand_ids(size - size // 2, rnd) for _ in range(3)]
            it = iter(range(10**9))
            med, p95 = timed_ms(lambda: stored_event_ids(client, db, asks[next(it) % 3]),
                                15 if size < 10_000 else 5)
            print(f"  stored_event_ids, {size:>6,} ids: median {med:7.1f} ms, p95 {p95:7.1f} ms")
        deduper = deduper_for(client, db, DedupConfig(expected_ids=max(n, 1_000_000)), retention_days=90)
        report = load_bloom(client, db, deduper)
        print(f"  load_bloom: {report.ids:,} ids in {report.seconds:.2f} s = {report.ids_per_second / 1e6:.2f} M ids/s; "
              f"filter {deduper.nbytes / 2**20:.1f} MiB")
        med, p95 = timed_ms(lambda: refresh_bloom(client, db, deduper), 5)
        print(f"  refresh_bloom with nothing new (a scan of ingested_at): median {med:.1f} ms")
        if compare_events:
            client.command(
                f"INSERT INTO {db}.events (event_id, event_type, ts, tenant, workflow, trace_id) "
                f"SELECT lower(hex(MD5(toString(number)))), 'output', "
                f"now64(3) - toIntervalMillisecond(number % 2592000000), 'acme', 'wf', toString(number) "
                f"FROM numbers({n})")
            ask = stored[:50] + rand_ids(50, rnd)
            med, p95 = timed_ms(lambda: client.query(
                f"SELECT DISTINCT event_id FROM {db}.events WHERE event_id IN {{ids:Array(String)}}",
                parameters={"ids": ask}).result_rows, 7)
            print(f"  the same 100 ids against events (skip index): median {med:7.1f} ms, p95 {p95:7.1f} ms")
        client.command(f"DROP DATABASE {db}")
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", type=int, nargs="*", default=[1_000_000], help="ids in the table, one run each")
    ap.add_argument("--compare-events", action="store_true")
    ap.add_argument("--skip-bloom", action="store_true")
    args = ap.parse_args()
    if not args.skip_bloom:
        bench_bloom()
    bench_store(args.ids, args.compare_events)


if __name__ == "__main__":
    main()
