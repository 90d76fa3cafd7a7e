"""Pages and accounts over HTTP: login required, sign-up, logout, ownership."""

import pytest
from django.contrib.auth import get_user_model

from conversations.models import Conversation

pytestmark = pytest.mark.django_db


def test_anonymous_visitor_is_sent_to_login(client, alice):
    conversation = Conversation.start(alice)
    for url in ("/", conversation.get_absolute_url(), f"/c/{conversation.public_id}/transcript/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith("/accounts/login/?next=")


def test_signup_logs_the_new_person_in(client):
    response = client.post(
        "/accounts/signup/",
        {"username": "carol", "password1": "a-long-passphrase-9", "password2": "a-long-passphrase-9"},
    )
    assert response.status_code == 302 and response.url == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert b'aria-label="Message"' in page.content and b"carol" in page.content


def test_signup_with_mismatched_passwords_names_the_problem(client):
    response = client.post(
        "/accounts/signup/", {"username": "carol", "password1": "a-long-passphrase-9", "password2": "other-pass-77"}
    )
    assert response.status_code == 200
    assert "didn’t match" in response.content.decode() or "didn't match" in response.content.decode()
    assert not get_user_model().objects.filter(username="carol").exists()


def test_signup_can_be_closed(client, settings):
    settings.CHAT_ALLOW_SIGNUP = False
    assert client.get("/accounts/signup/").status_code == 404
    assert b"Create an account" not in client.get("/accounts/login/").content


def test_login_and_logout(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 302 and response.url == "/"
    assert client.get("/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 200  # a confirmation page, nothing changed yet
    assert client.get("/").status_code == 200
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_owner_sees_their_conversation_with_its_messages(alice_client, alice):
    conversation = Conversation.start(alice)
    conversation.add_user_message("What is **bold**?")
    answer = conversation.start_assistant_message()
    answer.content = [{"type": "text", "text": "It is **strong** text."}]
    answer.status = "complete"
    answer.save()
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    assert 'data-role="user"' in page and "What is **bold**?" in page
    assert 'data-role="assistant"' in page and "<strong>strong</strong>" in page
    assert f'href="/c/{conversation.public_id}/"' in page and "What is **bold**?" in page


def test_outsider_gets_404_for_someone_elses_conversation(client, alice, bob):
    conversation = Conversation.start(alice)
    conversation.add_user_message("private")
    client.force_login(bob)
    assert client.get(conversation.get_absolute_url()).status_code == 404
    assert client.get(f"/c/{conversation.public_id}/transcript/").status_code == 404
    assert b"private" not in client.get("/").content


def test_sidebar_lists_only_my_conversations_newest_first(alice_client, alice, bob):
    older = Conversation.start(alice)
    older.add_user_message("older chat")
    newer = Conversation.start(alice)
    newer.add_user_message("newer chat")
    Conversation.start(bob).add_user_message("bob's chat")
    page = alice_client.get("/").content.decode()
    assert page.index("newer chat") < page.index("older chat")
    assert "bob&#x27;s chat" not in page and "bob's chat" not in page


def test_demo_mode_is_labelled_with_how_to_set_a_key(alice_client):
    page = alice_client.get("/").content.decode()
    assert "Offline demo" in page and "ANTHROPIC_API_KEY" in page


def test_with_a_key_there_is_no_demo_label(alice_client, settings):
    settings.ANTHROPIC_API_KEY = "sk-test-secret"
    page = alice_client.get("/").content.decode()
    assert "Offline demo" not in page
    assert "sk-test-secret" not in page, "the API key never reaches the browser"
