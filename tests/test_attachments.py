"""Attachments: validated by their bytes, stored once, served only to their
owner and staff, and sent upstream as the API's image and document blocks."""

from __future__ import annotations

import base64
import io
import json

import pytest
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from conversations.models import Attachment, Conversation, MessageAttachment
from tests.conftest import open_socket, receive_until
from tests.fake_upstream import error_reply, text_reply
from tests.files import image_bytes, noisy_png, pdf_bytes, png_bomb

pytestmark = pytest.mark.django_db


def upload(client, name: str, data: bytes, content_type: str = "application/octet-stream"):
    return client.post("/attachments/", {"file": SimpleUploadedFile(name, data, content_type=content_type)})


@pytest.mark.parametrize(
    "name, make, media_type",
    [
        ("photo.png", lambda: image_bytes("PNG"), "image/png"),
        ("photo.jpg", lambda: image_bytes("JPEG"), "image/jpeg"),
        ("anim.gif", lambda: image_bytes("GIF"), "image/gif"),
        ("pic.webp", lambda: image_bytes("WEBP"), "image/webp"),
        ("paper.pdf", lambda: pdf_bytes(3), "application/pdf"),
        ("misnamed.txt", lambda: image_bytes("PNG"), "image/png"),  # the bytes decide, not the name
    ],
)
def test_accepted_files(alice_client, name, make, media_type):
    data = make()
    response = upload(alice_client, name, data, content_type="text/plain")
    assert response.status_code == 200, response.json()
    attachment = response.json()["attachment"]
    assert attachment["media_type"] == media_type and attachment["name"] == name and attachment["size"] == len(data)
    stored = Attachment.objects.get(public_id=attachment["id"])
    with stored.file.open("rb") as handle:
        assert handle.read() == data
    if media_type == "application/pdf":
        assert attachment["pages"] == 3
    else:
        assert (attachment["width"], attachment["height"]) == (64, 48)


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("page.png", lambda: b"<!doctype html><html><script>alert(1)</script></html>", "page.png is not a JPEG, PNG, GIF, WebP or PDF file."),
        ("cut.png", lambda: image_bytes("PNG", (400, 400))[:300], "cut.png is damaged or incomplete and cannot be read as an image."),
        ("empty.png", lambda: b"", "empty.png is empty."),
        ("wide.png", lambda: image_bytes("PNG", (9000, 10)), "wide.png is 9000×10 pixels; images can be at most 8000×8000."),
        ("bomb.png", png_bomb, "bomb.png would decompress to hundreds of megapixels (a decompression bomb) and was refused."),
        ("long.pdf", lambda: pdf_bytes(101), "long.pdf has 101 pages; PDFs can have at most 100."),
        ("locked.pdf", lambda: pdf_bytes(1, password="secret"), "locked.pdf is password-protected; remove the password and attach it again."),
        ("notes.pdf", lambda: b"Just some plain text notes, not a PDF at all.\n" * 20, "notes.pdf is not a JPEG, PNG, GIF, WebP or PDF file."),
        ("cut.pdf", lambda: pdf_bytes(5)[:-300], "cut.pdf is not a readable PDF (it may be damaged or incomplete)."),
    ],
)
def test_refused_files_each_get_their_own_reason(alice_client, alice, name, make, reason):
    response = upload(alice_client, name, make(), content_type="image/png")
    assert response.status_code == 400
    assert response.json()["error"] == reason
    assert not Attachment.objects.filter(owner=alice).exists()


def test_large_image_is_downscaled_for_the_api_and_the_original_kept(alice_client):
    data = image_bytes("PNG", (3136, 1000))
    attachment = upload(alice_client, "wide.png", data).json()["attachment"]
    stored = Attachment.objects.get(public_id=attachment["id"])
    assert (stored.width, stored.height) == (3136, 1000)
    with stored.sent_file.open("rb") as handle:
        assert Image.open(handle).size == (1568, 500)
    with stored.file.open("rb") as handle:
        assert handle.read() == data


def test_image_over_5_mb_is_reencoded_under_it(alice_client):
    data = noisy_png((1500, 1500))  # about 6.7 MB of noise
    assert len(data) > 5 * 1024 * 1024
    attachment = upload(alice_client, "noise.png", data).json()["attachment"]
    stored = Attachment.objects.get(public_id=attachment["id"])
    assert stored.sent_size <= 5 * 1024 * 1024 and stored.sent_media_type == "image/jpeg"


