"""SSE parsing and message accumulation in conversations/upstream.py, without a network.

Byte streams are served by an httpx transport, so they go through the same
httpx + httpx-sse + MessageAccumulator path as a real answer, chunked however a
test likes.
"""

from __future__ import annotations

import json

import httpx
import pytest

from conversations.demo import sse
from conversations.upstream import (
    API_VERSION,
    MessageStream,
    UpstreamConfig,
    UpstreamError,
    error_from_response,
)

CONFIG = UpstreamConfig(base_url="https://api.example.test", api_key="test-key")
BODY = {"model": "claude-haiku-4-5-20251001", "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hi"}]}
UNICODE_TEXT = "héllo → 世界 🎉"


# -- building streams ---------------------------------------------------------

def event(name: str, data: dict, *, newline: str = "\n") -> bytes:
    """One SSE event with raw UTF-8 in the JSON (unlike sse(), which escapes to ASCII)."""
    payload = json.dumps(data, ensure_ascii=False)
    return f"event: {name}{newline}data: {payload}{newline}{newline}".encode()


def message_start(usage: dict | None = None) -> dict:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage or {"input_tokens": 25, "output_tokens": 1,
                               "cache_creation_input_tokens": 7, "cache_read_input_tokens": 100},
        },
    }


def block_start(index: int, block: dict) -> dict:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def block_stop(index: int) -> dict:
    return {"type": "content_block_stop", "index": index}


def message_delta(output_tokens: int, stop_reason: str = "end_turn",
                  stop_sequence: str | None = None) -> dict:
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": output_tokens}}


PING = {"type": "ping"}
MESSAGE_STOP = {"type": "message_stop"}


def stream_bytes(*events: dict, newline: str = "\n") -> bytes:
    return b"".join(event(e["type"], e, newline=newline) for e in events)


def text_events(*pieces: str) -> list[dict]:
    return [block_start(0, {"type": "text", "text": ""})] + [
        delta(0, type="text_delta", text=piece) for piece in pieces
    ] + [block_stop(0)]


# The realistic answer: thinking then text, pings in between, non-ASCII text.
REALISTIC_EVENTS = [
    message_start(),
    PING,
    block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    delta(0, type="thinking_delta", thinking="The user greets me; "),
    PING,
    delta(0, type="thinking_delta", thinking="answer warmly → in kind."),
    delta(0, type="signature_delta", signature="EqQBCkYIBxgCKkA+sig=="),
    block_stop(0),
    block_start(1, {"type": "text", "text": ""}),
    delta(1, type="text_delta", text="héllo "),
    PING,
    delta(1, type="text_delta", text="→ 世界"),
    delta(1, type="text_delta", text=" 🎉\n\n**Done**."),
    block_stop(1),
    message_delta(output_tokens=57),
    MESSAGE_STOP,
]
REALISTIC_MESSAGE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
    "content": [
        {"type": "thinking", "thinking": "The user greets me; answer warmly → in kind.",
         "signature": "EqQBCkYIBxgCKkA+sig=="},
        {"type": "text", "text": "héllo → 世界 🎉\n\n**Done**."},
    ],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 57,
              "cache_creation_input_tokens": 7, "cache_read_input_tokens": 100},
}
REALISTIC_LF = stream_bytes(*REALISTIC_EVENTS)
REALISTIC_CRLF = stream_bytes(*REALISTIC_EVENTS, newline="\r\n")


# -- running streams ----------------------------------------------------------

class Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk


def client_serving(chunks: list[bytes]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream", "request-id": "req_1"},
                              stream=Chunks(chunks))
    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def run(chunks: list[bytes]) -> tuple[MessageStream, list[dict], UpstreamError | None]:
    """Stream the chunks; return the stream, the events it yielded and the error it raised."""
    events: list[dict] = []
    error = None
    async with client_serving(chunks) as client:
        async with MessageStream(client, CONFIG, BODY) as stream:
            try:
                async for data in stream:
                    events.append(data)
            except UpstreamError as exc:
                error = exc
    return stream, events, error


async def final_message(chunks: list[bytes]) -> dict:
    stream, _, error = await run(chunks)
    assert error is None, f"stream failed: {error!r}"
    assert stream.accumulator.finished
    return stream.accumulator.message


# -- events and deltas --------------------------------------------------------

async def test_realistic_stream_accumulates_thinking_text_stop_reason_and_usage():
    assert await final_message([REALISTIC_LF]) == REALISTIC_MESSAGE


async def test_stream_yields_every_event_in_order_including_pings():
    _, events, _ = await run([REALISTIC_LF])
    assert [e["type"] for e in events] == [e["type"] for e in REALISTIC_EVENTS]
    assert events[-1] == MESSAGE_STOP


