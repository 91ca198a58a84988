"""Loop detection: tool_loop, cycle_loop, no_progress; state expiry; replay."""

from __future__ import annotations

import json
import random

from llmpulse.processors.loops import LoopConfig, LoopDetector, canonical, digest
from llmpulse.schemas.contract import Message, Output, Prompt, ToolCall, Usage

T0 = 1_772_409_600_000


def clock() -> int:
    return 42


class Trace:
    """Builds the events of one agent trace, one second apart."""

    def __init__(self, trace_id: str = "tr-1", workflow: str = "agent") -> None:
        self.trace_id, self.workflow = trace_id, workflow
        self.ts = T0
        self.n = 0

    def _base(self) -> dict:
        self.n += 1
        self.ts += 1000
        return {"event_id": f"{self.trace_id}-{self.n}", "ts": self.ts, "trace_id": self.trace_id,
                "workflow": self.workflow, "tenant": "acme"}

    def tool(self, name: str, args: dict | str, result: str = "ok", **kw) -> ToolCall:
        return ToolCall(**self._base(), tool_name=name, arguments=args, result=result, **kw)

    def llm(self, tokens: int = 100) -> Output:
        return Output(**self._base(), model="m", status="ok", latency_ms=500.0,
                      usage=Usage(input_tokens=tokens, output_tokens=10))

    def prompt(self, text: str) -> Prompt:
        return Prompt(**self._base(), model="m", messages=[Message("user", text)])


def feed(det: LoopDetector, events, costs=None) -> list:
    out = []
    for i, ev in enumerate(events):
        out += det.process(ev, None if costs is None else costs[i])
    return out


def test_tool_loop_fires_exactly_once_at_third_identical_call():
    tr = Trace()
    det = LoopDetector(clock=clock)
    calls = [tr.tool("search", {"q": "weather paris"}) for _ in range(5)]
    assert feed(det, calls[:2]) == []
    third = det.process(calls[2])
    assert len(third) == 1
    f = third[0]
    assert (f.kind, f.status, f.trace_id, f.event_ts) == ("tool_loop", "open", "tr-1", calls[2].ts)
    assert f.evidence["event_ids"] == [c.event_id for c in calls[:3]]
    assert f.value == 3 and f.threshold == 3
    assert feed(det, calls[3:]) == []  # once per trace and pattern
    assert det.flush() == []


def test_volatile_fields_key_order_and_whitespace_are_ignored():
    tr = Trace()
    det = LoopDetector(clock=clock)
    variants = [
        {"query": "weather paris", "top_k": 3, "request_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
         "timestamp": "2026-03-02T10:00:00Z"},
        {"top_k": 3, "nonce": "ab12", "query": "  weather   paris ", "ts": 1772409600000},
        json.dumps({"query": "weather paris", "x_request_id": "req-77", "top_k": 3}, indent=2),
    ]
    out = feed(det, [tr.tool("search", v) for v in variants])
    assert [f.kind for f in out] == ["tool_loop"]


def test_canonical_form_masks_ids_and_times_inside_strings():
    a = canonical({"q": "order 0f8fad5b-d9cb-469f-a165-70867728950e at 2026-03-02T10:00:00Z"})
    b = canonical({"q": "order 7c9e6679-7425-40de-944b-e07fc1f90ae7 at 2026-03-03 11:30:12.5+01:00"})
    assert digest(a) == digest(b)
    assert digest(canonical({"q": "paris"})) != digest(canonical({"q": "london"}))


def test_different_arguments_are_not_a_loop():
    tr = Trace()
    det = LoopDetector(clock=clock)
    out = feed(det, [tr.tool("search", {"q": q}, result=f"r-{q}") for q in ("paris", "london", "rome", "oslo")])
    assert out == [] and det.flush() == []


def test_wasted_tokens_and_dollars_are_the_spend_inside_the_loop():
    tr = Trace()
    det = LoopDetector(clock=clock)
    events, costs = [], []
    for _ in range(3):
        events.append(tr.llm(tokens=1000))
        costs.append(0.25)
        events.append(tr.tool("fetch", {"url": "https://a.example/x"}))
        costs.append(None)
    out = feed(det, events, costs)
    assert len(out) == 1
    # Spend after the first repeated call up to the completing one: two LLM calls.
    assert out[0].wasted_usd == 0.5
    assert out[0].evidence["wasted_tokens"] == 2 * 1010


