"""The settings endpoint, usage on the page and "Copy as cURL", over HTTP."""

import json

import pytest

from conversations.models import Conversation, Preferences

pytestmark = pytest.mark.django_db

VALID = {"model": "claude-haiku-4-5-20251001", "max_tokens": "2048", "system": "Be terse.", "temperature": "0.2",
         "top_p": "", "top_k": "", "stop_sequences": "", "thinking": False, "thinking_budget": ""}


def post_settings(client, settings, conversation=None):
    payload = {"settings": settings, "conversation": str(conversation.public_id) if conversation else None}
    return client.post("/settings/", json.dumps(payload), content_type="application/json")


def test_valid_settings_are_saved_to_the_conversation_and_as_defaults(alice_client, alice):
    conversation = Conversation.start(alice)
    response = post_settings(alice_client, VALID, conversation)
    assert response.status_code == 200 and response.json()["ok"] is True
    conversation.refresh_from_db()
    assert conversation.model == "claude-haiku-4-5-20251001"
    assert conversation.params == {"max_tokens": 2048, "system": "Be terse.", "temperature": 0.2}
    assert Preferences.objects.get(user=alice).params == conversation.params
    page = alice_client.get("/").content.decode()
    assert 'value="claude-haiku-4-5-20251001" selected' in page and "Be terse." in page


def test_invalid_settings_name_each_rule_and_change_nothing(alice_client, alice):
    conversation = Conversation.start(alice)
    before = (conversation.model, conversation.params)
    response = post_settings(alice_client, {**VALID, "thinking": True, "thinking_budget": "900", "top_k": "5"}, conversation)
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "thinking_budget": "Thinking budget must be at least 1,024 tokens.",
        "top_k": "With extended thinking on, Top K must be left empty.",
        "temperature": "With extended thinking on, Temperature must be 1 or left empty.",
    }
    conversation.refresh_from_db()
    assert (conversation.model, conversation.params) == before


def test_unknown_model_is_refused(alice_client):
    response = post_settings(alice_client, {**VALID, "model": "gpt-4"})
    assert response.status_code == 400 and response.json()["errors"] == {"model": "Choose a model from the list."}


def test_settings_of_someone_elses_conversation_answer_404(client, alice, bob):
    conversation = Conversation.start(alice)
    client.force_login(bob)
    assert post_settings(client, VALID, conversation).status_code == 404


def test_settings_need_login_and_csrf(client, alice):
    assert post_settings(client, VALID).status_code == 302
    strict = client.__class__(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert post_settings(strict, VALID).status_code == 403


def test_model_list_comes_from_the_upstream_when_it_has_one(alice_client, fake_upstream):
    fake_upstream.models = [{"id": "claude-future-9", "type": "model", "display_name": "Claude Future 9", "created_at": "2026-10-01T00:00:00Z"}]
    from django.core.cache import cache

    cache.clear()
    page = alice_client.get("/").content.decode()
    assert "Claude Future 9" in page
    assert any(r.path.startswith("/v1/models") and r.headers["x-api-key"] == "test-key" for r in fake_upstream.requests)


def make_answered(alice):
    conversation = Conversation.start(alice)
    conversation.add_user_message("What's 'up'?")
    answer = conversation.start_assistant_message()
    answer.content = [{"type": "text", "text": "All good."}]
    answer.status = "complete"
    answer.model = "claude-opus-4-5-20251101"
    answer.input_tokens, answer.output_tokens = 1000, 2000
    answer.cache_read_input_tokens = 10000
    answer.save()
    return conversation, answer


def test_usage_and_cost_are_shown_per_answer_and_in_total(alice_client, alice):
    conversation, answer = make_answered(alice)
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    # 1000 × $5 + 2000 × $25 + 10000 × $0.50 per million = $0.06
    assert "1000 in · 2000 out · 0 cache write · 10000 cache read · $0.0600" in page
    assert 'data-total="cost">$0.0600' in page


def test_curl_is_the_exact_request_with_the_key_as_a_variable(alice_client, alice, settings):
    settings.ANTHROPIC_API_KEY = "sk-secret-value"
    conversation, answer = make_answered(alice)
    response = alice_client.get(f"/c/{conversation.public_id}/m/{answer.public_id}/curl/")
    text = response.content.decode()
    assert response["content-type"].startswith("text/plain")
    assert text.startswith(f"curl {settings.ANTHROPIC_BASE_URL}/v1/messages")
    assert '--header "x-api-key: $ANTHROPIC_API_KEY"' in text and "sk-secret-value" not in text
    payload = json.loads(text.split("--data \\\n", 1)[1].strip().removeprefix("'").removesuffix("'").replace("'\\''", "'"))
    assert payload == {**answer.request_params, "stream": True,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "What's 'up'?"}]}]}


def test_curl_elides_attachment_data_unless_asked(alice_client, alice):
    conversation = Conversation.start(alice)
    user = conversation.add_user_message("See this")
    user.content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}}, *user.content]
    user.save()
    answer = conversation.start_assistant_message()
    answer.status, answer.content = "complete", [{"type": "text", "text": "Seen"}]
    answer.save()
    url = f"/c/{conversation.public_id}/m/{answer.public_id}/curl/"
    assert "QUJD" not in alice_client.get(url).content.decode()
    assert '"data": "QUJD"' in alice_client.get(url + "?attachments=1").content.decode()


def test_curl_uses_bearer_with_an_auth_token(alice_client, alice, settings):
    settings.ANTHROPIC_AUTH_TOKEN = "tok"
    conversation, answer = make_answered(alice)
    text = alice_client.get(f"/c/{conversation.public_id}/m/{answer.public_id}/curl/").content.decode()
    assert '--header "Authorization: Bearer $ANTHROPIC_AUTH_TOKEN"' in text


def test_curl_of_someone_elses_answer_is_404(client, alice, bob):
    conversation, answer = make_answered(alice)
    client.force_login(bob)
    assert client.get(f"/c/{conversation.public_id}/m/{answer.public_id}/curl/").status_code == 404


@pytest.mark.parametrize(
    "stop_reason, stop_sequence, sentence",
    [
        ("max_tokens", "", "Max tokens reached: the answer was cut at its maximum length."),
        ("stop_sequence", "END", "Stopped at a stop sequence (“END”)."),
        ("refusal", "", "The model declined to answer."),
    ],
)
def test_stop_reason_is_said_in_words(alice_client, alice, stop_reason, stop_sequence, sentence):
    conversation, answer = make_answered(alice)
    answer.stop_reason, answer.stop_sequence = stop_reason, stop_sequence
    answer.save()
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    assert sentence in page
    assert ('class="icon-button continue"' in page) == (stop_reason == "max_tokens")
