"""One retry policy and one error classification for the worker's I/O.

Every failure is either
- transient: the same call may succeed later (broker or ClickHouse unreachable, a timeout,
  a full queue, too many parts while merges catch up): retry with capped exponential
  backoff, keep the batch and its offsets;
- permanent for the data: the same rows will always fail (a value out of a column's range,
  a type the column cannot hold, too many partitions in one block): the caller isolates the
  rows that fail (ClickHouseSink splits the batch) and dead-letters them.

ClickHouse errors are classified by error code, as Vector's ClickHouse sink does: the codes
below say "this input is wrong", everything else is retried. Errors raised while the
client serialises rows (clickhouse-connect's DataError, struct/overflow errors) are
permanent too: the rows cannot be encoded.
"""

from __future__ import annotations

import random
import re
import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["transient", "permanent"]

# ClickHouse error codes that mean the input itself is wrong (src/Common/ErrorCodes.cpp).
PERMANENT_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    306,  # TOO_DEEP_RECURSION
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    377,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
    407,  # DECIMAL_OVERFLOW
    1001, # STD_EXCEPTION (a conversion inside the engine)
})
# 252 is both "too many parts" (transient: merges catch up) and "too many partitions for a
# single INSERT block" (permanent for that block: split it by partition).
_TOO_MANY_PARTITIONS = "Too many partitions for single INSERT block"
_CODE = re.compile(r"Code:\s*(\d+)")


def clickhouse_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE.search(str(exc))
    return int(m.group(1)) if m else None


def classify(exc: BaseException) -> Kind:
    """Transient unless the error says the data itself cannot be stored or sent."""
    from clickhouse_connect.driver import exceptions as ch

    if isinstance(exc, (ch.DataError, ch.ProgrammingError, OverflowError, RecursionError, UnicodeError)):
        return "permanent"
    if isinstance(exc, ch.OperationalError):
        return "transient"
    if isinstance(exc, ch.DatabaseError):
        if _TOO_MANY_PARTITIONS in str(exc):
            return "permanent"
        return "permanent" if clickhouse_code(exc) in PERMANENT_CODES else "transient"
    # struct.error, TypeError and ValueError come out of row serialisation.
    if isinstance(exc, (struct.error, TypeError, ValueError)) and not isinstance(exc, ch.Error):
        return "permanent"
    return "transient"


class RetryConfig(BaseModel):
    """Backoff of every retried I/O call (inserts, side outputs, commits, paging)."""

    model_config = ConfigDict(extra="forbid")

    initial_seconds: float = Field(0.2, gt=0)
    max_seconds: float = Field(30.0, gt=0)  # a retry at least this often, however long the outage
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)  # +-share of each delay, so restarted workers spread out
    # Readiness turns false when a batch has waited this long for its outputs to commit.
    stall_seconds: float = Field(60.0, gt=0)


class Backoff:
    """Capped exponential delays; `reset()` after a success."""

    def __init__(self, config: RetryConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or RetryConfig()
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        c = self.config
        delay = min(c.max_seconds, c.initial_seconds * c.multiplier ** self.attempts)
        self.attempts += 1
        return delay * (1 + self._rng.uniform(-c.jitter, c.jitter))

    def reset(self) -> None:
        self.attempts = 0
