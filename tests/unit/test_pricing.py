"""Pricing against hand-computed catalog rates (genai-prices 0.2.3; USD per 1M tokens).

If a genai-prices upgrade changes a rate, these fail on purpose: re-derive by hand.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot

from llmpulse.processors.pricing import PriceOverrides, Pricer
from llmpulse.schemas.contract import Output, Usage

TS = 1_762_000_000_000  # 2025-11-01T12:26:40Z
DAY = 86_400_000


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() * 1000)


def out(model: str, provider: str = "openai", ts: int = TS, response_model: str = "", eid: str = "e1", **usage) -> Output:
    return Output(
        event_id=eid, ts=ts, trace_id="t1", workflow="wf", tenant="acme", provider=provider,
        model=model, response_model=response_model, status="ok", latency_ms=10.0,
        usage=Usage(**usage) if usage else None,
    )


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


def test_openai_cached_tokens_not_double_counted(pricer):
    # gpt-4o: input 2.50, cache read 1.25, output 10. 10k input of which 4k cached.
    p = pricer.price(out("gpt-4o", input_tokens=10_000, cache_read_tokens=4_000, output_tokens=2_000))
    assert p.cost_usd == pytest.approx((6_000 * 2.5 + 4_000 * 1.25 + 2_000 * 10) / 1e6)  # 0.04
    assert p.cost_usd == pytest.approx(0.04)
    assert p.price_source == "genai-prices"
    assert p.price_version.startswith("genai-prices==")


def test_anthropic_cache_read_and_write(pricer):
    # claude-sonnet-4: input 3, cache read 0.30, cache write 3.75, output 15.
    p = pricer.price(out("claude-sonnet-4-20250514", provider="anthropic", input_tokens=20_000,
                         cache_read_tokens=12_000, cache_write_tokens=5_000, output_tokens=1_000))
    assert p.cost_usd == pytest.approx((3_000 * 3 + 12_000 * 0.3 + 5_000 * 3.75 + 1_000 * 15) / 1e6)
    assert p.cost_usd == pytest.approx(0.04635)


def test_reasoning_priced_at_output_rate_when_catalog_has_no_own_rate(pricer):
    # o3 from 2025-06-10: input 2, output 8. 3k output tokens of which 2.5k reasoning.
    p = pricer.price(out("o3", input_tokens=1_000, output_tokens=3_000, reasoning_tokens=2_500))
    assert p.cost_usd == pytest.approx((1_000 * 2 + 3_000 * 8) / 1e6)  # 0.026, reasoning once


def test_reasoning_own_rate(pricer):
    # sonar-deep-research: input 2, output 8, reasoning 3.
    p = pricer.price(out("sonar-deep-research", provider="perplexity",
                         input_tokens=1_000, output_tokens=5_000, reasoning_tokens=4_000))
    assert p.cost_usd == pytest.approx((1_000 * 2 + 1_000 * 8 + 4_000 * 3) / 1e6)  # 0.022


def test_price_change_by_event_date(pricer):
    # o3 before 2025-06-10: input 10, output 40. Event time decides, not the wall clock.
    p = pricer.price(out("o3", ts=ms("2025-03-01T00:00:00"), input_tokens=1_000, output_tokens=3_000))
    assert p.cost_usd == pytest.approx((1_000 * 10 + 3_000 * 40) / 1e6)  # 0.13


def test_tiered_price_cliff_on_total_input(pricer):
    # gemini-2.5-pro: input 1.25 / output 10, above 200k input tokens 2.50 / 15.
    small = pricer.price(out("gemini-2.5-pro", provider="google", input_tokens=100_000, output_tokens=1_000))
    large = pricer.price(out("gemini-2.5-pro", provider="google", input_tokens=300_000, output_tokens=1_000))
    assert small.cost_usd == pytest.approx((100_000 * 1.25 + 1_000 * 10) / 1e6)  # 0.135
    assert large.cost_usd == pytest.approx((300_000 * 2.5 + 1_000 * 15) / 1e6)  # 0.765


def test_off_peak_price_by_event_time_of_day(pricer):
    # deepseek-chat: 0.27 / 1.10 from 00:30 to 16:30 UTC, 0.135 / 0.55 otherwise.
    peak = pricer.price(out("deepseek-chat", provider="deepseek", ts=ms("2025-11-01T10:00:00"),
                            input_tokens=1_000_000, output_tokens=1_000_000))
    off = pricer.price(out("deepseek-chat", provider="deepseek", ts=ms("2025-11-01T20:00:00"),
                           input_tokens=1_000_000, output_tokens=1_000_000))
    assert peak.cost_usd == pytest.approx(0.27 + 1.10)
    assert off.cost_usd == pytest.approx(0.135 + 0.55)


def test_time_dependent_prices_match_calc_price_in_any_order():
    # The cached validity interval must not leak a price across an edge (16:30 UTC, a date).
    pricer = Pricer()
    stamps = [ms("2025-11-01T16:29:59.999"), ms("2025-11-01T16:30:00"), ms("2025-11-01T00:29:59"),
              ms("2025-11-02T00:30:00"), ms("2025-11-01T16:29:00"), ms("2025-06-09T23:59:59.999"),
              ms("2025-06-10T00:00:00"), ms("2025-06-09T12:00:00"), ms("2025-11-01T23:59:59.999")]
    ref_usage = GPUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    for provider, model in [("deepseek", "deepseek-chat"), ("openai", "o3")]:
        for ts in stamps:
            mine = pricer.price(out(model, provider=provider, ts=ts, input_tokens=1_000_000,
                                    output_tokens=1_000_000)).cost_usd
            ref = calc_price(ref_usage, model, provider_id=provider,
                             genai_request_timestamp=datetime.fromtimestamp(ts / 1000, timezone.utc))
            assert mine == pytest.approx(float(ref.total_price)), (model, ts)


def test_per_request_fee(pricer):
    # sonar: input 1, output 1, $12 per 1000 requests.
    p = pricer.price(out("sonar", provider="perplexity", input_tokens=1_000, output_tokens=1_000))
    assert p.cost_usd == pytest.approx(2_000 / 1e6 + 0.012)


def test_response_model_wins_over_request_model(pricer):
    # Asked for gpt-4o-mini, served gpt-4o: price what ran.
    p = pricer.price(out("gpt-4o-mini", response_model="gpt-4o-2024-08-06", input_tokens=1_000_000))
    assert p.cost_usd == pytest.approx(2.5)


def test_otel_provider_names(pricer):
    # `gcp.gen_ai` is not matched by genai-prices itself; gemini-2.5-pro input is 1.25 below 200k.
    p = pricer.price(out("gemini-2.5-pro", provider="gcp.gen_ai", input_tokens=100_000))
    assert p.cost_usd == pytest.approx(0.125)


def test_known_model_without_usage_is_unknown_cost_not_zero(pricer):
    priced, findings = pricer.process(out("gpt-4o"))
    assert priced.cost_usd is None and priced.price_source == "genai-prices"
    assert findings == []


def test_free_catalog_model_costs_zero(pricer):
    p = pricer.price(out("phi-4-reasoning:free", provider="azure", input_tokens=1_000, output_tokens=1_000))
    assert p.cost_usd == 0.0 and p.price_source == "genai-prices"


def test_unknown_model_is_null_with_one_finding_per_day():
    pricer = Pricer()
    a, fa = pricer.process(out("llama-3-70b-local", provider="vllm", eid="a", input_tokens=10))
    b, fb = pricer.process(out("llama-3-70b-local", provider="vllm", eid="b", ts=TS + 1000, input_tokens=10))
    c, fc = pricer.process(out("llama-3-70b-local", provider="vllm", eid="c", ts=TS + DAY, input_tokens=10))
    assert a.cost_usd is None and b.cost_usd is None and c.cost_usd is None
    assert a.price_source == ""
    assert len(fa) == 1 and fb == [] and len(fc) == 1
    f = fa[0]
    assert (f.kind, f.severity, f.model, f.tenant, f.event_ts, f.detected_at) == (
        "unpriced_model", "low", "llama-3-70b-local", "acme", TS, TS)
    assert f.evidence["day"] == "2025-11-01" and f.evidence["event_id"] == "a"
    assert fc[0].finding_id != f.finding_id
    # Deterministic: a fresh pricer (replay, restart) gives the same id; detected_at is the caller's.
    _, again = Pricer().process(out("llama-3-70b-local", provider="vllm", eid="z", input_tokens=1), detected_at=5)
    assert again[0].finding_id == f.finding_id and again[0].detected_at == 5


def test_unknown_provider_is_not_guessed_from_model_name():
    # A self-hosted "gpt-4o" behind vllm is not OpenAI's price.
    assert Pricer().price(out("gpt-4o", provider="vllm", input_tokens=10)).cost_usd is None


def test_overrides_win_and_carry_their_version(tmp_path):
    file = tmp_path / "prices.yaml"
    file.write_text("prices:\n  - {provider: vllm, model: 'llama-3.1-*', input_mtok: 0.2, output_mtok: 0.6}\n")
    pricer = Pricer.from_config(
        prices=[{"provider": "openai", "model": "gpt-4o", "input_mtok": 2.0, "output_mtok": 8.0,
                 "cache_read_mtok": 1.0}],
        overrides_file=file,
    )
    p = pricer.price(out("gpt-4o", input_tokens=10_000, cache_read_tokens=4_000, output_tokens=2_000,
                         reasoning_tokens=500))
    assert p.cost_usd == pytest.approx((6_000 * 2 + 4_000 * 1 + 2_000 * 8) / 1e6)  # 0.032
    assert p.price_source == "override" and p.price_version.startswith("override:")
    q = pricer.price(out("Llama-3.1-70B-Instruct", provider="vllm", input_tokens=1_000_000,
                         cache_read_tokens=500_000, output_tokens=1_000_000))
    assert q.cost_usd == pytest.approx(0.2 + 0.6)  # cache rate defaults to the input rate
    assert q.price_version != p.price_version
    # Other models still come from the catalog.
    assert pricer.price(out("gpt-4o-mini", input_tokens=1_000_000)).price_source == "genai-prices"


def test_override_needs_rates():
    with pytest.raises(ValueError):
        PriceOverrides.from_config([{"model": "x", "input_mtok": 1.0}])


def test_non_output_events_are_not_priced(pricer):
    from llmpulse.schemas.contract import Prompt

    priced, findings = pricer.process(Prompt(event_id="p", ts=TS, trace_id="t", workflow="wf"))
    assert priced.cost_usd is None and findings == []


def test_matches_calc_price_across_the_catalog():
    """The cached float path equals genai-prices' own Decimal path on every token-priced model."""
    pricer = Pricer()
    usage = Usage(input_tokens=250_000, cache_read_tokens=100_000, cache_write_tokens=20_000,
                  output_tokens=6_000, reasoning_tokens=1_000)
    ref_usage = GPUsage(input_tokens=250_000, cache_read_tokens=100_000, cache_write_tokens=20_000,
                        output_tokens=6_000, output_reasoning_tokens=1_000)
    when = datetime.fromtimestamp(TS / 1000, timezone.utc)
    checked = 0
    for provider in get_snapshot().providers:
        for model in provider.models:
            mine = pricer.price_usage(provider.id, model.id, usage, TS)
            if mine.cost_usd is None:
                continue
            ref = float(calc_price(ref_usage, model.id, provider_id=provider.id,
                                   genai_request_timestamp=when).total_price)
            assert mine.cost_usd == pytest.approx(ref, rel=1e-9, abs=1e-12), (provider.id, model.id)
            checked += 1
    assert checked > 1_500
