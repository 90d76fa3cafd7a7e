"""The offline demo model answers through the real client and SSE parser."""

import httpx
import pytest

from conversations.demo import DemoTransport
from conversations.upstream import MessageStream, UpstreamConfig


@pytest.fixture(autouse=True)
def fast_demo(monkeypatch):
    monkeypatch.setattr("conversations.demo.WORD_DELAY", 0)


async def answer(body):
    config = UpstreamConfig()
    assert config.is_demo
    async with httpx.AsyncClient(transport=DemoTransport()) as client:
        async with MessageStream(client, config, body) as stream:
            events = [event async for event in stream]
    return stream.accumulator.message, events


def user(text):
    return {"role": "user", "content": [{"type": "text", "text": text}]}


async def test_demo_reply_is_labelled_and_echoes_the_message():
    message, events = await answer({"model": "m", "max_tokens": 4096, "messages": [user("Hello *there*")]})
    text = message["content"][0]["text"]
    assert text.startswith("**Offline demo model.**") and "> Hello *there*" in text
    assert message["stop_reason"] == "end_turn" and message["usage"]["output_tokens"] > 10
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]


async def test_demo_describes_attachments():
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 4000}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "B" * 8000}},
        {"type": "text", "text": "What is this?"},
    ]
    message, _ = await answer({"model": "m", "max_tokens": 4096, "messages": [{"role": "user", "content": content}]})
    text = message["content"][0]["text"]
    assert "an image (image/png, about 3 KB)" in text and "a document (application/pdf, about 6 KB)" in text


async def test_demo_thinks_when_asked_and_honours_max_tokens_and_stop_sequences():
    body = {"model": "m", "max_tokens": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": [user("Hi")]}
    message, _ = await answer(body)
    assert message["content"][0]["type"] == "thinking" and message["content"][0]["signature"] == "offline-demo"
    assert message["stop_reason"] == "max_tokens"
    message, _ = await answer({"model": "m", "max_tokens": 4096, "stop_sequences": ["You wrote"], "messages": [user("Hi")]})
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "You wrote"
    assert "You wrote" not in message["content"][0]["text"]
