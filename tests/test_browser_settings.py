"""The settings panel, validation and live thinking, as a person uses them."""

from __future__ import annotations

import re

import pytest

from tests.browser_support import articles, expect, message_box, send, signup, unique_username, wait_for_gate
from tests.fake_upstream import Gate, text_reply

pytestmark = pytest.mark.browser


def settle_settings(page):
    """Wait until the panel's last change was validated and saved."""
    expect(page.locator("#settings-saved")).to_have_text("Saved.")


def test_every_control_reaches_the_upstream(page, app_server, upstream):
    signup(page, app_server.url, unique_username("sam"))
    page.get_by_role("combobox", name="Model").select_option("claude-haiku-4-5-20251001")
    page.get_by_label("System prompt").fill("Answer in French.")
    page.get_by_label("Max tokens").fill("2000")
    page.get_by_label("Temperature").fill("0.4")
    page.get_by_label("Top K").fill("30")
    page.get_by_label("Stop sequences").fill("END\n###")
    settle_settings(page)
    upstream.enqueue(text_reply("Bonjour"))
    send(page, "Hello")
    expect(articles(page, "assistant").last).to_have_attribute("data-status", "complete")
    body = upstream.requests[-1].body
    assert body["model"] == "claude-haiku-4-5-20251001" and body["system"] == "Answer in French."
    assert body["max_tokens"] == 2000 and body["temperature"] == 0.4 and body["top_k"] == 30
    assert body["stop_sequences"] == ["END", "###"] and "top_p" not in body and "thinking" not in body

    page.get_by_label("Temperature").fill("")
    page.get_by_label("Top K").fill("")
    page.get_by_label("Top P").fill("0.97")
    page.get_by_label("Extended thinking").check()
    page.get_by_label("Thinking budget").fill("1500")
    settle_settings(page)
    upstream.enqueue(text_reply("Encore", thinking="Hmm", signature="s1"))
    send(page, "Again")
    expect(articles(page, "assistant")).to_have_count(2)
    expect(articles(page, "assistant").last).to_have_attribute("data-status", "complete")
    body = upstream.requests[-1].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1500} and body["top_p"] == 0.97
    assert "temperature" not in body and "top_k" not in body

    page.reload()
    expect(page.get_by_label("Thinking budget")).to_have_value("1500")
    expect(page.get_by_role("combobox", name="Model")).to_have_value("claude-haiku-4-5-20251001")
    usage = articles(page, "assistant").last.locator(".usage")
    expect(usage).to_contain_text("in ·")
    expect(usage).to_contain_text("cache read · $")


def test_invalid_combination_shows_its_rule_and_sends_nothing(page, app_server, upstream):
    signup(page, app_server.url, unique_username("ivy"))
    page.get_by_label("Temperature").fill("0.5")
    page.get_by_label("Top P").fill("0.9")
    rule = "Claude Opus 4.5 does not accept Temperature and Top P together: leave one of them empty."
    expect(page.locator("#err-top_p")).to_have_text(rule)
    before = len(upstream.requests)
    send(page, "Please keep this text")
    expect(page.locator("#composer-alert")).to_have_text(f"Not sent: {rule}")
    expect(message_box(page)).to_have_value("Please keep this text")
    expect(articles(page, "user")).to_have_count(0)
    assert len(upstream.requests) == before

    page.get_by_label("Top P").fill("")
    expect(page.locator("#err-top_p")).to_have_text("")
    settle_settings(page)
    upstream.enqueue(text_reply("Fine now"))
    message_box(page).press("Enter")
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    assert upstream.requests[-1].body["temperature"] == 0.5


def test_thinking_streams_open_then_collapses(page, app_server, upstream):
    signup(page, app_server.url, unique_username("tess"))
    page.get_by_label("Extended thinking").check()
    page.get_by_label("Thinking budget").fill("1024")
    settle_settings(page)
    gate = Gate()
    upstream.enqueue(text_reply(["The ", "answer."], thinking="First I consider the question carefully.", gate_after=0, gate=gate))
    send(page, "Think first")
    wait_for_gate(gate)
    thinking = articles(page, "assistant").locator("details.thinking")
    expect(thinking).to_have_attribute("open", "")
    expect(thinking.locator("summary")).to_have_text("Thinking")
    expect(thinking).to_contain_text("First I consider the question carefully.")
    gate.open()
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    expect(thinking).not_to_have_attribute("open", "")
    expect(thinking.locator("summary")).to_have_attribute("data-duration", re.compile(r"^for \d+(\.\d)? s$"))
    expect(articles(page, "assistant").locator(".answer > .md")).to_have_text("The answer.")
    page.reload()
    expect(articles(page, "assistant").locator("details.thinking summary")).to_have_text("Thinking")


def test_copy_as_curl_shows_the_exact_request_without_the_key(page, app_server, upstream):
    signup(page, app_server.url, unique_username("cole"))
    upstream.enqueue(text_reply("Answer"))
    send(page, "Make me a curl")
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    page.get_by_role("button", name="Copy as cURL").click()
    dialog = page.get_by_role("dialog", name="Request as cURL")
    expect(dialog).to_be_visible()
    expect(dialog.locator("pre")).to_contain_text('--header "x-api-key: $ANTHROPIC_API_KEY"')
    expect(dialog.locator("pre")).to_contain_text('"text": "Make me a curl"')
    assert "test-key" not in dialog.locator("pre").inner_text()
