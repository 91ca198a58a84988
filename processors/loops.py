"""Per-trace loop detection: `tool_loop`, `cycle_loop`, `no_progress`.

Pure and I/O-free: the faust agent and `llmpulse backtest` feed the same
`LoopDetector`. Feed every event with its cost (pricing is computed upstream):

    det = LoopDetector(LoopConfig(), overrides={"triage_agent": {"tool_loop_n": 5}})
    findings = det.process(event, cost_usd)   # -> list[Finding], usually []
    findings += det.advance(event_time_ms)    # optional: expire idle traces
    findings += det.flush()                   # end of a replay

State machine
-------------
A trace is NEW on its first event, ACTIVE while events arrive, and EXPIRED
(state dropped) after `trace_ttl_ms` of event-time inactivity or when more than
`max_traces` are live (least recently active first). Each pattern in a trace is
WATCHING until its count reaches the threshold, then FIRED (once per trace and
pattern signature; the finding id is derived from that signature, so a trace
that expires and comes back re-emits the same id and ClickHouse dedupes it).

`tool_loop` has one more state. Three identical calls of A that are separated
by the same short sequence (A B A B A; or A B C A B A with a C not seen yet, up
to `cycle_missing_calls` missing in all) are a cycle still being completed:
the tool_loop is DEFERRED; it becomes SUBSUMED when the cycle_loop fires
(one clear finding, not two) or FIRED, with the completing call's event time,
when the periodic pattern breaks or the trace expires.

Calls are kept sorted by (event time, event id): counts of identical calls,
prompts and no-progress groups, and the completing event of each, do not depend
on arrival order, and a redelivered event (at-least-once) is found there and
counts once. Cycles do: one judged while more than `cycle_missing_calls` of
its calls have not arrived can come out as tool_loops. Events of one trace come
from one process and one Kafka partition, so in practice they arrive in order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import re
import sys
import time
from operator import attrgetter
from bisect import bisect_left, bisect_right
from functools import lru_cache
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import orjson

from llmpulse.schemas.contract import Output, Prompt, ToolCall
from llmpulse.schemas.findings import Finding, finding_id

# Argument keys whose values change on every call without changing its meaning.
# Compared after lower-casing and dropping everything but [a-z0-9].
VOLATILE_KEYS = frozenset(
    {
        "requestid", "reqid", "clientrequestid", "nonce", "timestamp", "ts", "time",
        "now", "sentat", "createdat", "requestedat", "uuid", "guid", "idempotencykey",
        "correlationid", "traceid", "spanid", "cachebuster", "cb", "rid",
    }
)
_VOLATILE_SUFFIXES = ("requestid", "nonce", "timestamp", "idempotencykey", "correlationid", "traceid", "spanid")

# Volatile values inside any string: uuids, ISO-8601 times, long hex/ULID ids.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?")
_LONG_ID = re.compile(r"\b(?:[0-9a-f]{24,}|[0-9A-HJKMNP-TV-Z]{26})\b", re.I)
# Each of them lies in (or starts with) a whitespace-separated token of >= 10 characters
# holding a digit: strings without one (most prose) skip the regular expressions (hot path).
# One search finds such a token: at a token's start, 10 non-spaces ahead and a digit among them.
_VOLATILE_TOKEN = re.compile(r"(?<!\S)(?=\S{10})\S*?\d").search
_DIGITS = re.compile(r"\d+")
_NON_WORD = re.compile(r"[^\w#]+")
_HAS_DIGIT = re.compile(r"\d").search
_EMPTY_TEXT = frozenset({"", "null", "none", "[]", "{}", "no results", "no results found", "not found", "empty", "nothing found"})
# Acknowledgements: every successful call of many tools returns them, so two equal ones say
# nothing about progress. Calls with such a result count as no_progress only when their
# arguments are near-identical *including numbers* (limit 3 vs limit 7 is a different call).
_TRIVIAL_TEXT = frozenset({"ok", "okay", "success", "succeeded", "done", "true", "accepted", "sent", "queued",
                           "saved", "updated", "created", "deleted", "ack", "acknowledged", "completed", "yes"})


@dataclass(frozen=True)
class LoopConfig:
    tool_loop_n: int = 3  # identical calls (same tool, same canonical args) in one trace
    cycle_repeats: int = 3  # back-to-back repetitions of a 2..4-call sequence
    cycle_min_period: int = 2
    cycle_max_period: int = 4
    no_progress_n: int = 3  # same tool, near-identical args + same result, or same empty result
    prompt_repeat_n: int = 3  # identical prompt (messages) in one trace
    trace_ttl_ms: int = 15 * 60_000  # event-time inactivity before a trace's state is dropped
    max_traces: int = 200_000  # hard cap on live traces (memory bound)
    max_calls_per_trace: int = 256  # oldest calls forgotten beyond this
    max_spend_per_trace: int = 1024  # oldest spend entries forgotten beyond this
    # Event time a tool_loop whose repeats are irregularly spaced (A B A A: maybe a cycle whose
    # middle call is still in flight) or a cycle-in-progress that seems to break waits before
    # it is judged, so out-of-order arrival does not turn a cycle into a tool_loop. Regular
    # loops (A A A) fire at once. 0 = judge immediately.
    order_hold_ms: int = 30_000
    # Calls a cycle in progress may lack and still be one (A B C A B A B C: the C in the
    # middle not arrived yet, or a first call before the cycle began): a call minutes late
    # in the middle of a cycle must not turn it into tool_loops, whatever the hold.
    cycle_missing_calls: int = 2
    volatile_keys: frozenset[str] = VOLATILE_KEYS

    def merged(self, override: Mapping[str, Any]) -> "LoopConfig":
        unknown = set(override) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown loop settings: {sorted(unknown)}")
        return dataclasses.replace(self, **override)


# --------------------------------------------------------------------- canonical forms


def _norm_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


@lru_cache(maxsize=4096)  # pure, and a few argument names make up most calls (hot path)
def _is_volatile_key(key: str, volatile: frozenset[str]) -> bool:
    k = _norm_key(key)
    return k in volatile or k.endswith(_VOLATILE_SUFFIXES)


@lru_cache(maxsize=8192)  # pure: prompts and arguments repeat across traces (system prompts)
def _clean_str(s: str) -> str:
    if _HAS_DIGIT(s) and _VOLATILE_TOKEN(s):
        s = _UUID.sub("<id>", s)
        s = _ISO_TIME.sub("<time>", s)
        s = _LONG_ID.sub("<id>", s)
    return " ".join(s.split())  # whitespace-insensitive


_SCALARS = frozenset({int, float, bool, type(None)})


def _canonical_text(value: str, volatile: frozenset[str]) -> Any:
    if value[:1] in _JSON_OPENERS or value.lstrip()[:1] in _JSON_OPENERS:
        try:
            return canonical(orjson.loads(value.strip()), volatile)
        except orjson.JSONDecodeError:
            pass
    return _clean_str(value)


_JSON_OPENERS = ("{", "[")


def canonical(value: Any, volatile: frozenset[str] = VOLATILE_KEYS) -> Any:
    """JSON-like value with volatile keys dropped and volatile substrings masked.

    A string that holds JSON is parsed first, so '{"a": 1}' and {"a":1} agree.
    """
    if isinstance(value, str):
        return _canonical_text(value, volatile)
    if isinstance(value, dict):
        # Numbers, booleans and null are their own canonical form: no call for them.
        return {str(k): v if v.__class__ in _SCALARS else canonical(v, volatile)
                for k, v in value.items() if not _is_volatile_key(str(k), volatile)}
    if isinstance(value, (list, tuple)):
        return [canonical(v, volatile) for v in value]
    return value


def near(value: Any, digits: bool = False) -> Any:
    """Looser form for near-identical args: case and punctuation ignored, and digits
    (counters, page numbers, limits) too unless `digits`."""
    if isinstance(value, str):
        return _near_text(value, digits)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value if digits else "#"
    if isinstance(value, dict):
        return {k: near(v, digits) for k, v in value.items()}
    return [near(v, digits) for v in value]


@lru_cache(maxsize=8192)  # pure: the same argument values repeat within a trace (a loop) and across traces
def _near_text(value: str, digits: bool) -> str:
    if not digits:
        value = _DIGITS.sub("#", value)
    return " ".join(_NON_WORD.sub(" ", value.lower()).split())


def is_trivial(value: Any) -> bool:
    """An acknowledgement ("ok", {"status": "ok"}, true): equal ones are not evidence of no progress."""
    if isinstance(value, bool):
        return True
    if isinstance(value, str):
        return value.strip().lower().rstrip(".!") in _TRIVIAL_TEXT
    if isinstance(value, dict) and len(value) == 1:
        return is_trivial(next(iter(value.values())))
    return False


def is_empty(value: Any) -> bool:
    """A result that carries no information (polling that returns nothing)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower().rstrip(".") in _EMPTY_TEXT
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    if isinstance(value, dict):
        return all(is_empty(v) or isinstance(v, (int, float)) and v == 0 for v in value.values())
    return False


