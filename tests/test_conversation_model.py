"""The history sent upstream, built from saved messages."""

import pytest

from conversations.models import Conversation, Message, title_from_text

pytestmark = pytest.mark.django_db


def add_answer(conversation, content, status="complete"):
    answer = conversation.start_assistant_message()
    answer.content = content
    answer.status = status
    answer.save()
    return answer


def test_request_body_has_model_params_and_alternating_turns(alice):
    conversation = Conversation.start(alice)
    conversation.add_user_message("Hi")
    add_answer(conversation, [{"type": "text", "text": "Hello!"}])
    conversation.add_user_message("Again")
    body = conversation.request_body()
    assert body["model"] == conversation.model and body["max_tokens"] > 0
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]


def test_thinking_blocks_are_resent_byte_for_byte(alice):
    thinking = {"type": "thinking", "thinking": "Let me think…  ", "signature": "EqQBCkYIARgCIkB+/=="}
    redacted = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
    conversation = Conversation.start(alice)
    conversation.add_user_message("Q")
    add_answer(conversation, [thinking, redacted, {"type": "text", "text": "A"}])
    conversation.add_user_message("Q2")
    assistant_turn = conversation.api_messages()[1]
    assert assistant_turn["content"][0] == thinking
    assert assistant_turn["content"][1] == redacted


def test_failed_answer_without_text_is_left_out_and_user_turns_merge(alice):
    conversation = Conversation.start(alice)
    conversation.add_user_message("First try")
    add_answer(conversation, [], status="error")
    conversation.add_user_message("Second try")
    assert conversation.api_messages() == [
        {"role": "user", "content": [{"type": "text", "text": "First try"}, {"type": "text", "text": "Second try"}]}
    ]


def test_stopped_answer_is_resent_without_trailing_space_or_unsigned_thinking(alice):
    conversation = Conversation.start(alice)
    conversation.add_user_message("Q")
    add_answer(conversation, [{"type": "text", "text": "Partial answer   "}, {"type": "thinking", "thinking": "cut"}], status="stopped")
    conversation.add_user_message("Go on")
    assert conversation.api_messages()[1] == {"role": "assistant", "content": [{"type": "text", "text": "Partial answer"}]}


def test_empty_text_blocks_are_never_sent(alice):
    conversation = Conversation.start(alice)
    conversation.add_user_message("Q")
    add_answer(conversation, [{"type": "text", "text": ""}, {"type": "text", "text": "ok"}])
    conversation.add_user_message("Q2")
    assert conversation.api_messages()[1]["content"] == [{"type": "text", "text": "ok"}]


def test_title_comes_from_the_first_message():
    assert title_from_text("  Plan   a\npicnic ") == "Plan a picnic"
    long = title_from_text("word " * 40)
    assert len(long) <= 81 and long.endswith("…")


def test_first_message_titles_the_conversation_and_touches_it(alice):
    conversation = Conversation.start(alice)
    before = conversation.updated_at
    conversation.add_user_message("Summarise this article")
    conversation.refresh_from_db()
    assert conversation.title == "Summarise this article"
    assert conversation.updated_at >= before
    conversation.add_user_message("Another")
    conversation.refresh_from_db()
    assert conversation.title == "Summarise this article"


def test_message_status_values():
    assert set(Message.Status.values) == {"streaming", "complete", "stopped", "error", "interrupted"}
