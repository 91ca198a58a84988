"""Pricing cost per event: the cached Pricer against genai-prices' calc_price.

    .venv/bin/python bench/bench_pricing.py [N]

Prices N (default 1,000,000) decoded Output events spread over a few models (plain,
cached, tiered, time-of-day, an override, an unknown one) and prints µs/event amortised,
including the first-seen resolution of each model (best and median of 5 runs). Then
times raw calc_price per call, the cost of pricing without the cache.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone

from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from llmpulse.processors.pricing import Pricer
from llmpulse.schemas.contract import Output, Usage

MODELS = [  # (provider, model)
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("google", "gemini-2.5-pro"),  # tiered
    ("deepseek", "deepseek-chat"),  # price by time of day
    ("openai", "o3"),  # price by date
    ("vllm", "llama-3.1-70b"),  # override
    ("vllm", "mystery-model"),  # unknown: None + finding once per day
]
T0 = 1_762_000_000_000


def make_events(n: int) -> list[Output]:
    events = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        events.append(Output(
            event_id=f"e{i}", ts=T0 + i * 50, trace_id=f"t{i // 10}", workflow="bench",
            provider=provider, model=model, status="ok", latency_ms=100.0,
            usage=Usage(input_tokens=1_000 + i % 5_000, cache_read_tokens=i % 700,
                        output_tokens=300 + i % 400, reasoning_tokens=i % 100),
        ))
    return events


OVERRIDES = [{"provider": "vllm", "model": "llama-3.1-*", "input_mtok": 0.2, "output_mtok": 0.6}]


def timed(events: list[Output], method: str) -> tuple[float, int]:
    # A fresh Pricer each run, so model resolution (the slow path) is in the figure.
    call = getattr(Pricer.from_config(prices=OVERRIDES), method)
    findings = 0
    t = time.perf_counter()
    if method == "price":
        for e in events:
            call(e)
    else:
        for e in events:
            findings += len(call(e)[1])
    return (time.perf_counter() - t) * 1e6 / len(events), findings


def bench_pricer(events: list[Output], repeats: int) -> None:
    # Best and median of several runs: the machine may be shared, the minimum is the signal.
    for method in ("price", "process"):
        runs = [timed(events, method) for _ in range(repeats)]
        us = sorted(r[0] for r in runs)
        print(f"Pricer.{method:<8} {len(events):>9,} events  best {us[0]:5.2f}  median {us[len(us) // 2]:5.2f}"
              f" µs/event amortised ({runs[0][1]} unpriced_model findings)")


def bench_calc_price(n: int) -> None:
    when = datetime.fromtimestamp(T0 / 1000, timezone.utc)
    usage = GPUsage(input_tokens=2_000, cache_read_tokens=500, output_tokens=400, output_reasoning_tokens=50)
    known = [m for m in MODELS if m[0] != "vllm"]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(n):
            provider, model = known[i % len(known)]
            calc_price(usage, model, provider_id=provider, genai_request_timestamp=when)
        best = min(best, time.perf_counter() - t)
    print(f"calc_price       {n:>9,} calls   best {best * 1e6 / n:6.1f} µs/call (genai-prices as is)")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    events = make_events(n)
    bench_pricer(events, repeats=5)
    bench_calc_price(max(1, min(n, 10_000)))


if __name__ == "__main__":
    main()
