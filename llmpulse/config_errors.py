"""Configuration mistakes as one message per entry: `budgets[0].limit_usd: must be > 0 (got -5)`.

pydantic's errors carry a location, a type and its context; this turns them into lines an
operator can act on (the entry's path, what is allowed, the closest valid key for a typo)
instead of a traceback or pydantic's multi-line report.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """One or more configuration problems, each a line `path: what is wrong`."""

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        head = f"invalid configuration{where}:" if len(self.problems) > 1 else f"invalid configuration{where}: "
        if len(self.problems) == 1:
            return head + self.problems[0]
        return head + "".join(f"\n  {p}" for p in self.problems)


def path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def suggest(key: str, valid: Iterable[str]) -> str:
    """' (did you mean `x`?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def problems(exc: ValidationError, prefix: Sequence[Any] = (), model: Any = None) -> list[str]:
    """One line per error of `exc`, located under `prefix`; `model` (the validated class)
    lets an unknown key name the closest valid one."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = path((*prefix, *loc)) or "(top level)"
        out.append(f"{where}: {_what(err, model, loc)}")
    return out


def _what(err: dict, model: Any, loc: tuple) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    got = err.get("input")
    shown = f" (got {_short(got)})" if not isinstance(got, (dict, list)) and got is not None else ""
    bounds = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
              "less_than_equal": ("le", "<=")}
    if kind in bounds:
        key, op = bounds[kind]
        bound = ctx.get(key)
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {op} {bound}{shown}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key" + suggest(str(loc[-1]), _fields_at(model, loc[:-1]))
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}{shown}"
    msg = str(err["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        msg = msg.replace(noise, "")
    return (msg[:1].lower() + msg[1:]) + shown


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """Field names of the model found by following `loc` through `model`'s annotations."""
    current = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part)) if not isinstance(part, int) else None
        if field is None:
            continue  # a list index or a dict key: stay on the item type found below
        current = _item_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _item_model(annotation: Any) -> Any:
    """The BaseModel inside `X`, `X | None`, `list[X]`, `tuple[X, ...]`, `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(typing.get_args(annotation)):
        found = _item_model(arg)
        if found is not None:
            return found
    return None
