"""The processing pipeline over a batch of raw messages; no I/O, same code in stream and backtest.

raw bytes -> validate -> redact -> price -> row for ClickHouse
                                         -> detectors (budgets, contracts, loops, anomalies) -> findings
Invalid messages become dead letters with their reason. All state lives in the
stage objects, explicitly; the pipeline only orders them.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

import orjson

from llmpulse.processors.dedup import Deduper, MemoryIdStore
from llmpulse.processors.detector import Detector
from llmpulse.processors.validate import DEFAULT_LIMITS, MAX_REASON, Invalid, Limits, Result, validate
from llmpulse.schemas.contract import BaseEvent, Output
from llmpulse.schemas.controls import ControlAction
from llmpulse.schemas.findings import Finding
from llmpulse.schemas.rows import event_row

if TYPE_CHECKING:
    from llmpulse.processors.governance import ContentPolicy
    from llmpulse.processors.policies import Policies
    from llmpulse.processors.pricing import Pricer
    from llmpulse.processors.redaction_config import RedactionSettings
    from llmpulse.settings import Settings


# Every stage after validation, in the order they run; settings.stages turns them on or off.
STAGES = ("redact", "price", "budgets", "contracts", "governance", "loops", "anomalies")


class RawMessage(NamedTuple):
    value: bytes
    topic: str
    partition: int
    offset: int
    redacted: bytes | None = None  # header `llmpulse-redacted`: the marker of the SDK's redaction


class EventTime(NamedTuple):
    """What a windowed detector gets of an event kind it does not read."""

    ts: int
    event_type: str


class DeadLetter(NamedTuple):
    message: RawMessage
    reason: str


def fresh_mask(deduper: Deduper, results: Sequence[Result]) -> list[bool]:
    """Per message: False for a valid event whose event_id is a duplicate (stored before, or
    earlier in this batch); True otherwise. Raises what the deduper's lookup raises, before
    any state but the filter (harmless) has changed."""
    idx = [i for i, r in enumerate(results) if not isinstance(r, Invalid)]
    if not idx:
        return [True] * len(results)
    events = [results[i].event for i in idx]  # type: ignore[union-attr]
    keep = deduper.split([e.event_id for e in events], max(e.ts for e in events))
    mask = [True] * len(results)
    for i, k in zip(idx, keep):
        mask[i] = k
    return mask


def detector_cost(event: BaseEvent, price_usd: float | None) -> float | None:
    """What detectors count as a call's cost: our price, else the cost the app reported
    (an unknown model, or the price stage off), so spend is never silently zero."""
    if price_usd is not None:
        return price_usd
    return getattr(event, "cost_usd", None)


@dataclass
class BatchResult:
    rows: list[list] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # detectors that failed on an event (logged, counted)
    duplicates: int = 0  # valid events whose event_id was stored before (or earlier in the batch)
    # Control actions the policies took on this batch's findings (new, lifted) and the
    # expiries its watermark passed (processors/policies.py): side outputs like the findings.
    actions: list[ControlAction] = field(default_factory=list)
    # (source partition, prepared event, detector cost) per row, when `keep_prepared`: the
    # trace stage of a scaled-out worker forwards them to the scope stage (schemas/scope.py).
    prepared: list[tuple[int, BaseEvent, float | None]] = field(default_factory=list)


@dataclass
class Pipeline:
    redaction: RedactionSettings | None = None
    # Content capture per workflow (processors/governance.py): metadata-only and unsampled traces
    # lose their text before anything (row, detector, finding) sees it.
    content: ContentPolicy | None = None
    pricer: Pricer | None = None
    detectors: Sequence[Detector] = ()
    # Event-time watermark: the slowest partition's highest event time, so a partition
    # fetched ahead of the others does not close windows the others still feed. A
    # partition silent for `idle_partition_ms` (wall clock) stops holding it back.
    watermark_ms: int = 0
    idle_partition_ms: int = 15_000
    _partition_max: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # -> [max ts, wall ms]

    _event_ts: int = 0  # event time of the event being processed (replay clock)

    # Detectors with event-time windows (the AnomalyDetector) get events sorted by
    # (ts, event_id) and only once the watermark has passed them. Such a detector closes a
    # window when its own highest event time passes the window's end plus the allowed
    # lateness, and drops later events of that window. Fed in arrival order across
    # partitions, a partition read ahead of the others (a replay, a catch-up: librdkafka
    # hands over one partition's fetch, then the next one's) would close windows the
    # others still feed and drop their events as late; held back here, its windows do not
    # depend on how partitions interleave. Window findings come out only when a window
    # closes, so the hold adds no latency to them.
    windowed: Sequence[Detector] = ()
    # The event kinds they read (None: all). The others are held as their event time only
    # (tool calls, the bulk of agent traffic, with their arguments and results): it still
    # moves the detectors' clocks, and a catch-up does not hold whole events.
    windowed_kinds: frozenset[str] | None = None
    _held: list = field(default_factory=list)  # heap of (ts, event_id, seq, event, cost)
    _seq: int = 0
    limits: Limits = DEFAULT_LIMITS  # validation's bounds; from_settings sets max_age to the retention
    # Duplicates by event_id (processors/dedup.py). The worker keeps its own, looking ids up
    # in ClickHouse; a backtest has one here over the ids of its file (`id_store`).
    deduper: Deduper | None = None
    id_store: MemoryIdStore | None = None
    policies: Policies | None = None  # findings -> control actions; None: no `policies:` configured
    keep_prepared: bool = False  # BatchResult.prepared (processors/runtime/scaled.py)

    @classmethod
    def from_settings(cls, s: Settings, replay: bool = False) -> "Pipeline":
        """The stages named in `s.stages`, in the pipeline's fixed order.

        `replay=True` (backtest) stamps findings' `detected_at` with the triggering
        event's time instead of the wall clock, so the same file gives the same bytes.
        """
        from llmpulse.processors.anomalies import AnomalyDetector
        from llmpulse.processors.budgets import BudgetTracker
        from llmpulse.processors.contracts import ContractChecker
        from llmpulse.processors.loops import LoopDetector
        from llmpulse.processors.pricing import Pricer

        on = set(s.stages)
        unknown = on - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {list(STAGES)}")
        limits = s.limits if s.limits.max_age_days is not None else s.limits.model_copy(
            update={"max_age_days": s.retention_days})  # older rows the TTL would drop at once
        pipeline = cls(limits=limits)
        clock = {"clock": lambda: pipeline._event_ts} if replay else {}
        detectors: list[Detector] = []
        if "budgets" in on:
            detectors.append(BudgetTracker.from_config(s.budgets))
        if "contracts" in on:
            detectors.append(ContractChecker.from_config(s.contracts))
        from llmpulse.processors.governance import ContentPolicy, GovernanceChecker

        if "governance" in on and s.governance.active:
            detectors.append(GovernanceChecker(s.governance))
        content = ContentPolicy(s.governance)  # a storage rule: applies whichever stages run
        pipeline.content = content if content.active else None
        if "loops" in on:
            # Expiry follows the watermark; held decisions follow the trace's own event time
            # (its events keep their order in Kafka, key = trace_id), so the outcome depends on
            # the trace alone, not on how partitions interleave (processors/loops.py).
            detectors.append(LoopDetector(None, s.loops, watermark_driven=True, **clock))
        if "anomalies" in on:
            # The eval gate's thresholds are the stream's too (processors/gate.py stream_overrides).
            from llmpulse.processors.anomalies import AnomalyConfig
            from llmpulse.processors.gate import stream_defaults, stream_overrides

            base = AnomalyConfig().merged(stream_defaults(s.eval_gate))  # the gate's "*" rule
            detectors.append(AnomalyDetector(base, stream_overrides(s.eval_gate, s.anomalies), **clock))
            pipeline.windowed = (detectors[-1],)
            pipeline.windowed_kinds = AnomalyDetector.EVENT_TYPES
        pipeline.redaction = s.redaction if "redact" in on and s.redaction.enabled else None
        pipeline.pricer = Pricer.from_config(prices=s.prices, overrides_file=s.price_overrides_file) if "price" in on else None
        pipeline.detectors = detectors
        if s.policies.enabled:
            from llmpulse.processors.policies import Policies

            pipeline.policies = Policies.from_config(s.policies, s.contracts)
        if replay and s.dedup.enabled:
            pipeline.id_store = MemoryIdStore()
            pipeline.deduper = Deduper(s.dedup, pipeline.id_store.lookup, primed=True,
                                       clock=lambda: pipeline._event_ts)
        return pipeline

    def validate_batch(self, messages: Sequence[RawMessage]) -> list[Result]:
        """Validation of a batch against the limits, event time bounded by the wall clock
        (live and in replay alike)."""
        now_ms = time.time_ns() // 1_000_000
        return [validate(m.value, self.limits, now_ms) for m in messages]

    def run(self, messages: Sequence[RawMessage], backlogged: Iterable[tuple[str, int]] = (),
            validated: Sequence[Result] | None = None, fresh: Sequence[bool] | None = None) -> BatchResult:
        """Process one batch. Never raises for one message's sake: input that validation
        lets through but a stage cannot handle becomes a dead letter naming the stage, and
        a detector failing on an event is counted in `errors` (the event is still stored).

        `backlogged`: source partitions known to hold messages not yet read; they are never
        idle, however long their fetch takes (a catch-up is read a partition at a time).
        `validated`, `fresh`: the batch's validation and which of its events are not
        duplicates (`fresh_mask`), when the caller did those steps itself (the worker, whose
        duplicate lookup is I/O); else done here, with the pipeline's own `deduper`."""
        out = BatchResult()
        findings = out.findings
        direct = self._direct()
        results = validated if validated is not None else self.validate_batch(messages)
        if fresh is None and self.deduper is not None:
            fresh = fresh_mask(self.deduper, results)
            if self.id_store is not None:
                self.id_store.record(r.event.event_id for r, k in zip(results, fresh)
                                     if k and not isinstance(r, Invalid))
        clean = self._preclear(results, fresh, messages)
        for i, msg in enumerate(messages):
            result = results[i]
            if isinstance(result, Invalid):
                out.dead_letters.append(self.dead_letter(msg, result.reason))
                continue
            if fresh is not None and not fresh[i]:
                out.duplicates += 1  # this event_id is stored already: nothing counts it again
                continue
            try:
                event, extra, row, cost = self._prepare(result.event, result.extra, msg, findings, clean[i])
            except Exception as exc:  # a bug or a limit validation missed: this message only
                out.dead_letters.append(self.dead_letter(msg, f"not storable: {type(exc).__name__}: {exc}"))
                continue
            out.rows.append(row)
            if self.keep_prepared:
                out.prepared.append((msg.partition, event, cost))
            self._feed(direct, event, cost, event.ts, event.event_id, out)
            seen = self._partition_max.get((msg.topic, msg.partition))
            if seen is None:
                self._partition_max[(msg.topic, msg.partition)] = [event.ts, 0]
            elif event.ts > seen[0]:
                seen[0] = event.ts
        advanced = bool(messages) and self._advance_watermark(time.time_ns() // 1_000_000, messages, backlogged)
        if advanced:
            self._advance_detectors(out)
        if self.policies is not None:
            if advanced:
                out.actions.extend(self.policies.advance(self.watermark_ms))
            out.actions.extend(self.policies.evaluate(findings))
        return out

    def detect(self, items: Sequence[tuple[tuple[str, int], int, Any, float | None]],
               backlogged: Iterable[tuple[str, int]] = (), forwarded: Sequence[Finding] = ()) -> BatchResult:
        """The detectors' half of `run`, for events prepared elsewhere: the scope stage of a
        scaled-out worker (processors/runtime/scaled.py) gets them from the repartition topic.

        `items`: (source partition, event time, event or None, cost). The watermark is kept
        per *source* partition as in `run`, so events of one scope that reached this stage
        through different routes are ordered by event time, not by arrival; an item without
        an event only says its source partition has got that far. `forwarded`: findings the
        trace stage raised (loops, contracts) for the policies, which act on every finding of
        a scope; they are published and stored by that stage, not here."""
        out = BatchResult()
        findings = out.findings
        direct = self._direct()
        now_ms = time.time_ns() // 1_000_000
        backlogged = list(backlogged)
        progressed = False
        for key, ts, event, cost in items:
            seen = self._partition_max.get(key)
            if seen is None:
                seen = self._partition_max[key] = [0, now_ms]
            seen[1] = now_ms
            if event is None:
                # A trace-stage batch ended: its sources' progress moves the watermark, as a
                # single worker's moves between batches (an event's own time does not: in a
                # single worker it counts only once its whole batch is in). So a late event is
                # judged, kept or dropped as late, against the same watermark however the
                # scope records were fetched and interleaved.
                if ts > seen[0]:
                    seen[0] = ts
                progressed = True
                continue
            if progressed:
                self._advance_scope(now_ms, backlogged, out)
                progressed = False
            self._feed(direct, event, cost, ts, ts, out)
        if items:
            self._advance_scope(now_ms, backlogged, out)
        if self.policies is not None:
            out.actions.extend(self.policies.evaluate([*forwarded, *findings]))
        return out

    def _advance_scope(self, now_ms: int, backlogged: list[tuple[str, int]], out: BatchResult) -> None:
        if self._advance_watermark(now_ms, (), backlogged):
            self._advance_detectors(out)
            if self.policies is not None:
                out.actions.extend(self.policies.advance(self.watermark_ms))

    def _preclear(self, results: Sequence[Result], fresh: Sequence[bool] | None,
                  messages: Sequence[RawMessage] = ()) -> list[bool]:
        """Per message: its event has nothing to redact, judged for the whole batch in one
        scan (processors/redaction.py `preclear`), or redacted upstream by the same rules and
        policy for a trusted tenant (`RedactionSettings.trusts`); all False without redaction."""
        if self.redaction is None:
            return [False] * len(results)
        idx = [i for i, r in enumerate(results) if not isinstance(r, Invalid) and (fresh is None or fresh[i])]
        clean = [False] * len(results)
        if self.redaction.trust_upstream and messages:
            trusts, rest = self.redaction.trusts, []
            for i in idx:
                event = results[i].event  # type: ignore[union-attr]
                if messages[i].redacted is not None and trusts(event.tenant, event.workflow, messages[i].redacted):
                    clean[i] = True  # its annotation still gives the findings (Redactor.redact_event)
                else:
                    rest.append(i)
            idx = rest
        try:
            verdicts = self.redaction.preclear([results[i].event for i in idx])  # type: ignore[union-attr]
        except Exception:  # e.g. an event no stage expected: each is redacted on its own
            return clean
        for i, ok in zip(idx, verdicts):
            clean[i] = ok
        return clean

    def _prepare(self, event: BaseEvent, extra: dict, msg: RawMessage, findings: list[Finding],
                 precleared: bool = False) -> tuple:
        """Redact, price and map one valid event to its row: (event, extra, row, detector cost)."""
        if self.content is not None:
            applied, extra = self.content.apply(event, extra)
            precleared = precleared and applied is event  # judged on the event as it came
            event = applied
        if self.redaction is not None:
            redactor = self.redaction.redactor_for(event.tenant, event.workflow)
            event, detections = redactor.redact_event(event, precleared)
            if detections:
                from llmpulse.processors.redaction import detection_findings

                findings.extend(detection_findings(event, detections))
            if extra:
                extra = redactor.redact_text(orjson.dumps(extra).decode())[0]
        price = None
        if self.pricer is not None and isinstance(event, Output):
            priced, unpriced = self.pricer.process(event)
            findings.extend(unpriced)
            price = (priced.cost_usd, priced.price_source, priced.price_version)
        cost = detector_cost(event, price[0] if price else None)
        keep = self.content.retention_days(event.workflow) if self.content is not None else 0
        return event, extra, event_row(event, extra, msg.topic, msg.partition, msg.offset, price, keep), cost

    def dead_letter(self, msg: RawMessage, reason: str) -> DeadLetter:
        """A dead letter whose bytes and reason are scrubbed by the redaction policy."""
        return DeadLetter(self._scrub(msg), self._scrub_reason(reason[:MAX_REASON]))

    def _advance_watermark(self, now_ms: int, messages: Sequence[RawMessage],
                           backlogged: Iterable[tuple[str, int]] = ()) -> bool:
        for m in messages:
            seen = self._partition_max.get((m.topic, m.partition))
            if seen is not None:
                seen[1] = now_ms
        for key in backlogged:
            seen = self._partition_max.get(key)
            if seen is not None:
                seen[1] = now_ms
        for seen in self._partition_max.values():
            if seen[1] < 0:  # known from warm-up: holds back from the first batch after the restart
                seen[1] = now_ms
        live = [ts for ts, wall in self._partition_max.values() if now_ms - wall <= self.idle_partition_ms]
        if live and min(live) > self.watermark_ms:
            self.watermark_ms = min(live)
            return True
        return False

    def warm(self, events: Iterable[tuple[BaseEvent, float | None]],
             partitions: dict[tuple[str, int], int] | None = None) -> int:
        """Rebuild detector state from stored events (already processed: findings discarded).

        A restarted worker calls this with the recent past read back from ClickHouse, so
        an open loop, a budget's spend or an anomaly baseline survives the restart and no
        finding is raised twice. Returns the events replayed.

        `partitions`: each source partition's highest stored event time (0: nothing stored).
        The watermark resumes at the slowest one's, not at the highest stored event time: a
        partition that was ahead when the worker stopped must not close windows the others
        still feed (their rest is read again after the restart). A partition with nothing
        stored holds everything back, as it did before the restart; the windowed detectors
        then get the stored events once the first batches move the watermark.
        """
        n = 0
        direct = self._direct()
        for event, cost in events:
            if self.pricer is not None and isinstance(event, Output):
                self.pricer.process(event)  # remembers which unpriced models it already reported
            for detector in direct:
                detector.process(event, cost)
            if self.windowed:
                self._hold(event, cost)
            if event.ts > self.watermark_ms:
                self.watermark_ms = event.ts
            n += 1
        if partitions:
            self.watermark_ms = min(partitions.values())
            for key, ts in partitions.items():  # live from the first batch on (see _advance_watermark)
                self._partition_max[key] = [ts, -1]
        if self.watermark_ms:
            self._release(self.watermark_ms)
        if self.watermark_ms:
            for detector in self.detectors:
                detector.advance(self.watermark_ms)
        return n

    def expect_partitions(self, keys: Iterable[tuple[str, int]]) -> None:
        """Newly assigned partitions hold the watermark back until they deliver or go idle,
        so a backlog read one partition first does not close windows early (cold start)."""
        for key in keys:
            self._partition_max.setdefault(key, [0, -1])

    def flush(self) -> list[Finding]:
        """End of input (a backtest's file): release what is held, then close every detector."""
        findings = self._release(None)
        for detector in self.detectors:
            findings.extend(detector.flush())
        return findings

    def _feed(self, direct: list[Detector], event: BaseEvent, cost: float | None, ts: int, label: Any,
              out: BatchResult) -> None:
        """One event to the detectors that take it at once, and held for the windowed ones."""
        self._event_ts = ts
        for detector in direct:
            try:
                out.findings.extend(detector.process(event, cost))
            except Exception as exc:
                out.errors.append(f"{type(detector).__name__} on {label}: {type(exc).__name__}: {exc}")
        if self.windowed:
            self._hold(event, cost)

    def _advance_detectors(self, out: BatchResult) -> None:
        """The watermark moved: release held events, then every detector's timers."""
        out.findings.extend(self._release(self.watermark_ms))
        for detector in self.detectors:
            try:  # a detector's timers failing must not stop the batch (or the others)
                out.findings.extend(detector.advance(self.watermark_ms))
            except Exception as exc:
                out.errors.append(f"{type(detector).__name__} advancing to {self.watermark_ms}: "
                                  f"{type(exc).__name__}: {exc}")

    def _direct(self) -> list[Detector]:
        return [d for d in self.detectors if not any(d is w for w in self.windowed)]

    def _hold(self, event: BaseEvent, cost: float | None) -> None:
        self._seq += 1
        held: Any = event
        if self.windowed_kinds is not None and event.event_type not in self.windowed_kinds:
            held = EventTime(event.ts, event.event_type)
        heapq.heappush(self._held, (event.ts, event.event_id, self._seq, held, cost))

    def _release(self, upto: int | None) -> list[Finding]:
        """Feed the windowed detectors the held events up to `upto` (all: None), in event time."""
        out: list[Finding] = []
        held = self._held
        while held and (upto is None or held[0][0] <= upto):
            _, _, _, event, cost = heapq.heappop(held)
            for detector in self.windowed:
                out.extend(detector.process(event, cost))
        return out

    def _scrub(self, msg: RawMessage) -> RawMessage:
        """Dead letters keep their bytes, minus any secret or PII the policy keeps out (and the
        text of a workflow whose content is not captured)."""
        if self.content is not None:
            msg = msg._replace(value=self.content.dead_letter(msg.value))
        if self.redaction is None:
            return msg
        text = msg.value.decode("utf-8", "replace")
        redacted, found = self.redaction.strictest_redactor().redact_text(text)
        return msg._replace(value=redacted.encode()) if found else msg

    def _scrub_reason(self, reason: str) -> str:
        """The validator's reason may quote the bad value ("Invalid enum value '...'"): scrub it too."""
        if self.redaction is None:
            return reason
        return self.redaction.strictest_redactor().redact_text(reason)[0]
