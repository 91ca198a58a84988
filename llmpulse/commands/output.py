"""Query results as text for scripts: csv, json (one array of objects), jsonl (one object a line)."""

from __future__ import annotations

import csv
from typing import IO, Any

import orjson

FORMATS = ("table", "csv", "json", "jsonl")


def _plain(value: Any) -> Any:
    """A JSON-ready value: what orjson cannot encode (Decimal, UUID of other libs, an integer past
    64 bits: ClickHouse's Int128/UInt256) as text."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _cell(value: Any) -> Any:
    """A CSV field: arrays, tuples and maps as JSON (a reader can parse them), NULL as empty."""
    if isinstance(value, (list, tuple, dict)):
        return orjson.dumps(_plain(value), option=orjson.OPT_NON_STR_KEYS).decode()
    return "" if value is None else value


def write_result(result: dict, fmt: str, out: IO[str]) -> None:
    columns, rows = result["columns"], result["rows"]
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180: a field with \r or \n is quoted
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in row] for row in rows])
    elif fmt == "json":
        objects = [{c: _plain(v) for c, v in zip(columns, row)} for row in rows]
        out.write(orjson.dumps(objects, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    elif fmt == "jsonl":
        for row in rows:
            out.write(orjson.dumps({c: _plain(v) for c, v in zip(columns, row)},
                                   option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