async def test_demo_sse_helper_bytes_parse_the_same_as_raw_utf8():
    ascii_escaped = b"".join(sse(e["type"], e) for e in REALISTIC_EVENTS)
    assert b"\\u4e16" in ascii_escaped  # 世 escaped: a different byte stream, same meaning
    assert await final_message([ascii_escaped]) == REALISTIC_MESSAGE


async def test_pings_change_nothing_in_the_message():
    without_pings = stream_bytes(*[e for e in REALISTIC_EVENTS if e is not PING])
    assert await final_message([without_pings]) == REALISTIC_MESSAGE


async def test_usage_from_message_start_is_updated_by_message_delta_keeping_cache_fields():
    chunks = stream_bytes(message_start(), *text_events("Hi"), message_delta(output_tokens=42), MESSAGE_STOP)
    usage = (await final_message([chunks]))["usage"]
    assert usage == {"input_tokens": 25, "output_tokens": 42,
                     "cache_creation_input_tokens": 7, "cache_read_input_tokens": 100}


async def test_stop_sequence_and_stop_reason_come_from_message_delta():
    chunks = stream_bytes(message_start(), *text_events("1, 2, 3"),
                          message_delta(9, stop_reason="stop_sequence", stop_sequence="4"), MESSAGE_STOP)
    message = await final_message([chunks])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "4")


async def test_input_json_deltas_become_the_parsed_input_of_a_tool_use_block():
    chunks = stream_bytes(
        message_start(),
        *text_events("Let me look."),
        block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
        delta(1, type="input_json_delta", partial_json=""),
        delta(1, type="input_json_delta", partial_json='{"city": "Par'),
        delta(1, type="input_json_delta", partial_json='is", "days": [1, 2]}'),
        block_stop(1),
        message_delta(30, stop_reason="tool_use"),
        MESSAGE_STOP,
    )
    message = await final_message([chunks])
    assert message["content"][1] == {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                     "input": {"city": "Paris", "days": [1, 2]}}
    assert message["stop_reason"] == "tool_use"


async def test_citations_deltas_are_appended_to_the_text_blocks_citations():
    first = {"type": "char_location", "cited_text": "The sky is blue.", "document_index": 0,
             "document_title": "Facts", "start_char_index": 0, "end_char_index": 16}
    second = {**first, "cited_text": "Grass is green.", "start_char_index": 17, "end_char_index": 32}
    chunks = stream_bytes(
        message_start(),
        block_start(0, {"type": "text", "text": "", "citations": []}),
        delta(0, type="citations_delta", citation=first),
        delta(0, type="text_delta", text="The sky is blue"),
        delta(0, type="citations_delta", citation=second),
        block_stop(0),
        message_delta(8),
        MESSAGE_STOP,
    )
    block = (await final_message([chunks]))["content"][0]
    assert block == {"type": "text", "text": "The sky is blue", "citations": [first, second]}


async def test_citations_delta_creates_the_citations_list_when_the_block_has_none():
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0}
    chunks = stream_bytes(message_start(), block_start(0, {"type": "text", "text": ""}),
                          delta(0, type="citations_delta", citation=citation), block_stop(0),
                          message_delta(1), MESSAGE_STOP)
    assert (await final_message([chunks]))["content"][0]["citations"] == [citation]


async def test_citations_delta_after_a_block_with_null_citations_starts_a_list():
    # The official SDKs treat `citations: null` like a missing list (`if not content.citations`).
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0}
    chunks = stream_bytes(message_start(), block_start(0, {"type": "text", "text": "", "citations": None}),
                          delta(0, type="citations_delta", citation=citation), block_stop(0),
                          message_delta(1), MESSAGE_STOP)
    assert (await final_message([chunks]))["content"][0]["citations"] == [citation]


async def test_unknown_event_types_and_unknown_delta_types_are_ignored():
    noisy = list(REALISTIC_EVENTS)
    noisy.insert(9, {"type": "content_block_hologram", "index": 1, "shimmer": True})
    noisy.insert(11, delta(1, type="telepathy_delta", thought="ignore me"))
    assert await final_message([stream_bytes(*noisy)]) == REALISTIC_MESSAGE


