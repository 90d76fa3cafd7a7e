"""Shared fixtures: alice (an owner), bob (another user), an admin, the fake
upstream on loopback, and a helper that opens a websocket through the real
ASGI application with a logged-in session."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chatsite.asgi import application
from conversations.generation import wait_for_generations
from tests.fake_upstream import FakeUpstream

# The browser tests' fixtures (live daphne servers, Chromium), shared by every module.
pytest_plugins = ["tests.browser_support"]

ORIGIN = (b"origin", b"http://localhost")


@pytest.fixture(autouse=True)
def _test_settings(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Never reach a real API from tests, whatever the environment says.
    settings.ANTHROPIC_API_KEY = ""
    settings.ANTHROPIC_AUTH_TOKEN = ""
    settings.ANTHROPIC_BASE_URL = "http://127.0.0.1:9"
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
    # Titles are one more upstream request after a first answer: off unless a test is about them.
    settings.CHAT_GENERATE_TITLES = False


@pytest.fixture
def fake_upstream(settings):
    with FakeUpstream() as upstream:
        settings.ANTHROPIC_BASE_URL = upstream.url
        settings.ANTHROPIC_API_KEY = "test-key"
        yield upstream


def make_user(username: str, **extra):
    return get_user_model().objects.create_user(username=username, password="pw-" + username, **extra)


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def admin_user(db):
    return make_user("admin", is_staff=True, is_superuser=True)


@pytest.fixture
def alice_client(alice):
    client = Client()
    client.force_login(alice)
    return client


def _session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def open_socket(user, path: str) -> WebsocketCommunicator:
    """A connected-or-refused communicator on `path`, as `user` (None: anonymous)."""
    headers = [ORIGIN]
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(_session_cookie)(user)))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    return communicator


async def receive_until(communicator, event: str, timeout: float = 5.0, collect: list | None = None) -> dict:
    """Read events until one named `event` arrives; earlier ones go to `collect`."""
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        if collect is not None:
            collect.append(message)
        if message.get("event") == event:
            return message


@pytest.fixture
async def settle():
    """After the test, wait for generation tasks so none outlives its database."""
    yield
    await wait_for_generations()
