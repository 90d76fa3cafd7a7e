"""What a person sees in the browser: headless Chromium against a live daphne.

The server runs as a subprocess with its own SQLite database (see
tests/browser_support.py) and answers from the in-process FakeUpstream, so
these tests use no pytest-django database. Screenshots: test-artifacts/.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser_support import (
    UUID_PATH,
    answer_text,
    articles,
    expect,
    message_box,
    screenshot,
    send,
    signup,
    unique_username,
    wait_for_gate,
)
from tests.fake_upstream import Gate, text_reply

pytestmark = pytest.mark.browser


def words(prefix: str, n: int) -> list[str]:
    """n streamed pieces "prefix0 prefix1 … prefix{n-1}" (no trailing space)."""
    return [f"{prefix}{i} " for i in range(n - 1)] + [f"{prefix}{n - 1}"]


def joined(pieces: list[str]) -> str:
    return " ".join("".join(pieces).split())


@pytest.mark.browser
def test_answer_streams_visibly_then_persists_across_reload(page, app_server, upstream):
    base = app_server.url
    pieces = words("river", 60)
    upstream.enqueue(text_reply(pieces, delay=0.05))
    signup(page, base, unique_username("alice"))

    question = "Tell me about rivers and the sea"
    send(page, question)

    user = articles(page, "user")
    answer = articles(page, "assistant")
    expect(user).to_have_count(1)
    expect(user.first).to_contain_text(question)
    expect(answer).to_have_count(1)
    expect(page.get_by_role("button", name="Stop")).to_be_visible()

    # The answer grows on screen while it streams.
    lengths: list[int] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if answer.first.get_attribute("data-status") != "streaming":
            break
        lengths.append(len(answer.first.inner_text()))
        page.wait_for_timeout(150)
    growth = sum(1 for a, b in zip(lengths, lengths[1:]) if b > a)
    assert growth >= 2, f"the answer did not visibly grow while streaming; lengths sampled: {lengths}"

    expect(answer.first).to_have_attribute("data-status", "complete")
    assert answer_text(answer.first) == joined(pieces)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page).to_have_url(UUID_PATH)
    conversation_url = page.url

    nav = page.get_by_role("navigation", name="Conversations")
    expect(nav.get_by_role("link", name=question)).to_be_visible()

    # The upstream got the person's words.
    last = upstream.requests[-1].body["messages"][-1]
    assert question in str(last["content"])

    user_before = user.first.inner_text()
    answer_before = answer_text(answer.first)
    page.reload()
    expect(page).to_have_url(conversation_url)
    expect(nav.get_by_role("link", name=question)).to_be_visible()
    expect(user).to_have_count(1)
    expect(answer).to_have_count(1)
    expect(answer.first).to_have_attribute("data-status", "complete")
    assert user.first.inner_text() == user_before
    assert answer_text(answer.first) == answer_before == joined(pieces)


@pytest.mark.browser
def test_shift_enter_is_a_new_line_and_enter_sends(page, app_server, upstream):
    base = app_server.url
    upstream.enqueue(text_reply("Two lines received."))
    signup(page, base, unique_username("carol"))

    box = message_box(page)
    box.click()
    box.type("line one")
    box.press("Shift+Enter")
    box.type("line two")
    expect(box).to_have_value("line one\nline two")
    page.wait_for_timeout(400)  # time for a wrongly sent message to show up
    expect(articles(page, "user")).to_have_count(0)
    assert len(upstream.requests) == 0 or "line one" not in str(upstream.requests[-1].body)

    box.press("Enter")
    user = articles(page, "user")
    expect(user).to_have_count(1)
    assert user.first.locator(".bubble").text_content() == "line one\nline two"
    expect(box).to_have_value("")
    expect(articles(page, "assistant").first).to_have_attribute("data-status", "complete")
    expect(articles(page, "assistant").first).to_contain_text("Two lines received.")


@pytest.mark.browser
def test_stop_keeps_the_partial_answer(page, app_server, upstream):
    base = app_server.url
    gate = Gate(timeout=20)
    pieces = words("partial", 12)
    upstream.enqueue(text_reply(pieces, gate_after=3, gate=gate))
    signup(page, base, unique_username("dave"))

    send(page, "Write something long")
    wait_for_gate(gate)
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    answer = articles(page, "assistant").first
    partial = joined(pieces[:3])
    expect(answer.locator(".answer > .md")).to_have_text(partial)
    expect(answer).to_have_attribute("data-status", "streaming")

    stop.click()
    expect(answer).to_have_attribute("data-status", "stopped")
    assert answer_text(answer) == partial
    expect(answer).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(stop).to_be_hidden()
    expect(page).to_have_url(UUID_PATH)

    page.reload()
    answer = articles(page, "assistant").first
    expect(answer).to_have_attribute("data-status", "stopped")
    assert answer_text(answer) == partial
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()


HOSTILE = """Here is what you asked for.

