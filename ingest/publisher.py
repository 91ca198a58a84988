"""App-side SDK: publish contract events to Kafka without ever hurting the host app.

`publish()` encodes and hands the bytes to librdkafka's local queue and returns;
it never blocks and never raises. A full queue (broker down for longer than the
buffer lasts) or an event that cannot be encoded is counted, not thrown. A
background thread serves delivery reports; `close()` (also run at exit) flushes.

Secrets never leave the app by default: every publisher redacts events (and
`publish_raw` bytes) with `redaction_hook()` after the app's own hooks. Pass
`redaction=False` to turn it off (e.g. a replay of already-redacted files), or
`redaction=redaction_hook(policy, ...)` for another policy.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

import msgspec
import orjson
from confluent_kafka import KafkaError, Producer

from llmpulse.ingest.kafka_log import BrokerLog
from llmpulse.ingest.redaction_hook import RedactionHook, redaction_hook
from llmpulse.schemas.contract import SCHEMA_VERSION, BaseEvent

log = logging.getLogger("llmpulse.sdk")

Hook = Callable[[dict], "dict | None"]  # returns the (possibly changed) event, or None to drop it


def _with_redaction(hooks: Iterable[Hook], redaction: "bool | RedactionHook") -> tuple[list[Hook], "RedactionHook | None"]:
    """The hooks to run, redaction last, and the redaction hook (for `publish_raw`).

    A RedactionHook already among `hooks` counts as the redaction (no second pass)."""
    hooks = list(hooks)
    given = [h for h in hooks if isinstance(h, RedactionHook)]
    if given:
        return hooks, given[-1]
    if redaction is True:
        redaction = redaction_hook()
    elif redaction is False or redaction is None:
        return hooks, None
    elif not isinstance(redaction, RedactionHook):
        raise TypeError("redaction must be True, False or a redaction_hook(...)")
    return [*hooks, redaction], redaction


DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,  # implies acks=all and safe retries without duplicates
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    # How long an event may wait for the broker before it counts as undelivered.
    "message.timeout.ms": 300_000,
    "message.max.bytes": 1_000_000,
    "log_level": 3,  # librdkafka errors only; metadata chatter is not the app's business
    "delivery.report.only.error": True,
}


@dataclass
class PublisherStats:
    published: int = 0  # accepted into the local queue
    delivered: int = 0  # acknowledged by the broker
    failed: int = 0  # delivery reports with an error (e.g. timed out during an outage)
    queue_full: int = 0  # rejected because the local buffer was full
    invalid: int = 0  # could not be encoded or rejected by a hook
    last_error: str = ""
    errors_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def undelivered(self) -> int:
        return self.failed + self.queue_full + self.invalid


class EventSink(Protocol):
    """What instrumented code depends on: Kafka in production, memory in tests."""

    def publish(self, event: Mapping[str, Any] | BaseEvent) -> bool: ...
    def flush(self, timeout: float = 10.0) -> int: ...
    def close(self, timeout: float = 10.0) -> None: ...


_id_rng = random.Random(int.from_bytes(os.urandom(16), "big"))
os.register_at_fork(after_in_child=lambda: _id_rng.seed(os.urandom(16)))  # forked apps must not share ids


_live: "weakref.WeakSet[KafkaPublisher]" = weakref.WeakSet()


def close_all(timeout: float = 10.0) -> None:
    """Flush and close every publisher still open (also runs at interpreter exit)."""
    for pub in list(_live):
        pub.close(timeout)


atexit.register(close_all)


def new_event_id() -> str:
    """128 random bits as hex, seeded once from the OS: uuid4's entropy without a syscall per event."""
    return f"{_id_rng.getrandbits(128):032x}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stamp(event: Mapping[str, Any]) -> dict:
    """A copy of the event, with the idempotency key and event time filled in where the app
    left them out. They are written into the app's own dict too: publishing the same dict
    again re-sends the same event (same event_id and ts), which the worker drops as a
    duplicate, instead of a second event at a later time."""
    if "event_id" not in event or "ts" not in event:
        ident = {"event_id": event["event_id"] if "event_id" in event else new_event_id(),
                 "ts": event["ts"] if "ts" in event else now_ms()}
        if isinstance(event, dict):
            event.update(ident)
        event = {**event, **ident}
    else:
        event = dict(event)
    if "schema_version" not in event:
        event["schema_version"] = SCHEMA_VERSION
    return event


