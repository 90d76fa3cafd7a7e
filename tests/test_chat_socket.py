"""The chat websocket through chatsite.asgi.application, against the fake upstream."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from conversations.models import Conversation, Message
from tests.conftest import open_socket, receive_until
from tests.fake_upstream import Gate, cut_after, error_reply, stream_error_after, text_reply

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle")]


@database_sync_to_async
def new_conversation(user) -> Conversation:
    return Conversation.start(user)


@database_sync_to_async
def messages_of(conversation) -> list[Message]:
    return list(conversation.messages.order_by("created_at", "pk"))


async def connect(user, conversation=None):
    path = f"/ws/chat/{conversation.public_id}/" if conversation else "/ws/chat/new/"
    communicator = await open_socket(user, path)
    connected, code = await communicator.connect()
    assert connected, f"refused with {code}"
    if conversation is not None:
        state = await communicator.receive_json_from()
        assert state["event"] == "state"
    return communicator


def answer_text(events: list[dict]) -> str:
    return "".join(part["text"] for e in events if e["event"] == "message.delta" for part in e["parts"] if part["type"] == "text")


async def test_send_streams_coalesced_deltas_and_saves_the_answer_with_usage(alice, fake_upstream):
    pieces = [f"word{i} " for i in range(60)]
    fake_upstream.enqueue(text_reply(pieces, delay=0.002, usage_in=21, usage_out=60, cache_read=5))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)

    await socket.send_json_to({"action": "send", "text": "Hello", "client_id": "c1"})
    events: list[dict] = []
    end = await receive_until(socket, "message.end", collect=events)
    await socket.disconnect()

    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["message.user", "message.start"]
    user_event = events[0]
    assert user_event["client_id"] == "c1" and user_event["message"]["text"] == "Hello"
    deltas = [e for e in events if e["event"] == "message.delta"]
    assert 1 <= len(deltas) < len(pieces), "deltas are coalesced, not one per token"
    assert [e["seq"] for e in events[1:]] == list(range(len(events) - 1)), "sequence numbers have no gap"
    assert answer_text(events) == "".join(pieces)
    assert end["status"] == "complete" and end["stop_reason"] == "end_turn"
    assert end["usage"]["input_tokens"] == 21 and end["usage"]["output_tokens"] == 60
    assert end["usage"]["cache_read_input_tokens"] == 5

    user, answer = await messages_of(conversation)
    assert user.role == "user" and user.text == "Hello"
    assert answer.role == "assistant" and answer.status == "complete"
    assert answer.text == "".join(pieces)
    assert (answer.input_tokens, answer.output_tokens, answer.cache_read_input_tokens) == (21, 60, 5)
    assert answer.upstream_id.startswith("msg_") and answer.request_id.startswith("req_")

    sent = fake_upstream.requests[-1]
    assert sent.body["stream"] is True
    assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    assert sent.headers["x-api-key"] == "test-key"


async def test_user_message_is_saved_before_the_upstream_answers(alice, fake_upstream):
    gate = Gate()
    fake_upstream.enqueue(text_reply(["a", "b"], gate_after=0, gate=gate))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "Keep me", "client_id": "c1"})
    await receive_until(socket, "message.start")
    await asyncio.to_thread(gate.reached.wait, 5)
    saved = await messages_of(conversation)
    assert saved[0].text == "Keep me" and saved[1].status == "streaming"
    gate.open()
    await receive_until(socket, "message.end")
    await socket.disconnect()


async def test_new_chat_socket_creates_the_conversation_on_first_send(alice, fake_upstream):
    fake_upstream.enqueue(text_reply("Hi there"))
    socket = await connect(alice)
    await socket.send_json_to({"action": "send", "text": "Plan a picnic for Saturday", "client_id": "c1"})
    created = await receive_until(socket, "conversation.created")
    user_event = await receive_until(socket, "message.user")
    await receive_until(socket, "message.end")
    await socket.disconnect()
    conversation = await database_sync_to_async(Conversation.objects.get)(public_id=created["id"])
    assert created["url"] == f"/c/{conversation.public_id}/"
    assert conversation.title == "Plan a picnic for Saturday"
    assert user_event["conversation"]["title"] == "Plan a picnic for Saturday"


async def test_stop_keeps_partial_text_marked_stopped(alice, fake_upstream):
    gate = Gate()
    fake_upstream.enqueue(text_reply(["Partial ", "answer ", "never ", "seen"], gate_after=2, gate=gate))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "Go", "client_id": "c1"})
    events: list[dict] = []
    await receive_until(socket, "message.delta", collect=events)
    await asyncio.to_thread(gate.reached.wait, 5)
    await asyncio.sleep(0.1)
    await socket.send_json_to({"action": "stop"})
    end = await receive_until(socket, "message.end", collect=events)
    gate.open()
    await socket.disconnect()

    assert end["status"] == "stopped"
    assert "".join(b["text"] for b in end["blocks"]) == "Partial answer "
    _, answer = await messages_of(conversation)
    assert answer.status == "stopped" and answer.text == "Partial answer "


async def test_second_socket_joining_mid_stream_gets_text_so_far_then_the_rest(alice, fake_upstream):
    gate = Gate()
    pieces = ["One ", "two ", "three ", "four ", "five ", "six"]
    fake_upstream.enqueue(text_reply(pieces, gate_after=3, gate=gate))
    conversation = await new_conversation(alice)
    first = await connect(alice, conversation)
    await first.send_json_to({"action": "send", "text": "Count", "client_id": "c1"})
    await asyncio.to_thread(gate.reached.wait, 5)
    await asyncio.sleep(0.15)  # the first three pieces are flushed

    second = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await second.connect())[0]
    state = await second.receive_json_from()
    assert state["event"] == "state" and len(state["streaming"]) == 1
    snapshot = await receive_until(second, "message.snapshot")
    assert snapshot["parts"][0]["text"] == "One two three "
    gate.open()

    later: list[dict] = []
    end = await receive_until(second, "message.end", collect=later)
    rest = "".join(
        p["text"] for e in later if e["event"] == "message.delta" and e["seq"] > snapshot["seq"] for p in e["parts"]
    )
    assert snapshot["parts"][0]["text"] + rest == "".join(pieces), "no gap and no repeated text"
    assert "".join(b["text"] for b in end["blocks"]) == "".join(pieces)
    await receive_until(first, "message.end")
    await first.disconnect()
    await second.disconnect()


async def test_closing_the_socket_does_not_stop_the_answer(alice, fake_upstream):
    gate = Gate()
    fake_upstream.enqueue(text_reply(["still ", "arrives"], gate_after=1, gate=gate))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "Hi", "client_id": "c1"})
    await receive_until(socket, "message.start")
    await socket.disconnect()
    gate.open()
    from conversations.generation import wait_for_generations

    await wait_for_generations()
    _, answer = await messages_of(conversation)
    assert answer.status == "complete" and answer.text == "still arrives"


async def test_upstream_error_status_is_saved_and_shown(alice, fake_upstream):
    fake_upstream.enqueue(error_reply(400, "invalid_request_error", "max_tokens: too large", request_id="req_busy"))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "Hi", "client_id": "c1"})
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert end["status"] == "error" and end["error_type"] == "invalid_request_error"
    assert end["error"] == "The API refused the request: max_tokens: too large"
    assert end["request_id"] == "req_busy"
    user, answer = await messages_of(conversation)
    assert user.text == "Hi", "the person's message is never lost"
    assert answer.status == "error" and answer.request_id == "req_busy"


@pytest.mark.parametrize("script", [stream_error_after(["Half ", "an "]), cut_after(["Half ", "an "])])
async def test_failure_mid_stream_keeps_the_partial_answer(alice, fake_upstream, script):
    fake_upstream.enqueue(script)
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "Hi", "client_id": "c1"})
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert end["status"] == "error"
    _, answer = await messages_of(conversation)
    assert answer.status == "error" and answer.text == "Half an "
    assert answer.error


async def test_history_is_resent_each_turn(alice, fake_upstream):
    fake_upstream.enqueue(text_reply("First answer"), text_reply("Second answer"))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "First", "client_id": "c1"})
    await receive_until(socket, "message.end")
    await socket.send_json_to({"action": "send", "text": "Second", "client_id": "c2"})
    await receive_until(socket, "message.end")
    await socket.disconnect()
    assert fake_upstream.requests[-1].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "First"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "First answer"}]},
        {"role": "user", "content": [{"type": "text", "text": "Second"}]},
    ]


async def test_sending_while_an_answer_streams_is_refused_and_nothing_is_lost(alice, fake_upstream):
    gate = Gate()
    fake_upstream.enqueue(text_reply(["slow"], gate_after=0, gate=gate))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "One", "client_id": "c1"})
    await receive_until(socket, "message.start")
    await socket.send_json_to({"action": "send", "text": "Two", "client_id": "c2"})
    error = await receive_until(socket, "error")
    assert error["client_id"] == "c2" and "Wait for the current answer" in error["message"]
    gate.open()
    await receive_until(socket, "message.end")
    await socket.disconnect()
    assert [m.text for m in await messages_of(conversation)] == ["One", "slow"]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"action": "send", "text": "   "}, "Type a message"),
        ({"action": "send"}, "Type a message"),
        ({"action": "fly"}, "Unknown action"),
    ],
)
async def test_bad_input_gets_a_clear_error(alice, payload, message):
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to(payload)
    error = await receive_until(socket, "error")
    await socket.disconnect()
    assert message in error["message"]
    assert await messages_of(conversation) == []


async def test_overlong_message_is_refused_with_its_length(alice, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "x" * 11, "client_id": "c1"})
    error = await receive_until(socket, "error")
    await socket.disconnect()
    assert "11 characters" in error["message"] and "10" in error["message"]


async def test_outsider_socket_is_refused(alice, bob):
    conversation = await new_conversation(alice)
    socket = await open_socket(bob, f"/ws/chat/{conversation.public_id}/")
    connected, code = await socket.connect()
    assert not connected and code == 4404


async def test_anonymous_socket_is_refused(alice):
    conversation = await new_conversation(alice)
    for path in (f"/ws/chat/{conversation.public_id}/", "/ws/chat/new/"):
        socket = await open_socket(None, path)
        connected, code = await socket.connect()
        assert not connected and code == 4401


async def test_outsider_cannot_stop_or_see_someone_elses_answer(alice, bob, fake_upstream):
    gate = Gate()
    fake_upstream.enqueue(text_reply(["private ", "words"], gate_after=1, gate=gate))
    conversation = await new_conversation(alice)
    owner = await connect(alice, conversation)
    await owner.send_json_to({"action": "send", "text": "secret", "client_id": "c1"})
    await asyncio.to_thread(gate.reached.wait, 5)
    intruder = await connect(bob)  # bob's own new-chat socket
    await intruder.send_json_to({"action": "stop"})
    await asyncio.sleep(0.1)
    assert await intruder.receive_nothing(timeout=0.2)
    gate.open()
    end = await receive_until(owner, "message.end")
    assert end["status"] == "complete"
    await owner.disconnect()
    await intruder.disconnect()


async def test_busy_process_sends_text_at_once_and_the_markdown_when_due(alice, fake_upstream, settings):
    # A render budget so small that, after its first rendering, the answer's
    # markdown is rendered again only at the end: the text must not wait for it.
    settings.CHAT_RENDER_BUDGET = 1e-9
    settings.CHAT_MAX_RENDER_INTERVAL = 60
    pieces = ["Some **bold", "** words\n\n", "```python\n", "x = 1\n", "```\n\nthe end"]
    fake_upstream.enqueue(text_reply(pieces, delay=0.05))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "Hi", "client_id": "c1"})
    events: list[dict] = []
    end = await receive_until(socket, "message.end", collect=events)
    await socket.disconnect()

    parts = [part for e in events if e["event"] == "message.delta" for part in e["parts"] if part["type"] == "text"]
    assert answer_text(events) == "".join(pieces)
    text_only = [part for part in parts if "tail" not in part]
    assert len(text_only) >= 3 and all(part["text"] and "append" not in part for part in text_only)
    last = parts[-1]
    assert "tail" in last, "the last delta brings the final rendering"
    html = "".join(part.get("append", "") for part in parts) + last["tail"]
    assert "<strong>bold</strong> words" in html and "<pre" in html and "the end" in last["tail"]
    assert end["status"] == "complete" and "<strong>bold</strong>" in end["blocks"][0]["html"]


async def test_partial_answer_is_saved_while_it_streams(alice, fake_upstream, settings):
    gate = Gate()
    fake_upstream.enqueue(text_reply(["Saved ", "while ", "streaming", " end"], gate_after=3, gate=gate))
    conversation = await new_conversation(alice)
    socket = await connect(alice, conversation)
    await socket.send_json_to({"action": "send", "text": "Hi", "client_id": "c1"})
    await asyncio.to_thread(gate.reached.wait, 5)
    await asyncio.sleep(settings.CHAT_SAVE_INTERVAL + 0.3)
    _, answer = await messages_of(conversation)
    assert answer.status == "streaming" and answer.text == "Saved while streaming"
    gate.open()
    await receive_until(socket, "message.end")
    await socket.disconnect()


def test_a_new_chats_first_turn_is_a_few_statements_and_names_its_worker(alice, django_assert_max_num_queries):
    """Many people sending at once queue on one database thread: the first
    message of a new chat must stay cheap (it was 18 statements), and its
    answer names the channel its generation listens on from the start, so
    that Stop from any process reaches it before the upstream has answered."""
    from conversations.consumers import _begin_turn

    with django_assert_max_num_queries(10):
        turn = _begin_turn(alice, None, "Hello", None, [], "specific.abc!def")
    answer = Message.objects.get(pk=turn["assistant_pk"])
    assert answer.status == Message.Status.STREAMING and answer.worker_channel == "specific.abc!def"
    assert turn["body"]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    assert turn["user"]["attachments"] == [] and turn["user"]["article"]
