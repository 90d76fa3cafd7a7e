"""Staff review in the browser: an admin finds a conversation by what was said
and reads it with its image; a person reports an answer from the chat.

The conversation is written straight into the live server's database with
`manage.py shell` (same environment as the daphne subprocess), as the chat
would have saved it; the browser then does what a person does.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
import uuid
import zlib

import pytest

from tests.browser_support import (
    PASSWORD,
    PROJECT_ROOT,
    articles,
    expect,
    screenshot,
    send,
    signup,
    unique_username,
)
from tests.fake_upstream import text_reply

pytestmark = pytest.mark.browser


def png(width: int, height: int) -> bytes:
    """A real RGB PNG (a soft gradient), written with zlib: no imaging library needed."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in (90 + x * 120 // width, 110 + y * 100 // height, 200))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def manage_shell(server, code: str) -> str:
    """Run Python in `manage.py shell` against the live server's own database."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATA_DIR=str(server.log.parent), DJANGO_SETTINGS_MODULE="chatsite.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"manage.py shell failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


SEED = """
import base64, hashlib, json
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from conversations.models import Attachment, Conversation, Message, MessageAttachment

args = json.loads({args!r})
User = get_user_model()
User.objects.create_superuser(args["admin"], "", args["password"])
owner = User.objects.create_user(args["owner"], args["owner"] + "@example.com", args["password"])
data = base64.b64decode(args["png"])
conversation = Conversation.objects.create(owner=owner, model="claude-opus-4-5-20251101", title=args["title"])
question = Message.objects.create(conversation=conversation, role="user", content=[{{"type": "text", "text": args["question"]}}])
image = Attachment(owner=owner, original_name="flower.png", media_type="image/png", size=len(data),
                   sha256=hashlib.sha256(data).hexdigest(), width=args["width"], height=args["height"])
image.file.save("flower.png", ContentFile(data), save=False)
image.save()
MessageAttachment.objects.create(message=question, attachment=image, position=0)
Message.objects.create(conversation=conversation, role="assistant", model="claude-opus-4-5-20251101",
                       content=[{{"type": "thinking", "thinking": "Blue petals, five of them.", "signature": "sig"}},
                                {{"type": "text", "text": args["answer"]}}],
                       input_tokens=1800, output_tokens=240)
print(json.dumps({{"image": str(image.public_id), "conversation": conversation.pk}}))
"""


def seed_conversation_with_image(server, **args) -> dict:
    code = SEED.format(args=json.dumps(args))
    return json.loads(manage_shell(server, code).strip().splitlines()[-1])


def admin_login(page, base_url: str, username: str) -> None:
    page.goto(base_url + "/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Review and administration")).to_be_visible()


def test_admin_finds_a_conversation_by_its_text_and_sees_its_image(new_page, app_server):
    page = new_page(viewport={"width": 1280, "height": 900})
    base = app_server.url
    word = f"periwinkle{uuid.uuid4().hex[:6]}"
    admin_name, owner = unique_username("staff"), unique_username("gardener")
    seeded = seed_conversation_with_image(
        app_server,
        admin=admin_name,
        owner=owner,
        password=PASSWORD,
        png=base64.b64encode(png(96, 64)).decode(),
        width=96,
        height=64,
        title="Garden question",  # the title does not hold the word: the search reads message text
        question=f"Which flower is this? I think it is a {word}.",
        answer="It looks like a **periwinkle** (*Vinca minor*):\n\n- five petals\n- blue to violet",
    )

    admin_login(page, base, admin_name)
    page.locator("#conversations-conversation").get_by_role("link", name="Conversations").click()
    search = page.get_by_role("textbox", name="Search")
    search.fill(word)
    search.press("Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(owner)
    rows.first.get_by_role("link", name=re.compile("Garden question")).click()

    transcript = page.locator(".review-transcript")
    question = transcript.locator('article[data-role="user"]')
    expect(question).to_contain_text(f"Which flower is this? I think it is a {word}.")
    answer = transcript.locator('article[data-role="assistant"]')
    expect(answer.locator("strong")).to_have_text("periwinkle")
    expect(answer.locator("details summary")).to_contain_text("Thinking")
    expect(answer.get_by_text("Blue petals, five of them.")).to_be_hidden()  # thinking starts collapsed

    image = question.get_by_role("img", name="flower.png")
    expect(image).to_be_visible()
    expect(image).to_have_attribute("src", f"/attachments/{seeded['image']}/?thumb=1")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => img.naturalWidth") == 96
    expect(page.get_by_text("Transcript opened by")).to_be_visible()
    screenshot(page, "admin-transcript")

    page.goto(base + "/admin/usage/")
    expect(page.get_by_role("img", name=re.compile("Daily cost"))).to_be_visible()
    expect(page.locator("#usage-per-user")).to_contain_text(owner)
    screenshot(page, "admin-usage-report")


def test_person_reports_an_answer_from_the_chat(page, app_server, upstream):
    upstream.enqueue(text_reply("The moon is made of cheese."))
    signup(page, app_server.url, unique_username("reporter"))
    send(page, "What is the moon made of?")
    answer = articles(page, "assistant").first
    expect(answer).to_have_attribute("data-status", "complete")

    answer.hover()
    answer.get_by_role("button", name="Report").click()
    dialog = page.get_by_role("dialog", name="Why are you reporting this answer?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Send").click()
    expect(dialog.get_by_role("alert")).to_have_text("Say why you are reporting this answer.")
    dialog.get_by_label("Reason").fill("It is wrong: the moon is rock.")
    dialog.get_by_role("button", name="Send").click()
    expect(dialog.get_by_role("status")).to_have_text("Reported. Thank you.")
    screenshot(page, "chat-report-dialog")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    expect(answer.get_by_role("button", name="Reported")).to_be_disabled()