class KafkaPublisher:
    """Idempotent, compressed, batching producer for topic `llm.events`, keyed by trace_id."""

    def __init__(
        self,
        bootstrap_servers: str = "127.0.0.1:9092",
        topic: str = "llm.events",
        *,
        hooks: Iterable[Hook] = (),
        config: Mapping[str, Any] | None = None,
        redaction: "bool | RedactionHook" = True,
        controls: Any = None,
        contracts: Any = None,
        controls_topic: str = "llm.controls",
    ) -> None:
        """`controls`: a ControlsConfig (or True for its defaults) to read and enforce kill
        switches from `controls_topic` in this process's traces (ingest/enforce.py), with the
        workflow `contracts` (a ContractsConfig: fallbacks, fail modes, approvers)."""
        self.topic = topic
        self.hooks, self.redaction = _with_redaction(hooks, redaction)
        # Events are marked as redacted (header `llmpulse-redacted`) only when redaction is the
        # last hook: nothing the app adds after it goes out unscanned under the mark.
        self._marks = self.redaction is not None and self.hooks[-1] is self.redaction
        self._stats = PublisherStats()
        self._lock = threading.Lock()  # guards stats updated from the delivery thread
        conf = {**DEFAULT_PRODUCER_CONFIG, **(config or {}), "bootstrap.servers": bootstrap_servers}
        conf.setdefault("error_cb", self._on_error)
        # librdkafka logs go through the app's logging, not stderr; a dead broker is one line.
        conf.setdefault("logger", BrokerLog(log, bootstrap_servers))
        self._producer = Producer(conf)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="llmpulse-delivery", daemon=True)
        self._poller.start()
        _live.add(self)  # flushed at interpreter exit, without keeping it alive
        self.enforcer = None
        if controls:
            from llmpulse.ingest.enforce import start_enforcer

            try:
                self.enforcer = start_enforcer(self, bootstrap_servers, controls_topic, controls, contracts)
            except Exception as exc:  # the SDK never crashes the app; publishing still works
                log.error("llmpulse: kill switches not started (%s: %s); checks allow", type(exc).__name__, exc)

    @classmethod
    def from_settings(cls, s: Any, *, hooks: Iterable[Hook] = (), **kw: Any) -> "KafkaPublisher":
        """Publisher for the configured broker and topic, redacting per the settings' policy
        (last, so it sees whatever earlier hooks added)."""
        redact = redaction_hook(settings=s.redaction) if s.redaction.enabled else False
        if s.controls.enabled:  # kill switches, per the controls: section and the contracts
            from llmpulse.processors.contracts import ContractsConfig

            kw.setdefault("controls", s.controls)
            kw.setdefault("contracts", ContractsConfig.from_config(s.contracts))
            kw.setdefault("controls_topic", s.controls_topic)
        return cls(s.kafka_bootstrap, s.events_topic, hooks=hooks, redaction=redact, **kw)

    # -- hot path -------------------------------------------------------------
    def publish(self, event: Mapping[str, Any] | BaseEvent) -> bool:
        """Queue one event. Returns False (and counts why) instead of raising."""
        try:
            if isinstance(event, BaseEvent):
                if self.hooks:
                    event = msgspec.to_builtins(event)
                else:
                    value = msgspec.json.encode(event)
                    return self._produce(value, event.trace_id)
            event = _stamp(event)
            for hook in self.hooks:
                event = hook(event)
                if event is None:
                    self._count_invalid("dropped by hook")
                    return False
            value = orjson.dumps(event)
            headers = self.redaction.headers_for(event) if self._marks else None  # type: ignore[union-attr]
        except Exception as exc:  # never raise into the app
            self._count_invalid(f"encode: {type(exc).__name__}")
            return False
        return self._produce(value, event.get("trace_id") or "", headers)

    def publish_raw(self, value: bytes, key: str = "") -> bool:
        """Queue bytes (replays, gateways), redacted like `publish` (see RedactionHook.redact_bytes);
        the worker validates them. Returns False (and counts why) instead of raising."""
        if self.redaction is not None:
            redacted = self.redaction.redact_bytes(value)
            if redacted is None:
                self._count_invalid("dropped by hook")
                return False
            value = redacted
        return self._produce(value, key)

    def _produce(self, value: bytes, key: str, headers: "list[tuple[str, bytes]] | None" = None) -> bool:
        try:
            self._producer.produce(self.topic, value, key.encode() if key else None, on_delivery=self._on_delivery,
                                   headers=headers)
        except BufferError:
            with self._lock:
                self._stats.queue_full += 1
            return False
        except Exception as exc:  # e.g. message larger than message.max.bytes
            self._count_invalid(f"produce: {type(exc).__name__}: {exc}")
            return False
        self._stats.published += 1
        return True

    # -- background -----------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        # Only failures are reported (delivery.report.only.error): no per-message Python
        # callback competing with the app's threads for the GIL.
        with self._lock:
            self._stats.failed += 1
            self._remember(str(err.name()) if err is not None else "unknown")

    @property
    def stats(self) -> PublisherStats:
        """Counters; `delivered` = accepted - failed - still queued."""
        st = self._stats
        st.delivered = st.published - st.failed - len(self._producer)
        return st

    def _on_error(self, err: KafkaError) -> None:
        # Transient broker trouble is expected; librdkafka retries on its own.
        log.debug("kafka: %s", err)
        self._stats.last_error = str(err)

    def _count_invalid(self, reason: str) -> None:
        with self._lock:
            self._stats.invalid += 1
            self._remember(reason)

    def _remember(self, reason: str) -> None:
        self._stats.last_error = reason
        self._stats.errors_by_reason[reason] = self._stats.errors_by_reason.get(reason, 0) + 1

    # -- lifecycle ------------------------------------------------------------
    def pending(self) -> int:
        return len(self._producer)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to `timeout` s for queued events; returns how many are still queued."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed.is_set():
            return
        if self.enforcer is not None:
            from llmpulse.ingest.enforce import close_enforcer

            close_enforcer(self.enforcer)
        remaining = self.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1)
        if remaining or self._stats.undelivered:
            log.warning(
                "llmpulse: %d events still queued, %d undelivered (%s)",
                remaining, self._stats.undelivered, self._stats.errors_by_reason,
            )

    def trace(self, workflow: str, **fields: Any) -> "Trace":
        return Trace(self, workflow=workflow, **fields)