def test_same_bytes_from_the_same_owner_are_stored_once(alice_client, client, bob):
    data = image_bytes("PNG")
    first = upload(alice_client, "a.png", data).json()["attachment"]
    second = upload(alice_client, "b.png", data).json()["attachment"]
    assert first["id"] == second["id"] and Attachment.objects.count() == 1
    client.force_login(bob)
    upload(client, "a.png", data)
    assert Attachment.objects.count() == 2


def test_upload_needs_login_and_csrf(client, alice):
    response = upload(client, "a.png", image_bytes())
    assert response.status_code == 302 and "/accounts/login/" in response.url
    strict = client.__class__(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert upload(strict, "a.png", image_bytes()).status_code == 403


def test_file_is_served_to_its_owner_with_safe_headers(alice_client):
    data = image_bytes("PNG")
    url = upload(alice_client, "photo.png", data).json()["attachment"]["url"]
    response = alice_client.get(url)
    assert response.status_code == 200 and b"".join(response.streaming_content) == data
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"].startswith("inline") and "photo.png" in response["Content-Disposition"]
    download = alice_client.get(url + "?download=1")
    assert download["Content-Disposition"].startswith("attachment")


def test_another_user_gets_404_and_anonymous_goes_to_login(alice_client, client, bob, admin_user):
    url = upload(alice_client, "photo.png", image_bytes()).json()["attachment"]["url"]
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and anonymous.url.startswith("/accounts/login/")
    client.force_login(bob)
    assert client.get(url).status_code == 404
    client.force_login(admin_user)
    assert client.get(url).status_code == 200, "staff may open any attachment"


def test_media_files_are_not_public(alice_client, client):
    stored = Attachment.objects.get(public_id=upload(alice_client, "p.png", image_bytes()).json()["attachment"]["id"])
    assert client.get("/media/" + stored.file.name).status_code == 404
    assert alice_client.get("/media/" + stored.file.name).status_code == 404


def test_deleting_a_conversation_frees_files_no_other_message_uses(alice_client, alice):
    shared = Attachment.objects.get(public_id=upload(alice_client, "s.png", image_bytes(color=(1, 2, 3))).json()["attachment"]["id"])
    only = Attachment.objects.get(public_id=upload(alice_client, "o.pdf", pdf_bytes(1)).json()["attachment"]["id"])
    first, second = Conversation.start(alice), Conversation.start(alice)
    first.add_user_message("both", [shared, only])
    second.add_user_message("shared", [shared])
    only_path, storage = only.file.name, only.file.storage
    first.delete()
    assert not Attachment.objects.filter(pk=only.pk).exists() and not storage.exists(only_path)
    assert Attachment.objects.filter(pk=shared.pk).exists() and storage.exists(shared.file.name)
    second.delete()
    assert not Attachment.objects.exists()


# --- sending -------------------------------------------------------------------


def stored(alice_client, name, data):
    return upload(alice_client, name, data).json()["attachment"]["id"]


async def send_and_finish(socket, text, attachments, client_id="c"):
    await socket.send_json_to({"action": "send", "text": text, "client_id": client_id, "attachments": attachments})
    return await receive_until(socket, "message.end")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("settle")
async def test_upstream_receives_the_exact_bytes_before_the_text_and_later_turns_resend_them(alice, fake_upstream):
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    png, pdf, wide = image_bytes("PNG"), pdf_bytes(2), image_bytes("JPEG", (2000, 1000))
    ids = [await database_sync_to_async(stored)(client, n, d) for n, d in (("a.png", png), ("b.pdf", pdf), ("w.jpg", wide))]
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    fake_upstream.enqueue(text_reply("One"), text_reply("Two"), text_reply("Three"))
    user_events = []
    await socket.send_json_to({"action": "send", "text": "Look", "client_id": "c1", "attachments": ids})
    user_events.append(await receive_until(socket, "message.user"))
    await receive_until(socket, "message.end")
    await send_and_finish(socket, "And?", [], "c2")
    await send_and_finish(socket, "Finally", [], "c3")
    await socket.disconnect()

    first = fake_upstream.requests[0].body["messages"][0]["content"]
    assert [b["type"] for b in first] == ["image", "document", "image", "text"]
    assert base64.b64decode(first[0]["source"]["data"]) == png and first[0]["source"]["media_type"] == "image/png"
    assert base64.b64decode(first[1]["source"]["data"]) == pdf and first[1]["source"]["media_type"] == "application/pdf"
    resized = Image.open(io.BytesIO(base64.b64decode(first[2]["source"]["data"])))
    assert resized.size == (1568, 784) and first[2]["source"]["media_type"] == "image/jpeg"
    assert first[3] == {"type": "text", "text": "Look", **({"cache_control": first[3]["cache_control"]} if "cache_control" in first[3] else {})}

    third = fake_upstream.requests[2].body
    assert third["messages"][0]["content"][:3] == [{k: v for k, v in b.items() if k != "cache_control"} for b in first[:3]]
    for request in fake_upstream.requests:
        raw = json.dumps(request.body)
        assert 1 <= raw.count('"cache_control"') <= 4
    # The turn holding the files stays a cached prefix in later requests.
    assert "cache_control" in third["messages"][0]["content"][-1]
    assert "cache_control" in third["messages"][-1]["content"][-1]
    article = user_events[0]["message"]["article"]
    assert 'src="/attachments/' in article and "b.pdf" in article and "2 pages" in article


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("settle")
@pytest.mark.parametrize("chat", ["existing", "new"])
async def test_too_large_request_is_refused_naming_the_largest_files(alice, fake_upstream, settings, chat):
    """Refused before anything is sent; in a new chat (whose first turn is built
    from the message just saved) no chat is left behind either."""
    settings.CHAT_MAX_REQUEST_BYTES = 3_000
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    big = await database_sync_to_async(stored)(client, "big.pdf", pdf_bytes(100))
    small = await database_sync_to_async(stored)(client, "small.png", image_bytes())
    conversation = await database_sync_to_async(Conversation.start)(alice) if chat == "existing" else None
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/" if conversation else "/ws/chat/new/")
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "send", "text": "Read these", "client_id": "c1", "attachments": [small, big]})
    error = await receive_until(socket, "error")
    await socket.disconnect()
    assert error["client_id"] == "c1"
    assert "request, over the API's 3 KB limit" in error["message"] and error["message"].index("big.pdf") < error["message"].index("small.png")
    assert fake_upstream.requests == []
    if conversation:
        assert not await database_sync_to_async(conversation.messages.exists)()
    else:
        assert not await database_sync_to_async(Conversation.objects.exists)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("settle")