async def test_error_event_raises_with_the_apis_type_and_message_and_keeps_partial_text():
    chunks = stream_bytes(message_start(), block_start(0, {"type": "text", "text": ""}),
                          delta(0, type="text_delta", text="Once upon "),
                          delta(0, type="text_delta", text="a time"),
                          {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    stream, _, error = await run([chunks])
    assert error is not None
    assert (error.error_type, error.message, error.request_id) == ("overloaded_error", "Overloaded", "req_1")
    assert stream.accumulator.content == [{"type": "text", "text": "Once upon a time"}]
    assert not stream.accumulator.finished


async def test_stream_ending_without_message_stop_is_interrupted_and_keeps_text():
    chunks = stream_bytes(message_start(), block_start(0, {"type": "text", "text": ""}),
                          delta(0, type="text_delta", text="Half an ans"))
    stream, _, error = await run([chunks])
    assert error is not None and error.error_type == "stream_interrupted"
    assert error.request_id == "req_1"
    assert stream.accumulator.content[0]["text"] == "Half an ans"


async def test_stream_missing_only_message_stop_is_still_interrupted():
    stream, _, error = await run([stream_bytes(*REALISTIC_EVENTS[:-1])])
    assert error is not None and error.error_type == "stream_interrupted"
    assert stream.accumulator.message["stop_reason"] == "end_turn"
    assert not stream.accumulator.finished


async def test_empty_stream_is_interrupted():
    stream, events, error = await run([])
    assert events == []
    assert error is not None and error.error_type == "stream_interrupted"
    assert not stream.accumulator.started


# -- chunk boundaries: the key property ---------------------------------------

@pytest.mark.parametrize("raw", [REALISTIC_LF, REALISTIC_CRLF], ids=["LF", "CRLF"])
async def test_every_split_position_gives_the_same_message(raw):
    assert await final_message([raw]) == REALISTIC_MESSAGE
    for i in range(1, len(raw)):
        message = await final_message([raw[:i], raw[i:]])
        where = f"{raw[max(0, i - 20):i]!r} | {raw[i:i + 20]!r}"
        assert message == REALISTIC_MESSAGE, f"split at byte {i}: {where}"


@pytest.mark.parametrize("raw", [REALISTIC_LF, REALISTIC_CRLF], ids=["LF", "CRLF"])
async def test_one_byte_chunks_give_the_same_message(raw):
    assert await final_message([raw[i:i + 1] for i in range(len(raw))]) == REALISTIC_MESSAGE


@pytest.mark.parametrize("char", ["é", "→", "世", "🎉"])
async def test_splitting_inside_a_multibyte_character_keeps_the_text_intact(char):
    raw = stream_bytes(message_start(), *text_events(UNICODE_TEXT), message_delta(5), MESSAGE_STOP)
    encoded = char.encode()
    start = raw.index(encoded)
    # every cut between the bytes of the character, and all its bytes as separate chunks
    splits = [[raw[:start + k], raw[start + k:]] for k in range(1, len(encoded))]
    splits.append([raw[:start]] + [bytes([b]) for b in encoded] + [raw[start + len(encoded):]])
    for chunks in splits:
        message = await final_message(chunks)
        assert message["content"][0]["text"] == UNICODE_TEXT


async def test_crlf_split_between_carriage_return_and_line_feed_is_one_line_ending():
    raw = REALISTIC_CRLF
    cuts = [i + 1 for i in range(len(raw)) if raw[i:i + 2] == b"\r\n"]
    assert len(cuts) == 3 * len(REALISTIC_EVENTS)
    pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]  # every chunk ends with "\r"
    assert await final_message(pieces) == REALISTIC_MESSAGE


# -- errors before the stream, and request headers -----------------------------

def test_error_from_response_takes_status_type_message_and_request_id_header():
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                       "request_id": "req_body"}).encode()
    error = error_from_response(529, httpx.Headers({"request-id": "req_header"}), body)
    assert (error.status, error.error_type, error.message) == (529, "overloaded_error", "Overloaded")
    assert error.request_id == "req_header"
    assert error.retry_after is None


def test_error_from_response_falls_back_to_the_request_id_in_the_body():
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                  "message": "max_tokens: Field required"},
                       "request_id": "req_body"}).encode()
    error = error_from_response(400, httpx.Headers(), body)
    assert (error.error_type, error.message, error.request_id) == (
        "invalid_request_error", "max_tokens: Field required", "req_body")


@pytest.mark.parametrize("header, seconds", [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("soon", None)])
def test_error_from_response_parses_retry_after_seconds(header, seconds):
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}'
    error = error_from_response(429, httpx.Headers({"retry-after": header}), body)
    assert error.error_type == "rate_limit_error"
    assert error.retry_after == seconds


def test_error_from_response_with_a_non_json_body_names_the_status():
    error = error_from_response(502, httpx.Headers(), b"<html>Bad Gateway</html>")
    assert error.status == 502
    assert error.error_type == "api_error"
    assert "502" in error.message


def test_api_key_is_sent_as_x_api_key_with_the_api_version():
    headers = UpstreamConfig(api_key="sk-ant-1").headers()
    assert headers["x-api-key"] == "sk-ant-1"
    assert headers["anthropic-version"] == API_VERSION == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


def test_auth_token_is_sent_as_bearer_authorization():
    headers = UpstreamConfig(auth_token="tok-1").headers()
    assert headers["authorization"] == "Bearer tok-1"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "x-api-key" not in headers


def test_no_credentials_means_the_offline_demo():
    assert UpstreamConfig().is_demo
    assert not UpstreamConfig(api_key="k").is_demo
    assert not UpstreamConfig(auth_token="t").is_demo
