"""Full-text search over titles and message text (run on SQLite here, and on
PostgreSQL by test_search_on_postgresql.py)."""

import pytest

from conversations.models import Conversation
from conversations.search import search

pytestmark = pytest.mark.django_db


def chat(owner, title, *texts):
    conversation = Conversation.start(owner)
    for text in texts:
        conversation.add_user_message(text)
    Conversation.objects.filter(pk=conversation.pk).update(title=title)
    return conversation


def test_finds_message_text_with_the_match_marked(alice):
    conversation = chat(alice, "Cooking", "How long should I boil pasta for carbonara?")
    hits = search(alice, "carbonara")
    assert len(hits) == 1
    hit = hits[0]
    assert hit.conversation_id == str(conversation.public_id) and hit.message_id
    assert "<mark>carbonara</mark>" in hit.snippet.lower()
    assert hit.url == f"/c/{conversation.public_id}/?m={hit.message_id}#m-{hit.message_id}"


def test_finds_titles_and_word_prefixes(alice):
    chat(alice, "Quarterly budget review", "numbers please")
    hits = search(alice, "budg")
    assert [h.title for h in hits] == ["Quarterly budget review"] and hits[0].message_id is None
    assert "<mark>" in hits[0].snippet


def test_every_word_must_match(alice):
    chat(alice, "a", "the red fox jumps")
    chat(alice, "b", "the red car")
    assert {h.title for h in search(alice, "red fox")} == {"a"}


def test_only_my_conversations_are_searched(alice, bob):
    chat(bob, "Bob's secret", "the password is swordfish")
    assert search(alice, "swordfish") == [] and search(alice, "secret") == []
    assert len(search(bob, "swordfish")) == 1


def test_snippets_are_escaped(alice):
    chat(alice, "x", "look <script>alert(1)</script> here marker")
    snippet = search(alice, "marker")[0].snippet
    assert "<script" not in snippet  # escaped (SQLite) or dropped by ts_headline (PostgreSQL)


def test_query_syntax_is_not_interpreted(alice):
    chat(alice, "x", "plain words here")
    for query in ['"', "NOT", "AND OR", "*", "near(", "title:plain", "plain)"]:
        search(alice, query)  # never raises
    assert len(search(alice, 'plain"')) == 1


def test_answers_are_found_after_they_finish(alice):
    conversation = chat(alice, "x", "question")
    answer = conversation.start_assistant_message()
    answer.content = [{"type": "text", "text": "The photosynthesis explanation"}]
    answer.status = "complete"
    answer.save(update_fields=["content", "status"])
    assert search(alice, "photosynthesis")[0].message_id == str(answer.public_id)
    conversation.delete()
    assert search(alice, "photosynthesis") == []
