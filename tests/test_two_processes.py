"""Scale-out: two daphne processes sharing the machine's PostgreSQL and Redis.

A generation started through process A streams live to a socket on process B;
Stop sent from B stops it; a socket that reconnects to the other process
resumes where the text left off (snapshot + later deltas, no gap, no repeat);
and killing A mid-stream leaves the message `interrupted` with its partial
text, announced to B's socket by B's own periodic check, not stuck `streaming`.

The servers run for real (`manage.py migrate`, then `python -m chatsite.serve` twice,
as tests/browser_support.py starts them) against a database created for this
run (dropped afterwards) and a dedicated Redis db (/9, flushed first), talking
to the in-process FakeUpstream over loopback. The test process speaks HTTP
(httpx) and websockets (the `websockets` package) to them, like a browser.

Without PostgreSQL or Redis on 127.0.0.1 the module skips with the reason;
with CI set it fails instead. pytest-django's database is not used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.fake_upstream import FakeUpstream, Gate, text_reply

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
REDIS_DB_URL = "redis://127.0.0.1:6379/9"
SECRET_KEY = "two-process-test-secret-key-shared-by-both-daphnes-0123456789"
PASSWORD = "Tr0ub4dor&3-lighthouse"
STALE_AFTER = 2  # CHAT_STALE_AFTER for both processes (seconds)
SERVER_START_TIMEOUT = 20.0
EVENT_TIMEOUT = 10.0  # any single websocket wait

# A heading first, so the first three pieces make a finished block and an open tail.
PIECES = ["# Scale", " out\n\n", "Alpha ", "beta ", "gamma ", "delta ", "epsilon.\n\n", "Done."]
FULL = "".join(PIECES)


# --- skip (or fail under CI) without the services ----------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the two-process test must run, but: {reason}", pytrace=False)
    pytest.skip(f"two-process test skipped: {reason}")


def _check_services() -> None:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        _unavailable(f"PostgreSQL is not reachable at 127.0.0.1:5432 as postgres/test ({exc.__class__.__name__}: {exc})")
    try:
        client = redis.Redis.from_url(REDIS_DB_URL, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001
        _unavailable(f"Redis is not reachable at 127.0.0.1:6379 ({exc.__class__.__name__}: {exc})")


# --- the database of this run --------------------------------------------------


def _admin():
    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)


def _create_database(name: str) -> None:
    with _admin() as conn:
        _drop_database_on(conn, name)
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database_on(conn, name: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


LOCK_KEY = 0x2C4A7  # pg advisory lock: one run of this module at a time on this machine (shared Redis /9)
LOCK_WAIT = 90.0


def _lock_the_machine():
    """Serialize concurrent runs (they would FLUSHDB each other's channel layer)."""
    conn = _admin()
    deadline = time.monotonic() + LOCK_WAIT
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
        if time.monotonic() > deadline:
            conn.close()
            pytest.fail(f"another run of {Path(__file__).name} held the lock for over {LOCK_WAIT:.0f} s", pytrace=False)
        time.sleep(0.5)
    return conn  # closing it releases the lock


def _drop_database(name: str) -> None:
    with _admin() as conn:
        _drop_database_on(conn, name)


def _query_message(db_url: str, message_id: str) -> tuple[str, list]:
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT status, content FROM conversations_message WHERE public_id = %s", (message_id,)
        ).fetchone()
    assert row is not None, f"no message {message_id} in PostgreSQL"
    status, content = row
    if isinstance(content, str):
        content = json.loads(content)
    return status, content


# --- the daphne processes ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Daphne:
    name: str
    port: int
    env: dict
    log: Path
    process: subprocess.Popen | None = None
    previous_logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return "\n".join(_tail(p) for p in [*self.previous_logs, self.log])

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if self.log.exists():  # a restart: keep the old log for the report
            old = self.log.with_name(f"{self.log.stem}-{len(self.previous_logs) + 1}.log")
            self.log.rename(old)
            self.previous_logs.append(old)
        with open(self.log, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatsite.serve", "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"],
                cwd=PROJECT_ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"daphne {self.name} exited with {self.process.returncode}:\n{self.stderr()}", pytrace=False)
            try:
                httpx.get(self.url + "/accounts/login/", timeout=2, trust_env=False)
                return  # it answered HTTP: up
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(
                        f"daphne {self.name} did not answer HTTP within {SERVER_START_TIMEOUT:.0f} s:\n{self.stderr()}",
                        pytrace=False,
                    )
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@dataclass
class Cluster:
    a: Daphne
    b: Daphne
    fake: FakeUpstream
    db_url: str
    session: str = ""

    def reset_upstream(self) -> None:
        """Drop queued scripts and open every gate a test left closed (never blocks)."""
        with self.fake._lock:
            self.fake._scripts.clear()
            gates = list(self.fake._gates)
            self.fake._gates.clear()
        for gate in gates:
            gate.open()