async def test_attachment_the_api_refused_is_left_out_of_later_turns(alice, fake_upstream):
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    image = await database_sync_to_async(stored)(client, "odd.png", image_bytes())
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    fake_upstream.enqueue(error_reply(400, "invalid_request_error", "messages.0.content.0.image.source: Could not process image"), text_reply("ok"))
    end = await send_and_finish(socket, "What is it?", [image])
    assert end["status"] == "error" and "left out of the conversation" in end["error"]
    await send_and_finish(socket, "Never mind", [], "c2")
    await socket.disconnect()
    later = fake_upstream.requests[-1].body["messages"]
    assert all(b["type"] == "text" for turn in later for b in turn["content"])
    assert await database_sync_to_async(MessageAttachment.objects.filter(excluded=True).count)() == 1


@pytest.mark.django_db(transaction=True)
async def test_someone_elses_attachment_cannot_be_sent(alice, bob):
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(bob)
    bobs = await database_sync_to_async(stored)(client, "bob.png", image_bytes())
    conversation = await database_sync_to_async(Conversation.start)(alice)
    socket = await open_socket(alice, f"/ws/chat/{conversation.public_id}/")
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "send", "text": "steal", "client_id": "c1", "attachments": [bobs]})
    error = await receive_until(socket, "error")
    await socket.disconnect()
    assert "could not be found" in error["message"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("settle")
async def test_first_message_of_a_new_chat_sends_its_files_and_shows_them(alice, fake_upstream):
    """A new chat's first turn is built from the message just saved, without
    reading it back: the files must still go up, in order, and show on the page."""
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    png, pdf = image_bytes("PNG"), pdf_bytes(2)
    ids = [await database_sync_to_async(stored)(client, n, d) for n, d in (("a.png", png), ("b.pdf", pdf))]
    socket = await open_socket(alice, "/ws/chat/new/")
    assert (await socket.connect())[0]
    fake_upstream.enqueue(text_reply("One"))
    await socket.send_json_to({"action": "send", "text": "Look", "client_id": "c1", "attachments": ids})
    user = await receive_until(socket, "message.user")
    await receive_until(socket, "message.end")
    await socket.disconnect()

    [turn] = fake_upstream.requests[0].body["messages"]
    assert turn["role"] == "user" and [b["type"] for b in turn["content"]] == ["image", "document", "text"]
    assert base64.b64decode(turn["content"][0]["source"]["data"]) == png
    assert base64.b64decode(turn["content"][1]["source"]["data"]) == pdf
    assert turn["content"][2]["text"] == "Look" and "cache_control" in turn["content"][2]
    article = user["message"]["article"]
    assert 'src="/attachments/' in article and "b.pdf" in article and "2 pages" in article
