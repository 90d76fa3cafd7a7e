"""The Anthropic Messages API client: streaming POST /v1/messages.

Pure async code, no Django models: the generation runner feeds it a request body
and reads events. SSE framing is parsed by httpx-sse; `MessageAccumulator` builds
the final message from the events the way the official SDKs do.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import IO, Any, AsyncIterator, Callable

import aiohttp
import httpx
import orjson
from httpx_aiohttp import HttpxAiohttpClient
from httpx_sse import EventSource, SSEError, aconnect_sse

from .loops import per_loop

API_VERSION = "2023-06-01"

# A long pause while the model thinks is not a failure: the read timeout is the
# longest silence tolerated between two bytes of the stream, and matches the
# official SDKs' ten-minute default. Connecting and sending are quick or broken.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0)


class FileData:
    """The base64 `data` of an image or document block, read from its file and
    encoded while the request body is being sent: the whole encoded file is
    never held in memory, so a request carrying 30 MB of PDFs costs a few
    chunks of memory, not several copies of the files."""

    CHUNK = 3 * 256 * 1024  # a multiple of 3: the base64 chunks join without padding

    def __init__(self, open_file: Callable[[], IO[bytes]], size: int):
        self.open_file = open_file
        self.size = size

    @property
    def encoded_length(self) -> int:
        return 4 * ((self.size + 2) // 3)

    async def aiter_base64(self) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self.open_file)
        try:
            while chunk := await asyncio.to_thread(handle.read, self.CHUNK):
                yield base64.b64encode(chunk)
        finally:
            handle.close()

    def read_base64(self) -> str:
        with self.open_file() as handle:
            return base64.b64encode(handle.read()).decode()


def encode_body(body: dict[str, Any]) -> tuple[int, Callable[[], AsyncIterator[bytes]]]:
    """(Content-Length, a factory of the body's bytes): JSON whose FileData
    values are streamed as base64 strings. The factory can be called again
    for a retry."""
    files: list[FileData] = []
    marker = f"@@file-{uuid.uuid4().hex}-"

    def placeholder(value: Any) -> str:
        if isinstance(value, FileData):
            files.append(value)
            return f"{marker}{len(files) - 1}@@"
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    text = json.dumps(body, default=placeholder, ensure_ascii=False)
    pieces = re.split(f'"{re.escape(marker)}(\\d+)@@"', text)
    parts: list[bytes | FileData] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            parts += [b'"', files[int(piece)], b'"']
        elif piece:
            parts.append(piece.encode())
    length = sum(p.encoded_length if isinstance(p, FileData) else len(p) for p in parts)

    async def stream() -> AsyncIterator[bytes]:
        for part in parts:
            if isinstance(part, FileData):
                async for chunk in part.aiter_base64():
                    yield chunk
            else:
                yield part

    return length, stream


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str = "https://api.anthropic.com"
    api_key: str = ""
    auth_token: str = ""
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)

    @property
    def is_demo(self) -> bool:
        """No credentials: answers come from the built-in offline demo model."""
        return not (self.api_key or self.auth_token)

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION, "content-type": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        elif self.auth_token:
            headers["authorization"] = f"Bearer {self.auth_token}"
        return headers


class UpstreamError(Exception):
    """Anything that kept the API from giving a complete answer.

    `error_type` is the API's own error type where it sent one
    (`overloaded_error`, `invalid_request_error`, ...), or one of ours:
    `connection_error` (nothing came back), `stream_interrupted` (the stream
    ended or broke before `message_stop`).
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "api_error",
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"UpstreamError({self.error_type!r}, {self.message!r}, status={self.status})"


RETRYABLE_STATUSES = {408, 409, 429}
MAX_RETRY_AFTER = 60.0

# What the person is told for each error type (the API's own message is
# specific for invalid requests, so it is shown as is).
ERROR_SENTENCES = {
    "authentication_error": "The server's API key is missing or wrong: please tell an administrator.",
    "billing_error": "The API account has a billing problem: please tell an administrator.",
    "permission_error": "The server's API key may not use this model or feature.",
    "not_found_error": "The API does not know this model or endpoint.",
    "request_too_large": "The conversation with its attachments is larger than the API's 32 MB request limit.",
    "rate_limit_error": "The API is rate-limiting this server right now. Wait a moment, then retry.",
    "api_error": "The API had an internal error. Retry in a moment.",
    "timeout_error": "The API timed out. Retry in a moment.",
    "overloaded_error": "The API is overloaded right now. Retry in a moment.",
    "connection_error": "Could not reach the API.",
    "stream_interrupted": "The connection to the API broke before the answer was complete.",
    "interrupted": "The server stopped while this answer was being written.",
}


def describe_error(error_type: str, message: str = "") -> str:
    """One clear sentence for the person; the API's words where they are the point."""
    if error_type == "invalid_request_error":
        return f"The API refused the request: {message}" if message else "The API refused the request."
    sentence = ERROR_SENTENCES.get(error_type)
    if sentence is None:
        return message or "The API reported an error."
    if error_type in ("not_found_error", "connection_error") and message:
        return f"{sentence} ({message})"
    return sentence


def is_retryable(error: "UpstreamError") -> bool:
    """The SDKs' policy: connection errors, 408, 409, 429 and every 5xx (so 529)."""
    if error.error_type == "connection_error":
        return True
    return error.status is not None and (error.status in RETRYABLE_STATUSES or error.status >= 500)


def retry_delay(error: "UpstreamError", attempt: int, base: float = 0.5, rand: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...).

    Honours retry-after up to a minute; otherwise exponential backoff capped at
    8 s with up to 25 % jitter, like the official SDKs.
    """
    if error.retry_after is not None and error.retry_after <= MAX_RETRY_AFTER:
        return error.retry_after
    jitter = 1 - 0.25 * (random.random() if rand is None else rand)
    return min(base * 2 ** (attempt - 1), 8.0) * jitter


def error_from_response(status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
    """Turn a non-2xx answer into an UpstreamError with the API's type and message."""
    request_id = headers.get("request-id")
    error_type, message = "api_error", f"The API answered HTTP {status}."
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            error_type = str(error.get("type") or error_type)
            message = str(error.get("message") or message)
        request_id = request_id or payload.get("request_id")
    return UpstreamError(
        message,
        error_type=error_type,
        status=status,
        request_id=request_id,
        retry_after=_parse_retry_after(headers.get("retry-after")),
    )


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass
class MessageAccumulator:
    """Builds the final Message from stream events, like the SDKs' accumulator.

    Text, thinking and signature deltas are appended to their block; usage
    comes from message_start and is updated by message_delta; pings and unknown
    event or delta types are ignored.
    """

    message: dict[str, Any] = field(default_factory=dict)
    started: bool = False
    finished: bool = False
    _partial_json: dict[int, str] = field(default_factory=dict)

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.message = copy.deepcopy(event["message"])
            self.message.setdefault("content", [])
            self.message.setdefault("usage", {})
            self.started = True
        elif kind == "content_block_start":
            self._block_start(event["index"], copy.deepcopy(event["content_block"]))
        elif kind == "content_block_delta":
            self._block_delta(event["index"], event.get("delta") or {})
        elif kind == "content_block_stop":
            self._block_stop(event["index"])
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            for key in ("stop_reason", "stop_sequence"):
                if key in delta:
                    self.message[key] = delta[key]
            usage = self.message.setdefault("usage", {})
            for key, value in (event.get("usage") or {}).items():
                if value is not None:
                    usage[key] = value
        elif kind == "message_stop":
            self.finished = True
        # ping and any event type we do not know: nothing to do.

    @property
    def content(self) -> list[dict[str, Any]]:
        return self.message.get("content", [])

    def _block_start(self, index: int, block: dict[str, Any]) -> None:
        content = self.message.setdefault("content", [])
        while len(content) < index:  # never seen, but keep indexes aligned
            content.append({"type": "text", "text": ""})
        if index < len(content):
            content[index] = block
        else:
            content.append(block)
        if block.get("type") in ("tool_use", "server_tool_use"):
            self._partial_json[index] = ""

    def _block_delta(self, index: int, delta: dict[str, Any]) -> None:
        content = self.content
        if index >= len(content):
            return
        block = content[index]
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif kind == "citations_delta":
            if not block.get("citations"):
                block["citations"] = []
            block["citations"].append(delta.get("citation"))
        elif kind == "input_json_delta":
            self._partial_json[index] = self._partial_json.get(index, "") + delta.get(
                "partial_json", ""
            )
        # unknown delta types are ignored

    def _block_stop(self, index: int) -> None:
        raw = self._partial_json.pop(index, None)
        if raw is not None and index < len(self.content):
            try:
                self.content[index]["input"] = json.loads(raw) if raw else {}
            except ValueError:
                self.content[index]["input"] = {}


def error_from_event(data: dict[str, Any]) -> UpstreamError:
    error = data.get("error") or {}
    return UpstreamError(
        str(error.get("message") or "The API reported an error mid-stream."),
        error_type=str(error.get("type") or "api_error"),
        request_id=data.get("request_id"),
    )


# A failed connection, from httpx or from the aiohttp transport under it.
CONNECTION_ERRORS = (httpx.TransportError, aiohttp.ClientError, OSError)


def original(exc: BaseException) -> BaseException:
    """The transport's own exception: httpx-aiohttp re-raises aiohttp's errors
    as httpx ones, loosely (a refused connection becomes ConnectTimeout)."""
    cause = exc.__cause__
    return cause if isinstance(exc, httpx.HTTPError) and isinstance(cause, (aiohttp.ClientError, OSError)) else exc


def timed_out(exc: BaseException) -> bool:
    """Did the API go silent, rather than refuse or drop the connection?"""
    exc = original(exc)
    if isinstance(exc, aiohttp.ClientError):
        return isinstance(exc, aiohttp.ServerTimeoutError)
    return isinstance(exc, (httpx.TimeoutException, TimeoutError))


class MessageStream:
    """One streaming request. Use as `async with MessageStream(...) as stream`.

    Entering sends the request and raises UpstreamError for a non-2xx answer or
    a failed connection. Iterating yields each event's JSON data after it has
    been fed to `stream.accumulator`; it raises UpstreamError for an `error`
    event, a broken connection, or a stream that ends without `message_stop`.
    The partial message stays readable in `stream.accumulator` in every case.
    """

    def __init__(self, client: httpx.AsyncClient, config: UpstreamConfig, body: dict[str, Any]):
        self.client = client
        self.config = config
        self.body = {**body, "stream": True}
        self.accumulator = MessageAccumulator()
        self.request_id: str | None = None
        self._cm = None
        self._source: EventSource | None = None

    async def __aenter__(self) -> "MessageStream":
        url = self.config.base_url.rstrip("/") + "/v1/messages"
        length, content = encode_body(self.body)
        self._cm = aconnect_sse(
            self.client,
            "POST",
            url,
            content=content(),
            headers={**self.config.headers(), "content-length": str(length)},
            timeout=self.config.timeout,
        )
        try:
            self._source = await self._cm.__aenter__()
        except CONNECTION_ERRORS as exc:
            if timed_out(exc):
                raise UpstreamError("The API did not answer in time.", error_type="connection_error") from exc
            raise UpstreamError(
                f"Could not reach the API at {self.config.base_url} ({original(exc).__class__.__name__}).",
                error_type="connection_error",
            ) from exc
        response = self._source.response
        self.request_id = response.headers.get("request-id")
        if response.status_code >= 300:
            try:
                body = await response.aread()
            except httpx.HTTPError:
                body = b""
            await self._close()
            raise error_from_response(response.status_code, response.headers, body)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            await cm.__aexit__(None, None, None)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        assert self._source is not None, "use `async with` first"
        try:
            async for sse in self._source.aiter_sse():
                try:
                    data = orjson.loads(sse.data) if sse.data else {}
                except ValueError:
                    continue  # not JSON: not an event we know
                if not isinstance(data, dict):
                    continue
                kind = data.get("type") or sse.event
                data.setdefault("type", kind)
                if kind == "error":
                    error = error_from_event(data)
                    error.request_id = error.request_id or self.request_id
                    raise error
                self.accumulator.feed(data)
                yield data
                if self.accumulator.finished:
                    return
        except (*CONNECTION_ERRORS, SSEError) as exc:
            if timed_out(exc):
                raise UpstreamError(
                    "The API stopped sending before the answer was complete.",
                    error_type="stream_interrupted",
                    request_id=self.request_id,
                ) from exc
            raise UpstreamError(
                "The connection to the API broke before the answer was complete.",
                error_type="stream_interrupted",
                request_id=self.request_id,
            ) from exc
        raise UpstreamError(
            "The API's stream ended before the answer was complete.",
            error_type="stream_interrupted",
            request_id=self.request_id,
        )


async def create_message(client: httpx.AsyncClient, config: UpstreamConfig, body: dict[str, Any]) -> dict[str, Any]:
    """A small non-streaming request (titles): the Message, or UpstreamError."""
    url = config.base_url.rstrip("/") + "/v1/messages"
    try:
        response = await client.post(url, json={**body, "stream": False}, headers=config.headers(), timeout=30.0)
    except (httpx.HTTPError, *CONNECTION_ERRORS) as exc:
        raise UpstreamError(f"Could not reach the API ({original(exc).__class__.__name__}).", error_type="connection_error") from exc
    if response.status_code >= 300:
        raise error_from_response(response.status_code, response.headers, response.content)
    try:
        message = response.json()
    except ValueError as exc:
        raise UpstreamError("The API answered with something other than JSON.") from exc
    if not isinstance(message, dict):
        raise UpstreamError("The API answered with something other than a message.")
    return message


_clients: dict[asyncio.AbstractEventLoop, dict[bool, httpx.AsyncClient]] = {}


def get_client(config: UpstreamConfig) -> httpx.AsyncClient:
    """One pooled client per event loop (connections are reused across requests)."""
    clients = per_loop(_clients, dict)  # demo or not -> client
    client = clients.get(config.is_demo)
    if client is None:
        if config.is_demo:
            from .demo import DemoTransport

            client = httpx.AsyncClient(transport=DemoTransport())
        else:
            # httpx's interface over aiohttp's transport (as the Anthropic SDK
            # offers for high concurrency): aiohttp parses HTTP in C, which halves
            # the CPU each streamed event costs (bench/load.py).
            client = HttpxAiohttpClient(limits=httpx.Limits(max_connections=100_000, max_keepalive_connections=100))
        clients[config.is_demo] = client
    return client
