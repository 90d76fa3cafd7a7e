"""A fake Anthropic Messages API: a real HTTP server on loopback for tests.

It runs in a background thread (so a daphne subprocess, a browser test or an
async test can all talk to it over a socket) and answers `POST /v1/messages`
with Server-Sent Events exactly as the API documents them (see
/work/shared/anthropic-messages-api.md): chunked HTTP/1.1, one SSE event per
chunk, flushed as it is written.

    with FakeUpstream() as fake:
        fake.enqueue(text_reply(["Hel", "lo"]), error_reply(529, "overloaded_error", "Overloaded"))
        ... point the app at fake.url ...
        fake.wait_for_requests(2)
        assert fake.requests[0].body["stream"] is True

Each POST /v1/messages takes the next enqueued Script; with none left it answers
text_reply("Hello from the fake upstream.") in the requested model. GET /v1/models
lists the three documented models (`fake.models` can be replaced); any other path
is a 404 not_found_error. Every request lands in `fake.requests`.

A script is a status, headers and a list of steps:
    ("event", name, data)  one SSE event          ("raw", bytes)  bytes as one chunk
    ("sleep", seconds)     pause                  ("gate", Gate)  block until gate.open()
    ("cut",)               close the socket mid-stream, without the final empty chunk
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODEL = "claude-haiku-4-5-20251001"
DEFAULT_TEXT = "Hello from the fake upstream."
MODELS = [  # the three models named in the API doc, newest first like GET /v1/models
    {"id": model_id, "type": "model", "display_name": name, "created_at": created}
    for model_id, name, created in [
        ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z"),
        ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
        ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z"),
    ]
]
_DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class Gate:
    """A point in a script where the server thread waits until the test opens it.

    `reached` is set when the server thread arrives, so a test can wait until the
    answer is half streamed. The wait gives up after `timeout` seconds so a
    forgotten gate never hangs the suite.
    """

    def __init__(self, timeout: float = 30.0):
        self._opened = threading.Event()
        self.reached = threading.Event()
        self.timeout = timeout

    def open(self) -> None:
        self._opened.set()

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        self.reached.set()
        return self._opened.wait(self.timeout if timeout is None else timeout)


@dataclass
class Script:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    steps: list[tuple] = field(default_factory=list)
    json_body: dict | None = None  # sent as a JSON answer instead of a stream (non-2xx)
    # Thinking and redacted-thinking blocks this stream hands out, exactly as a
    # client must send them back (checked when FakeUpstream.strict_thinking).
    issued: list[dict] = field(default_factory=list)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None
    raw: bytes = b""


def _event(name: str, data: dict) -> tuple:
    return ("event", name, data)


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


def _message_start(model: str, message_id: str | None, usage_in: int,
                   cache_creation: int = 0, cache_read: int = 0) -> list[tuple]:
    message = {
        "id": message_id or f"msg_fake_{uuid.uuid4().hex[:20]}",
        "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": usage_in, "output_tokens": 1,
                  "cache_creation_input_tokens": cache_creation, "cache_read_input_tokens": cache_read},
    }
    return [_event("message_start", {"type": "message_start", "message": message}),
            _event("ping", {"type": "ping"})]


def _block_start(index: int, block: dict) -> tuple:
    return _event("content_block_start",
                  {"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict) -> tuple:
    return _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _block_stop(index: int) -> tuple:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


def _text_deltas(index: int, pieces: list[str]) -> list[tuple]:
    return [_delta(index, {"type": "text_delta", "text": piece}) for piece in pieces]


def text_reply(text: str | list[str], *, chunks: int | None = None, delay: float = 0.0,
               model: str = DEFAULT_MODEL, usage_in: int = 12, usage_out: int | None = None,
               stop_reason: str = "end_turn", stop_sequence: str | None = None,
               thinking: str | None = None, signature: str = "sig-abc",
               gate_after: int | None = None, gate: Gate | None = None, message_id: str | None = None,
               cache_creation: int = 0, cache_read: int = 0, redacted: str | None = None) -> Script:
    """A complete, successful stream: [thinking block], text block, message_delta, message_stop."""
    if isinstance(text, list):
        pieces = list(text)
    elif chunks is None:
        pieces = _words(text)
    else:
        pieces = [text[i * len(text) // chunks:(i + 1) * len(text) // chunks] for i in range(chunks)]
        pieces = [piece for piece in pieces if piece]
    steps = _message_start(model, message_id, usage_in, cache_creation, cache_read)
    index = 0
    thinking_pieces = _words(thinking) if thinking is not None else []
    issued = []
    if thinking is not None:
        steps.append(_block_start(0, {"type": "thinking", "thinking": "", "signature": ""}))
        steps += [_delta(0, {"type": "thinking_delta", "thinking": piece}) for piece in thinking_pieces]
        steps += [_delta(0, {"type": "signature_delta", "signature": signature}), _block_stop(0)]
        issued.append({"type": "thinking", "thinking": "".join(thinking_pieces), "signature": signature})
        index = 1
    if redacted is not None:
        steps += [_block_start(index, {"type": "redacted_thinking", "data": redacted}), _block_stop(index)]
        issued.append({"type": "redacted_thinking", "data": redacted})
        index += 1
    steps.append(_block_start(index, {"type": "text", "text": ""}))
    if gate is not None and gate_after == 0:
        steps.append(("gate", gate))
    for n, delta in enumerate(_text_deltas(index, pieces), start=1):
        if delay:
            steps.append(("sleep", delay))
        steps.append(delta)
        if gate is not None and gate_after == n:
            steps.append(("gate", gate))
    output = usage_out if usage_out is not None else len(pieces) + len(thinking_pieces)
    steps += [
        _block_stop(index),
        _event("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                 "usage": {"output_tokens": output}}),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return Script(steps=steps, issued=issued)


def error_reply(status: int, error_type: str, message: str, *, request_id: str = "req_fake_err",
                retry_after: str | None = None) -> Script:
    """A non-2xx JSON error answer, as the API sends before any stream starts."""
    headers = {"request-id": request_id}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    body = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}
    return Script(status=status, headers=headers, json_body=body)


def _partial_stream(text_pieces: list[str]) -> list[tuple]:
    return (_message_start(DEFAULT_MODEL, None, 12)
            + [_block_start(0, {"type": "text", "text": ""})] + _text_deltas(0, text_pieces))


def stream_error_after(text_pieces: list[str], error_type: str = "overloaded_error",
                       message: str = "Overloaded") -> Script:
    """HTTP 200, some text, then an `event: error` inside the stream."""
    error = {"type": "error", "error": {"type": error_type, "message": message}}
    return Script(steps=_partial_stream(text_pieces) + [_event("error", error)])


def cut_after(text_pieces: list[str]) -> Script:
    """HTTP 200, some text, then the connection drops with no message_stop."""
    return Script(steps=_partial_stream(text_pieces) + [("cut",)])


def _as_message(script: Script) -> Script:
    """The JSON answer to a non-streaming request: the stream's events accumulated."""
    if script.json_body is not None or not 200 <= script.status < 300:
        return script
    from conversations.upstream import MessageAccumulator

    accumulator = MessageAccumulator()
    for step in script.steps:
        if step[0] == "event":
            accumulator.feed(step[2])
    return Script(status=200, headers=script.headers, json_body=accumulator.message, issued=script.issued)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: "FakeUpstream"

    def handle_error(self, request, client_address) -> None:  # a client hanging up is normal
        if not isinstance(sys.exc_info()[1], _DISCONNECTED + (OSError,)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked transfer encoding
    server: _Server

    def log_message(self, format, *args) -> None:  # quiet test output
        pass

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _handle(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?", 1)[0]
        headers = {name.lower(): value for name, value in self.headers.items()}
        request_id = fake._record(Recorded(self.command, self.path, headers, body, raw))
        try:
            if self.command == "POST" and path == "/v1/messages":
                model = body.get("model") if isinstance(body, dict) else None
                refusal = fake._check_thinking(body) if fake.strict_thinking else None
                if refusal:
                    self._serve(error_reply(400, "invalid_request_error", refusal, request_id=request_id), request_id)
                    return
                script = fake._next_script(model or DEFAULT_MODEL)
                if isinstance(body, dict) and body.get("stream") is not True:
                    script = _as_message(script)  # a non-streaming request gets the whole Message as JSON
                self._serve(script, request_id)
                with fake._lock:
                    fake.issued += script.issued
            elif self.command == "GET" and path == "/v1/models":
                data = fake.models
                page = {"data": data, "has_more": False,
                        "first_id": data[0]["id"] if data else None,
                        "last_id": data[-1]["id"] if data else None}
                self._serve(Script(json_body=page), request_id)
            else:
                self._serve(error_reply(404, "not_found_error", f"{self.command} {path} does not exist.",
                                        request_id=request_id), request_id)
        except _DISCONNECTED:
            self.close_connection = True  # the client pressed Stop or gave up: fine

    def _serve(self, script: Script, request_id: str) -> None:
        streaming = script.json_body is None and 200 <= script.status < 300
        headers = {"content-type": "text/event-stream" if streaming else "application/json",
                   "request-id": request_id}
        headers.update({k.lower(): v for k, v in script.headers.items()})
        self.send_response(script.status)
        if not streaming:
            body = json.dumps(script.json_body or {"type": "error", "error": {
                "type": "api_error", "message": f"HTTP {script.status}"}, "request_id": request_id}).encode()
            headers["content-length"] = str(len(body))
        else:
            headers.update({"transfer-encoding": "chunked", "cache-control": "no-cache"})
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not streaming:
            self.wfile.write(body)
            return
        for step in script.steps:
            kind = step[0]
            if kind == "event":
                self._chunk(f"event: {step[1]}\ndata: {json.dumps(step[2], ensure_ascii=False)}\n\n".encode())
            elif kind == "raw":
                self._chunk(step[1])
            elif kind == "sleep":
                time.sleep(step[1])
            elif kind == "gate":
                self.server.fake._reach(step[1])
            elif kind == "cut":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            else:
                raise ValueError(f"unknown script step {step!r}")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        if data:  # an empty chunk would end the body
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()


class FakeUpstream:
    """The fake API server. Use `with FakeUpstream() as fake:` or start()/stop()."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self.models: list[dict] = [dict(m) for m in MODELS]  # answer of GET /v1/models
        # Like the API: refuse a request whose earlier thinking blocks differ in
        # any byte from the ones this server streamed.
        self.strict_thinking = False
        self.issued: list[dict] = []
        self._scripts: deque[Script] = deque()
        self._gates: list[Gate] = []
        self._connections: set[socket.socket] = set()
        self._released = False
        self._lock = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _check_thinking(self, body) -> str | None:
        """The API's rule: earlier thinking blocks come back byte for byte, or not at all."""
        with self._lock:
            issued = [json.dumps(block, sort_keys=True) for block in self.issued]
        for turn_index, turn in enumerate((body or {}).get("messages") or []):
            content = turn.get("content")
            if turn.get("role") != "assistant" or not isinstance(content, list):
                continue
            for block_index, block in enumerate(content):
                if block.get("type") in ("thinking", "redacted_thinking"):
                    if json.dumps(block, sort_keys=True) not in issued:
                        return (f"messages.{turn_index}.content.{block_index}: thinking blocks cannot be modified. "
                                "These blocks must remain as they were in the original response.")
        return None

    def start(self) -> "FakeUpstream":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_all()
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # idle keep-alive connections would otherwise linger
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def enqueue(self, *scripts: Script) -> None:
        with self._lock:
            for script in scripts:
                self._gates += [step[1] for step in script.steps if step[0] == "gate"]
                self._scripts.append(script)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"expected {n} requests to the fake upstream, got {len(self.requests)}")

    def release_all(self) -> None:
        with self._lock:
            self._released = True
            gates = list(self._gates)
        for gate in gates:
            gate.open()

    # -- called from server threads --
    def _record(self, recorded: Recorded) -> str:
        with self._lock:
            self.requests.append(recorded)
            self._lock.notify_all()
            return f"req_fake_{len(self.requests)}"

    def _next_script(self, model: str) -> Script:
        with self._lock:
            if self._scripts:
                return self._scripts.popleft()
        return text_reply(DEFAULT_TEXT, model=model)

    def _reach(self, gate: Gate) -> None:
        with self._lock:
            if gate not in self._gates:
                self._gates.append(gate)
            if self._released:
                gate.open()
        gate.wait()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)