class _LogsOnFailure:
    """Attach both daphne logs to the report of a failed test of this module."""

    def __init__(self, servers: list[Daphne]):
        self.servers = servers

    def pytest_runtest_logreport(self, report):
        if report.failed and Path(__file__).name in report.nodeid:
            for server in self.servers:
                report.sections.append((f"daphne {server.name} log ({server.url})", server.stderr()))


def _signup(server: Daphne, username: str) -> str:
    """Sign up over HTTP as a browser would; returns the session cookie's value."""
    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=True, trust_env=False) as client:
        page = client.get("/accounts/signup/")
        assert page.status_code == 200, page.text[:500]
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        token = match.group(1) if match else client.cookies["csrftoken"]
        done = client.post(
            "/accounts/signup/",
            data={"username": username, "password1": PASSWORD, "password2": PASSWORD, "csrfmiddlewaretoken": token},
        )
        assert done.status_code == 200 and done.url.path == "/", (
            f"sign-up did not land on /: {done.status_code} {done.url}\n{done.text[:800]}"
        )
        return client.cookies["sessionid"]


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    _check_services()
    lock = _lock_the_machine()
    request.addfinalizer(lock.close)
    db_name = f"chat_twoproc_{os.getpid()}"
    db_url = f"postgres://postgres@127.0.0.1:5432/{db_name}"
    redis_client = redis.Redis.from_url(REDIS_DB_URL, socket_connect_timeout=3, socket_timeout=3)
    redis_client.flushdb()
    _create_database(db_name)
    fake = FakeUpstream().start()
    servers: list[Daphne] = []
    plugin = _LogsOnFailure(servers)
    request.config.pluginmanager.register(plugin, "two-process-daphne-logs")
    try:
        data_dir = tmp_path_factory.mktemp("twoproc-data")
        env = dict(os.environ)
        for key in ("ANTHROPIC_AUTH_TOKEN", "CHAT_MODELS_FILE", "CSRF_TRUSTED_ORIGINS", "LOG_LEVEL"):
            env.pop(key, None)
        env.update(
            DATABASE_URL=db_url,
            REDIS_URL=REDIS_DB_URL,
            DATA_DIR=str(data_dir),
            ANTHROPIC_BASE_URL=fake.url,
            ANTHROPIC_API_KEY="test-key",
            CHAT_GENERATE_TITLES="false",
            CHAT_STALE_AFTER=str(STALE_AFTER),
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_SECRET_KEY=SECRET_KEY,
            DJANGO_DEBUG="false",
            DJANGO_SETTINGS_MODULE="chatsite.settings",
            PYTHONUNBUFFERED="1",
        )
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        if migrate.returncode != 0:
            pytest.fail(f"manage.py migrate failed:\n{migrate.stdout}\n{migrate.stderr}", pytrace=False)
        for name in ("A", "B"):
            server = Daphne(name=name, port=_free_port(), env=env, log=data_dir / f"daphne-{name}.log")
            servers.append(server)
            server.start()
        a, b = servers
        result = Cluster(a=a, b=b, fake=fake, db_url=db_url)
        result.session = _signup(a, f"scale{os.getpid()}")
        yield result
    finally:
        fake.release_all()
        for server in servers:
            server.stop()
        fake.stop()
        request.config.pluginmanager.unregister(plugin)
        try:
            _drop_database(db_name)
        finally:
            redis_client.flushdb()
            redis_client.close()


@pytest.fixture
def upstream(cluster):
    """The fake upstream with an empty queue; every gate is opened after the test."""
    cluster.reset_upstream()
    yield cluster.fake
    cluster.reset_upstream()