class MemoryPublisher:
    """In-memory sink for tests of instrumented code: same API, no broker."""

    def __init__(self, hooks: Iterable[Hook] = (), redaction: "bool | RedactionHook" = True,
                 controls: Any = None, contracts: Any = None, stale: bool = False) -> None:
        """`controls`: a ControlState whose actions this publisher's traces enforce (as fresh,
        or `stale`); its decisions land in `events` like the rest."""
        self.hooks, self.redaction = _with_redaction(hooks, redaction)
        self.events: list[dict] = []
        self.stats = PublisherStats()
        self.enforcer = None
        if controls is not None:
            from llmpulse.ingest.enforce import Enforcer, FixedView

            self.enforcer = Enforcer(FixedView(controls, stale), self, contracts)

    def publish(self, event: Mapping[str, Any] | BaseEvent) -> bool:
        event = _stamp(msgspec.to_builtins(event) if isinstance(event, BaseEvent) else event)
        for hook in self.hooks:
            event = hook(event)
            if event is None:
                self.stats.invalid += 1
                return False
        self.events.append(event)
        self.stats.published += 1
        self.stats.delivered += 1
        return True

    def flush(self, timeout: float = 10.0) -> int:
        return 0

    def close(self, timeout: float = 10.0) -> None:
        pass

    def trace(self, workflow: str, **fields: Any) -> "Trace":
        return Trace(self, workflow=workflow, **fields)