def digest(value: Any) -> str:
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def call_key(tool: str, value: Any) -> int:
    """56-bit identity of (tool, canonical value): an int below 2**60 takes 32 bytes, half a
    hex string, and 100,000 live traces must fit in the worker."""
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(tool.encode() + b"\0" + raw, digest_size=7).digest(), "big")


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Call:
    event_id: str
    ts: int
    tool: str  # interned: few distinct names
    key: int  # tool + canonical args
    # tool + near-identical args (numbers kept when the result is trivial) + canonical
    # result; 0 for a failed call: it has no result
    progress_key: int
    empty: bool  # a successful call that returned nothing
    side_effect: str


_ORDER = attrgetter("ts", "event_id")  # calls sort by (ts, event_id): stable on replay


@dataclass(slots=True)
class _Deferred:
    calls: list[_Call]  # the N identical calls; the last completes the pattern
    block: tuple[int, ...]  # the suspected cycle, repeated call first; (): irregular, HELD until `release`
    missing: int = 0  # calls of the cycle not seen between the repeats
    release: int = 0  # event time at which a HELD decision is taken (0: not held)


@dataclass(slots=True)
class _Trace:
    trace_id: str
    tenant: str
    workflow: str
    model: str = ""
    last_ts: int = 0
    calls: list[_Call] = field(default_factory=list)
    prompts: list[tuple[int, str, int]] = field(default_factory=list)  # (ts, id, messages key), sorted
    spend: list[tuple[int, str, int, float]] = field(default_factory=list)  # (ts, id, tokens, usd)
    # Few entries and mostly none: a tuple (shared when empty) and a dict made on demand
    # take less than a set and a dict per trace (100,000 live traces must fit in the worker).
    fired: tuple[str, ...] = ()  # signatures FIRED/SUBSUMED
    deferred: dict[str, _Deferred] | None = None  # tool_loops in state DEFERRED/HELD


