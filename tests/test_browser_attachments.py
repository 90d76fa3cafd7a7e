"""Attaching images and PDFs, as a person does it."""

from __future__ import annotations

import pytest

from tests.browser_support import articles, expect, message_box, signup, unique_username
from tests.fake_upstream import text_reply
from tests.files import image_bytes, pdf_bytes

pytestmark = pytest.mark.browser


def test_attach_an_image_and_a_pdf_send_and_find_them_after_reload(page, app_server, upstream, tmp_path):
    photo, paper = tmp_path / "photo.png", tmp_path / "paper.pdf"
    photo.write_bytes(image_bytes("PNG", (300, 200)))
    paper.write_bytes(pdf_bytes(3))
    signup(page, app_server.url, unique_username("ann"))
    message_box(page).fill("What do you see?")
    page.get_by_label("Attach files").set_input_files([str(photo), str(paper)])
    chips = page.locator("#pending-files .file-chip")
    expect(chips).to_have_count(2)
    expect(chips.filter(has_text="paper.pdf")).to_contain_text("3 pages")
    expect(page.locator('#pending-files .file-chip[data-status="done"]')).to_have_count(2)
    upstream.enqueue(text_reply("A photo and a paper."))
    message_box(page).press("Enter")
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    expect(page.locator("#pending-files .file-chip")).to_have_count(0)
    sent = upstream.requests[-1].body["messages"][0]["content"]
    assert [b["type"] for b in sent] == ["image", "document", "text"]

    for _ in range(2):  # as sent, then after a reload
        user = articles(page, "user")
        image = user.locator(".file-thumb img")
        expect(image).to_have_attribute("alt", "photo.png")
        page.wait_for_function("() => document.querySelector('.file-thumb img').naturalWidth > 0")
        expect(user.locator(".file-chip")).to_contain_text("paper.pdf")
        expect(user.locator(".file-chip")).to_contain_text("3 pages")
        expect(user.locator(".bubble")).to_have_text("What do you see?")
        page.reload()


def test_refused_file_names_the_reason_and_keeps_the_text_and_other_files(page, app_server, upstream, tmp_path):
    fake, good = tmp_path / "notes.pdf", tmp_path / "ok.png"
    fake.write_text("just text, not a PDF\n" * 10)
    good.write_bytes(image_bytes("PNG"))
    signup(page, app_server.url, unique_username("rex"))
    message_box(page).fill("Keep this text")
    page.get_by_label("Attach files").set_input_files([str(fake), str(good)])
    refused = page.locator('#pending-files .file-chip[data-status="error"]')
    expect(refused.get_by_role("alert")).to_have_text("notes.pdf is not a JPEG, PNG, GIF, WebP or PDF file.")
    expect(page.locator('#pending-files .file-chip[data-status="done"]')).to_have_count(1)
    expect(message_box(page)).to_have_value("Keep this text")
    page.get_by_role("button", name="Remove notes.pdf").click()
    expect(page.locator("#pending-files .file-chip")).to_have_count(1)
    page.reload()  # an uploaded file survives a reload, like the typed text
    expect(message_box(page)).to_have_value("Keep this text")
    expect(page.locator('#pending-files .file-chip[data-status="done"]')).to_contain_text("ok.png")


def test_dropping_and_pasting_files_attach_them(page, app_server, upstream):
    import base64

    signup(page, app_server.url, unique_username("dru"))
    png = base64.b64encode(image_bytes("PNG", (40, 30))).decode()
    pdf = base64.b64encode(pdf_bytes(2)).decode()
    page.evaluate(
        """([png, pdf]) => {
            const file = (b64, name, type) => new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, { type });
            const dropped = new DataTransfer();
            dropped.items.add(file(pdf, "dropped.pdf", "application/pdf"));
            const chat = document.getElementById("chat");
            chat.dispatchEvent(new DragEvent("dragenter", { dataTransfer: dropped, bubbles: true }));
            chat.dispatchEvent(new DragEvent("drop", { dataTransfer: dropped, bubbles: true, cancelable: true }));
            const pasted = new DataTransfer();
            pasted.items.add(file(png, "pasted.png", "image/png"));
            document.getElementById("message").dispatchEvent(
                new ClipboardEvent("paste", { clipboardData: pasted, bubbles: true, cancelable: true }));
        }""",
        [png, pdf],
    )
    done = page.locator('#pending-files .file-chip[data-status="done"]')
    expect(done).to_have_count(2)
    expect(done.filter(has_text="dropped.pdf")).to_contain_text("2 pages")
    expect(done.filter(has_text="pasted.png")).to_have_count(1)
    upstream.enqueue(text_reply("Two files."))
    message_box(page).press("Enter")
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    assert sorted(b["type"] for b in upstream.requests[-1].body["messages"][0]["content"]) == ["document", "image"]