def test_redelivered_events_count_once():
    # At-least-once delivery: the same call, prompt or output delivered twice is one event.
    tr = Trace()
    det = LoopDetector(clock=clock)
    a, b = tr.tool("search", {"q": "paris"}), tr.tool("search", {"q": "paris"})
    p = tr.prompt("Return JSON for order 12")
    o = tr.llm(tokens=1000)
    assert feed(det, [a, b, a, b, p, p, p, o, o], [None] * 7 + [0.25, 0.25]) == []
    c = tr.tool("search", {"q": "paris"})
    [f] = det.process(c)
    assert f.evidence["event_ids"] == [a.event_id, b.event_id, c.event_id]
    assert f.wasted_usd == 0.25 and f.evidence["wasted_tokens"] == 1010  # the output once


def test_cycle_loop_fires_once_and_is_not_also_a_tool_loop():
    tr = Trace()
    det = LoopDetector(clock=clock)
    seq = []
    for i in range(4):
        seq.append(tr.tool("search", {"q": "paris", "request_id": f"r{i}"}))
        seq.append(tr.tool("fetch", {"url": "https://a.example/x", "timestamp": f"2026-03-02T10:0{i}:00Z"}))
    out = feed(det, seq)
    assert [f.kind for f in out] == ["cycle_loop"]
    assert out[0].event_ts == seq[5].ts  # third repetition of (search, fetch) completes it
    assert out[0].evidence["event_ids"] == [e.event_id for e in seq[:6]]
    assert det.flush() == []


def test_three_step_cycle():
    tr = Trace()
    det = LoopDetector(clock=clock)
    seq = [tr.tool(n, {"k": n}) for _ in range(3) for n in ("a", "b", "c")]
    out = feed(det, seq)
    assert [(f.kind, f.event_ts) for f in out] == [("cycle_loop", seq[8].ts)]


def test_deferred_tool_loop_fires_when_the_cycle_breaks():
    tr = Trace()
    det = LoopDetector(clock=clock)
    seq = [tr.tool("a", {"x": 1}), tr.tool("b", {"y": 1}), tr.tool("a", {"x": 1}), tr.tool("b", {"y": 1}),
           tr.tool("a", {"x": 1})]
    assert feed(det, seq) == []  # looks like a cycle in progress
    brk = tr.tool("c", {"z": 1})
    assert det.process(brk) == []  # HELD: the call that continues the cycle may still arrive
    hold, ttl = LoopConfig().order_hold_ms, LoopConfig().trace_ttl_ms
    assert det.advance(brk.ts + 2 * hold) == []  # the trace's own clock decides, not the watermark
    out = det.advance(brk.ts + ttl + 1)  # silent: judged when the trace expires
    assert [(f.kind, f.event_ts, f.evidence.get("deferred")) for f in out] == [("tool_loop", seq[4].ts, True)]


def test_held_decision_is_judged_at_the_traces_next_event_past_the_hold():
    tr = Trace()
    det = LoopDetector(clock=clock, watermark_driven=True)
    seq = [tr.tool("a", {"x": 1}), tr.tool("b", {"y": 1}), tr.tool("a", {"x": 1}), tr.tool("a", {"x": 1})]
    assert feed(det, seq) == []  # A B A A: HELD, maybe a cycle whose second B is late
    tr.ts = seq[-1].ts + LoopConfig().order_hold_ms - 1000  # the trace's next call, a hold later
    out = det.process(tr.tool("c", {"z": 1}))
    assert [(f.kind, f.event_ts) for f in out] == [("tool_loop", seq[3].ts)]


def test_deferred_tool_loop_fires_at_once_without_hold():
    tr = Trace()
    det = LoopDetector(LoopConfig(order_hold_ms=0), clock=clock)
    seq = [tr.tool("a", {"x": 1}), tr.tool("b", {"y": 1}), tr.tool("a", {"x": 1}), tr.tool("b", {"y": 1}),
           tr.tool("a", {"x": 1}), tr.tool("c", {"z": 1})]
    assert [(f.kind, f.event_ts) for f in feed(det, seq)] == [("tool_loop", seq[4].ts)]


