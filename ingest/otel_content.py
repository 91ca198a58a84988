"""Prompt and completion content from a GenAI span, in every shape seen in the wild.

Content is opt-in in every instrumentation; when none was captured these return
empty lists and the events carry metadata only. Shapes, newest first:

- `gen_ai.input.messages` / `gen_ai.output.messages` / `gen_ai.system_instructions`:
  JSON with `{role, parts: [{type, content, ...}], finish_reason}` (current conventions).
- span events `gen_ai.content.prompt` / `gen_ai.content.completion` carrying
  `gen_ai.prompt` / `gen_ai.completion` (semconv 1.26), or those as span attributes.
- per-message span events `gen_ai.{system,user,assistant,tool}.message` and `gen_ai.choice`.
- flattened `gen_ai.prompt.{i}.role|content` / `gen_ai.completion.{i}.*` (OpenLLMetry).
- OpenInference `llm.input_messages.{i}.message.role|content`, then `input.value`/`output.value`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

Msg = dict  # {"role": str, "content": str}; the contract's Message as a dict

_ROLE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _loads(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _part_text(part: Any) -> str:
    # Text parts keep their text; other parts (tool calls, media refs) stay as
    # compact JSON so nothing captured is lost in the string-only contract.
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        if part.get("type") in ("text", "reasoning", "refusal", None) and isinstance(part.get("content"), str):
            return part["content"]
        return _dumps(part)
    return _dumps(part)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(t for t in (_part_text(p) for p in content) if t)
    return _part_text(content)


def _message(raw: Any, default_role: str) -> Msg | None:
    if isinstance(raw, str):
        return {"role": default_role, "content": raw}
    if not isinstance(raw, Mapping):
        return None
    role = str(raw.get("role") or default_role)
    if "parts" in raw:
        text = _content_text(raw.get("parts"))
    else:
        text = _content_text(raw.get("content"))
        if raw.get("tool_calls"):  # older OpenAI-shaped messages
            calls = _dumps(raw["tool_calls"])
            text = f"{text}\n{calls}" if text else calls
    return {"role": role, "content": text}


def parse_messages(value: Any, default_role: str) -> list[Msg]:
    """A JSON list of messages (any of the shapes above), or a bare string."""
    data = _loads(value)
    if data is None or data == "":
        return []
    if isinstance(data, (str, Mapping)):
        data = [data]
    if not isinstance(data, Sequence):
        return []
    return [m for m in (_message(item, default_role) for item in data) if m is not None]


def _indexed(attrs: Mapping[str, Any], prefix: str, suffix: str = "") -> list[Msg]:
    # `prefix{i}{suffix}role` style flattened lists; only numeric indexes count
    # (so `gen_ai.prompt.name` is not mistaken for a message).
    pattern = re.compile(re.escape(prefix) + r"(\d+)\." + re.escape(suffix) + r"(role|content)$")
    found: dict[int, dict] = {}
    for key, value in attrs.items():
        m = pattern.match(key)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [{"role": str(v.get("role") or ""), "content": _content_text(v.get("content"))} for _, v in sorted(found.items())]


def _event_messages(events: Sequence[Any], want: str) -> list[Msg]:
    out: list[Msg] = []
    for ev in events:
        a = ev.attributes
        if want == "input" and ev.name == "gen_ai.content.prompt":
            out += parse_messages(a.get("gen_ai.prompt"), "user")
        elif want == "output" and ev.name == "gen_ai.content.completion":
            out += parse_messages(a.get("gen_ai.completion"), "assistant")
        elif want == "input" and ev.name in _ROLE_EVENTS:
            body = a.get("content", a.get("gen_ai.event.content"))
            out += parse_messages(body, _ROLE_EVENTS[ev.name])
        elif want == "output" and ev.name == "gen_ai.choice":
            body = _loads(a.get("message", a.get("gen_ai.event.content", a.get("content"))))
            msg = _message(body, "assistant") if body is not None else None
            if msg is not None:
                out.append(msg)
    return out


def input_messages(attrs: Mapping[str, Any], events: Sequence[Any]) -> list[Msg]:
    msgs = parse_messages(attrs.get("gen_ai.system_instructions"), "system")
    if "gen_ai.input.messages" in attrs:
        return msgs + parse_messages(attrs["gen_ai.input.messages"], "user")
    found = (
        _event_messages(events, "input")
        or parse_messages(attrs.get("gen_ai.prompt"), "user")
        or _indexed(attrs, "gen_ai.prompt.")
        or _indexed(attrs, "llm.input_messages.", "message.")
        or parse_messages(attrs.get("input.value") if "openinference.span.kind" in attrs else None, "user")
    )
    return msgs + found


def output_messages(attrs: Mapping[str, Any], events: Sequence[Any]) -> list[Msg]:
    if "gen_ai.output.messages" in attrs:
        return parse_messages(attrs["gen_ai.output.messages"], "assistant")
    return (
        _event_messages(events, "output")
        or parse_messages(attrs.get("gen_ai.completion"), "assistant")
        or _indexed(attrs, "gen_ai.completion.")
        or _indexed(attrs, "llm.output_messages.", "message.")
        or parse_messages(attrs.get("output.value") if "openinference.span.kind" in attrs else None, "assistant")
    )


def output_finish_reasons(attrs: Mapping[str, Any]) -> list[str]:
    """Finish reasons carried inside `gen_ai.output.messages` when the span lacks the attribute."""
    data = _loads(attrs.get("gen_ai.output.messages"))
    if not isinstance(data, list):
        return []
    return [str(m["finish_reason"]) for m in data if isinstance(m, Mapping) and m.get("finish_reason")]


def has_refusal(attrs: Mapping[str, Any]) -> bool:
    data = _loads(attrs.get("gen_ai.output.messages"))
    if not isinstance(data, list):
        return False
    return any(
        isinstance(p, Mapping) and p.get("type") == "refusal"
        for m in data if isinstance(m, Mapping)
        for p in (m.get("parts") or [])
    )


def tool_names(value: Any) -> list[str]:
    """Names from `gen_ai.tool.definitions` (JSON list of tool definitions)."""
    data = _loads(value)
    if not isinstance(data, list):
        return []
    names = []
    for t in data:
        if isinstance(t, Mapping):
            name = t.get("name") or (t.get("function") or {}).get("name")
            if name:
                names.append(str(name))
        elif isinstance(t, str):
            names.append(t)
    return names