# --- a websocket client that follows the protocol's seq rules --------------------


def _text_of(parts: list[dict]) -> str:
    return "".join(part.get("text", "") for part in parts if part.get("type") == "text")


@dataclass
class AnswerView:
    """One answer as a page sees it: snapshot, then deltas with seq > the snapshot's."""

    last_seq: int | None = None  # None: joined mid-stream and no snapshot yet
    text: str = ""
    snapshot: dict | None = None
    buffered: list[dict] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    end: dict | None = None

    def on_start(self, event: dict) -> None:
        self.last_seq = event["seq"]

    def on_snapshot(self, event: dict) -> None:
        self.snapshot = event
        self.text = _text_of(event["parts"])
        self.last_seq = event["seq"]
        buffered, self.buffered = self.buffered, []
        for delta in buffered:
            self.on_delta(delta)

    def on_delta(self, event: dict) -> None:
        if self.last_seq is None:
            self.buffered.append(event)  # until the snapshot arrives
            return
        seq = event["seq"]
        if seq <= self.last_seq:
            self.dropped.append(seq)  # already in the snapshot
            return
        if seq != self.last_seq + 1:
            self.problems.append(f"gap: seq {self.last_seq} then {seq}")
        self.text += _text_of(event["parts"])
        self.last_seq = seq
        self.applied.append(seq)

    def on_end(self, event: dict) -> None:
        self.end = event
        if "seq" in event and self.last_seq is not None and event["seq"] != self.last_seq + 1:
            self.problems.append(f"gap before message.end: seq {self.last_seq} then {event['seq']}")


class ChatSocket:
    def __init__(self, ws, name: str):
        self.ws = ws
        self.name = name
        self.events: list[dict] = []
        self.answers: dict[str, AnswerView] = {}

    def answer(self, message_id: str) -> AnswerView:
        return self.answers.setdefault(message_id, AnswerView())

    async def send(self, payload: dict) -> None:
        await self.ws.send(json.dumps(payload))

    async def next(self, timeout: float = EVENT_TIMEOUT) -> dict:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"socket {self.name}: no event within {timeout} s; received so far: {self._summary()}"
            ) from None
        except ConnectionClosed as exc:
            raise AssertionError(f"socket {self.name} closed ({exc}); received: {self._summary()}") from None
        event = json.loads(raw)
        self.events.append(event)
        kind = event.get("event")
        if kind == "message.start":
            self.answer(event["message"]).on_start(event)
        elif kind == "message.snapshot":
            self.answer(event["message"]).on_snapshot(event)
        elif kind == "message.delta":
            self.answer(event["message"]).on_delta(event)
        elif kind == "message.end":
            self.answer(event["message"]).on_end(event)
        return event

    async def until(self, kind: str, timeout: float = EVENT_TIMEOUT, **match) -> dict:
        """Read events until one named `kind` (with the given fields) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"socket {self.name}: no {kind} {match or ''} within {timeout} s; got {self._summary()}")
            event = await self.next(left)
            if event.get("event") == kind and all(event.get(k) == v for k, v in match.items()):
                return event

    async def until_text(self, message_id: str, expected: str, timeout: float = EVENT_TIMEOUT) -> None:
        """Read events until this socket's view of the answer holds exactly `expected`."""
        deadline = time.monotonic() + timeout
        view = self.answer(message_id)
        while view.text != expected or view.last_seq is None:
            assert expected.startswith(view.text), f"socket {self.name}: text {view.text!r} is not a prefix of {expected!r}"
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"socket {self.name}: text {view.text!r} never became {expected!r}")
            await self.next(left)

    def _summary(self) -> str:
        return json.dumps([{k: e.get(k) for k in ("event", "seq", "status")} for e in self.events[-20:]])

    async def close(self) -> None:
        await self.ws.close()


