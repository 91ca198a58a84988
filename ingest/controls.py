"""The SDK's live view of `llm.controls`: which kill switches are active, answered locally.

`ControlState` is the view itself (pure: records in, lookups out). `ControlsReader` feeds it
from Kafka on a background thread: its own consumer, assigned every partition from the first
offset (no consumer group joins, nothing is committed), so every app rebuilds the whole state
at start and follows changes within a poll. It also tells whether the view can be trusted:
each `refresh_s` it asks the broker for the end of the topic, and the view is *fresh* while
the last time it had read up to that end is less than `stale_after_s` ago. Before the first
full read, or with the broker unreachable for longer, it is *stale* and each workflow's
`fail_mode` decides (ingest/enforce.py).

Lookups never wait for the reader: the index holds tuples that the reader replaces whole, and
`generation` moves on every change so callers can cache their answers.
"""

from __future__ import annotations

import heapq
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from llmpulse.ingest.controls_defaults import DEFAULTS, ReaderConfig
from llmpulse.ingest.kafka_log import BrokerLog
from llmpulse.schemas.controls import ControlAction, ControlError, decode_action, expire, is_active

log = logging.getLogger("llmpulse.sdk.controls")

Scope = tuple[str, str, str, str, str, str, str]  # kind + SCOPE_FIELDS
_SHARED = ("kind", "reason", "source", "tenant", "workflow", "model", "tool", "route_to", "actor", "policy",
           "mode", "state", "version")


def scope_of(a: ControlAction) -> Scope:
    return (a.kind, a.tenant, a.workflow, a.model, a.tool, a.user_id, a.trace_id)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ControlState:
    """Active actions by key and by scope. Records are applied in topic order; the latest record
    of a key is its state (a lift or expiry removes it, a tombstone forgets it)."""

    def __init__(self, keep_ended: bool = False) -> None:
        self.by_key: dict[str, ControlAction] = {}  # active (or past expires_at, not yet swept)
        self.index: dict[Scope, tuple[ControlAction, ...]] = {}
        self.kinds: dict[str, int] = {}  # active actions per kind, so a check skips absent kinds
        # Per kind, which scope fields its active actions set (masks over SCOPE_FIELDS): a check
        # looks up only the shapes that exist. Replaced whole, so readers can iterate it.
        self.shapes: dict[str, tuple[tuple[bool, ...], ...]] = {}
        self._shape_counts: dict[str, dict[tuple[bool, ...], int]] = {}
        self.ended: dict[str, ControlAction] | None = {} if keep_ended else None  # the CLI's history
        self.generation = 0
        self.records = 0
        self.invalid = 0
        self.last_invalid = ""
        self._expiry: list[tuple[int, str, str]] = []  # (expires_at, key, action_id)

    # -- feeding ---------------------------------------------------------------------------
    def apply(self, key: str, value: bytes | None) -> ControlAction | None:
        """One record of the topic. Returns the decoded action (None for a tombstone or a record
        that breaks the contract, which is counted and leaves the key's state as it was)."""
        self.records += 1
        if value is None:
            self._drop(key)
            if self.ended is not None:
                self.ended.pop(key, None)
            return None
        try:
            a = decode_action(value)
        except ControlError as exc:
            self.invalid += 1
            self.last_invalid = f"key {key!r}: {exc}"
            # Bad records stay on a compacted topic and are read at every start: the 1st, 10th,
            # 100th ... is logged, not each one.
            if str(self.invalid).rstrip("0") == "1":
                log.warning("llmpulse: ignored a control record (%s); %d so far", self.last_invalid, self.invalid)
            return None
        self.put(key, a)
        return a

    def put(self, key: str, a: ControlAction) -> None:
        self._drop(key)
        if a.state == "active":
            for f in _SHARED:  # labels repeat across actions: one copy each
                setattr(a, f, sys.intern(getattr(a, f)))
            self.by_key[key] = a
            s = scope_of(a)
            self.index[s] = (*self.index.get(s, ()), a)
            self.kinds[a.kind] = self.kinds.get(a.kind, 0) + 1
            self._shape(a.kind, tuple(bool(v) for v in s[1:]), +1)
            if a.expires_at is not None:
                heapq.heappush(self._expiry, (a.expires_at, key, a.action_id))
                if len(self._expiry) > 2 * len(self.by_key) + 1024:  # entries of lifted actions
                    self._expiry = [(x.expires_at, k, x.action_id) for k, x in self.by_key.items()
                                    if x.expires_at is not None]
                    heapq.heapify(self._expiry)
            if self.ended is not None:
                self.ended.pop(key, None)
        elif self.ended is not None:
            self.ended[key] = a
        self.generation += 1

    def _drop(self, key: str) -> None:
        old = self.by_key.pop(key, None)
        if old is None:
            return
        s = scope_of(old)
        rest = tuple(x for x in self.index.get(s, ()) if x is not old)
        if rest:
            self.index[s] = rest
        else:
            self.index.pop(s, None)
        n = self.kinds[old.kind] - 1
        if n:
            self.kinds[old.kind] = n
        else:
            del self.kinds[old.kind]
        self._shape(old.kind, tuple(bool(v) for v in s[1:]), -1)
        self.generation += 1

    def _shape(self, kind: str, shape: tuple[bool, ...], delta: int) -> None:
        counts = self._shape_counts.setdefault(kind, {})
        before = len(counts)
        n = counts.get(shape, 0) + delta
        if n > 0:
            counts[shape] = n
        else:
            counts.pop(shape, None)
        if len(counts) != before:
            self.shapes[kind] = tuple(counts)

    def sweep(self, now: int) -> list[ControlAction]:
        """Forget actions whose expires_at has passed; returns them (lookups already ignore them)."""
        out = []
        while self._expiry and self._expiry[0][0] <= now:
            _, key, action_id = heapq.heappop(self._expiry)
            a = self.by_key.get(key)
            if a is not None and a.action_id == action_id and not is_active(a, now):
                self._drop(key)
                out.append(a)
                if self.ended is not None:
                    self.ended[key] = expire(a)
        return out

    # -- reading ---------------------------------------------------------------------------
    def at(self, scope: Scope) -> tuple[ControlAction, ...]:
        return self.index.get(scope, ())

    def active(self, now: int | None = None) -> list[ControlAction]:
        now = now_ms() if now is None else now
        return [a for a in list(self.by_key.values()) if is_active(a, now)]

    def __len__(self) -> int:
        return len(self.by_key)


