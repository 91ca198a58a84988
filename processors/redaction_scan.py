r"""Finding sensitive spans fast: one multi-pattern pass picks windows, rules decide inside.

Python's `re` scans at tens of MB/s per pattern on this hardware, so thirty patterns over
every field would miss the 20 MB/s budget many times over. With Hyperscan installed
(the worker's extra), one pass over the bytes reports where each rule's gate matches;
each rule's own regex and validator then run only in a small window around those
places. Gates are supersets of their rules (see `Rule.gate`), so both paths give the
same spans; without Hyperscan (e.g. in a light app-side SDK) every rule whose literal
prefilter occurs runs over the whole text: same result, slower.

Most text holds nothing, so a cheaper pass comes first: the same gates compiled to report
only whether each fires at all (no start of match, one report per gate), in multi-line
mode so that several texts joined by newlines can be judged in one pass (`maybe`). A
gate that fires on a text fires on any text containing it with a newline either side
(Hyperscan has no lookarounds; `^`/`$` match at the newlines, which are non-word
characters for `\b`), so a clean verdict is exact and a false alarm costs only the full pass.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from functools import lru_cache
from typing import Any, Optional, Sequence

from llmpulse.processors.redaction_rules import RULES, Rule, Span, add_match, find_spans, gate_width, resolve

try:  # optional accelerator
    import hyperscan
except ImportError:  # pragma: no cover - exercised where hyperscan is absent
    hyperscan = None

LOOKAHEAD = 8  # chars a window reaches past its last possible match, for lookaheads
log = logging.getLogger("llmpulse.redaction")


def accelerated() -> bool:
    return hyperscan is not None


class Scanner:
    """Spans for a fixed set of rules; build once, call `find` per text."""

    def __init__(self, rules: Sequence[Rule] = RULES, accelerate: Optional[bool] = None) -> None:
        self.rules = tuple(rules)
        use = accelerated() if accelerate is None else accelerate
        if use and hyperscan is None:
            raise RuntimeError("hyperscan is not installed")
        self._gate = _gate_for(self.rules) if use and self.rules else None
        self._any = _any_for(self._gate.rules) if self._gate is not None and self._gate.rules else None
        self._every: Optional[_EveryGate] = None  # built on first use (the worker's batches only)
        # Rules whose gate this Hyperscan does not take run on the plain path: same spans, slower.
        self._gated = self._gate.rules if self._gate is not None else ()
        self._plain = tuple(r for r in self.rules if r not in self._gated) if self._gate is not None else ()

    @property
    def accelerated(self) -> bool:
        return self._gate is not None

    def maybe(self, text: str) -> bool:
        """False only when `find` would return no span for `text` or for any of its lines:
        one cheap pass, so clean texts joined by "\\n" are cleared together."""
        if not text or not self.rules:
            return False
        if self._gate is None or self._plain:
            return True
        return self._any is not None and self._any.fires(text.encode("utf-8", "surrogatepass"))

    def maybe_each(self, texts: Sequence[str]) -> list[bool]:
        """`maybe` for each of many texts, in one Hyperscan call: each call releases the GIL,
        and getting it back from a busy thread costs more than a scan (the worker's batches)."""
        if self._gate is None or self._plain:
            return [bool(t) and bool(self.rules) for t in texts]
        if self._every is None:
            self._every = _every_for(self._gate.rules)
        parts = [t.encode("utf-8", "surrogatepass") for t in texts]
        ends, pos = [], -1
        for b in parts:
            pos += len(b) + 1
            ends.append(pos)  # offset of the newline after this text
        hit = [False] * len(texts)
        for end in self._every.ends(b"\n".join(parts)):
            # A match ending at `end` ends in the text whose newline is the first at or after
            # it. One that crosses a newline marks the text it ends in: a false alarm only.
            i = bisect_left(ends, end)
            if i < len(hit):
                hit[i] = True
        return hit

    def find(self, text: str) -> list[Span]:
        if not text or not self.rules:
            return []
        if self._gate is None:
            return find_spans(text, self.rules)
        if self._plain:
            return resolve(self._find_gated(text) + find_spans(text, self._plain))
        return self._find_gated(text)

    def _find_gated(self, text: str) -> list[Span]:
        ascii_only = text.isascii()
        data = text.encode("ascii") if ascii_only else text.encode("utf-8", "surrogatepass")
        if self._any is None or not self._any.fires(data):
            return []
        events = self._gate.scan(data)
        if not events:
            return []
        if not ascii_only:
            events = _to_char_offsets(data, events)
        per_rule: dict[int, list[tuple[int, int]]] = {}
        widths = self._gate.widths
        for rid, start, end in events:
            w = widths[rid]
            if w:  # no start-of-match tracking for this gate: its width bounds the start
                start = end - w if end > w else 0
            per_rule.setdefault(rid, []).append((start, end))
        found: list[Span] = []
        n = len(text)
        for rid, hits in per_rule.items():
            rule = self._gated[rid]
            hits.sort()
            lo = limit = hi = -1
            for start, end in hits:
                w_lo = max(0, start - rule.back)
                w_hi = min(n, end + rule.fwd + LOOKAHEAD)
                if w_lo <= hi:  # overlapping windows of one rule are scanned once
                    limit, hi = max(limit, end), max(hi, w_hi)
                    continue
                if hi >= 0:
                    _scan_window(rule, text, lo, limit, hi, found)
                lo, limit, hi = w_lo, end, w_hi
            _scan_window(rule, text, lo, limit, hi, found)
        return resolve(found)


def _scan_window(rule: Rule, text: str, lo: int, limit: int, hi: int, found: list[Span]) -> None:
    # A match of this rule starts in [lo, limit]. The window reaches a little past
    # `limit`; a match that runs to its edge may be cut short or have judged a
    # lookahead on the artificial end, so it is redone on the whole text.
    n = len(text)
    search = rule.regex.search
    pos = lo
    while pos <= limit:
        m = search(text, pos, hi)
        if m is None or m.start() > limit:
            return
        if hi < n and m.end() > hi - LOOKAHEAD:
            full = rule.regex.match(text, m.start())
            if full is None:
                pos = m.start() + 1
                continue
            m = full
        add_match(rule, text, m, found)
        pos = m.end() if m.end() > m.start() else m.start() + 1


def _to_char_offsets(data: bytes, events: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    # Gates start and end on ASCII bytes, so every offset is a character boundary.
    offsets = sorted({o for _, s, e in events for o in (s, e)})
    chars: dict[int, int] = {}
    pos_b = pos_c = 0
    for b in offsets:
        pos_c += len(data[pos_b:b].decode("utf-8", "surrogatepass"))
        pos_b = b
        chars[b] = pos_c
    return [(rid, chars[s], chars[e]) for rid, s, e in events]


def _collect(rid: int, start: int, end: int, _flags: int, out: list) -> None:
    out.append((rid, start, end))


@lru_cache(maxsize=64)
def _gate_for(rules: tuple[Rule, ...]) -> "_Gate":
    # Compiling takes milliseconds; scopes with the same active rules share one database.
    return _Gate(rules)


@lru_cache(maxsize=64)
def _any_for(rules: tuple[Rule, ...]) -> "_AnyGate":
    return _AnyGate(rules)


@lru_cache(maxsize=64)
def _every_for(rules: tuple[Rule, ...]) -> "_EveryGate":
    return _EveryGate(rules)


def _compile(rules: Sequence[Rule]) -> tuple[Any, list[int]]:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)  # type: ignore[union-attr]
    # Start-of-match tracking costs a third of the scan: only unbounded gates need it.
    widths = [gate_width(r.gate) for r in rules]
    flags = [
        (0 if w else hyperscan.HS_FLAG_SOM_LEFTMOST) | (hyperscan.HS_FLAG_CASELESS if r.gate_ci else 0)  # type: ignore[union-attr]
        for r, w in zip(rules, widths)
    ]
    if rules:
        db.compile(expressions=[r.gate.encode() for r in rules], ids=list(range(len(rules))), elements=len(rules),
                   flags=flags)
    return db, widths


class _Gate:
    """One Hyperscan database of all gates, with a scratch space per thread."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        assert hyperscan is not None
        try:
            self._db, self.widths = _compile(rules)
            self.rules = tuple(rules)
        except hyperscan.error:
            # Find the gates this Hyperscan refuses (one at a time: only on this slow path).
            ok = []
            for r in rules:
                try:
                    _compile((r,))
                    ok.append(r)
                except hyperscan.error as exc:
                    log.warning("redaction: Hyperscan refuses the gate of %s (%s); it runs on the plain path", r.cls, exc)
            self.rules = tuple(ok)
            self._db, self.widths = _compile(self.rules)
        self._local = threading.local()

    def scan(self, data: bytes) -> list[tuple[int, int, int]]:
        if not self.rules:
            return []
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)  # type: ignore[union-attr]
        out: list[Any] = []
        self._db.scan(data, match_event_handler=_collect, context=out, scratch=scratch)
        return out


def _stop(_rid: int, _start: int, _end: int, _flags: int, _ctx: Any) -> bool:
    return True  # one report answers the question: stop the scan


class _AnyGate:
    """Whether any gate fires: no start of match, one report per gate, `^`/`$` at newlines
    (about half the cost of the full pass). Only rules the full database took."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        assert hyperscan is not None
        hs = hyperscan
        self._db = hs.Database(mode=hs.HS_MODE_BLOCK)
        flags = [hs.HS_FLAG_SINGLEMATCH | hs.HS_FLAG_MULTILINE | (hs.HS_FLAG_CASELESS if r.gate_ci else 0) for r in rules]
        self._db.compile(expressions=[r.gate.encode() for r in rules], ids=list(range(len(rules))),
                         elements=len(rules), flags=flags)
        self._local = threading.local()

    def fires(self, data: bytes) -> bool:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)  # type: ignore[union-attr]
        try:
            self._db.scan(data, match_event_handler=_stop, scratch=scratch)
        except hyperscan.ScanTerminated:  # type: ignore[union-attr]
            return True
        return False


def _collect_end(_rid: int, _start: int, end: int, _flags: int, out: list) -> None:
    out.append(end)


class _EveryGate:
    """Every end offset where any gate fires (no start of match; `^`/`$` at newlines):
    which of many newline-joined texts may hold a span."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        assert hyperscan is not None
        hs = hyperscan
        self._db = hs.Database(mode=hs.HS_MODE_BLOCK)
        flags = [hs.HS_FLAG_MULTILINE | (hs.HS_FLAG_CASELESS if r.gate_ci else 0) for r in rules]
        self._db.compile(expressions=[r.gate.encode() for r in rules], ids=list(range(len(rules))),
                         elements=len(rules), flags=flags)
        self._local = threading.local()

    def ends(self, data: bytes) -> list[int]:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)  # type: ignore[union-attr]
        out: list[int] = []
        self._db.scan(data, match_event_handler=_collect_end, context=out, scratch=scratch)
        return out