class Sockets:
    """Opens sockets as the signed-up person; closes them all at the end."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.open: list[ChatSocket] = []

    async def connect(self, server: Daphne, conversation: str | None = None, name: str = "") -> ChatSocket:
        path = f"/ws/chat/{conversation}/" if conversation else "/ws/chat/new/"
        ws = await ws_connect(
            server.ws + path,
            origin=server.url,
            additional_headers={"Cookie": f"sessionid={self.cluster.session}"},
            proxy=None,
            open_timeout=5,
            close_timeout=2,
        )
        chat = ChatSocket(ws, name or f"{server.name}{path}")
        self.open.append(chat)
        return chat

    async def join(self, server: Daphne, conversation: str, message_id: str, name: str = "") -> ChatSocket:
        """A page opened on a conversation mid-stream: state, then the answer's snapshot."""
        chat = await self.connect(server, conversation, name)
        state = await chat.until("state")
        assert message_id in state["streaming"], f"{chat.name}: state {state} does not list the streaming answer"
        await chat.until("message.snapshot", message=message_id)
        return chat

    async def start_chat(self, server: Daphne, text: str) -> tuple[ChatSocket, str, str]:
        """Send the first message of a new chat; returns (socket, conversation id, answer id)."""
        chat = await self.connect(server, name=f"{server.name}/new")
        await chat.send({"action": "send", "text": text, "client_id": "c1"})
        created = await chat.until("conversation.created")
        user = await chat.until("message.user")
        assert user["client_id"] == "c1"
        start = await chat.until("message.start")
        assert start["seq"] == 0
        return chat, created["id"], start["message"]

    async def close_all(self) -> None:
        for chat in self.open:
            try:
                await asyncio.wait_for(chat.close(), 5)
            except Exception:  # noqa: BLE001 - the server may be dead (crash test)
                pass


@pytest.fixture
async def sockets(cluster, upstream):
    opened = Sockets(cluster)
    yield opened
    cluster.reset_upstream()  # first: a socket's close must not wait on a blocked stream
    await opened.close_all()


async def wait_reached(gate: Gate, timeout: float = EVENT_TIMEOUT) -> None:
    reached = await asyncio.to_thread(gate.reached.wait, timeout)
    assert reached, "the fake upstream never reached the gate"


def assert_clean(view: AnswerView, who: str) -> None:
    assert not view.problems, f"{who}: {view.problems}"
    assert view.applied == sorted(set(view.applied)), f"{who}: deltas applied out of order or twice: {view.applied}"


# --- the scenarios ----------------------------------------------------------------


async def test_generation_started_on_a_streams_live_to_a_socket_on_b(cluster, upstream, sockets):
    gate = Gate()
    upstream.enqueue(text_reply(PIECES, gate_after=3, gate=gate))
    on_a, conversation, message = await sockets.start_chat(cluster.a, "Tell me about scaling out")

    await wait_reached(gate)
    partial = "".join(PIECES[:3])
    await on_a.until_text(message, partial)  # the generation on A has fed the first three pieces

    on_b = await sockets.join(cluster.b, conversation, message, name="B")
    view_b = on_b.answer(message)
    assert view_b.snapshot["status"] == "streaming"
    assert _text_of(view_b.snapshot["parts"]) == partial, "B's snapshot (sent by A's generation) holds the first pieces"

    gate.open()
    end_b = await on_b.until("message.end", message=message)
    end_a = await on_a.until("message.end", message=message)

    assert end_b["status"] == end_a["status"] == "complete"
    assert _text_of(end_b["blocks"]) == FULL
    assert view_b.applied, "B received live deltas after its snapshot"
    assert view_b.text == FULL, "B: snapshot text + later deltas == the whole answer (no gap, no repeat)"
    assert on_a.answer(message).text == FULL
    assert_clean(view_b, "socket on B")
    assert_clean(on_a.answer(message), "socket on A")
    assert end_b["seq"] == end_a["seq"]

    status, content = _query_message(cluster.db_url, message)
    assert status == "complete" and _text_of(content) == FULL


