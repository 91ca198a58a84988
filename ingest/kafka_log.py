"""librdkafka's log, summarised: a dead broker is one line, not one per reconnect attempt.

librdkafka retries a refused connection every few hundred milliseconds and logs each
attempt at error level (`FAIL`, `...Connection refused`). Through the `logger` option of a
confluent-kafka client that is hundreds of lines a minute in the app's log. `BrokerLog`
passes every other record through unchanged and turns connection failures into one
warning per `every` seconds that says what was tried and how many attempts it stands for.
"""

from __future__ import annotations

import logging
import threading
import time

# librdkafka facilities of a failed or dropped broker connection.
_CONNECTION_FACILITIES = frozenset({"FAIL", "ERROR"})
_CONNECTION_WORDS = ("Connect to", "Connection refused", "Disconnected", "all broker", "resolve", "timed out")


class BrokerLog:
    """A `logger` for confluent-kafka clients (it calls `log(level, fmt, fac, name, msg)`)."""

    def __init__(self, log: logging.Logger, bootstrap: str, what: str = "events wait in the local queue",
                 every: float = 300.0) -> None:
        self._log, self._bootstrap, self._what, self._every = log, bootstrap, what, every
        self._lock = threading.Lock()
        self._last = -float("inf")  # monotonic time of the last summary line
        self._suppressed = 0

    def log(self, level: int, fmt: str, *args: object) -> None:
        msg = str(args[-1]) if args else fmt
        fac = str(args[0]) if len(args) == 3 else ""
        if fac not in _CONNECTION_FACILITIES or not any(w in msg for w in _CONNECTION_WORDS):
            self._log.log(level, fmt, *args)
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._every:
                self._suppressed += 1
                self._log.debug(fmt, *args)
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        reason = msg.rsplit(": ", 1)[-1]
        more = f" ({suppressed} more attempts since the last line)" if suppressed else ""
        self._log.warning("Kafka broker %s unreachable: %s; retrying in the background, %s%s",
                          self._bootstrap, reason, self._what, more)

    # confluent-kafka only calls log(); anything else logging-like goes to the wrapped logger.
    def __getattr__(self, name: str) -> object:
        return getattr(self._log, name)
