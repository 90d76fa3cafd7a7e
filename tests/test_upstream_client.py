"""MessageStream against the fake Messages API over a real loopback socket."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from conversations.upstream import MessageStream, UpstreamConfig, UpstreamError
from tests.fake_upstream import (
    FakeUpstream,
    Gate,
    cut_after,
    error_reply,
    stream_error_after,
    text_reply,
)

BODY = {"model": "claude-haiku-4-5-20251001", "max_tokens": 256,
        "messages": [{"role": "user", "content": "Say hello"}]}


async def stream_answer(config: UpstreamConfig, body: dict = BODY):
    """Run one request; return (stream or None, events, error)."""
    events, stream = [], None
    async with httpx.AsyncClient() as client:
        try:
            async with MessageStream(client, config, body) as stream:
                async for data in stream:
                    events.append(data)
        except UpstreamError as exc:
            return stream, events, exc
    return stream, events, None


def config_for(fake: FakeUpstream, **credentials) -> UpstreamConfig:
    return UpstreamConfig(base_url=fake.url, **(credentials or {"api_key": "test-key"}))


def text_of(stream: MessageStream) -> str:
    return "".join(b.get("text", "") for b in stream.accumulator.content if b["type"] == "text")


async def test_request_is_a_streaming_post_with_version_and_api_key(fake_upstream):
    fake_upstream.enqueue(text_reply(["Hello", ", ", "world"]))
    stream, _, error = await stream_answer(config_for(fake_upstream))
    assert error is None
    (request,) = fake_upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["x-api-key"] == "test-key"
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert request.body == {**BODY, "stream": True}
    assert text_of(stream) == "Hello, world"
    assert stream.request_id == "req_fake_1"


async def test_auth_token_is_sent_as_bearer(fake_upstream):
    _, _, error = await stream_answer(config_for(fake_upstream, auth_token="gw-token"))
    assert error is None
    headers = fake_upstream.requests[0].headers
    assert headers["authorization"] == "Bearer gw-token"
    assert "x-api-key" not in headers


async def test_stream_true_is_forced_even_if_the_body_says_otherwise(fake_upstream):
    await stream_answer(config_for(fake_upstream), {**BODY, "stream": False})
    assert fake_upstream.requests[0].body["stream"] is True


async def test_full_answer_with_thinking_accumulates_over_the_socket(fake_upstream):
    fake_upstream.enqueue(text_reply("héllo → 世界 🎉", chunks=7, thinking="Greet back.", signature="sig-xyz",
                                     usage_in=30, usage_out=12, cache_read=100, message_id="msg_test"))
    stream, events, error = await stream_answer(config_for(fake_upstream))
    assert error is None
    assert events[-1]["type"] == "message_stop"
    assert stream.accumulator.message == {
        "id": "msg_test", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "thinking", "thinking": "Greet back.", "signature": "sig-xyz"},
                    {"type": "text", "text": "héllo → 世界 🎉"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 12,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100},
    }


async def test_overloaded_529_raises_with_status_type_message_and_request_id(fake_upstream):
    fake_upstream.enqueue(error_reply(529, "overloaded_error", "Overloaded", request_id="req_busy"))
    stream, events, error = await stream_answer(config_for(fake_upstream))
    assert stream is None and events == []
    assert (error.status, error.error_type, error.message, error.request_id) == (
        529, "overloaded_error", "Overloaded", "req_busy")
    assert error.retry_after is None


async def test_invalid_request_400_raises_with_the_apis_own_message(fake_upstream):
    message = "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
    fake_upstream.enqueue(error_reply(400, "invalid_request_error", message, request_id="req_bad"))
    _, _, error = await stream_answer(config_for(fake_upstream))
    assert (error.status, error.error_type, error.message, error.request_id) == (
        400, "invalid_request_error", message, "req_bad")


async def test_rate_limit_429_carries_retry_after_seconds(fake_upstream):
    fake_upstream.enqueue(error_reply(429, "rate_limit_error", "Rate limited", retry_after="3"))
    _, _, error = await stream_answer(config_for(fake_upstream))
    assert (error.status, error.error_type) == (429, "rate_limit_error")
    assert error.retry_after == 3.0


async def test_mid_stream_error_event_raises_and_keeps_partial_text(fake_upstream):
    fake_upstream.enqueue(stream_error_after(["Once ", "upon ", "a"], "overloaded_error", "Overloaded"))
    stream, events, error = await stream_answer(config_for(fake_upstream))
    assert (error.error_type, error.message) == ("overloaded_error", "Overloaded")
    assert error.request_id == "req_fake_1"
    assert text_of(stream) == "Once upon a"
    assert not stream.accumulator.finished
    deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == ["Once ", "upon ", "a"]


async def test_cut_stream_keeps_partial_text(fake_upstream):
    fake_upstream.enqueue(cut_after(["Half ", "an ", "answ"]))
    stream, _, error = await stream_answer(config_for(fake_upstream))
    assert error.error_type == "stream_interrupted"
    assert error.request_id == "req_fake_1"
    assert text_of(stream) == "Half an answ"
    assert not stream.accumulator.finished


async def test_a_new_request_after_a_cut_stream_succeeds(fake_upstream):
    fake_upstream.enqueue(cut_after(["x"]), text_reply(["fine"]))
    async with httpx.AsyncClient() as client:  # one client: a dead pooled connection must not be reused
        with pytest.raises(UpstreamError):
            async with MessageStream(client, config_for(fake_upstream), BODY) as stream:
                async for _ in stream:
                    pass
        async with MessageStream(client, config_for(fake_upstream), BODY) as stream:
            async for _ in stream:
                pass
    assert text_of(stream) == "fine"


async def test_connection_refused_raises_connection_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stream, _, error = await stream_answer(UpstreamConfig(base_url=f"http://127.0.0.1:{port}", api_key="k"))
    assert stream is None
    assert error.error_type == "connection_error"
    assert error.status is None


async def test_leaving_mid_stream_lets_the_server_carry_on(fake_upstream):
    gate = Gate()
    fake_upstream.enqueue(text_reply(["one ", "two ", "three"], gate_after=1, gate=gate))
    async with httpx.AsyncClient() as client:
        async with MessageStream(client, config_for(fake_upstream), BODY) as stream:
            async for data in stream:
                if data["type"] == "content_block_delta":
                    break  # the user pressed Stop
    assert gate.reached.wait(5)
    gate.open()
    # the server thread survived the hang-up and still answers
    _, _, error = await stream_answer(config_for(fake_upstream))
    assert error is None
    assert len(fake_upstream.requests) == 2


async def test_fake_upstream_serves_the_default_reply_and_the_model_list(fake_upstream):
    stream, _, error = await stream_answer(config_for(fake_upstream))
    assert error is None
    assert text_of(stream) == "Hello from the fake upstream."
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"{fake_upstream.url}/v1/models")).json()
        missing = await client.get(f"{fake_upstream.url}/v1/nothing")
    assert [m["id"] for m in models["data"]] == [
        "claude-opus-4-5-20251101", "claude-haiku-4-5-20251001", "claude-sonnet-4-20250514"]
    assert models["has_more"] is False
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    fake_upstream.wait_for_requests(3)
    with pytest.raises(AssertionError):
        fake_upstream.wait_for_requests(4, timeout=0.1)


def test_stop_returns_promptly_while_a_stream_waits_at_a_gate():
    fake = FakeUpstream().start()
    gate = Gate()
    fake.enqueue(text_reply(["a ", "b"], gate_after=1, gate=gate))
    outcome = []

    def client():
        try:
            outcome.append(httpx.post(f"{fake.url}/v1/messages", json={**BODY, "stream": True}, timeout=10).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    assert gate.reached.wait(5)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    assert gate.is_open
    thread.join(5)
    assert outcome  # the client got an answer or an error, not a hang
