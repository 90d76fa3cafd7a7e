"""Every fault of the upstream, and what is saved and shown for it."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from conversations.generation import sweep_once
from conversations.models import Conversation, Message
from conversations.upstream import UpstreamError, describe_error, is_retryable, retry_delay
from tests.conftest import open_socket, receive_until
from tests.fake_upstream import Gate, cut_after, error_reply, stream_error_after, text_reply

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle")]


@pytest.fixture(autouse=True)
def quick_retries(settings):
    settings.CHAT_RETRY_BASE_DELAY = 0.01


@database_sync_to_async
def new_conversation(user) -> Conversation:
    return Conversation.start(user)


@database_sync_to_async
def answer_of(conversation) -> Message:
    return conversation.messages.filter(role="assistant").order_by("-created_at").first()


async def ask(user, conversation, text="Hi"):
    socket = await open_socket(user, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    await receive_until(socket, "state")
    await socket.send_json_to({"action": "send", "text": text, "client_id": "c1"})
    events: list[dict] = []
    end = await receive_until(socket, "message.end", timeout=10, collect=events)
    return socket, events, end


async def start_held_answer(user, fake_upstream, pieces: list[str]):
    """Send a message whose answer streams its first piece, then waits for the gate."""
    gate = Gate()
    fake_upstream.enqueue(text_reply(pieces, gate_after=1, gate=gate))
    conversation = await new_conversation(user)
    socket = await open_socket(user, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "send", "text": "Hi", "client_id": "c1"})
    await asyncio.to_thread(gate.reached.wait, 5)
    return conversation, socket, gate


async def test_429_with_retry_after_is_retried_then_succeeds(alice, fake_upstream):
    fake_upstream.enqueue(error_reply(429, "rate_limit_error", "Slow down", retry_after="1"), text_reply("Done"))
    conversation = await new_conversation(alice)
    started = time.monotonic()
    socket, events, end = await ask(alice, conversation)
    await socket.disconnect()
    assert time.monotonic() - started >= 1.0, "retry-after was honoured"
    retries = [e for e in events if e["event"] == "message.retry"]
    assert len(retries) == 1 and retries[0]["delay"] == 1.0
    assert "rate-limiting" in retries[0]["reason"]
    assert end["status"] == "complete" and "".join(b["text"] for b in end["blocks"]) == "Done"
    assert len(fake_upstream.requests) == 2
    assert fake_upstream.requests[0].body == fake_upstream.requests[1].body


async def test_529_then_success(alice, fake_upstream):
    fake_upstream.enqueue(error_reply(529, "overloaded_error", "Overloaded"), text_reply("Recovered"))
    conversation = await new_conversation(alice)
    socket, events, end = await ask(alice, conversation)
    await socket.disconnect()
    assert [e["event"] for e in events].count("message.retry") == 1
    answer = await answer_of(conversation)
    assert answer.status == "complete" and answer.text == "Recovered"


async def test_529_every_time_gives_up_after_the_retries_with_a_clear_message(alice, fake_upstream, settings):
    fake_upstream.enqueue(*[error_reply(529, "overloaded_error", "Overloaded", request_id=f"req_{i}") for i in range(3)])
    conversation = await new_conversation(alice)
    socket, events, end = await ask(alice, conversation, text="Please answer")
    await socket.disconnect()
    assert len(fake_upstream.requests) == settings.CHAT_UPSTREAM_MAX_RETRIES + 1
    assert end["status"] == "error" and end["error"] == "The API is overloaded right now. Retry in a moment."
    assert end["request_id"] == "req_2"
    answer = await answer_of(conversation)
    assert answer.status == "error" and answer.error_type == "overloaded_error"
    user = await database_sync_to_async(lambda: conversation.messages.get(role="user"))()
    assert user.text == "Please answer", "the person's message is never lost"


@pytest.mark.parametrize("status, error_type", [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error")])
async def test_client_errors_are_not_retried(alice, fake_upstream, status, error_type):
    fake_upstream.enqueue(error_reply(status, error_type, "nope"))
    conversation = await new_conversation(alice)
    socket, events, end = await ask(alice, conversation)
    await socket.disconnect()
    assert len(fake_upstream.requests) == 1 and end["status"] == "error"
    assert end["error"] == describe_error(error_type, "nope")


async def test_mid_stream_error_event_keeps_partial_and_is_not_retried(alice, fake_upstream):
    fake_upstream.enqueue(stream_error_after(["Half ", "done"], "overloaded_error", "Overloaded"))
    conversation = await new_conversation(alice)
    socket, events, end = await ask(alice, conversation)
    await socket.disconnect()
    assert len(fake_upstream.requests) == 1
    assert end["status"] == "error" and "overloaded" in end["error"]
    answer = await answer_of(conversation)
    assert answer.text == "Half done" and answer.status == "error"


async def test_cut_connection_keeps_partial_and_says_so(alice, fake_upstream):
    fake_upstream.enqueue(cut_after(["Cut ", "here"]))
    conversation = await new_conversation(alice)
    socket, events, end = await ask(alice, conversation)
    await socket.disconnect()
    assert end["error"] == "The connection to the API broke before the answer was complete."
    answer = await answer_of(conversation)
    assert answer.text == "Cut here" and answer.error_type == "stream_interrupted"


async def test_upstream_that_stops_sending_times_out_with_partial_kept(alice, fake_upstream, settings):
    settings.CHAT_UPSTREAM_READ_TIMEOUT = 0.5
    gate = Gate(timeout=5)
    fake_upstream.enqueue(text_reply(["Silent ", "after ", "this"], gate_after=2, gate=gate))
    conversation = await new_conversation(alice)
    socket, events, end = await ask(alice, conversation)
    gate.open()
    await socket.disconnect()
    assert end["status"] == "error" and end["error_type"] == "stream_interrupted"
    answer = await answer_of(conversation)
    assert answer.text == "Silent after "


async def test_retry_action_writes_the_failed_answer_again(alice, fake_upstream):
    fake_upstream.enqueue(cut_after(["Broken"]), text_reply("Whole answer"))
    conversation = await new_conversation(alice)
    socket, _, end = await ask(alice, conversation)
    failed_id = end["message"]
    await socket.send_json_to({"action": "retry", "message": failed_id})
    start = await receive_until(socket, "message.start")
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert start["message"] == failed_id and end["message"] == failed_id
    assert end["status"] == "complete"
    answer = await answer_of(conversation)
    assert answer.text == "Whole answer" and answer.error == ""
    assert fake_upstream.requests[-1].body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


async def test_retry_of_a_complete_answer_is_refused(alice, fake_upstream):
    conversation = await new_conversation(alice)
    socket, _, end = await ask(alice, conversation)
    await socket.send_json_to({"action": "retry", "message": end["message"]})
    error = await receive_until(socket, "error")
    await socket.disconnect()
    assert "nothing to retry" in error["message"]


async def test_answer_whose_process_died_is_marked_interrupted_with_its_text(alice, settings):
    @database_sync_to_async
    def orphan():
        conversation = Conversation.start(alice)
        conversation.add_user_message("Hi")
        answer = conversation.start_assistant_message()
        answer.content = [{"type": "text", "text": "Written before the crash"}]
        answer.worker_channel = "generation.dead!abc"
        answer.save()
        Message.objects.filter(pk=answer.pk).update(updated_at=timezone.now() - timedelta(seconds=settings.CHAT_STALE_AFTER + 1))
        return conversation, answer

    conversation, answer = await orphan()
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    assert await sweep_once() >= 0  # the socket's own sweeper may have been first
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert end["status"] == "interrupted" and end["blocks"][0]["text"] == "Written before the crash"
    await database_sync_to_async(answer.refresh_from_db)()
    assert answer.status == "interrupted" and answer.text == "Written before the crash"
    assert answer.error == describe_error("interrupted")


async def test_live_answer_is_not_marked_interrupted(alice, fake_upstream, settings):
    settings.CHAT_HEARTBEAT_INTERVAL = 0.2
    settings.CHAT_STALE_AFTER = 1
    conversation, socket, gate = await start_held_answer(alice, fake_upstream, ["thinking ", "long"])
    await asyncio.sleep(1.5)  # longer than CHAT_STALE_AFTER, but the heartbeat keeps it fresh
    assert await sweep_once() == 0
    # The heartbeat is what other processes' sweepers see.
    answer = await answer_of(conversation)
    assert answer.status == "streaming"
    assert timezone.now() - answer.updated_at < timedelta(seconds=settings.CHAT_STALE_AFTER)
    gate.open()
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert end["status"] == "complete"


async def test_answer_running_in_this_process_is_not_interrupted_when_its_heartbeat_is_late(alice, fake_upstream, settings):
    """A process too busy to write heartbeats in time must not declare its own
    live answers dead (its sweeper runs in the same overloaded process)."""
    conversation, socket, gate = await start_held_answer(alice, fake_upstream, ["still ", "alive"])
    answer = await answer_of(conversation)
    stale = timezone.now() - timedelta(seconds=settings.CHAT_STALE_AFTER + 5)
    await database_sync_to_async(Message.objects.filter(pk=answer.pk).update)(updated_at=stale)
    assert await sweep_once() == 0
    gate.open()
    end = await receive_until(socket, "message.end")
    await socket.disconnect()
    assert end["status"] == "complete" and end["blocks"][0]["text"] == "still alive"


async def test_concurrent_answer_limit_names_the_limit(alice, fake_upstream, settings):
    settings.CHAT_MAX_CONCURRENT_GENERATIONS = 1
    gate = Gate()
    fake_upstream.enqueue(text_reply(["slow"], gate_after=0, gate=gate))
    first, second = await new_conversation(alice), await new_conversation(alice)
    socket_a = await open_socket(alice, f"/ws/chat/{first.public_id}/")
    socket_b = await open_socket(alice, f"/ws/chat/{second.public_id}/")
    assert (await socket_a.connect())[0] and (await socket_b.connect())[0]
    await socket_a.send_json_to({"action": "send", "text": "one", "client_id": "a"})
    await receive_until(socket_a, "message.start")
    await socket_b.send_json_to({"action": "send", "text": "two", "client_id": "b"})
    error = await receive_until(socket_b, "error")
    assert "You already have 1 answer being written at once, the most allowed." in error["message"]
    assert error["client_id"] == "b"
    gate.open()
    await receive_until(socket_a, "message.end")
    await socket_a.disconnect()
    await socket_b.disconnect()
    assert not await database_sync_to_async(second.messages.exists)()


async def test_messages_per_minute_limit_says_when_to_try_again(alice, fake_upstream, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    conversation = await new_conversation(alice)
    socket, _, _ = await ask(alice, conversation, "one")
    await socket.send_json_to({"action": "send", "text": "two", "client_id": "c2"})
    await receive_until(socket, "message.end")
    await socket.send_json_to({"action": "send", "text": "three", "client_id": "c3"})
    error = await receive_until(socket, "error")
    await socket.disconnect()
    assert "2 messages in the last minute" in error["message"] and "Try again in" in error["message"]


def test_retry_policy_matches_the_sdks():
    def err(status=None, error_type="api_error", retry_after=None):
        return UpstreamError("x", status=status, error_type=error_type, retry_after=retry_after)

    for status in (408, 409, 429, 500, 502, 503, 504, 529):
        assert is_retryable(err(status))
    for status in (400, 401, 402, 403, 404, 413):
        assert not is_retryable(err(status))
    assert is_retryable(err(error_type="connection_error"))
    assert not is_retryable(err(error_type="stream_interrupted"))
    assert retry_delay(err(429, retry_after=3.0), 1) == 3.0
    assert retry_delay(err(429, retry_after=600.0), 1, rand=0) == 0.5  # over a minute: ignored
    assert retry_delay(err(529), 1, rand=0) == 0.5 and retry_delay(err(529), 2, rand=0) == 1.0
    assert retry_delay(err(529), 10, rand=0) == 8.0 and retry_delay(err(529), 1, rand=1) == 0.375


async def test_saver_writes_a_slice_of_the_running_answers_longest_unwritten_first(monkeypatch, settings):
    """Hundreds of answers are not written in one call (that stalled every
    stream): each round takes at most a tenth of them, the longest unwritten
    first, and every answer is still written about every CHAT_SAVE_INTERVAL."""
    from types import SimpleNamespace

    from conversations import generation

    settings.CHAT_SAVE_INTERVAL = 1.0
    settings.CHAT_HEARTBEAT_INTERVAL = 5.0
    calls = []

    async def save_batch(partials, heartbeats):
        calls.append(([pk for pk, *_ in partials], heartbeats))

    monkeypatch.setattr(generation, "save_batch", save_batch)
    live = generation._live_here()
    now = time.monotonic()
    for pk in range(1, 31):
        answer = generation.Generation(message_pk=pk, message_id=str(pk), group="g", body={}, conversation_pk=1)
        answer.stream = SimpleNamespace(accumulator=SimpleNamespace(content=[{"type": "text", "text": "x"}], message={}))
        answer.version = 1  # changed since its last write
        answer.last_write = now - 1.0 - pk / 100  # the higher the pk, the longer unwritten
        if pk == 30:
            answer.version = answer.saved_version  # unchanged, but silent past the heartbeat interval
            answer.last_write = now - 6.0
        live[pk] = answer
    try:
        await generation.save_round()
        assert calls == [([29, 28], [30])]  # 3 of 30 (a tenth), the longest unwritten first
        for _ in range(9):
            await generation.save_round()
        written = [pk for partials, heartbeats in calls for pk in partials + heartbeats]
        assert sorted(written) == list(range(1, 31))  # ten rounds (one interval): every answer once
        await generation.save_round()
        assert len(calls) == 10  # nothing due again until its interval has passed
    finally:
        for pk in range(1, 31):
            live.pop(pk, None)
