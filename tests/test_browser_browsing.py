"""Finding, renaming and deleting past conversations, as a person does."""

from __future__ import annotations

import pytest

from tests.browser_support import articles, expect, message_box, send, signup, unique_username
from tests.fake_upstream import text_reply

pytestmark = pytest.mark.browser


def conversations_nav(page):
    return page.get_by_role("navigation", name="Conversations")


def rename(page, title: str) -> None:
    """Rename the open conversation through its actions menu, as a person would."""
    page.get_by_role("button", name="Conversation actions").click()
    page.get_by_role("menuitem", name="Rename").click()
    box = page.get_by_role("textbox", name="Conversation title")
    box.fill(title)
    box.press("Enter")


def test_search_open_rename_and_delete(page, app_server, upstream):
    signup(page, app_server.url, unique_username("nia"))
    upstream.enqueue(text_reply("Noted."), text_reply("Sure, here is a plan."))
    send(page, "Remember the word aubergine please")
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    page.get_by_role("link", name="New chat").click()
    send(page, "Plan my trip to Lisbon")
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    expect(conversations_nav(page).get_by_role("link")).to_have_count(2)

    page.keyboard.press("Control+k")
    search = page.get_by_role("searchbox", name="Search conversations")
    expect(search).to_be_focused()
    search.fill("auberg")
    result = page.locator(".search-hits a").first
    expect(result).to_contain_text("aubergine")
    expect(result.locator("mark")).to_have_text("aubergine")
    result.click()
    expect(articles(page, "user").first).to_contain_text("Remember the word aubergine")
    expect(page.locator("article.found")).to_have_count(1)

    rename(page, "Vegetables")
    expect(page.locator("#chat-title")).to_have_text("Vegetables")
    expect(conversations_nav(page).get_by_role("link", name="Vegetables")).to_be_visible()
    page.reload()
    expect(conversations_nav(page).get_by_role("link", name="Vegetables")).to_be_visible()

    page.get_by_role("button", name="Conversation actions").click()
    page.get_by_role("menuitem", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(app_server.url + "/")
    expect(conversations_nav(page).get_by_role("link")).to_have_count(1)
    expect(conversations_nav(page).get_by_role("link", name="Vegetables")).to_have_count(0)


def test_a_rename_in_one_tab_appears_in_another(new_page, app_server, upstream):
    first = new_page()
    signup(first, app_server.url, unique_username("ola"))
    upstream.enqueue(text_reply("Hi."))
    send(first, "Hello there")
    expect(articles(first, "assistant")).to_have_attribute("data-status", "complete")
    second = first.context.new_page()
    second.goto(app_server.url + "/")
    expect(second.locator('#connection[data-state="open"]')).to_have_count(1)
    rename(first, "Greetings")
    expect(conversations_nav(second).get_by_role("link", name="Greetings")).to_be_visible()
    expect(message_box(second)).to_be_visible()


def test_regenerate_then_move_between_versions(page, app_server, upstream):
    signup(page, app_server.url, unique_username("bea"))
    upstream.enqueue(text_reply("First version."), text_reply("Second version."))
    send(page, "Say something")
    expect(articles(page, "assistant")).to_have_attribute("data-status", "complete")
    page.get_by_role("button", name="Regenerate").click()
    answer = articles(page, "assistant")
    expect(answer).to_have_count(1)
    expect(answer.locator(".answer > .md")).to_have_text("Second version.")
    expect(answer.locator(".branch-position")).to_have_text("2/2")
    page.get_by_role("button", name="Previous version").click()
    expect(articles(page, "assistant").locator(".answer > .md")).to_have_text("First version.")
    expect(articles(page, "assistant").locator(".branch-position")).to_have_text("1/2")
    page.reload()
    expect(articles(page, "assistant").locator(".answer > .md")).to_have_text("First version.")
    assert [m["role"] for m in upstream.requests[-1].body["messages"]] == ["user"]
