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
        if part.get("type") == "text" and isinstance(part.get("text"), str):  # an Anthropic content block
            return part["text"]
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


_INDEX = re.compile(r"(\d+)\.(.+)$")


def _flat(attrs: Mapping[str, Any], prefix: str, inner: str = "") -> dict[int, dict[str, Any]]:
    """`{prefix}{i}.{inner}{rest}` keys grouped by message index: {i: {rest: value}}.
    Only numeric indexes count (so `gen_ai.prompt.name` is not mistaken for a message)."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        m = _INDEX.match(key, len(prefix))
        if m and m.group(2).startswith(inner):
            found.setdefault(int(m.group(1)), {})[m.group(2)[len(inner):]] = value
    return found


def _sub(fields: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """The numbered sub-records of one message (`contents.0.…`, `tool_calls.1.…`), in order."""
    return [v for _, v in sorted(_flat(fields, prefix).items())]


def _flat_tool_calls(fields: Mapping[str, Any]) -> list[dict]:
    # OpenInference: tool_calls.{j}.tool_call.function.name; OpenLLMetry: tool_calls.{j}.name
    calls = []
    for c in _sub(fields, "tool_calls."):
        name = c.get("tool_call.function.name", c.get("name"))
        if name:
            calls.append({"type": "tool_call", "name": str(name), "id": str(c.get("tool_call.id", c.get("id", ""))),
                          "arguments": c.get("tool_call.function.arguments", c.get("arguments", ""))})
    return calls


def _indexed(attrs: Mapping[str, Any], prefix: str, inner: str = "") -> list[Msg]:
    """Flattened messages: `gen_ai.prompt.{i}.role|content` (OpenLLMetry) and OpenInference's
    `llm.*_messages.{i}.message.role|content`, whose parts may be `contents.{j}.message_content.text`."""
    out = []
    for _, f in sorted(_flat(attrs, prefix, inner).items()):
        text = f.get("content")
        if isinstance(text, str) and text.startswith("[{"):  # OpenLLMetry JS: Anthropic's blocks as JSON
            blocks = _loads(text)
            if isinstance(blocks, list) and blocks and all(isinstance(b, Mapping) and "type" in b for b in blocks):
                text = blocks
        if text is None:
            text = [p["message_content.text"] for p in _sub(f, "contents.") if p.get("message_content.text")]
        body = _content_text(text)
        calls = _flat_tool_calls(f)
        if calls:  # kept as compact JSON, like tool-call parts of the current format
            body = "\n".join(t for t in [body, *(_dumps(c) for c in calls)] if t)
        out.append({"role": str(f.get("role") or ""), "content": body})
    return out


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
        or _logfire_data(attrs, "request_data", "messages", "user")
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
        or _logfire_data(attrs, "response_data", "message", "assistant")
    )


def _logfire_data(attrs: Mapping[str, Any], key: str, field: str, role: str) -> list[Msg]:
    # Logfire 4.x: the request (`request_data.messages`) and the response (`response_data.message`,
    # OpenAI-shaped; Anthropic's `content` blocks) as JSON, where 5.x has gen_ai.*.messages.
    data = _loads(attrs.get(key)) if key in attrs else None
    return parse_messages(data.get(field), role) if isinstance(data, Mapping) else []


def output_finish_reasons(attrs: Mapping[str, Any]) -> list[str]:
    """Finish reasons from where producers keep them when the span lacks the attribute:
    `gen_ai.output.messages`, OpenLLMetry's `gen_ai.completion.{i}.finish_reason` (up to 0.53),
    and the raw response JSON in OpenInference's `output.value` (releases without
    `llm.finish_reason`: `choices[].finish_reason`, Anthropic `stop_reason`)."""
    data = _loads(attrs.get("gen_ai.output.messages"))
    if isinstance(data, list):
        found = [str(m["finish_reason"]) for m in data if isinstance(m, Mapping) and m.get("finish_reason")]
        if found:
            return found
    found = [str(f["finish_reason"]) for _, f in sorted(_flat(attrs, "gen_ai.completion.").items()) if f.get("finish_reason")]
    if found:
        return found
    if "openinference.span.kind" in attrs and "json" in str(attrs.get("output.mime_type", "")):
        raw = _loads(attrs.get("output.value"))
        if isinstance(raw, Mapping):
            if raw.get("stop_reason"):
                return [str(raw["stop_reason"])]
            choices = raw.get("choices")
            if isinstance(choices, list):
                return [str(c["finish_reason"]) for c in choices if isinstance(c, Mapping) and c.get("finish_reason")]
    return []


def output_tool_calls(attrs: Mapping[str, Any]) -> list[str]:
    """Names of the tools the model asked for (captured content only): tool-call parts of
    `gen_ai.output.messages`, OpenInference and OpenLLMetry flattened tool calls."""
    data = _loads(attrs.get("gen_ai.output.messages"))
    if isinstance(data, list):
        names = [str(p["name"]) for m in data if isinstance(m, Mapping)
                 for p in (m.get("parts") or []) if isinstance(p, Mapping) and p.get("type") == "tool_call" and p.get("name")]
        if names:
            return names
    for prefix, inner in (("llm.output_messages.", "message."), ("gen_ai.completion.", "")):
        names = [c["name"] for _, f in sorted(_flat(attrs, prefix, inner).items()) for c in _flat_tool_calls(f)]
        if names:
            return names
    data = _loads(attrs.get("response_data")) if "response_data" in attrs else None  # Logfire 4.x
    message = data.get("message") if isinstance(data, Mapping) else None
    calls = message.get("tool_calls") if isinstance(message, Mapping) else None
    return [str(c["function"]["name"]) for c in calls or [] if isinstance(c, Mapping)
            and isinstance(c.get("function"), Mapping) and c["function"].get("name")] if isinstance(calls, list) else []


def has_refusal(attrs: Mapping[str, Any]) -> bool:
    data = _loads(attrs.get("gen_ai.output.messages"))
    if not isinstance(data, list):
        return False
    return any(
        isinstance(p, Mapping) and p.get("type") == "refusal"
        for m in data if isinstance(m, Mapping)
        for p in (m.get("parts") or [])
    )


def _tool_name(t: Any) -> str:
    if isinstance(t, Mapping):
        fn = t.get("function")
        return str(t.get("name") or (fn.get("name") if isinstance(fn, Mapping) else "") or "")
    return t if isinstance(t, str) else ""


def tool_names(attrs: Mapping[str, Any]) -> list[str]:
    """Names of the tools offered: `gen_ai.tool.definitions` (JSON list), OpenInference
    `llm.tools.{i}.tool.json_schema` (one JSON definition each), OpenLLMetry
    `llm.request.functions.{i}.name`."""
    data = _loads(attrs.get("gen_ai.tool.definitions"))
    if isinstance(data, list):
        return [n for n in (_tool_name(t) for t in data) if n]
    oi = [_tool_name(_loads(f.get("tool.json_schema"))) for _, f in sorted(_flat(attrs, "llm.tools.").items())]
    if any(oi):
        return [n for n in oi if n]
    return [str(f["name"]) for _, f in sorted(_flat(attrs, "llm.request.functions.").items()) if f.get("name")]