class ControlsReader:
    """Background consumer of `llm.controls` feeding a ControlState; see the module docstring."""

    def __init__(self, bootstrap: str, topic: str = "llm.controls", config: Any = None,
                 state: ControlState | None = None, consumer_config: dict | None = None) -> None:
        self.topic = topic
        self.config = config or DEFAULTS  # a ReaderConfig or the settings' ControlsConfig
        self.state = state if state is not None else ControlState()
        self.ready = threading.Event()  # set after the first full read
        self.confirmed_at: float | None = None  # monotonic: when the view was last known complete
        self.last_error = ""
        self.on_tick: list[Callable[[], None]] = []  # run by the reader thread, ~10 times a second
        self._closed = threading.Event()
        self._assigned: list[TopicPartition] = []
        self._next: dict[int, int] = {}
        self._refreshed = 0.0
        conf = {
            "bootstrap.servers": bootstrap,
            # librdkafka requires a group id even for assign(); nothing joins it or commits to it.
            "group.id": f"llmpulse-sdk-controls-{os.getpid()}-{os.urandom(4).hex()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            # The end-of-topic query waits behind a fetch the broker holds open (default 500 ms),
            # which would age the view by that much each refresh.
            "fetch.wait.max.ms": 50,
            "queued.max.messages.kbytes": 4096,  # a small topic: no 64 MB prefetch per partition
            "log_level": 3,
            # A dead broker is one line now and then, not one per reconnect.
            "logger": BrokerLog(log, bootstrap, "kill switches keep what they last knew; fail_mode applies once stale"),
            "error_cb": self._on_error,
            **(consumer_config or {}),
        }
        self._consumer = Consumer(conf)
        self._thread = threading.Thread(target=self._run, name="llmpulse-controls", daemon=True)
        self._thread.start()

    # -- what the app asks -------------------------------------------------------------------
    def stale(self, now: float | None = None) -> bool:
        """True before the first full read and when the broker has not confirmed the view for
        longer than stale_after_s."""
        at = self.confirmed_at
        return at is None or (time.monotonic() if now is None else now) - at > self.config.stale_after_s

    def age_s(self) -> float | None:
        at = self.confirmed_at
        return None if at is None else time.monotonic() - at

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=5)
        try:
            self._consumer.close()
        except Exception:  # never raise into the app at exit
            pass

    # -- background ------------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._step()
            except Exception as exc:  # the reader must outlive any broker trouble
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("controls reader: %s", exc)
                self._closed.wait(0.2)
            for fn in self.on_tick:
                try:
                    fn()
                except Exception as exc:
                    log.debug("controls tick: %s", exc)

    def _step(self) -> None:
        if not self._assigned:
            self._assign()
            if not self._assigned:
                self._closed.wait(0.1)
                return
        # poll() returns at the first record; consume() would wait out its timeout for a batch.
        first = self._consumer.poll(0.1)
        for msg in ([first, *self._consumer.consume(1000, timeout=0)] if first is not None else ()):
            if msg.error() is not None:
                self.last_error = str(msg.error())
                continue
            key = msg.key()
            self.state.apply(key.decode("utf-8", "replace") if key else "", msg.value())
            self._next[msg.partition()] = msg.offset() + 1
        self.state.sweep(now_ms())
        now = time.monotonic()
        if now - self._refreshed >= self.config.refresh_s:
            self._refreshed = now
            if self._caught_up():
                self._confirm(now)

    def _assign(self) -> None:
        md = self._consumer.list_topics(self.topic, timeout=2.0)
        t = md.topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            # The broker answered and the topic does not exist yet: nothing is active.
            if t is not None and t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                self._confirm(time.monotonic())
            return
        self._assigned = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(t.partitions)]
        self._consumer.assign(self._assigned)

    def _caught_up(self) -> bool:
        for tp in self._assigned:
            lo, hi = self._consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=1.0,
                                                          cached=False)
            if hi > lo and self._next.get(tp.partition, lo) < hi:
                return False
        return True

    def _confirm(self, now: float) -> None:
        self.confirmed_at = now
        if not self.ready.is_set():
            self.ready.set()


def read_all(bootstrap: str, topic: str, timeout: float = 10.0, keep_ended: bool = True,
             consumer_config: dict | None = None) -> tuple[ControlState, bool]:
    """The whole current state, read once (the CLI, tests). Returns (state, complete)."""
    state = ControlState(keep_ended=keep_ended)
    reader = ControlsReader(bootstrap, topic, ReaderConfig(refresh_s=0.05), state, consumer_config)
    try:
        complete = reader.wait_ready(timeout)
    finally:
        reader.close()
    return state, complete