def test_cycle_with_a_late_middle_call_is_not_a_tool_loop():
    # A B A B A B arriving as A B A A B B: the second B is late (another producer, a retry).
    tr = Trace()
    seq = [tr.tool(t, {"k": t}) for t in "ABABAB"]
    arrival = [seq[0], seq[1], seq[2], seq[4], seq[3], seq[5]]
    det = LoopDetector(clock=clock)
    out = feed(det, arrival) + det.advance(seq[-1].ts + 60_000) + det.flush()
    assert [(f.kind, f.event_ts) for f in out] == [("cycle_loop", seq[5].ts)]
    # A B A _ A with the second B in flight past the next A: also one cycle, once B and B arrive.
    det = LoopDetector(clock=clock)
    seq2 = seq + [tr.tool("A", {"k": "A"})]
    arrival = [seq2[0], seq2[1], seq2[2], seq2[4], seq2[6], seq2[3], seq2[5]]
    out = feed(det, arrival) + det.flush()
    assert [(f.kind, f.event_ts) for f in out] == [("cycle_loop", seq2[5].ts)]


def test_cycle_with_a_call_minutes_late_is_one_cycle_whatever_the_hold():
    # The benchmark's shape (seed 6): a first call before the cycle, then R C P W x4 six
    # seconds apart; the second W arrives last, ~60 s late, longer than order_hold_ms. R, C and
    # P each reach 3 identical calls before W does: they are a cycle in progress with a
    # call missing, not three tool_loops.
    tr = Trace()
    tr.ts = T0
    pre = tr.tool("P", {"k": "P"})
    seq = []
    for _ in range(4):
        for t in "RCPW":
            tr.ts += 5_000
            seq.append(tr.tool(t, {"k": t}))
    late = seq[7]  # the second W
    arrival = [pre] + [e for e in seq if e is not late] + [late]
    assert seq[-1].ts - late.ts > LoopConfig().order_hold_ms
    det = LoopDetector(clock=clock)
    out = feed(det, arrival) + det.flush()
    assert [(f.kind, f.event_ts) for f in out] == [("cycle_loop", seq[11].ts)]
    # The same calls in event-time order: the same finding.
    det = LoopDetector(clock=clock)
    assert [(f.kind, f.event_ts) for f in feed(det, [pre, *seq]) + det.flush()] == [("cycle_loop", seq[11].ts)]
    # Without the late W (it never comes), the repeats are tool_loops at their own completing calls.
    det = LoopDetector(clock=clock)
    out = feed(det, arrival[:-1]) + det.flush()
    assert sorted(f.kind for f in out) == ["tool_loop"] * 4


def test_irregular_repeats_of_a_silent_trace_fire_at_expiry_with_the_completing_time():
    tr = Trace()
    seq = [tr.tool("a", {"x": 1}), tr.tool("b", {"y": 1}), tr.tool("a", {"x": 1}), tr.tool("a", {"x": 1})]
    det = LoopDetector(clock=clock)
    assert feed(det, seq) == []
    out = det.advance(seq[-1].ts + LoopConfig().trace_ttl_ms + 1)
    assert [(f.kind, f.event_ts) for f in out] == [("tool_loop", seq[3].ts)]


def test_no_progress_polling_with_near_identical_args_and_same_result():
    tr = Trace()
    det = LoopDetector(clock=clock)
    polls = [tr.tool("check_job", {"job_id": "job-42", "poll": i}, result='{"status": "pending"}') for i in range(1, 5)]
    out = feed(det, polls)
    assert [(f.kind, f.event_ts) for f in out] == [("no_progress", polls[2].ts)]
    assert out[0].evidence["pattern"] == "near_args_same_result"


def test_no_progress_same_empty_result():
    tr = Trace()
    det = LoopDetector(clock=clock)
    calls = [tr.tool("search_kb", {"query": q}, result=r) for q, r in
             (("reset password", "[]"), ("password reset help", '{"results": [], "total": 0}'), ("login broken", "[]"))]
    out = feed(det, calls)
    assert [(f.kind, f.evidence["pattern"]) for f in out] == [("no_progress", "empty_results")]


def test_no_progress_repeated_prompt():
    tr = Trace()
    det = LoopDetector(clock=clock)
    prompts = [tr.prompt("Return JSON for order 12") for _ in range(4)]
    out = feed(det, prompts)
    assert [(f.kind, f.event_ts) for f in out] == [("no_progress", prompts[2].ts)]