def _wall_ms() -> int:
    return int(time.time() * 1000)


class LoopDetector:
    """Loop patterns per trace. Not thread-safe; one instance per partition."""

    def __init__(
        self,
        config: LoopConfig | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], int] = _wall_ms,
        watermark_driven: bool = False,
    ) -> None:
        self.config = config or LoopConfig()
        # In the stream, expire and release only on `advance(watermark)`: the highest event
        # time seen belongs to the fastest partition and would expire the others' traces early.
        self.watermark_driven = watermark_driven
        self._per_workflow = {wf: self.config.merged(o) for wf, o in (overrides or {}).items()}
        self._clock = clock
        self._traces: OrderedDict[str, _Trace] = OrderedDict()  # least recently active first (the cap)
        # Expiry order: (last_ts + ttl, trace_id) at push time; an entry whose trace moved on
        # is pushed again when it comes up. Arrival order is not event-time order: a catch-up
        # reads one partition's traces, with late event times, before the others'.
        self._expiry: list[tuple[int, str]] = []
        self._now = 0  # max event time seen
        self.expired_traces = 0

    def config_for(self, workflow: str) -> LoopConfig:
        return self._per_workflow.get(workflow, self.config)

    @property
    def live_traces(self) -> int:
        return len(self._traces)

    # ----------------------------------------------------------------- feeding

    def process(self, event: Any, cost_usd: float | None = None) -> list[Finding]:
        if not event.trace_id or event.event_type == "change":
            return []
        cfg = self.config_for(event.workflow)
        out: list[Finding] = []
        tr = self._traces.get(event.trace_id)
        if tr is None:
            tr = self._traces[event.trace_id] = _Trace(event.trace_id, sys.intern(event.tenant), sys.intern(event.workflow))
            tr.last_ts = event.ts
            heapq.heappush(self._expiry, (event.ts + cfg.trace_ttl_ms, event.trace_id))
            if len(self._traces) > self.config.max_traces:
                out += self._evict()  # the cap holds even when event time stands still
        else:
            self._traces.move_to_end(event.trace_id)
        tr.last_ts = max(tr.last_ts, event.ts)
        if not tr.model and event.model:
            tr.model = sys.intern(event.model)
        self._record_spend(tr, event, cost_usd, cfg)
        if isinstance(event, ToolCall):
            out += self._on_tool_call(tr, event, cfg)
        elif isinstance(event, Prompt):
            out += self._on_prompt(tr, event, cfg)
        if tr.deferred:
            out += self._release_trace(tr)
        if event.ts > self._now:
            self._now = event.ts
            if not self.watermark_driven:
                out += self._expire(self._now)
        return out

    def advance(self, event_time_ms: int) -> list[Finding]:
        """Event time has reached `event_time_ms` (the stream's watermark): expire the traces
        silent for `trace_ttl_ms`, judging their held decisions for good."""
        self._now = max(self._now, event_time_ms)
        return self._expire(event_time_ms if self.watermark_driven else self._now)

    def flush(self) -> list[Finding]:
        """End of input: settle deferred tool_loops and drop all state."""
        out: list[Finding] = []
        while self._traces:
            _, tr = self._traces.popitem(last=False)
            out += self._settle_deferred(tr)
        self._expiry.clear()
        return out

    def stats(self) -> dict[str, int]:
        return {"traces": len(self._traces), "expired_traces": self.expired_traces}

    # ----------------------------------------------------------------- events

    def _record_spend(self, tr: _Trace, event: Any, cost_usd: float | None, cfg: LoopConfig) -> None:
        tokens = 0
        if isinstance(event, Output) and event.usage is not None:
            tokens = event.usage.input_tokens + event.usage.output_tokens
        if tokens or cost_usd:
            if not _insort_new(tr.spend, (event.ts, event.event_id, tokens, float(cost_usd or 0.0))):
                return  # a redelivery
            if len(tr.spend) > cfg.max_spend_per_trace:
                del tr.spend[0]

    def _on_prompt(self, tr: _Trace, ev: Prompt, cfg: LoopConfig) -> list[Finding]:
        msgs = [[m.role, canonical(m.content, cfg.volatile_keys)] for m in ev.messages]
        if not msgs:
            return []
        key = call_key("", msgs)
        prompts = tr.prompts
        if not _insort_new(prompts, (ev.ts, ev.event_id, key)):
            return []  # a redelivery
        if len(prompts) > cfg.max_calls_per_trace:
            del prompts[0]  # memory bound: a trace this long forgets its oldest prompt
        sig = f"prompt:{key}"
        if sig in tr.fired:
            return []
        rep = [p for p in prompts if p[2] == key][: cfg.prompt_repeat_n]
        if len(rep) < cfg.prompt_repeat_n:
            return []
        tr.fired += (sig,)
        return [self._finding(tr, "no_progress", sig, [p[1] for p in rep], rep[0][0], rep[-1][0],
                              {"pattern": "repeated_prompt", "count": len(rep)}, cfg)]

    def _on_tool_call(self, tr: _Trace, ev: ToolCall, cfg: LoopConfig) -> list[Finding]:
        tool = sys.intern(ev.tool_name)
        args = canonical(ev.arguments, cfg.volatile_keys)
        ok = ev.status == "ok"
        result = canonical(ev.result, cfg.volatile_keys) if ok else None
        trivial = ok and is_trivial(result)
        call = _Call(
            event_id=ev.event_id,
            ts=ev.ts,
            tool=tool,
            key=call_key(tool, args),
            progress_key=call_key(tool, [near(args, digits=trivial), result]) if ok else 0,
            empty=ok and is_empty(result),
            side_effect=sys.intern(ev.side_effect),
        )
        calls = tr.calls
        order = (ev.ts, ev.event_id)
        if calls and order <= _ORDER(calls[-1]):
            pos = bisect_right(calls, order, key=_ORDER)
            if pos and _ORDER(calls[pos - 1]) == order:
                return []  # a redelivery
            calls.insert(pos, call)
        else:
            pos = len(calls)
            calls.append(call)
        if len(calls) > cfg.max_calls_per_trace:
            del calls[0]
            pos -= 1
        # Counted by a scan, not kept in a dict per trace: a trace has few calls (<= 256) and
        # 100,000 live traces must fit in the worker (bench_loop_memory).
        n_same = sum(1 for c in calls if c.key == call.key)
        out = self._check_cycles(tr, pos, cfg) if n_same >= cfg.cycle_repeats else []
        if tr.deferred:
            out += self._check_deferred(tr, cfg)
        if n_same >= cfg.tool_loop_n:
            out += self._check_tool_loop(tr, call, cfg)
        if call.progress_key:
            out += self._check_no_progress(tr, call, cfg)
        return out

    # ----------------------------------------------------------------- patterns

    def _check_tool_loop(self, tr: _Trace, call: _Call, cfg: LoopConfig) -> list[Finding]:
        sig = f"tool:{call.key}"
        if sig in tr.fired or (tr.deferred and sig in tr.deferred):
            return []
        return self._judge_tool_loop(tr, sig, call.key, cfg, final=False)

    def _judge_tool_loop(self, tr: _Trace, sig: str, key: int, cfg: LoopConfig, final: bool) -> list[Finding]:
        """WATCHING -> FIRED, DEFERRED (a cycle in progress) or HELD (irregular spacing).

        `final`: the hold is over; irregular spacing now fires, a cycle in progress that
        has broken fires too."""
        calls = tr.calls
        idx = [i for i, c in enumerate(calls) if c.key == key][: cfg.tool_loop_n]
        if len(idx) < cfg.tool_loop_n:
            _undefer(tr, sig)
            return []  # forgotten (trace cap)
        rep = [calls[i] for i in idx]
        gaps = [tuple(c.key for c in calls[a + 1 : b]) for a, b in zip(idx, idx[1:])]
        cycle = _cycle_in_progress(key, gaps, cfg)
        if cycle is not None:
            _defer(tr, sig, _Deferred(rep, *cycle))  # -> DEFERRED
            return self._check_deferred(tr, cfg, only=sig, final=final)
        regular = all(g == gaps[0] for g in gaps)
        if not regular and not final and cfg.order_hold_ms > 0:
            self._hold(tr, sig, _Deferred(rep, ()), rep[-1].ts)  # -> HELD: a middle call may be late
            return []
        _undefer(tr, sig)
        tr.fired += (sig,)
        return [self._tool_loop_finding(tr, sig, rep, cfg, deferred=not regular or final)]

    def _hold(self, tr: _Trace, sig: str, d: _Deferred, since: int) -> None:
        d.release = since + self.config_for(tr.workflow).order_hold_ms
        _defer(tr, sig, d)

    # A HELD decision is judged by the trace's own clock: at its first event past the hold.
    # A trace's events keep their order in Kafka, so stream and backtest see the same calls
    # by then, however partitions interleave. A trace that goes silent is judged when it
    # expires, not when the watermark passes the hold: the watermark is not the same in a
    # stream and in a backtest, and an event later than the hold (the benchmark has some
    # 1-10 min late) would land before the decision in one and after it in the other. A
    # silent trace is not spending; a loop that keeps running keeps the trace clock moving.

    def _release_trace(self, tr: _Trace) -> list[Finding]:
        out: list[Finding] = []
        for sig, d in list(tr.deferred.items()):
            if d.release and d.release <= tr.last_ts:
                out += self._judge_held(tr, sig, d.release)
        return out

    def _judge_held(self, tr: _Trace, sig: str, release: int) -> list[Finding]:
        d = tr.deferred.get(sig) if tr.deferred else None
        if d is None or d.release != release:
            return []  # settled meanwhile
        if sig in tr.fired:
            _undefer(tr, sig)
            return []
        return self._judge_tool_loop(tr, sig, int(sig[5:]), self.config_for(tr.workflow), final=True)

    def _check_deferred(self, tr: _Trace, cfg: LoopConfig, only: str | None = None,
                        final: bool = False) -> list[Finding]:
        """DEFERRED -> HELD -> FIRED once the calls after the repeats stop following the cycle
        (HELD for `order_hold_ms`: the call that keeps the cycle going may still arrive)."""
        out: list[Finding] = []
        calls = tr.calls
        items = [(only, tr.deferred[only])] if only else list(tr.deferred.items())
        for sig, d in items:
            if sig in tr.fired:  # the cycle fired meanwhile: SUBSUMED
                _undefer(tr, sig)
                continue
            if not d.block or (d.release and not final):
                continue  # HELD: judged when released
            last = _find(calls, d.calls[-1])
            if last < 0:
                broke_at: int | None = tr.last_ts  # forgotten (trace cap): settle now
            else:
                broke_at = _breaks_cycle(calls, last, d.block, cfg.cycle_missing_calls - d.missing)
            if broke_at is None:
                d.release = 0
                continue
            if not final and cfg.order_hold_ms > 0:
                # A gap in the repeats already waited from the last repeat: no second hold.
                self._hold(tr, sig, d, d.calls[-1].ts if d.missing else broke_at)
                continue
            _undefer(tr, sig)
            tr.fired += (sig,)
            out.append(self._tool_loop_finding(tr, sig, d.calls, cfg, deferred=True))
        return out

    def _settle_deferred(self, tr: _Trace) -> list[Finding]:
        """The trace ends (expiry, end of input): judge HELD decisions for good, then fire
        the tool_loops still DEFERRED (their cycle never completed)."""
        if not tr.deferred:
            return []
        out: list[Finding] = []
        for sig, d in list(tr.deferred.items()):
            if d.release:
                out += self._judge_held(tr, sig, d.release)
        if not tr.deferred:
            return out
        cfg = self.config_for(tr.workflow)
        out += [
            self._tool_loop_finding(tr, sig, d.calls, cfg, deferred=True)
            for sig, d in tr.deferred.items()
            if sig not in tr.fired
        ]
        tr.deferred = None
        return out

    def _tool_loop_finding(self, tr: _Trace, sig: str, rep: list[_Call], cfg: LoopConfig, deferred: bool) -> Finding:
        ev = {"pattern": "identical_calls", "tool": rep[0].tool, "count": len(rep)}
        if deferred:
            ev["deferred"] = True  # looked like a cycle in progress until it broke
        return self._finding(tr, "tool_loop", sig, [c.event_id for c in rep], rep[0].ts, rep[-1].ts, ev, cfg,
                             side_effects={c.side_effect for c in rep})

    def _check_cycles(self, tr: _Trace, pos: int, cfg: LoopConfig) -> list[Finding]:
        """Every window of `repeats * p` calls that contains the new call."""
        out: list[Finding] = []
        calls = tr.calls
        n = len(calls)
        for p in range(cfg.cycle_min_period, cfg.cycle_max_period + 1):
            span = p * cfg.cycle_repeats
            for end in range(max(pos, span - 1), min(n, pos + span)):
                window = calls[end - span + 1 : end + 1]
                keys = [c.key for c in window]
                if any(keys[i] != keys[i + p] for i in range(span - p)):
                    continue
                block = keys[:p]
                if len(set(block)) < 2 or any(p % q == 0 and block == block[:q] * (p // q) for q in range(1, p)):
                    continue  # not minimal: a shorter cycle (or a tool_loop) describes it
                sig = "cycle:" + digest(min(block[i:] + block[:i] for i in range(p)))
                if sig in tr.fired:
                    continue
                # identical calls inside the cycle: SUBSUMED
                tr.fired += (sig, *(f"tool:{k}" for k in set(block)))
                ev = {"pattern": "cycle", "period": p, "repeats": cfg.cycle_repeats,
                      "tools": [c.tool for c in window[:p]], "count": span}
                out.append(self._finding(tr, "cycle_loop", sig, [c.event_id for c in window], window[0].ts,
                                         window[-1].ts, ev, cfg, side_effects={c.side_effect for c in window}))
        return out

    def _check_no_progress(self, tr: _Trace, call: _Call, cfg: LoopConfig) -> list[Finding]:
        sig = f"noprog:{call.tool}"
        if sig in tr.fired:
            return []
        # Same near-identical args and same result, or the same empty result:
        # new calls that learned nothing. Needs >=2 distinct exact keys, else it is a tool_loop.
        groups = []
        same = [c for c in tr.calls if c.progress_key == call.progress_key]
        if len(same) >= cfg.no_progress_n:
            groups.append(("near_args_same_result", same))
        if call.empty:
            empty = [c for c in tr.calls if c.tool == call.tool and c.empty]
            if len(empty) >= cfg.no_progress_n:
                groups.append(("empty_results", empty))
        for pattern, group in groups:
            if len(group) < cfg.no_progress_n or len({c.key for c in group}) < 2:
                continue
            rep = group[: cfg.no_progress_n]
            if len({c.key for c in rep}) < 2:
                rep = group  # the distinct call came later; report all
            tr.fired += (sig,)
            ev = {"pattern": pattern, "tool": call.tool, "count": len(rep)}
            return [self._finding(tr, "no_progress", sig, [c.event_id for c in rep], rep[0].ts, rep[-1].ts,
                                  ev, cfg, side_effects={c.side_effect for c in rep})]
        return []

    # ----------------------------------------------------------------- output

    def _finding(
        self,
        tr: _Trace,
        kind: str,
        sig: str,
        event_ids: list[str],
        first_ts: int,
        complete_ts: int,
        evidence: dict[str, Any],
        cfg: LoopConfig,
        side_effects: Iterable[str] = (),
    ) -> Finding:
        # Spend after the first repeated call up to the completing one: what the repeats cost.
        tokens = 0
        usd = 0.0
        for ts, _, tok, cost in tr.spend:
            if first_ts < ts <= complete_ts:
                tokens += tok
                usd += cost
        effects = set(side_effects)
        if effects & {"irreversible", "write"}:
            severity = "critical" if "irreversible" in effects else "high"
        elif usd >= 1.0:
            severity = "high"
        else:
            severity = "medium"
        count = int(evidence.get("count", len(event_ids)))
        evidence = {**evidence, "event_ids": event_ids, "wasted_tokens": tokens,
                    "first_ts": first_ts, "threshold": _threshold(kind, evidence, cfg)}
        return Finding(
            finding_id=finding_id(kind, tr.trace_id, sig),
            detected_at=self._clock(),
            event_ts=complete_ts,
            kind=kind,
            severity=severity,
            tenant=tr.tenant,
            workflow=tr.workflow,
            model=tr.model,
            trace_id=tr.trace_id,
            title=_title(kind, evidence, count),
            value=float(count),
            threshold=float(evidence["threshold"]),
            evidence=evidence,
            wasted_usd=round(usd, 6),
        )

    def _expire(self, now: int) -> list[Finding]:
        """Drop the traces silent for their workflow's trace_ttl_ms at event time `now`,
        whatever order they arrived in, settling their held decisions."""
        out: list[Finding] = []
        heap, traces = self._expiry, self._traces
        while heap and heap[0][0] < now:
            due, tid = heapq.heappop(heap)
            tr = traces.get(tid)
            if tr is None:
                continue  # evicted by the cap meanwhile
            current = tr.last_ts + self.config_for(tr.workflow).trace_ttl_ms
            if current > due:  # active since: due later
                heapq.heappush(heap, (current, tid))
                continue
            if current >= now:
                heapq.heappush(heap, (current, tid))
                break
            del traces[tid]
            self.expired_traces += 1
            out += self._settle_deferred(tr)
        return out

    def _evict(self) -> list[Finding]:
        """Past max_traces: the least recently active traces go first (their heap entries
        are skipped when they come up)."""
        out: list[Finding] = []
        while len(self._traces) > self.config.max_traces:
            _, tr = self._traces.popitem(last=False)
            self.expired_traces += 1
            out += self._settle_deferred(tr)
        return out


def _cycle_in_progress(key: int, gaps: list[tuple[int, ...]], cfg: LoopConfig) -> tuple[tuple[int, ...], int] | None:
    """(cycle block, calls missing) when the calls between the repeats of `key` are one
    2..4-call cycle, each gap that cycle's calls with at most cfg.cycle_missing_calls missing
    in all; else None."""
    longest = max(gaps, key=len)
    if not cfg.cycle_min_period <= len(longest) + 1 <= cfg.cycle_max_period:
        return None
    if any(g != longest and not _is_subsequence(g, longest) for g in gaps):
        return None
    missing = sum(len(longest) - len(g) for g in gaps)
    return ((key, *longest), missing) if missing <= cfg.cycle_missing_calls else None


def _is_subsequence(short: tuple[int, ...], long: tuple[int, ...]) -> bool:
    it = iter(long)
    return all(k in it for k in short)


def _breaks_cycle(calls: list[_Call], last: int, block: tuple[int, ...], skips: int) -> int | None:
    """Event time of the first call after calls[last] (the last repeat) that does not
    continue `block`, with up to `skips` calls of the block not seen; None: none does."""
    p, k = len(block), 1
    for c in calls[last + 1 :]:
        while c.key != block[k % p]:
            if skips <= 0:
                return c.ts
            skips, k = skips - 1, k + 1
        k += 1
    return None


def _defer(tr: _Trace, sig: str, d: _Deferred) -> None:
    if tr.deferred is None:
        tr.deferred = {}
    tr.deferred[sig] = d


def _undefer(tr: _Trace, sig: str) -> None:
    if tr.deferred:
        tr.deferred.pop(sig, None)
        if not tr.deferred:
            tr.deferred = None


def _insort_new(rows: list[tuple], row: tuple) -> bool:
    """Insert `row` into rows sorted by (ts, event_id), unless that event is there already."""
    i = bisect_left(rows, row[:2])
    if i < len(rows) and rows[i][0] == row[0] and rows[i][1] == row[1]:
        return False
    rows.insert(i, row)
    return True


def _find(calls: list[_Call], call: _Call) -> int:
    """Position of `call` in the sorted list, -1 if it was forgotten."""
    i = bisect_right(calls, _ORDER(call), key=_ORDER) - 1
    return i if i >= 0 and calls[i] is call else -1


def _threshold(kind: str, evidence: dict[str, Any], cfg: LoopConfig) -> int:
    if kind == "tool_loop":
        return cfg.tool_loop_n
    if kind == "cycle_loop":
        return cfg.cycle_repeats
    return cfg.prompt_repeat_n if evidence.get("pattern") == "repeated_prompt" else cfg.no_progress_n


def _title(kind: str, evidence: dict[str, Any], count: int) -> str:
    if kind == "tool_loop":
        return f"Tool {evidence['tool']} called {count}x with identical arguments"
    if kind == "cycle_loop":
        return f"Cycle {' -> '.join(evidence['tools'])} repeated {evidence['repeats']}x"
    if evidence.get("pattern") == "repeated_prompt":
        return f"Same prompt sent {count}x"
    return f"Tool {evidence['tool']} called {count}x without progress ({evidence['pattern']})"
