"""The offline demo model: an httpx transport that answers POST /v1/messages
with real Server-Sent Events bytes, so a demo answer travels the same client,
SSE parser and accumulator as a real one.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any, AsyncIterator

import httpx

DEMO_MODEL = "offline-demo"
WORD_DELAY = 0.02  # seconds between streamed words: visibly streaming, never slow


def describe_block(block: dict[str, Any]) -> str | None:
    source = block.get("source") or {}
    if block.get("type") == "image":
        size = len(source.get("data", "")) * 3 // 4
        return f"an image ({source.get('media_type', 'unknown type')}, about {_size(size)})"
    if block.get("type") == "document":
        size = len(source.get("data", "")) * 3 // 4
        title = block.get("title")
        named = f" “{title}”" if title else ""
        return f"a document{named} ({source.get('media_type', 'unknown type')}, about {_size(size)})"
    return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


def demo_reply(body: dict[str, Any]) -> str:
    """The labelled reply: echoes the last user turn and describes attachments."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {"content": ""}
    content = last.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    text = "\n\n".join(b.get("text", "") for b in blocks if b.get("type") == "text").strip()
    attachments = [d for d in (describe_block(b) for b in blocks) if d]

    lines = [
        "**Offline demo model.** No API key is set on this server, so this reply comes "
        "from the built-in demo, not from Claude.",
        "",
    ]
    if text:
        quoted = "\n".join("> " + line for line in text.splitlines())
        lines += ["You wrote:", "", quoted, ""]
    if attachments:
        lines += ["You attached:", ""] + [f"- {a}" for a in attachments] + [""]
    turns = sum(1 for m in messages if m.get("role") == "user")
    lines += [
        f"This conversation has {turns} message{'s' if turns != 1 else ''} from you so far. "
        "Markdown renders as it streams, for example a code block:",
        "",
        "```python",
        "def greet(name):",
        '    return f"Hello, {name}!"',
        "```",
        "",
        "To chat with Claude, set `ANTHROPIC_API_KEY` (and `ANTHROPIC_BASE_URL` for a "
        "gateway) and restart the server.",
    ]
    return "\n".join(lines)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def demo_thinking(body: dict[str, Any]) -> str:
    turns = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
    return (
        "This is the offline demo's stand-in for extended thinking: no model is reasoning here. "
        f"The request asks for a thinking budget of {body['thinking'].get('budget_tokens')} tokens "
        f"and holds {turns} message{'s' if turns != 1 else ''} from the person. "
        "I will echo the last one and show some markdown."
    )


def _apply_limits(pieces: list[str], body: dict[str, Any]) -> tuple[list[str], str, str | None]:
    """Honour stop_sequences and max_tokens (one piece counts as one token)."""
    text = "".join(pieces)
    for stop in body.get("stop_sequences") or []:
        at = text.find(stop)
        if at >= 0:
            return re.findall(r"\S+\s*|\s+", text[:at]), "stop_sequence", stop
    limit = body.get("max_tokens")
    if isinstance(limit, int) and len(pieces) > limit:
        return pieces[:limit], "max_tokens", None
    return pieces, "end_turn", None


class _DemoStream(httpx.AsyncByteStream):
    def __init__(self, body: dict[str, Any]):
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reply = demo_reply(self.body)
        thinking = (self.body.get("thinking") or {}).get("type") == "enabled"
        input_tokens = max(1, len(json.dumps(self.body.get("messages", []))) // 4)
        yield sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_demo_{uuid.uuid4().hex[:20]}",
                    "type": "message",
                    "role": "assistant",
                    "model": DEMO_MODEL,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        )
        index = 0
        thought: list[str] = []
        if thinking:
            yield sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
            )
            thought = re.findall(r"\S+\s*|\s+", demo_thinking(self.body))
            for piece in thought:
                await asyncio.sleep(WORD_DELAY)
                yield sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}},
                )
            yield sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "offline-demo"}},
            )
            yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        yield sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        )
        yield sse("ping", {"type": "ping"})
        pieces, stop_reason, stop_sequence = _apply_limits(re.findall(r"\S+\s*|\s+", reply), self.body)
        for piece in pieces:
            await asyncio.sleep(WORD_DELAY)
            yield sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}},
            )
        yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
        yield sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": len(pieces) + len(thought)},
            },
        )
        yield sse("message_stop", {"type": "message_stop"})


class DemoTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request_id = f"req_demo_{uuid.uuid4().hex[:20]}"
        if request.method != "POST" or not request.url.path.endswith("/v1/messages"):
            return httpx.Response(
                404,
                headers={"request-id": request_id},
                json={
                    "type": "error",
                    "error": {"type": "not_found_error", "message": "The demo model only answers POST /v1/messages."},
                    "request_id": request_id,
                },
            )
        body = json.loads(await request.aread())
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream", "request-id": request_id},
            stream=_DemoStream(body),
        )