class Trace:
    """Stamps trace_id, workflow, tenant (and any common field) on every event.

    with publisher.trace("support-bot", tenant="acme", model="gpt-4o") as t:
        t.prompt(messages=[{"role": "user", "content": "hi"}])
        t.tool_call("search_kb", arguments={"q": "refund"}, duration_ms=12)
        t.output(status="ok", latency_ms=830, usage={"input_tokens": 900, "output_tokens": 120})
    """

    def __init__(self, sink: EventSink, workflow: str, trace_id: str | None = None, **common: Any) -> None:
        self.sink = sink
        self.common = {"workflow": workflow, "trace_id": trace_id or new_event_id(), **common}

    @property
    def trace_id(self) -> str:
        return self.common["trace_id"]

    def __enter__(self) -> "Trace":
        from llmpulse.ingest.enforce import current_trace

        self._current = current_trace.set(self)  # for @guard_tool
        return self

    def __exit__(self, *exc: object) -> None:
        token = self.__dict__.pop("_current", None)
        if token is not None:
            from llmpulse.ingest.enforce import current_trace

            current_trace.reset(token)
        return None

    # -- kill switches (ingest/enforce.py): never raise, never wait ------------------------
    def check_model(self, model: str) -> "Verdict":
        """allow / deny / route (`.model` to call) / needs_approval, decided locally."""
        enforcer = getattr(self.sink, "enforcer", None)
        if enforcer is None:
            from llmpulse.ingest.enforce import Verdict

            return Verdict("allow", model)
        return enforcer.check_model(self, model)

    def check_tool(self, name: str, side_effect: str | None = None) -> "Verdict":
        """Before a tool call; `side_effect` read/write/irreversible (default: irreversible
        when the workflow contract names the tool so, else none)."""
        enforcer = getattr(self.sink, "enforcer", None)
        if enforcer is None:
            from llmpulse.ingest.enforce import ALLOW

            return ALLOW
        return enforcer.check_tool(self, name, side_effect)

    def require_model(self, model: str) -> str:
        """The model to call; raises Halted when refused."""
        from llmpulse.ingest.enforce import raise_for

        return raise_for(self.check_model(model)).model or model

    def require_tool(self, name: str, side_effect: str | None = None) -> "Verdict":
        """Raises Halted (ApprovalRequired) when the call is refused."""
        from llmpulse.ingest.enforce import raise_for

        return raise_for(self.check_tool(name, side_effect))

    def emit(self, event_type: str, **fields: Any) -> bool:
        return self.sink.publish({**self.common, "event_type": event_type, **fields})

    def prompt(self, **fields: Any) -> bool:
        return self.emit("prompt", **fields)

    def tool_call(self, tool_name: str, **fields: Any) -> bool:
        scope = self.__dict__.get("_controls_scope")
        if scope is not None and "approved_by" not in fields and tool_name in scope.approvals:
            fields["approved_by"] = scope.approvals[tool_name]  # the approval check_tool found
        return self.emit("tool_call", tool_name=tool_name, **fields)

    def output(self, status: str = "ok", **fields: Any) -> bool:
        return self.emit("output", status=status, **fields)

    def eval(self, eval_name: str, **fields: Any) -> bool:
        return self.emit("eval", eval_name=eval_name, **fields)
