"""Admin review: reviewers read everything and change only review fields,
transcripts render as the owner saw them and are audited, people report
answers from the chat, list pages stay at a bounded number of queries, and
staff see usage and cost."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations.management.commands.create_reviewers_group import GROUP_NAME, PERMISSIONS, reviewers_group
from conversations.models import Attachment, Conversation, Message, MessageAttachment, Report, TranscriptView
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

OPUS = "claude-opus-4-5-20251101"
HAIKU = "claude-haiku-4-5-20251001"
CHANGELIST = "/admin/conversations/conversation/"


# --- helpers ------------------------------------------------------------------


def change_url(conversation) -> str:
    return reverse("admin:conversations_conversation_change", args=[conversation.pk])


def chat(owner, question: str, answer: str = "An answer.", *, model=OPUS, usage=(100, 50, 0, 0), status="complete",
         title: str | None = None, created_at=None) -> Conversation:  # fmt: skip
    """A conversation with one question and one answer, as the chat saves them."""
    conversation = Conversation.objects.create(owner=owner, model=model, title=title or question[:80])
    when = created_at or timezone.now()
    Message.objects.create(
        conversation=conversation, role="user", content=[{"type": "text", "text": question}], created_at=when
    )
    add_answer(conversation, answer, model=model, usage=usage, status=status, created_at=when + timedelta(seconds=1))
    return conversation


def add_answer(conversation, text, *, model=OPUS, usage=(100, 50, 0, 0), status="complete", content=None,
               created_at=None) -> Message:  # fmt: skip
    return Message.objects.create(
        conversation=conversation,
        role="assistant",
        content=content if content is not None else [{"type": "text", "text": text}],
        status=status,
        model=model,
        input_tokens=usage[0],
        output_tokens=usage[1],
        cache_creation_input_tokens=usage[2],
        cache_read_input_tokens=usage[3],
        error="The upstream failed." if status == "error" else "",
        created_at=created_at or timezone.now(),
    )


def attach(message, name="cat.png", media_type="image/png", **extra) -> Attachment:
    owner = message.conversation.owner
    attachment = Attachment.objects.create(
        owner=owner,
        original_name=name,
        media_type=media_type,
        size=extra.pop("size", 2048),
        sha256=f"{owner.pk:08x}{Attachment.objects.count():056x}",
        file=f"attachments/test/{name}",
        **extra,
    )
    MessageAttachment.objects.create(message=message, attachment=attachment, position=message.message_attachments.count())
    return attachment


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def query_count(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response
    return len(queries)


@pytest.fixture
def reviewer(db):
    user = make_user("rita", is_staff=True, email="rita@example.com")
    user.groups.add(reviewers_group())
    return user


@pytest.fixture
def admin_client(admin_user):
    return logged_in(admin_user)


@pytest.fixture
def reviewer_client(reviewer):
    return logged_in(reviewer)


def many_conversations(owners, count: int) -> None:
    """`count` conversations with answers, errors, attachments and reports."""
    for n in range(count):
        owner = owners[n % len(owners)]
        conversation = chat(owner, f"question {n}", f"answer {n}", model=OPUS if n % 2 else HAIKU)
        add_answer(conversation, f"second answer {n}", model=HAIKU, status="error" if n % 5 == 0 else "complete")
        if n % 3 == 0:
            attach(conversation.messages.filter(role="user").first(), name=f"img{n}.png")
        if n % 4 == 0:
            answer = conversation.messages.filter(role="assistant").first()
            Report.objects.create(message=answer, reporter=owner, reason="wrong")
        TranscriptView.objects.create(conversation=conversation, viewer=owners[0], viewer_name="someone")


# --- access -------------------------------------------------------------------


def test_non_staff_user_cannot_reach_the_admin(alice_client, alice):
    conversation = chat(alice, "mine")
    for url in ("/admin/", CHANGELIST, change_url(conversation), "/admin/conversations/message/", "/admin/usage/"):
        response = alice_client.get(url)
        assert response.status_code == 302, url
        assert response.url.startswith("/admin/login/"), url
    login = Client().post("/admin/login/", {"username": "alice", "password": "pw-alice"})
    assert login.status_code == 200
    assert "staff account" in login.content.decode()


def test_anonymous_visitor_cannot_reach_the_admin(client, alice):
    conversation = chat(alice, "mine")
    for url in ("/admin/", change_url(conversation), "/admin/usage/"):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith("/admin/login/")
    assert not TranscriptView.objects.exists()


def test_staff_without_permissions_sees_no_conversations(alice):
    staff = make_user("sam", is_staff=True)
    conversation = chat(alice, "private words")
    client = logged_in(staff)
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(conversation)).status_code == 403
    assert not TranscriptView.objects.exists()


# --- the Reviewers group --------------------------------------------------------


def test_command_creates_the_reviewers_group_idempotently(capsys):
    call_command("create_reviewers_group")
    call_command("create_reviewers_group")
    from django.contrib.auth.models import Group

    group = Group.objects.get(name=GROUP_NAME)
    assert sorted(group.permissions.values_list("codename", flat=True)) == sorted(PERMISSIONS)
    assert Group.objects.filter(name=GROUP_NAME).count() == 1
    assert 'Created the "Reviewers" group' in capsys.readouterr().out


def test_command_resets_extra_permissions_and_adds_reviewers(alice):
    from django.contrib.auth.models import Permission

    group = reviewers_group()
    group.permissions.add(Permission.objects.get(codename="delete_message"))
    call_command("create_reviewers_group", "--add", "alice")
    group.refresh_from_db()
    assert "delete_message" not in group.permissions.values_list("codename", flat=True)
    alice.refresh_from_db()
    assert alice.is_staff and alice.groups.filter(name=GROUP_NAME).exists()


def test_command_names_an_unknown_user():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_reviewers_group", "--add", "nobody")


def test_reviewer_reads_any_conversation_but_cannot_edit_messages(reviewer_client, reviewer, alice, bob):
    mine = chat(alice, "What is a lighthouse?", "A tower with a **light**.")
    other = chat(bob, "Bob's secret question", "Bob's answer")
    answer = mine.messages.get(role="assistant")

    listing = reviewer_client.get(CHANGELIST)
    assert listing.status_code == 200
    assert "What is a lighthouse?" in listing.content.decode() and "Bob&#x27;s secret question" in listing.content.decode()
    page = reviewer_client.get(change_url(other))
    assert page.status_code == 200 and "<p>Bob's answer</p>" in page.content.decode()

    # The change form holds the review fields only: no message content, no title.
    form = reviewer_client.get(change_url(mine)).context["adminform"].form
    assert sorted(form.fields) == ["review_notes", "review_status"]
    response = reviewer_client.post(
        change_url(mine),
        {"review_status": "ok", "review_notes": "Fine.", "title": "Hacked", "model": "x", "messages-0-content": "hacked"},
    )
    assert response.status_code == 302
    mine.refresh_from_db()
    assert (mine.title, mine.model, mine.review_status, mine.review_notes) == ("What is a lighthouse?", OPUS, "ok", "Fine.")
    assert mine.reviewed_by == reviewer and mine.reviewed_at is not None

    # A message cannot be changed, added or deleted through the admin.
    message_url = reverse("admin:conversations_message_change", args=[answer.pk])
    assert reviewer_client.post(message_url, {"content": '[{"type": "text", "text": "hacked"}]'}).status_code == 403
    assert reviewer_client.get(reverse("admin:conversations_message_add")).status_code == 403
    delete_url = reverse("admin:conversations_message_delete", args=[answer.pk])
    assert reviewer_client.post(delete_url, {"post": "yes"}).status_code == 403
    answer.refresh_from_db()
    assert answer.text == "A tower with a **light**."
    # Reading a message opens it in its conversation's transcript.
    opened = reviewer_client.get(message_url)
    assert opened.status_code == 302 and opened.url == f"{change_url(mine)}#message-{answer.public_id}"


def test_superusers_cannot_edit_message_content_either(admin_client, alice):
    conversation = chat(alice, "question", "original answer")
    answer = conversation.messages.get(role="assistant")
    response = admin_client.post(
        reverse("admin:conversations_message_change", args=[answer.pk]),
        {"content": '[{"type": "text", "text": "hacked"}]'},
    )
    assert response.status_code == 403
    form = admin_client.get(change_url(conversation)).context["adminform"].form
    assert sorted(form.fields) == ["review_notes", "review_status"]
    answer.refresh_from_db()
    assert answer.text == "original answer"


def test_only_superusers_delete_conversations(reviewer_client, admin_client, alice):
    conversation = chat(alice, "delete me")
    delete_url = reverse("admin:conversations_conversation_delete", args=[conversation.pk])
    assert reviewer_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert "delete_selected" not in reviewer_client.get(CHANGELIST).content.decode()
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 302
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_review_status_change_is_signed_and_dated_notes_alone_are_not(reviewer_client, reviewer, alice):
    conversation = chat(alice, "question")
    before = Conversation.objects.get(pk=conversation.pk).updated_at
    reviewer_client.post(change_url(conversation), {"review_status": "unreviewed", "review_notes": "Looked, unsure."})
    conversation.refresh_from_db()
    assert conversation.review_notes == "Looked, unsure." and conversation.reviewed_by is None
    reviewer_client.post(change_url(conversation), {"review_status": "flagged", "review_notes": "Wrong facts."})
    conversation.refresh_from_db()
    assert conversation.review_status == "flagged" and conversation.reviewed_by == reviewer
    assert conversation.updated_at == before  # reviewing is not chat activity


def test_reviewer_bulk_actions_mark_reviewed_and_flag(reviewer_client, reviewer, alice, bob):
    one, two, three = chat(alice, "one"), chat(bob, "two"), chat(alice, "three")
    response = reviewer_client.post(CHANGELIST, {"action": "mark_reviewed", "_selected_action": [one.pk, two.pk]})
    assert response.status_code == 302
    response = reviewer_client.post(CHANGELIST, {"action": "flag", "_selected_action": [three.pk]})
    assert response.status_code == 302
    statuses = {c.title: (c.review_status, c.reviewed_by_id) for c in Conversation.objects.all()}
    assert statuses == {"one": ("ok", reviewer.pk), "two": ("ok", reviewer.pk), "three": ("flagged", reviewer.pk)}
    assert "Marked 2 conversations reviewed." in reviewer_client.get(CHANGELIST).content.decode()
    history = reviewer_client.get(reverse("admin:conversations_conversation_history", args=[one.pk])).content.decode()
    assert "Review status set to ok (bulk action)." in history and "rita" in history


def test_export_selected_as_json_in_the_messages_api_shape(reviewer_client, alice):
    conversation = chat(alice, "Describe this picture", "A cat.")
    conversation.params = {"max_tokens": 1024, "system": "Be brief."}
    conversation.save()
    question = conversation.messages.get(role="user")
    image = attach(question, width=10, height=10)
    Report.objects.create(message=conversation.messages.get(role="assistant"), reporter=alice, reason="Not a cat")
    chat(alice, "not selected")

    response = reviewer_client.post(CHANGELIST, {"action": "export_json", "_selected_action": [conversation.pk]})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    data = json.loads(response.content)
    [exported] = data["conversations"]
    assert exported["id"] == str(conversation.public_id)
    assert exported["title"] == "Describe this picture"
    assert exported["owner"] == {"username": "alice", "email": ""}
    assert exported["model"] == OPUS and exported["params"] == {"max_tokens": 1024, "system": "Be brief."}
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert set(exported["messages"][0]) == {"role", "content"}
    assert exported["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": f"http://testserver/attachments/{image.public_id}/"}},
        {"type": "text", "text": "Describe this picture"},
    ]
    assert exported["messages"][1]["content"] == [{"type": "text", "text": "A cat."}]
    meta = exported["messages_meta"][1]
    assert meta["usage"]["input_tokens"] == 100 and meta["cost"] == "$0.0018"
    assert meta["reports"][0]["reason"] == "Not a cat"
    # Exporting a transcript is reading it: audited like opening it.
    assert [(v.conversation, v.viewer_name) for v in TranscriptView.objects.all()] == [(conversation, "rita")]


# --- the list: columns, filters, search, queries -----------------------------------


def test_list_shows_owner_model_messages_tokens_cost_activity_and_review(admin_client, alice):
    conversation = chat(alice, "Costly question", usage=(1000, 2000, 0, 0))
    add_answer(conversation, "more", model=HAIKU, usage=(1_000_000, 0, 0, 0))
    page = admin_client.get(CHANGELIST).content.decode()
    assert "Costly question" in page and "alice" in page and OPUS in page
    assert '<td class="field-message_count">3</td>' in page
    assert '<td class="field-tokens_column">1,003,000</td>' in page
    # $5/M in + $25/M out on Opus (0.005 + 0.05) plus $1/M in on Haiku (1.00)
    assert '<td class="field-cost_column">$1.06</td>' in page
    assert 'review-unreviewed">Unreviewed<' in page


def test_filters_by_attachments_errors_reports_review_status_model_and_owner(admin_client, alice, bob):
    plain = chat(alice, "plain")
    with_file = chat(alice, "with file")
    attach(with_file.messages.get(role="user"))
    failed = chat(bob, "failed", status="error", model=HAIKU)
    reported = chat(bob, "reported")
    Report.objects.create(message=reported.messages.get(role="assistant"), reporter=bob, reason="bad")
    Conversation.objects.filter(pk=plain.pk).update(review_status="ok")

    def titles(query):
        response = admin_client.get(CHANGELIST + query)
        assert response.status_code == 200
        return sorted(c.title for c in response.context["cl"].result_list)

    assert titles("?attachments=yes") == ["with file"]
    assert titles("?attachments=no") == ["failed", "plain", "reported"]
    assert titles("?errors=yes") == ["failed"]
    assert titles("?reported=yes") == ["reported"]
    assert titles("?review_status__exact=ok") == ["plain"]
    assert titles(f"?model={HAIKU}") == ["failed"]
    assert titles(f"?owner__id__exact={bob.pk}") == ["failed", "reported"]
    assert titles("?updated_at__gte=2000-01-01+00:00:00%2B00:00") == ["failed", "plain", "reported", "with file"]


def test_search_finds_conversations_by_title_message_text_and_owner(admin_client, alice, bob):
    bob.email = "bob@example.org"
    bob.save()
    chat(alice, "Lighthouses", "The keeper lit the lamp at dusk.")
    chat(bob, "Recipes", "Add a pinch of salt.")
    chat(alice, "Cafés", "Un café crème, s'il vous plaît, with \"quotes\" and 100% effort_.")

    def found(term):
        response = admin_client.get(CHANGELIST, {"q": term})
        return sorted(c.title for c in response.context["cl"].result_list)

    assert found("keeper LAMP") == ["Lighthouses"]  # every word, any case
    assert found('"pinch of salt"') == ["Recipes"]
    assert found("recipes") == ["Recipes"]
    assert found("example.org") == ["Recipes"]
    assert found("alice") == ["Cafés", "Lighthouses"]
    assert found("café crème") == ["Cafés"]
    assert found('"quotes"') == ["Cafés"]
    assert found("100%") == ["Cafés"] and found("s_il") == []  # LIKE wildcards are literal
    assert found("type") == [] and found("text") == []  # the JSON around the words does not count


def test_search_lists_a_conversation_once_however_many_messages_match(admin_client, alice):
    conversation = chat(alice, "Echo", "echo")
    for _ in range(3):
        add_answer(conversation, "echo again")
    response = admin_client.get(CHANGELIST, {"q": "echo"})
    assert [c.pk for c in response.context["cl"].result_list] == [conversation.pk]


def test_search_reads_thinking_too(admin_client, alice):
    conversation = chat(alice, "Riddle")
    add_answer(conversation, "", content=[{"type": "thinking", "thinking": "Perhaps a walrus.", "signature": "s"},
                                          {"type": "text", "text": "No idea."}])  # fmt: skip
    response = admin_client.get(CHANGELIST, {"q": "walrus"})
    assert [c.title for c in response.context["cl"].result_list] == ["Riddle"]


def test_list_pages_keep_bounded_query_counts_with_many_rows(admin_client, reviewer_client, alice, bob):
    owners = [alice, bob, make_user("carol"), make_user("dave")]
    many_conversations(owners, 6)
    pages = (
        CHANGELIST,
        CHANGELIST + "?q=answer&attachments=yes&errors=no",
        "/admin/conversations/message/",
        "/admin/conversations/message/?q=answer",
        "/admin/conversations/attachment/",
        "/admin/conversations/report/",
        "/admin/conversations/transcriptview/",
    )
    few = {url: query_count(admin_client, url) for url in pages}
    many_conversations(owners, 60)
    for url in pages:
        assert query_count(admin_client, url) == few[url], url
        assert few[url] <= 12, (url, few[url])
    assert query_count(reviewer_client, CHANGELIST) <= 14


def test_transcript_page_keeps_a_bounded_query_count_with_many_messages(admin_client, alice):
    short = chat(alice, "short")
    long = chat(alice, "long")
    for n in range(40):
        message = Message.objects.create(conversation=long, role="user", content=[{"type": "text", "text": f"q{n}"}])
        attach(message, name=f"f{n}.png")
        answer = add_answer(long, f"a{n}")
        Report.objects.create(message=answer, reporter=alice, reason="r")
    assert query_count(admin_client, change_url(long)) == query_count(admin_client, change_url(short))
    assert query_count(admin_client, change_url(long)) <= 16


# --- the transcript -------------------------------------------------------------------


def test_transcript_shows_the_conversation_as_the_owner_saw_it(admin_client, alice):
    conversation = chat(alice, "Show me <b>bold</b> and a picture")
    question = conversation.messages.get(role="user")
    image = attach(question, name="cat.png", width=640, height=480)
    pdf = attach(question, name="report.pdf", media_type="application/pdf", page_count=3)
    add_answer(
        conversation,
        "",
        content=[
            {"type": "thinking", "thinking": "The person wants **emphasis**.", "signature": "sig"},
            {"type": "text", "text": "Here is **bold**.\n\n<script>alert(1)</script> [click](javascript:alert(2))"},
        ],
    )
    add_answer(conversation, "partial", status="error")

    page = admin_client.get(change_url(conversation)).content.decode()
    transcript = page[page.index('class="module review-transcript"'):]
    assert "Show me &lt;b&gt;bold&lt;/b&gt; and a picture" in transcript  # the person's words, as typed
    assert "<strong>bold</strong>" in transcript  # rendered markdown
    assert "<script>alert(1)" not in transcript and "&lt;script&gt;alert(1)" in transcript  # sanitized
    assert 'href="javascript:' not in transcript
    assert '<details class="review-thinking"><summary>Thinking' in transcript  # collapsed: no `open`
    assert "<strong>emphasis</strong>" in transcript
    assert f'<img src="/attachments/{image.public_id}/?thumb=1" alt="cat.png"' in transcript
    assert f'href="/attachments/{image.public_id}/"' in transcript
    assert f'href="/attachments/{pdf.public_id}/"' in transcript and "3 pages" in transcript
    assert 'role="alert"' in transcript and "The upstream failed." in transcript
    assert "100 in · 50 out" in transcript


def test_transcript_shows_reports_beside_the_reported_answer(admin_client, alice):
    conversation = chat(alice, "question", "answer")
    answer = conversation.messages.get(role="assistant")
    Report.objects.create(message=answer, reporter=alice, reason="It made up a <citation>.")
    page = admin_client.get(change_url(conversation)).content.decode()
    article = page[page.index(f'id="message-{answer.public_id}"'):]
    assert "Reported by alice" in article and "It made up a &lt;citation&gt;." in article


def test_opening_a_transcript_writes_an_audit_entry(reviewer_client, reviewer, admin_client, alice):
    conversation = chat(alice, "private")
    assert not TranscriptView.objects.exists()
    reviewer_client.get(change_url(conversation))
    view = TranscriptView.objects.get()
    assert (view.viewer, view.viewer_name, view.conversation) == (reviewer, "rita", conversation)
    assert timezone.now() - view.viewed_at < timedelta(seconds=10)

    reviewer_client.post(change_url(conversation), {"review_status": "ok", "review_notes": ""})
    assert TranscriptView.objects.count() == 1  # saving is not opening
    reviewer_client.get(CHANGELIST)
    assert TranscriptView.objects.count() == 1  # the list shows no transcript

    # The record is visible in the admin: on the conversation and in the audit list.
    page = admin_client.get(change_url(conversation)).content.decode()
    assert "Transcript opened by" in page and "rita" in page
    audit = admin_client.get("/admin/conversations/transcriptview/").content.decode()
    assert "rita" in audit and "private" in audit
    # ... and cannot be changed or deleted there, even by a superuser.
    delete_url = reverse("admin:conversations_transcriptview_delete", args=[view.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert TranscriptView.objects.filter(pk=view.pk).exists()


def test_audit_keeps_the_viewer_name_after_the_account_is_deleted(reviewer_client, reviewer, alice):
    conversation = chat(alice, "private")
    reviewer_client.get(change_url(conversation))
    reviewer.delete()
    view = TranscriptView.objects.get()
    assert view.viewer is None and view.viewer_name == "rita"


# --- reporting from the chat ------------------------------------------------------------


def report_url(message) -> str:
    return reverse("report-message", args=[message.public_id])


def test_report_flags_the_message(alice_client, alice, reviewer):
    conversation = chat(alice, "question", "a wrong answer")
    Conversation.objects.filter(pk=conversation.pk).update(
        review_status="ok", reviewed_by=reviewer, reviewed_at=timezone.now()
    )
    answer = conversation.messages.get(role="assistant")
    response = alice_client.post(report_url(answer), {"reason": "  It is wrong about tides.  "})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": "Reported. Thank you."}
    report = Report.objects.get()
    assert (report.message, report.reporter, report.reason) == (answer, alice, "It is wrong about tides.")
    conversation.refresh_from_db()
    assert conversation.review_status == "flagged"
    assert conversation.reviewed_by is None and conversation.reviewed_at is None  # the old review no longer holds


def test_report_needs_a_reason_of_reasonable_length(alice_client, alice):
    answer = chat(alice, "question").messages.get(role="assistant")
    response = alice_client.post(report_url(answer), {"reason": "   "})
    assert response.status_code == 400 and response.json()["error"] == "Say why you are reporting this answer."
    response = alice_client.post(report_url(answer), {"reason": "x" * 2001})
    assert response.status_code == 400 and "too long" in response.json()["error"]
    assert not Report.objects.exists()
    assert Conversation.objects.get().review_status == "unreviewed"


def test_outsider_cannot_report_someone_elses_answer(alice, bob):
    answer = chat(alice, "question").messages.get(role="assistant")
    response = logged_in(bob).post(report_url(answer), {"reason": "spite"})
    assert response.status_code == 404
    assert not Report.objects.exists()


def test_report_is_for_answers_by_post_when_logged_in(client, alice_client, alice):
    conversation = chat(alice, "question")
    question = conversation.messages.get(role="user")
    answer = conversation.messages.get(role="assistant")
    assert alice_client.post(report_url(question), {"reason": "r"}).status_code == 404
    assert alice_client.get(report_url(answer)).status_code == 405
    response = client.post(report_url(answer), {"reason": "r"})
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")
    assert not Report.objects.exists()


def test_chat_page_offers_report_on_finished_answers(alice_client, alice):
    conversation = chat(alice, "question", "answer")
    answer = conversation.messages.get(role="assistant")
    add_answer(conversation, "still writing", status="streaming")
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    assert page.count('class="icon-button report"') == 1
    assert f'data-report-url="/m/{answer.public_id}/report/"' in page
    assert 'import "./report.js"' in open("static/js/chat.js").read()


# --- the usage report ------------------------------------------------------------------


def test_usage_report_sums_tokens_and_cost_per_user_and_per_model(admin_client, alice, bob):
    today = timezone.now()
    chat(alice, "a1", usage=(1_000_000, 100_000, 0, 0), created_at=today)  # Opus: $5 + $2.50
    chat(alice, "a2", model=HAIKU, usage=(1_000_000, 0, 1_000_000, 1_000_000), created_at=today)  # $1 + $1.25 + $0.10
    chat(bob, "b1", model=HAIKU, usage=(2_000_000, 0, 0, 0), created_at=today - timedelta(days=2))  # $2
    chat(bob, "old", usage=(9_000_000, 0, 0, 0), created_at=today - timedelta(days=45))  # outside the default 30 days

    response = admin_client.get("/admin/usage/")
    assert response.status_code == 200
    report = response.context["report"]
    users = {u["username"]: u["totals"] for u in report["users"]}
    assert users["alice"].cost == Decimal("9.85") and users["alice"].answers == 2
    assert users["alice"].input_tokens == 2_000_000 and users["alice"].cache_read_input_tokens == 1_000_000
    assert users["bob"].cost == Decimal("2") and users["bob"].answers == 1
    models = {m["id"]: m["totals"] for m in report["models"]}
    assert models[OPUS].cost == Decimal("7.5") and models[HAIKU].cost == Decimal("4.35")
    assert report["total"].cost_text == "$11.85"
    page = response.content.decode()
    assert "Claude Haiku 4.5" in page and "$9.85" in page and "1,000,000" in page
    assert '<svg role="img" aria-labelledby="chart-title chart-desc"' in page
    assert '<title id="chart-title">Daily cost' in page
    assert len(report["chart"]["bars"]) == 30

    wide = admin_client.get("/admin/usage/", {"start": (today - timedelta(days=60)).date(), "end": today.date()})
    assert wide.context["report"]["total"].answers == 4


def test_usage_report_names_a_bad_range_and_falls_back_to_30_days(admin_client):
    response = admin_client.get("/admin/usage/", {"start": "2026-02-01", "end": "2026-01-01"})
    assert response.status_code == 200
    assert "The start date is after the end date." in response.content.decode()
    report = response.context["report"]
    assert (report["end"] - report["start"]).days == 29
    response = admin_client.get("/admin/usage/", {"start": "not a date"})
    assert "Enter a valid date." in response.content.decode()


def test_usage_report_without_usage_says_so(admin_client):
    page = admin_client.get("/admin/usage/").content.decode()
    assert "No answers were written in this period." in page and "<svg role=\"img\"" not in page


def test_usage_report_counts_unpriced_models_tokens_not_cost(admin_client, alice):
    chat(alice, "local", model="some-local-model", usage=(500, 500, 0, 0))
    report = admin_client.get("/admin/usage/").context["report"]
    assert report["total"].tokens == 1000 and report["total"].cost_text == "—"
    assert report["chart"]["metric"] == "tokens"


def test_usage_report_is_reachable_from_the_admin_and_uses_bounded_queries(admin_client, reviewer_client, alice, bob):
    assert "/admin/usage/" in admin_client.get("/admin/").content.decode()
    assert "/admin/usage/" in admin_client.get(CHANGELIST).content.decode()
    assert reviewer_client.get("/admin/usage/").status_code == 200
    many_conversations([alice, bob], 3)
    few = query_count(admin_client, "/admin/usage/")
    many_conversations([alice, bob, make_user("carol")], 40)
    assert query_count(admin_client, "/admin/usage/") == few