async def test_reconnect_to_the_other_process_resumes_without_gap_or_repeat(cluster, upstream, sockets):
    first, second = Gate(), Gate()
    script = text_reply(PIECES, gate_after=2, gate=first)
    # A second gate after the fifth piece: text arrives while no page is connected.
    deltas = [i for i, step in enumerate(script.steps) if step[0] == "event" and step[1] == "content_block_delta"]
    script.steps.insert(deltas[4] + 1, ("gate", second))
    upstream.enqueue(script)

    starter, conversation, message = await sockets.start_chat(cluster.a, "Reconnect across processes")
    await starter.close()  # the page that sent moves away; the generation keeps running on A

    # A page on B joins mid-stream, sees the first two pieces, then drops its connection.
    await wait_reached(first)
    on_b = await sockets.join(cluster.b, conversation, message, name="B (before)")
    await on_b.until_text(message, "".join(PIECES[:2]))
    await on_b.close()

    first.open()
    await wait_reached(second)
    # Wait until A's generation has fed the fifth piece: its DB save lags up to a
    # second, so watch with a throwaway socket on B (which receives A's deltas).
    watcher = await sockets.join(cluster.b, conversation, message, name="B (watcher)")
    await watcher.until_text(message, "".join(PIECES[:5]))
    await watcher.close()

    # It reconnects to the other process (A): snapshot, then later deltas.
    again = await sockets.join(cluster.a, conversation, message, name="A (after reconnect)")
    view = again.answer(message)
    assert _text_of(view.snapshot["parts"]) == "".join(PIECES[:5])
    second.open()
    end = await again.until("message.end", message=message)

    assert end["status"] == "complete" and _text_of(end["blocks"]) == FULL
    assert view.text == FULL, "snapshot + later deltas == the whole answer: nothing missing, nothing twice"
    assert_clean(view, "reconnected socket on A")


async def test_stop_sent_from_b_stops_a_generation_running_on_a(cluster, upstream, sockets):
    gate = Gate()
    upstream.enqueue(text_reply(PIECES, gate_after=3, gate=gate))
    on_a, conversation, message = await sockets.start_chat(cluster.a, "Stop me from elsewhere")

    await wait_reached(gate)
    partial = "".join(PIECES[:3])
    await on_a.until_text(message, partial)
    on_b = await sockets.join(cluster.b, conversation, message, name="B")
    assert _text_of(on_b.answer(message).snapshot["parts"]) == partial

    await on_b.send({"action": "stop"})
    end_b = await on_b.until("message.end", message=message)
    end_a = await on_a.until("message.end", message=message)

    for who, end in (("B", end_b), ("A", end_a)):
        assert end["status"] == "stopped", f"socket on {who}: {end}"
        assert _text_of(end["blocks"]) == partial, f"socket on {who} gets the partial text"
    assert not [e for e in on_b.events if e.get("event") == "error"], on_b.events
    status, content = _query_message(cluster.db_url, message)
    assert status == "stopped" and _text_of(content) == partial


async def test_killing_a_mid_stream_marks_the_answer_interrupted_with_its_partial_text(cluster, upstream, sockets):
    """Last in the module: it kills process A (restarted afterwards all the same)."""
    gate = Gate()
    upstream.enqueue(text_reply(PIECES, gate_after=3, gate=gate))
    on_a, conversation, message = await sockets.start_chat(cluster.a, "Crash while writing")

    await wait_reached(gate)
    partial = "".join(PIECES[:3])
    await on_a.until_text(message, partial)
    on_b = await sockets.join(cluster.b, conversation, message, name="B")
    assert _text_of(on_b.answer(message).snapshot["parts"]) == partial

    await asyncio.sleep(1.5)  # the partial answer is saved at least once a second
    status, content = _query_message(cluster.db_url, message)
    assert status == "streaming" and _text_of(content) == partial, "A saved the partial answer before the crash"

    cluster.a.kill()
    killed_at = time.monotonic()
    try:
        end = await on_b.until("message.end", timeout=10 + STALE_AFTER, message=message)
        waited = time.monotonic() - killed_at
        assert end["status"] == "interrupted", end
        assert _text_of(end["blocks"]) == partial, "the interrupted answer keeps the text that had arrived"
        assert end["error_type"] == "interrupted"
        assert waited < 10, f"B announced the interruption only after {waited:.1f} s"

        status, content = _query_message(cluster.db_url, message)
        assert status == "interrupted"
        assert _text_of(content) == partial
    finally:
        gate.open()
        cluster.a.start()  # for any later test (and to keep teardown uniform)

    # The restarted A sees the conversation as finished: nothing streaming.
    again = await sockets.connect(cluster.a, conversation, name="A (restarted)")
    state = await again.until("state")
    assert state["streaming"] == []