<script>window.__pwned=1</script>

<img src=x onerror="window.__pwned=2">

[click me](javascript:window.__pwned=3)

An inline link: <a href="javascript:window.__pwned=4">x</a>

```python
def greet(name):
    return f"hello {name}"
```

The end.
"""


def assert_transcript_is_inert(page) -> None:
    transcript = page.locator("#transcript")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert transcript.locator("script").count() == 0
    assert transcript.locator("[onerror]").count() == 0
    assert transcript.locator('a[href^="javascript:" i]').count() == 0
    assert transcript.locator('[href*="javascript:" i], [src*="javascript:" i]').count() == 0


@pytest.mark.browser
def test_untrusted_model_output_never_executes(page, app_server, upstream):
    base = app_server.url
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    upstream.enqueue(text_reply(HOSTILE, chunks=9, delay=0.03))
    signup(page, base, unique_username("eve"))

    send(page, "Show me some HTML")
    answer = articles(page, "assistant").first
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer).to_contain_text("The end.")

    for attempt in ("live", "after reload"):
        assert_transcript_is_inert(page)
        code = answer.locator("pre code")
        expect(code).to_contain_text('return f"hello {name}"')
        expect(answer.get_by_role("button", name="Copy code")).to_be_visible()
        click_me = answer.get_by_text("click me")
        if click_me.count():
            url_before = page.url
            click_me.first.click()
            page.wait_for_timeout(200)
            assert page.url == url_before, f"clicking the 'click me' text navigated ({attempt})"
        assert_transcript_is_inert(page)
        if attempt == "live":
            page.reload()
            answer = articles(page, "assistant").first
            expect(answer).to_have_attribute("data-status", "complete")
    assert dialogs == [], f"a dialog opened: {dialogs}"


@pytest.mark.browser
def test_second_tab_joins_mid_stream_without_duplicates(page, new_page, app_server, upstream):
    base = app_server.url
    gate = Gate(timeout=20)
    pieces = words("tide", 30)
    upstream.enqueue(text_reply(pieces, gate_after=10, gate=gate, delay=0.02))
    signup(page, base, unique_username("frank"))

    send(page, "Explain the tides")
    wait_for_gate(gate)
    expect(page).to_have_url(UUID_PATH)
    first_answer = articles(page, "assistant").first
    expect(first_answer.locator(".answer > .md")).to_have_text(joined(pieces[:10]))

    second = page.context.new_page()
    second.goto(page.url)
    second_answer = articles(second, "assistant")
    expect(second_answer).to_have_count(1)
    expect(second_answer.first).to_have_attribute("data-status", "streaming")
    expect(second_answer.first.locator(".answer > .md")).to_have_text(joined(pieces[:10]))
    expect(second.get_by_role("button", name="Stop")).to_be_visible()
    screenshot(second, "second_tab_mid_stream")

    gate.open()
    for tab in (page, second):
        answer = articles(tab, "assistant")
        expect(answer.first).to_have_attribute("data-status", "complete")
        expect(answer).to_have_count(1)
        expect(articles(tab, "user")).to_have_count(1)
        assert answer_text(answer.first) == joined(pieces), f"answer differs in {tab.url}"
    screenshot(second, "second_tab_complete")
    second.close()


@pytest.mark.browser
def test_conversations_are_private(page, new_page, app_server, upstream):
    base = app_server.url
    secret = "My secret plan for the garden"
    upstream.enqueue(text_reply("Only for alice."))
    signup(page, base, unique_username("alice"))
    send(page, secret)
    expect(articles(page, "assistant").first).to_have_attribute("data-status", "complete")
    expect(page).to_have_url(UUID_PATH)
    alice_url = page.url

    bob = new_page()
    signup(bob, base, unique_username("bob"))
    response = bob.goto(alice_url)
    assert response is not None and response.status == 404
    expect(bob.locator("body")).to_contain_text(re.compile(r"not found", re.I))
    expect(bob.locator("body")).not_to_contain_text(secret)
    expect(bob.locator("body")).not_to_contain_text("Only for alice.")
    bob.goto(base + "/")
    expect(bob.get_by_role("navigation", name="Conversations").get_by_role("link", name=secret)).to_have_count(0)

    anonymous = new_page()
    anonymous.goto(base + "/")
    expect(anonymous).to_have_url(re.compile(r"/accounts/login/"))
    expect(anonymous.get_by_label("Username")).to_be_visible()
    anonymous.goto(alice_url)
    expect(anonymous).to_have_url(re.compile(r"/accounts/login/"))
    expect(anonymous.locator("body")).not_to_contain_text(secret)


@pytest.mark.browser
def test_demo_mode_is_labelled(page, demo_server):
    base = demo_server.url
    signup(page, base, unique_username("gina"))
    expect(page.get_by_text("Offline demo", exact=True)).to_be_visible()

    send(page, "Hello demo")
    answer = articles(page, "assistant").first
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer).to_contain_text("Offline demo model")


@pytest.mark.browser
def test_phone_width_composer_is_usable(new_page, app_server, upstream):
    base = app_server.url
    page = new_page(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    upstream.enqueue(text_reply("Small screens work too."))
    signup(page, base, unique_username("hana"))

    box = message_box(page)
    expect(box).to_be_visible()
    expect(box).to_be_in_viewport()
    send_button = page.get_by_role("button", name="Send")
    expect(send_button).to_be_in_viewport()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width}px wide)"

    box.fill("Hello from my phone")
    send_button.tap()
    user = articles(page, "user")
    expect(user).to_have_count(1)
    expect(user.first).to_be_in_viewport()
    answer = articles(page, "assistant").first
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer).to_contain_text("Small screens work too.")
    expect(answer).to_be_in_viewport()
    expect(box).to_be_in_viewport()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width after an answer ({width}px wide)"


@pytest.mark.browser
def test_text_shown_before_its_rendering_keeps_out_of_a_closed_code_block(page, app_server):
    """A busy server sends new text before its markdown (parts without `tail`).
    Text that closes a code block must not show the fence, nor the words after
    it, inside the block while it waits for its rendering."""
    signup(page, app_server.url, unique_username("fence"))
    result = page.evaluate(
        """async () => {
          const { Transcript } = await import("/static/js/transcript.js");
          const root = document.createElement("div");
          root.innerHTML = '<article data-role="assistant" data-id="m1" data-status="streaming"><div class="answer"></div></article>';
          const scroller = document.createElement("div"), jump = document.createElement("button");
          document.body.append(root);
          const transcript = new Transcript({ root, scroller, jump, onGap() {}, onStreamingChange() {} });
          const code = () => root.querySelector("pre code").textContent;
          transcript.applyDelta("m1", [{ index: 0, type: "text", text: "Intro\\n\\n```python\\n",
                                          append: "<p>Intro</p>", tail: '<pre><code class="language-python">\\n</code></pre>' }]);
          transcript.applyDelta("m1", [{ index: 0, type: "text", text: "x = 1\\n" }]);
          const opened = code();
          transcript.applyDelta("m1", [{ index: 0, type: "text", text: "``" }]);
          transcript.applyDelta("m1", [{ index: 0, type: "text", text: "`\\n\\nAfter " }]);
          transcript.applyDelta("m1", [{ index: 0, type: "text", text: "the block" }]);
          const tail = root.querySelector(".tail");
          return { opened, closed: code(), after: tail.lastElementChild.textContent, tag: tail.lastElementChild.tagName };
        }"""
    )
    assert result["opened"] == "x = 1\n"  # its first line, not after a blank one
    assert result["closed"] == "x = 1\n"  # no fence inside the block
    assert (result["tag"], result["after"]) == ("SPAN", "After the block")  # after the block, outside it