def test_acknowledgements_with_different_numbers_are_progress():
    # Demo traffic: one query, a few calls of one tool with different limits, each "ok".
    tr = Trace()
    det = LoopDetector(clock=clock)
    calls = [tr.tool("search_kb", {"query": "Where is my order 48931?", "limit": n}, result="ok") for n in (1, 2, 7)]
    assert feed(det, calls) == []
    # ... but the same acknowledgement to near-identical calls (volatile fields only) is no progress.
    same = [tr.tool("post_comment", {"body": "LGTM ", "n": 3}, result="OK") for _ in range(3)]
    assert [f.kind for f in feed(det, same)] == ["tool_loop"]


def test_failed_calls_are_not_empty_results():
    tr = Trace()
    det = LoopDetector(clock=clock)
    calls = [tr.tool("read_file", {"path": p}, result="", status="error") for p in ("a.py", "b.py", "c.py")]
    assert feed(det, calls) == []


def test_polling_with_changing_results_is_progress():
    tr = Trace()
    det = LoopDetector(clock=clock)
    polls = [tr.tool("check_job", {"job_id": "job-42", "poll": i}, result=f'{{"progress": {10 * i}}}') for i in range(5)]
    assert feed(det, polls) == []


def test_per_workflow_override():
    det = LoopDetector(clock=clock, overrides={"patient": {"tool_loop_n": 5}})
    strict, patient = Trace("t-a", "agent"), Trace("t-b", "patient")
    assert len(feed(det, [strict.tool("s", {"q": 1}) for _ in range(3)])) == 1
    events = [patient.tool("s", {"q": 1}) for _ in range(5)]
    assert feed(det, events[:4]) == []
    assert [f.event_ts for f in det.process(events[4])] == [events[4].ts]


def test_trace_state_expires_and_is_capped():
    det = LoopDetector(LoopConfig(trace_ttl_ms=60_000, max_traces=50), clock=clock)
    for i in range(200):
        det.process(Trace(f"t{i}").tool("s", {"q": i}))
    assert det.live_traces <= 50
    det.advance(T0 + 10 * 60_000)
    assert det.live_traces == 0
    # A trace that comes back after expiry starts afresh; its ids stay stable.
    tr = Trace("again")
    first = feed(det, [tr.tool("s", {"q": 1}) for _ in range(3)])
    assert len(first) == 1


def test_out_of_order_arrival_gives_the_same_findings():
    tr = Trace()
    loop = [tr.tool("fetch", {"url": "u"}) for _ in range(3)]
    polls = [tr.tool("poll", {"i": i}, result="[]") for i in range(3)]
    prompts = [tr.prompt("same") for _ in range(3)]
    seq = loop + polls + prompts
    in_order = feed(LoopDetector(clock=clock), seq)
    assert len(in_order) == 3
    for seed in range(5):
        # Any arrival order of the same events: which event completes a pattern is
        # decided by event time, not by which one happened to arrive last.
        shuffled = seq[:]
        random.Random(seed).shuffle(shuffled)
        det = LoopDetector(clock=clock)
        again = feed(det, shuffled) + det.flush()
        assert sorted((f.finding_id, f.event_ts) for f in again) == sorted((f.finding_id, f.event_ts) for f in in_order)


def test_replay_is_identical():
    def run():
        tr = Trace()
        det = LoopDetector(clock=clock)
        return feed(det, [tr.tool("s", {"q": 1, "request_id": str(i)}) for i in range(4)]) + det.flush()

    assert run() == run()


def test_a_very_late_middle_call_gives_the_same_findings_whatever_the_watermark():
    # B A A B A in event time, then the missing B (first A B A B A B) arrives 90 s late:
    # a backtest's watermark has passed the hold by then, a stream's (the slowest partition)
    # may not have. The decision must not depend on which (CI: stream != backtest).
    tr = Trace()
    seq = [tr.tool(t, {"k": t}) for t in "BABABA"]
    late, on_time = seq[2], [seq[0], seq[1], seq[3], seq[4], seq[5]]
    outcomes = []
    for watermark_before_late in (None, seq[5].ts + 20_000, seq[5].ts + 65_000, seq[5].ts + 200_000):
        det = LoopDetector(clock=clock, watermark_driven=True)
        out = feed(det, on_time)
        if watermark_before_late:
            out += det.advance(watermark_before_late)
        out += det.process(late)
        out += det.advance(seq[5].ts + LoopConfig().trace_ttl_ms + 1)
        outcomes.append([(f.kind, f.event_ts) for f in out])
    assert outcomes == [[("cycle_loop", seq[5].ts)]] * 4
