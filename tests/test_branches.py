"""Branches: regenerating an answer or editing a question makes a new version;
the old one stays a "‹ ›" away, and only the visible path goes upstream."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from conversations.models import Conversation
from tests.conftest import open_socket, receive_until
from tests.fake_upstream import text_reply

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle")]


def texts(messages):
    return [{"role": m["role"], "text": "".join(b["text"] for b in m["content"] if b["type"] == "text")} for m in messages]


@database_sync_to_async
def visible(conversation):
    conversation.refresh_from_db()
    return [(m.role, m.text, m.branch["index"], m.branch["count"]) for m in conversation.visible_messages()]


async def start(alice):
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    return conversation, socket


async def say(socket, text):
    await socket.send_json_to({"action": "send", "text": text, "client_id": text})
    return await receive_until(socket, "message.end")


async def test_regenerate_makes_a_second_version_and_sends_the_path_to_it(alice, fake_upstream):
    fake_upstream.enqueue(text_reply("Paris."), text_reply("Lyon is nice."), text_reply("It is Paris."))
    conversation, socket = await start(alice)
    await say(socket, "Capital of France?")
    second = await say(socket, "And a second city?")
    await socket.send_json_to({"action": "regenerate", "message": second["message"], "client_id": "r"})
    replaced = await receive_until(socket, "transcript.replace")
    start_event = await receive_until(socket, "message.start")
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert start_event["message"] != second["message"] and end["status"] == "complete"
    assert 'aria-label="Previous version"' in replaced["html"] and "2/2" in replaced["html"]
    assert texts(fake_upstream.requests[-1].body["messages"]) == [
        {"role": "user", "text": "Capital of France?"},
        {"role": "assistant", "text": "Paris."},
        {"role": "user", "text": "And a second city?"},
    ]
    assert await visible(conversation) == [
        ("user", "Capital of France?", 1, 1),
        ("assistant", "Paris.", 1, 1),
        ("user", "And a second city?", 1, 1),
        ("assistant", "It is Paris.", 2, 2),
    ]


async def test_edit_makes_a_new_question_and_switching_brings_the_old_branch_back(alice, fake_upstream):
    fake_upstream.enqueue(text_reply("One."), text_reply("Two."), text_reply("Three."), text_reply("Four."))
    conversation, socket = await start(alice)
    first = await say(socket, "First question")
    await say(socket, "Second question")
    user_messages = await database_sync_to_async(
        lambda: list(conversation.messages.filter(role="user").order_by("created_at").values_list("public_id", flat=True))
    )()
    await socket.send_json_to({"action": "edit", "message": str(user_messages[0]), "text": "Edited first", "client_id": "e"})
    await receive_until(socket, "transcript.replace")
    await receive_until(socket, "message.end")
    assert texts(fake_upstream.requests[-1].body["messages"]) == [{"role": "user", "text": "Edited first"}]
    assert await visible(conversation) == [("user", "Edited first", 2, 2), ("assistant", "Three.", 1, 1)]

    await socket.send_json_to({"action": "switch", "message": str(user_messages[0])})
    await receive_until(socket, "transcript.replace")
    assert await visible(conversation) == [
        ("user", "First question", 1, 2),
        ("assistant", "One.", 1, 1),
        ("user", "Second question", 1, 1),
        ("assistant", "Two.", 1, 1),
    ]
    await say(socket, "Third question")  # continues the branch on screen
    assert texts(fake_upstream.requests[-1].body["messages"])[-3:] == [
        {"role": "user", "text": "Second question"},
        {"role": "assistant", "text": "Two."},
        {"role": "user", "text": "Third question"},
    ]
    await socket.disconnect()
    assert first["status"] == "complete"


async def test_branch_actions_refuse_messages_of_other_conversations(alice, bob, fake_upstream):
    fake_upstream.enqueue(text_reply("Mine."))
    theirs, their_socket = await start(bob)
    other = await say(their_socket, "Bob's question")
    await their_socket.disconnect()
    conversation, socket = await start(alice)
    for action in ("regenerate", "switch"):
        await socket.send_json_to({"action": action, "message": other["message"]})
        error = await receive_until(socket, "error")
        assert error["message"] == "That message is not in this conversation."
    await socket.disconnect()
