"""Browsing past conversations: sidebar pages, pin/archive/rename/delete,
export and import, generated titles, ownership everywhere."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from conversations import browsing
from conversations.models import Attachment, Conversation, Message
from tests.conftest import open_socket, receive_until
from tests.fake_upstream import text_reply
from tests.files import image_bytes

pytestmark = pytest.mark.django_db


def make(owner, title, days_ago=0, **fields):
    conversation = Conversation.start(owner)
    conversation.add_user_message(f"about {title}")
    Conversation.objects.filter(pk=conversation.pk).update(
        title=title, updated_at=timezone.now() - timedelta(days=days_ago), **fields
    )
    conversation.refresh_from_db()
    return conversation


def test_sidebar_groups_newest_first_with_pinned_on_top(alice):
    make(alice, "old", days_ago=40)
    make(alice, "week", days_ago=4)
    make(alice, "yesterday", days_ago=1)
    make(alice, "today")
    make(alice, "pinned one", days_ago=90, pinned=True)
    make(alice, "archived one", archived=True)
    page = browsing.sidebar_page(alice)
    assert [(label, [c.title for c in items]) for label, items in page.groups] == [
        ("Pinned", ["pinned one"]),
        ("Today", ["today"]),
        ("Yesterday", ["yesterday"]),
        ("Previous 7 days", ["week"]),
        ("Older", ["old"]),
    ]
    archived = browsing.sidebar_page(alice, archived=True)
    assert [c.title for _, items in archived.groups for c in items] == ["archived one"]


def test_sidebar_pages_follow_each_other_without_gaps_or_repeats(alice):
    now = timezone.now()
    for n in range(120):
        conversation = Conversation.objects.create(owner=alice, model="m", title=f"c{n}")
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=now - timedelta(minutes=n // 3))
    seen, cursor = [], None
    while True:
        page = browsing.sidebar_page(alice, cursor)
        seen += [c.title for _, items in page.groups for c in items]
        cursor = page.next_cursor
        if not cursor:
            break
    assert len(seen) == 120 and len(set(seen)) == 120


def test_sidebar_page_query_count_does_not_grow(alice_client, alice, django_assert_max_num_queries):
    for n in range(80):
        make(alice, f"chat {n}", days_ago=n % 10)
    with django_assert_max_num_queries(6):
        response = alice_client.get("/conversations/")
    assert response.status_code == 200 and response.content.count(b'class="conv-item"') == 50
    cursor = response.content.decode().split('data-cursor="')[1].split('"')[0]
    with django_assert_max_num_queries(6):
        more = alice_client.get("/conversations/", {"cursor": cursor})
    assert more.content.count(b'class="conv-item"') == 30


def test_chat_page_query_count_does_not_grow_with_messages(alice_client, alice, django_assert_max_num_queries):
    conversation = make(alice, "long")
    for n in range(60):
        conversation.add_user_message(f"message {n}")
    with django_assert_max_num_queries(14):
        assert alice_client.get(conversation.get_absolute_url()).status_code == 200


def post(client, conversation, **data):
    return client.post(f"/c/{conversation.public_id}/action/", data)


def test_rename_pin_archive_and_unarchive(alice_client, alice):
    conversation = make(alice, "first words")
    assert post(alice_client, conversation, action="rename", title="  My   plan ").json()["conversation"]["title"] == "My plan"
    assert post(alice_client, conversation, action="rename", title="   ").status_code == 400
    post(alice_client, conversation, action="pin")
    post(alice_client, conversation, action="archive")
    conversation.refresh_from_db()
    assert (conversation.title, conversation.title_locked, conversation.pinned, conversation.archived) == ("My plan", True, True, True)
    assert b"My plan" not in alice_client.get("/conversations/").content
    assert b"My plan" in alice_client.get("/conversations/", {"archived": "1"}).content
    post(alice_client, conversation, action="unarchive")
    assert b"My plan" in alice_client.get("/conversations/").content


def test_delete_removes_the_conversation_and_its_files(alice_client, alice):
    conversation = make(alice, "to delete")
    upload = alice_client.post("/attachments/", {"file": __import__("django.core.files.uploadedfile", fromlist=["x"]).SimpleUploadedFile("p.png", image_bytes())})
    attachment = Attachment.objects.get(public_id=upload.json()["attachment"]["id"])
    conversation.add_user_message("with a file", [attachment])
    assert post(alice_client, conversation, action="delete").json()["deleted"] is True
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Attachment.objects.filter(pk=attachment.pk).exists()
    assert alice_client.get(conversation.get_absolute_url()).status_code == 404


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "/c/{id}/action/"),
        ("get", "/c/{id}/export.md"),
        ("get", "/c/{id}/export.json"),
        ("get", "/c/{id}/transcript/"),
    ],
)
def test_someone_elses_conversation_answers_404_everywhere(client, alice, bob, method, path):
    conversation = make(alice, "private")
    client.force_login(bob)
    response = getattr(client, method)(path.format(id=conversation.public_id), {"action": "delete"} if method == "post" else None)
    assert response.status_code == 404
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_search_view_shows_only_my_hits(alice_client, alice, bob):
    make(bob, "bob's", days_ago=0)
    Conversation.objects.filter(owner=bob).first().add_user_message("zebra crossing")
    mine = make(alice, "zoo")
    mine.add_user_message("a zebra at the zoo")
    page = alice_client.get("/search/", {"q": "zebra"}).content.decode()
    assert "1 result" in page and f"/c/{mine.public_id}/?m=" in page and "<mark>zebra</mark>" in page


def test_export_json_then_import_round_trips(alice_client, alice):
    conversation = make(alice, "Round trip")
    upload = alice_client.post("/attachments/", {"file": __import__("django.core.files.uploadedfile", fromlist=["x"]).SimpleUploadedFile("pic.png", image_bytes())})
    picture = Attachment.objects.get(public_id=upload.json()["attachment"]["id"])
    conversation.add_user_message("Look at this", [picture])
    answer = conversation.start_assistant_message()
    answer.content = [{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "A picture."}]
    answer.status = "complete"
    answer.save()
    exported = alice_client.get(f"/c/{conversation.public_id}/export.json?attachments=1")
    assert exported["Content-Disposition"].startswith('attachment; filename="round-trip.json"')
    data = json.loads(exported.content)
    assert data["model"] == conversation.model and data["title"] == "Round trip"
    assert data["messages"][1]["content"][0]["type"] == "image"
    from django.core.files.uploadedfile import SimpleUploadedFile

    imported = alice_client.post("/import/", {"file": SimpleUploadedFile("export.json", exported.content)}).json()
    assert imported["ok"]
    copy = Conversation.objects.exclude(pk=conversation.pk).get(owner=alice)
    assert imported["url"] == copy.get_absolute_url() and copy.title == "Round trip"
    assert copy.api_messages() == conversation.api_messages() or [
        [b.get("type") for b in t["content"]] for t in copy.api_messages()
    ] == [[b.get("type") for b in t["content"]] for t in conversation.api_messages()]
    again = json.loads(alice_client.get(f"/c/{copy.public_id}/export.json?attachments=1").content)
    assert again["messages"] == data["messages"]


def test_markdown_export_reads_as_a_transcript(alice_client, alice):
    conversation = make(alice, "Notes")
    answer = conversation.start_assistant_message()
    answer.content, answer.status = [{"type": "text", "text": "Sure **thing**."}], "complete"
    answer.save()
    text = alice_client.get(f"/c/{conversation.public_id}/export.md").content.decode()
    assert text.startswith("# Notes\n") and "**You:**\n\nabout Notes" in text and "**Claude:**\n\nSure **thing**." in text


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not json", "is not a JSON file"),
        (b'{"model": "x"}', 'has no "messages" list'),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', 'Message 1 has no role "user" or "assistant"'),
        (b'{"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "PGh0bWw+"}}]}]}', "is not a JPEG, PNG, GIF, WebP or PDF file"),
    ],
)
def test_bad_imports_name_the_problem_and_create_nothing(alice_client, alice, payload, message):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = alice_client.post("/import/", {"file": SimpleUploadedFile("x.json", payload)})
    assert response.status_code == 400 and message in response.json()["error"]
    assert not Conversation.objects.filter(owner=alice).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("settle")
async def test_first_answer_gets_a_generated_title_in_every_tab(alice, fake_upstream, settings):
    settings.CHAT_GENERATE_TITLES = True
    fake_upstream.enqueue(text_reply("Here is a plan."), text_reply('"Weekend Picnic Planning."'))
    conversation = await database_sync_to_async(Conversation.start)(alice)
    other_tab = await open_socket(alice, "/ws/chat/new/")
    assert (await other_tab.connect())[0]
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "send", "text": "help me plan a picnic for saturday", "client_id": "c1"})
    updated = await receive_until(socket, "conversation.updated")
    assert updated["conversation"]["title"] == "Weekend Picnic Planning"
    elsewhere = await receive_until(other_tab, "conversation.updated")
    assert elsewhere["conversation"]["id"] == str(conversation.public_id)
    await socket.disconnect()
    await other_tab.disconnect()
    title_request = fake_upstream.requests[-1].body
    assert title_request["model"] == settings.CHAT_TITLE_MODEL and title_request["stream"] is False
    assert "help me plan a picnic" in title_request["messages"][0]["content"]
    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.title == "Weekend Picnic Planning"


def test_renamed_conversation_never_gets_a_generated_title(alice):
    conversation = make(alice, "x")
    browsing.rename(conversation, "Mine")
    assert browsing.needs_title(Conversation.objects.get(pk=conversation.pk)) is None
    assert browsing.save_generated_title(conversation.pk, "Other") is None


def test_clean_title():
    assert browsing.clean_title('"Weekend Picnic."\nmore') == "Weekend Picnic"
    assert browsing.clean_title("Title: **Budget review**") == "Budget review"


def test_long_conversation_opens_at_its_end_and_pages_backwards(alice_client, alice):
    conversation = Conversation.start(alice)
    for n in range(120):
        conversation.add_user_message(f"note {n:03}")
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    assert page.count('data-role="user"') == 50 and "note 119" in page and "note 069" not in page
    before = page.split('data-before="')[1].split('"')[0]
    earlier = alice_client.get(f"/c/{conversation.public_id}/transcript/", {"before": before}).content.decode()
    assert earlier.count('data-role="user"') == 50 and "note 020" in earlier and "note 070" not in earlier
    assert "Show earlier messages" in earlier
    first = conversation.messages.get(search_text="note 003")
    around = alice_client.get(conversation.get_absolute_url(), {"m": str(first.public_id)}).content.decode()
    assert f'id="m-{first.public_id}"' in around and "note 119" in around
