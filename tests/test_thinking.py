"""Extended thinking: streamed live, stored byte for byte, sent back unchanged."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from conversations.models import Conversation
from tests.conftest import open_socket, receive_until
from tests.fake_upstream import text_reply

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle")]

THINKING_SETTINGS = {
    "model": "claude-haiku-4-5-20251001", "max_tokens": "4096", "system": "", "temperature": "", "top_p": "",
    "top_k": "", "stop_sequences": "", "thinking": True, "thinking_budget": "2048",
}


async def test_three_turn_thinking_conversation_is_accepted_by_a_strict_upstream(alice, fake_upstream):
    fake_upstream.strict_thinking = True
    fake_upstream.enqueue(
        # Trailing spaces, unicode and odd signatures: any re-encoding would show.
        text_reply("First answer.", thinking="Let me think…  about “this” \n carefully ", signature="EqQBCkYIARgC+/=="),
        text_reply("Second answer.", thinking="Second thoughts", signature="sig-2", redacted="EmwKAhgBEgy3va3pzix/LafPsn4a"),
        text_reply("Third answer.", thinking="Third", signature="sig-3"),
    )
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    ends = []
    for n, text in enumerate(["One", "Two", "Three"]):
        await socket.send_json_to({"action": "send", "text": text, "client_id": f"c{n}", "settings": THINKING_SETTINGS})
        ends.append(await receive_until(socket, "message.end"))
    await socket.disconnect()

    assert [e["status"] for e in ends] == ["complete"] * 3, [e.get("error") for e in ends]
    third = fake_upstream.requests[-1].body
    assert third["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    first_answer = third["messages"][1]["content"]
    assert first_answer[0] == {"type": "thinking", "thinking": "Let me think…  about “this” \n carefully ", "signature": "EqQBCkYIARgC+/=="}
    second_answer = third["messages"][3]["content"]
    assert second_answer[1] == {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
    thinking_block = ends[0]["blocks"][0]
    assert thinking_block["type"] == "thinking" and "seconds" in thinking_block
    assert '<details class="thinking"' in ends[0]["article"] and "<summary" in ends[0]["article"]


async def test_strict_upstream_refuses_an_altered_thinking_block(alice, fake_upstream):
    """The fake upstream really checks: change one byte and it answers 400."""
    fake_upstream.strict_thinking = True
    fake_upstream.enqueue(text_reply("Answer.", thinking="Original thought", signature="sig-1"))
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "send", "text": "One", "client_id": "c1", "settings": THINKING_SETTINGS})
    await receive_until(socket, "message.end")

    @database_sync_to_async
    def tamper():
        answer = conversation.messages.get(role="assistant")
        answer.content[0]["thinking"] = "Original thought."
        answer.save()

    await tamper()
    await socket.send_json_to({"action": "send", "text": "Two", "client_id": "c2", "settings": THINKING_SETTINGS})
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert end["status"] == "error" and "thinking blocks cannot be modified" in end["error"]


async def test_thinking_streams_before_the_answer(alice, fake_upstream):
    fake_upstream.enqueue(text_reply(["The ", "answer"], thinking="Pondering deeply", signature="s"))
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "send", "text": "Q", "client_id": "c1", "settings": THINKING_SETTINGS})
    events: list[dict] = []
    await receive_until(socket, "message.end", collect=events)
    await socket.disconnect()
    parts = [p for e in events if e["event"] == "message.delta" for p in e["parts"]]
    kinds = [p["type"] for p in parts if p["text"]]
    assert kinds[0] == "thinking" and kinds[-1] == "text"
    assert "".join(p["text"] for p in parts if p["type"] == "thinking") == "Pondering deeply"


async def test_invalid_settings_are_refused_before_anything_is_sent(alice, fake_upstream):
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    bad = {**THINKING_SETTINGS, "temperature": "0.5"}
    await socket.send_json_to({"action": "send", "text": "Keep me", "client_id": "c1", "settings": bad})
    error = await receive_until(socket, "error")
    await socket.disconnect()
    assert error["client_id"] == "c1"
    assert error["fields"] == {"temperature": "With extended thinking on, Temperature must be 1 or left empty."}
    assert error["message"] == "Not sent: With extended thinking on, Temperature must be 1 or left empty."
    assert fake_upstream.requests == []
    assert not await database_sync_to_async(conversation.messages.exists)()


async def test_settings_are_sent_and_become_the_defaults_of_a_new_chat(alice, fake_upstream):
    chosen = {**THINKING_SETTINGS, "thinking": False, "temperature": "0.3", "top_k": "40", "system": "Be brief.",
              "stop_sequences": "END\n###", "max_tokens": "1000"}
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "send", "text": "Hi", "client_id": "c1", "settings": chosen})
    await receive_until(socket, "message.end")
    await socket.disconnect()
    sent = fake_upstream.requests[-1].body
    assert sent["model"] == "claude-haiku-4-5-20251001" and sent["max_tokens"] == 1000
    assert sent["temperature"] == 0.3 and sent["top_k"] == 40 and "top_p" not in sent
    assert sent["system"] == "Be brief." and sent["stop_sequences"] == ["END", "###"]
    assert "thinking" not in sent
    fresh = await database_sync_to_async(Conversation.start)(alice)
    assert fresh.model == "claude-haiku-4-5-20251001" and fresh.params["temperature"] == 0.3
