"""Fixtures and helpers for the browser tests (tests/test_browser.py).

The app runs for real: `manage.py migrate` and daphne in subprocesses, with
their own SQLite database in a temporary DATA_DIR (not the pytest-django test
database), talking to the in-process FakeUpstream over loopback. Headless
Chromium (Debian's, at CHROMIUM_PATH or /usr/bin/chromium) is driven with
Playwright's sync API.

Without a Chromium (or without Playwright) the browser tests skip with the
reason; with CI set they fail instead: in CI they must run.

Import the fixtures into a test module by name:

    from tests.browser_support import browser, app_server, page, ...  # noqa: F401
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_upstream import FakeUpstream, Gate

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # handled by the `chromium_path` fixture: skip, or fail under CI
    PlaywrightError = Exception
    expect = None
    sync_playwright = None

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000  # every expect / wait: bounded
SERVER_START_TIMEOUT = 20.0
PASSWORD = "Tr0ub4dor&3-lighthouse"
UUID_PATH = re.compile(r"/c/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/$")

_usernames = itertools.count(1)


# --- skip (or fail under CI) without a browser ------------------------------


def _no_browser(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so browser tests must run, but: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason} (set CHROMIUM_PATH, or install Debian's chromium)")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if sync_playwright is None:
        _no_browser("the Python package playwright is not installed")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        _no_browser(f"no Chromium executable at {path}")
    return path


# --- the live servers ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class LiveServer:
    name: str
    url: str
    process: subprocess.Popen
    log: Path
    fake: FakeUpstream | None = None

    def stderr(self, lines: int = 60) -> str:
        return _tail(self.log, lines)


_servers: list[LiveServer] = []


class _ServerLogOnFailure:
    """A tiny plugin: a failed browser test's report gets the daphne logs."""

    @staticmethod
    def pytest_runtest_logreport(report):
        if report.failed and "browser" in report.keywords:
            for server in _servers:
                report.sections.append((f"daphne stderr ({server.name}, {server.url})", server.stderr()))


def _start_server(tmp_path_factory, name: str, env_changes: dict[str, str | None]) -> LiveServer:
    data_dir = tmp_path_factory.mktemp(f"data-{name}")
    env = dict(os.environ)
    for key in ("DATABASE_URL", "REDIS_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        env.pop(key, None)
    env.update(
        DATA_DIR=str(data_dir),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_DEBUG="false",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        PYTHONUNBUFFERED="1",
        # Generated titles are one more upstream request after a first answer;
        # the tests' scripted upstream queues would see it.
        CHAT_GENERATE_TITLES="false",
    )
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value

    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    if migrate.returncode != 0:
        pytest.fail(f"manage.py migrate failed ({name}):\n{migrate.stdout}\n{migrate.stderr}", pytrace=False)

    port = _free_port()
    log = data_dir / "daphne.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatsite.serve", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"],
            cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    server = LiveServer(name=name, url=f"http://127.0.0.1:{port}", process=process, log=log)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"daphne ({name}) exited with {process.returncode}:\n{server.stderr()}", pytrace=False)
        try:
            with urllib.request.urlopen(server.url + "/accounts/login/", timeout=2) as response:
                response.read()
            break
        except urllib.error.HTTPError:
            break  # it answered HTTP: up
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                _stop_process(process)
                pytest.fail(
                    f"daphne ({name}) did not answer HTTP within {SERVER_START_TIMEOUT:.0f} s:\n{server.stderr()}",
                    pytrace=False,
                )
            time.sleep(0.1)
    _servers.append(server)
    return server


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _stop_server(server: LiveServer) -> None:
    _stop_process(server.process)
    if server in _servers:
        _servers.remove(server)
    # Keep the log beside the screenshots for humans.
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(server.log, ARTIFACTS / f"daphne-{server.name}.log")


@pytest.fixture(scope="session")
def _server_logs_on_failure(request):
    plugin = _ServerLogOnFailure()
    request.config.pluginmanager.register(plugin, "browser-server-logs")
    yield
    request.config.pluginmanager.unregister(plugin)


@pytest.fixture(scope="session")
def app_server(chromium_path, tmp_path_factory, _server_logs_on_failure):
    """daphne with an API key, pointed at the in-process FakeUpstream."""
    fake = FakeUpstream().start()
    try:
        server = _start_server(
            tmp_path_factory, "live",
            {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "test-key"},
        )
    except BaseException:
        fake.stop()
        raise
    server.fake = fake
    yield server
    _stop_server(server)
    fake.stop()


@pytest.fixture(scope="session")
def demo_server(chromium_path, tmp_path_factory, _server_logs_on_failure):
    """daphne with no API key: the built-in offline demo model."""
    server = _start_server(tmp_path_factory, "demo", {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"})
    yield server
    _stop_server(server)


@pytest.fixture
def upstream(app_server):
    """The fake upstream, with an empty script queue before and after the test."""
    fake = app_server.fake
    reset_upstream(fake)
    yield fake
    reset_upstream(fake)


def reset_upstream(fake: FakeUpstream) -> None:
    """Drop scripts a failed test left queued and open every gate (never blocks)."""
    with fake._lock:
        fake._scripts.clear()
        gates = list(fake._gates)
        fake._gates.clear()
    for gate in gates:
        gate.open()


def wait_for_gate(gate: Gate, timeout: float = 10.0) -> None:
    assert gate.reached.wait(timeout), "the fake upstream never reached the gate"


# --- the browser --------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(chromium_path):
    # Module scope: Playwright's sync API runs an event loop of its own, which
    # must be gone before the asyncio tests of other modules start.
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        except PlaywrightError as exc:
            _no_browser(f"Chromium at {chromium_path} did not start: {exc}")
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, request):
    """A factory: new_page(viewport=...) opens a page in a fresh browser context.

    Each page gets a screenshot in test-artifacts/ at teardown (pass or fail).
    """
    contexts = []
    pages = []

    def factory(**context_options):
        context = browser.new_context(**context_options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        pages.append(page)
        return page

    yield factory
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    for n, page in enumerate(pages):
        suffix = "" if n == 0 else f"-{n + 1}"
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"), full_page=True)
        except PlaywrightError:
            pass
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    return new_page()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# --- helpers ------------------------------------------------------------------


def unique_username(base: str) -> str:
    return f"{base}{next(_usernames)}x{os.getpid() % 1000}"


def signup(page, base_url: str, username: str, password: str = PASSWORD) -> None:
    """Sign up through the form, as a person would, and land on the chat page."""
    page.goto(base_url + "/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password confirmation").fill(password)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(base_url + "/")
    wait_connected(page)


def wait_connected(page) -> None:
    """The chat socket is open (the composer would refuse to send otherwise)."""
    expect(page.locator('#connection[data-state="open"]')).to_have_count(1)


def message_box(page):
    return page.get_by_role("textbox", name="Message")


def articles(page, role: str):
    return page.locator(f'#transcript article[data-role="{role}"]')


def answer_text(article) -> str:
    """The visible text of an answer's text blocks, whitespace-normalised."""
    texts = article.locator(".answer > .md").all_text_contents()
    return " ".join(" ".join(texts).split())


def send(page, text: str) -> None:
    box = message_box(page)
    box.fill(text)
    box.press("Enter")
