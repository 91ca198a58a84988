"""A local stand-in for the OpenAI and Anthropic HTTP APIs (stdlib only).

Real clients and the instrumentations around them talk to it unchanged; the reply is chosen by
a marker in the last user message, so every library can ask for the same cases:

    [filter]  the provider's content filter stopped the answer (OpenAI `content_filter`,
              Anthropic `refusal`)
    [reason]  reasoning tokens in the usage
    [tool]    one tool call (`lookup_order`), with a tool definition offered by the caller
    (none)    a plain answer; every reply reports cached input tokens

The response model is the dated name of the requested one (`gpt-4o-mini` →
`gpt-4o-mini-2024-07-18`), as real providers answer. Streaming (`"stream": true`) is answered as
server-sent events, in each API's format. Kept free of third-party imports so that scratch
environments with older instrumentation releases can record spans with it too.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATED = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06",
         "claude-sonnet-4-5": "claude-sonnet-4-5-20250929", "claude-haiku-4-5": "claude-haiku-4-5-20251001"}
# Usage every reply reports: OpenAI counts cached tokens inside prompt_tokens, Anthropic beside it.
PROMPT_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS, REASONING_TOKENS = 1200, 1024, 40, 28
ANTHROPIC_INPUT, ANTHROPIC_CACHE_READ, ANTHROPIC_CACHE_WRITE = 150, 2048, 512
TOOL_ARGS = {"order_id": "A-17"}


def _last_user_text(messages: list) -> str:
    for m in reversed(messages or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            return " ".join(p.get("text", "") for p in c or [] if isinstance(p, dict))
    return ""


def _answers_a_tool(messages: list) -> bool:
    # After the tool's result comes back the model answers in words (no loop of tool calls).
    last = (messages or [{}])[-1]
    parts = last.get("content") if isinstance(last.get("content"), list) else []
    return last.get("role") == "tool" or any(isinstance(p, dict) and p.get("type") == "tool_result" for p in parts)


def case_of(body: dict) -> str:
    if _answers_a_tool(body.get("messages") or []):
        return "plain"
    text = _last_user_text(body.get("messages") or [])
    if not text and isinstance(body.get("input"), str):  # Responses API
        text = body["input"]
    for case in ("filter", "reason", "tool"):
        if f"[{case}]" in text:
            return case
    return "plain"


def openai_chat(body: dict) -> dict:
    case = case_of(body)
    message: dict = {"role": "assistant", "content": "Refunds take 5 days."}
    finish = "stop"
    if case == "filter":
        message, finish = {"role": "assistant", "content": None}, "content_filter"
    elif case == "tool":
        message = {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_7", "type": "function",
            "function": {"name": "lookup_order", "arguments": json.dumps(TOOL_ARGS)}}]}
        finish = "tool_calls"
    reasoning = REASONING_TOKENS if case == "reason" else 0
    return {
        "id": f"chatcmpl-{case}", "object": "chat.completion", "created": 1_764_000_000,
        "model": DATED.get(body.get("model"), body.get("model")), "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                  "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                  "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
                  "completion_tokens_details": {"reasoning_tokens": reasoning}},
    }


def openai_chunks(body: dict) -> list[dict]:
    full = openai_chat(body)
    base = {k: full[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    msg, finish = full["choices"][0]["message"], full["choices"][0]["finish_reason"]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    if msg.get("content"):
        for piece in ("Refunds ", "take 5 days."):
            chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    for i, call in enumerate(msg.get("tool_calls") or []):
        chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [{**call, "index": i}]},
                                            "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({**base, "choices": [], "usage": full["usage"]})  # stream_options.include_usage
    return chunks


def anthropic_message(body: dict) -> dict:
    case = case_of(body)
    content: list = [{"type": "text", "text": "Refunds take 5 days."}]
    stop = "end_turn"
    if case == "filter":
        content, stop = [], "refusal"
    elif case == "tool":
        content = [{"type": "text", "text": "Let me look."},
                   {"type": "tool_use", "id": "toolu_7", "name": "lookup_order", "input": TOOL_ARGS}]
        stop = "tool_use"
    return {
        "id": f"msg_{case}", "type": "message", "role": "assistant",
        "model": DATED.get(body.get("model"), body.get("model")), "content": content,
        "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": ANTHROPIC_INPUT, "output_tokens": COMPLETION_TOKENS,
                  "cache_read_input_tokens": ANTHROPIC_CACHE_READ,
                  "cache_creation_input_tokens": ANTHROPIC_CACHE_WRITE},
    }


def anthropic_events(body: dict) -> list[tuple[str, dict]]:
    """The same message as server-sent events (message_start … message_stop)."""
    full = anthropic_message(body)
    usage = full["usage"]
    start = {**full, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(full["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {**block, "input": {}}}))
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": full["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        if self.path.endswith("/chat/completions") and body.get("stream"):
            raw = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in openai_chunks(body))
            self._send(200, raw + b"data: [DONE]\n\n", "text/event-stream")
        elif self.path.endswith("/chat/completions"):
            self._send(200, json.dumps(openai_chat(body)).encode())
        elif self.path.endswith("/messages") and body.get("stream"):
            raw = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in anthropic_events(body))
            self._send(200, raw, "text/event-stream")
        elif self.path.endswith("/messages"):
            self._send(200, json.dumps(anthropic_message(body)).encode())
        else:
            self._send(404, b'{"error": {"message": "unknown path", "type": "not_found"}}')

    def _send(self, status: int, raw: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


class FakeProvider:
    """`with FakeProvider() as fp:` → `fp.openai_url` (…/v1) and `fp.anthropic_url`."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.requests = []  # type: ignore[attr-defined]
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list:
        return self.server.requests  # type: ignore[attr-defined]

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def openai_url(self) -> str:
        return f"{self.anthropic_url}/v1"

    def __enter__(self) -> "FakeProvider":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
