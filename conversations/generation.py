"""The generation runner: one asyncio task per assistant answer.

The task is not owned by any socket: closing the tab does not stop it. It
streams from the upstream client, publishes coalesced deltas to the
conversation's channel-layer group, saves the partial answer at least once a
second, and finishes the message at the end. It listens on a channel of its own
(stored on the message) for "stop" and "snapshot" requests, so that any socket
on any process can stop it or catch up with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from .markdown import StreamingMarkdown
from .models import USAGE_FIELDS, Message
from . import browsing
from .catalog import upstream_config
from .upstream import (
    MessageStream,
    UpstreamError,
    create_message,
    describe_error,
    get_client,
    is_retryable,
    retry_delay,
)

log = logging.getLogger(__name__)

_running: set[asyncio.Task] = set()


# --- database work: plain values in and out, each wrapped once ------------


def _claim_worker_channel(message_pk: int, channel: str) -> None:
    Message.objects.filter(pk=message_pk).update(worker_channel=channel)


def _heartbeat(message_pk: int) -> None:
    Message.objects.filter(pk=message_pk).update(updated_at=timezone.now())


def _save_partial(message_pk: int, content: list, usage: dict, upstream_id: str) -> None:
    message = Message.objects.get(pk=message_pk)
    message.content = content
    message.set_usage(usage)
    message.upstream_id = upstream_id or message.upstream_id
    message.save(update_fields=["content", "upstream_id", "updated_at", *usage_fields(usage)])


def _finish(message_pk: int, fields: dict[str, Any], usage: dict) -> dict[str, Any]:
    message = Message.objects.select_related("conversation").get(pk=message_pk)
    if fields.get("status") == Message.Status.ERROR:
        if message.conversation.exclude_refused_attachments(message, fields["error_type"], fields["error"]):
            fields["error"] += (
                " The attachments of your message were left out of the conversation, so that later messages "
                "can still be sent: attach them again (or other files) if you need them."
            )
    for name, value in fields.items():
        setattr(message, name, value)
    message.set_usage(usage)
    message.worker_channel = ""
    message.completed_at = timezone.now()
    message.save()
    message.conversation.touch()
    return {**message.end_event(), "totals": message.conversation.usage_totals()}


def _recover_interrupted() -> list[tuple[str, dict[str, Any]]]:
    return Message.objects.mark_interrupted(settings.CHAT_STALE_AFTER)


def usage_fields(usage: dict) -> list[str]:
    return [name for name in USAGE_FIELDS if name in usage]


claim_worker_channel = database_sync_to_async(_claim_worker_channel)
save_partial = database_sync_to_async(_save_partial)
heartbeat = database_sync_to_async(_heartbeat)
finish = database_sync_to_async(_finish)
recover_interrupted = database_sync_to_async(_recover_interrupted)


# --- the task ---------------------------------------------------------------


class Generation:
    def __init__(self, *, message_pk: int, message_id: str, group: str, body: dict[str, Any], conversation_pk: int):
        self.conversation_pk = conversation_pk
        self.message_pk = message_pk
        self.message_id = message_id
        self.group = group
        self.body = body
        self.layer = get_channel_layer()
        self.seq = 0
        self.renderers: dict[int, StreamingMarkdown] = {}
        self.block_types: dict[int, str] = {}
        self.pending_text: dict[int, str] = {}
        self.dirty = False
        self.stream: MessageStream | None = None
        self.saved_version = 0
        self.version = 0
        self.thinking_started: dict[int, float] = {}
        self.thinking_seconds: dict[str, float] = {}

    # events to the browser -------------------------------------------------

    async def publish(self, payload: dict[str, Any]) -> None:
        await self.layer.group_send(self.group, {"type": "chat.event", "payload": payload})

    def _next(self, event: str, **data: Any) -> dict[str, Any]:
        self.seq += 1
        return {"event": event, "message": self.message_id, "seq": self.seq, **data}

    async def flush(self) -> None:
        if not self.dirty:
            return
        parts = []
        for index, renderer in self.renderers.items():
            text = self.pending_text.pop(index, None)
            if text is None:
                continue
            append, tail = renderer.flush()
            parts.append(
                {"index": index, "type": self.block_types[index], "text": text, "append": append, "tail": tail}
            )
        for index in list(self.pending_text):  # blocks without text (redacted thinking)
            self.pending_text.pop(index)
            parts.append({"index": index, "type": self.block_types[index], "text": "", "append": "", "tail": ""})
        self.dirty = False
        if parts:
            await self.publish(self._next("message.delta", parts=parts))

    def snapshot(self) -> dict[str, Any]:
        parts = []
        for index, kind in sorted(self.block_types.items()):
            renderer = self.renderers.get(index)
            html, tail = renderer.snapshot() if renderer else ("", "")
            text = renderer.text if renderer else ""
            parts.append({"index": index, "type": kind, "html": html, "tail": tail, "text": text})
        return {"event": "message.snapshot", "message": self.message_id, "seq": self.seq, "status": "streaming", "parts": parts}

    # the stream -------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_start":
            index = event["index"]
            block_type = event["content_block"].get("type", "")
            self.block_types[index] = block_type
            if block_type == "thinking":
                self.thinking_started[index] = time.monotonic()
            if block_type in ("text", "thinking"):
                renderer = self.renderers[index] = StreamingMarkdown()
                initial = event["content_block"].get(block_type, "")
                renderer.feed(initial)
                self.pending_text[index] = initial
            else:
                self.pending_text[index] = ""
            self.dirty = True
        elif kind == "content_block_delta":
            index = event["index"]
            delta = event.get("delta") or {}
            piece = delta.get("text") if delta.get("type") == "text_delta" else None
            if delta.get("type") == "thinking_delta":
                piece = delta.get("thinking")
            if piece and index in self.renderers:
                self.renderers[index].feed(piece)
                self.pending_text[index] = self.pending_text.get(index, "") + piece
                self.dirty = True
        elif kind == "content_block_stop":
            self._thinking_done(event["index"])
        self.version += 1

    def _thinking_done(self, index: int) -> None:
        started = self.thinking_started.pop(index, None)
        if started is not None:
            self.thinking_seconds[str(index)] = round(time.monotonic() - started, 1)

    async def _stream(self) -> None:
        """Stream the answer; retry failures that happen before the first byte."""
        config = upstream_config()
        attempt = 0
        while True:
            try:
                async with MessageStream(get_client(config), config, self.body) as stream:
                    self.stream = stream
                    async for event in stream:
                        self.on_event(event)
                return
            except UpstreamError as exc:
                retries = settings.CHAT_UPSTREAM_MAX_RETRIES
                if self.stream is not None or attempt >= retries or not is_retryable(exc):
                    raise
                attempt += 1
                delay = retry_delay(exc, attempt, base=settings.CHAT_RETRY_BASE_DELAY)
                log.info("generation %s: retry %d/%d in %.1fs after %r", self.message_id, attempt, retries, delay, exc)
                await self.publish(
                    self._next(
                        "message.retry",
                        attempt=attempt,
                        retries=retries,
                        delay=round(delay, 2),
                        reason=describe_error(exc.error_type, exc.message),
                    )
                )
                await asyncio.sleep(delay)

    async def _tick(self, done: asyncio.Event) -> None:
        """Flush and save until `done` is set. It is stopped by that event, not
        by cancellation: a cancel landing inside a Redis group_send can be
        swallowed, and the answer would then never finish."""
        last_save = time.monotonic()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), settings.CHAT_FLUSH_INTERVAL)
                return
            except asyncio.TimeoutError:
                pass
            await self.flush()
            since = time.monotonic() - last_save
            changed = self.version != self.saved_version
            if (changed and since >= settings.CHAT_SAVE_INTERVAL) or since >= settings.CHAT_HEARTBEAT_INTERVAL:
                last_save = time.monotonic()
                await self._save()

    async def _save(self) -> None:
        """Save the partial answer; when nothing changed, this is the heartbeat."""
        self.saved_version = self.version
        if self.stream is None:
            await heartbeat(self.message_pk)
            return
        acc = self.stream.accumulator
        await save_partial(
            self.message_pk, _copy_content(acc.content), dict(acc.message.get("usage", {})), acc.message.get("id", "")
        )

    async def _listen(self, channel: str, stream_task: asyncio.Task) -> None:
        while True:
            request = await self.layer.receive(channel)
            if request.get("type") == "generation.exit":
                return
            if request.get("type") == "generation.stop":
                stream_task.cancel()
            elif request.get("type") == "generation.snapshot" and request.get("reply_to"):
                await self.layer.send(request["reply_to"], {"type": "chat.event", "payload": self.snapshot()})

    async def run(self) -> None:
        # The default prefix matters: channels_redis serves every process-specific
        # channel of one prefix from one Redis list, and a second prefix would
        # starve the sockets' own channels.
        channel = await self.layer.new_channel()
        await claim_worker_channel(self.message_pk, channel)
        stream_task = asyncio.create_task(self._stream())
        done = asyncio.Event()
        ticker = asyncio.create_task(self._tick(done))
        listener = asyncio.create_task(self._listen(channel, stream_task))
        fields: dict[str, Any] = {}
        try:
            await stream_task
            acc = self.stream.accumulator
            fields = {
                "status": Message.Status.COMPLETE,
                "stop_reason": acc.message.get("stop_reason") or "",
                "stop_sequence": acc.message.get("stop_sequence") or "",
            }
        except asyncio.CancelledError:
            if not stream_task.cancelled():  # the runner itself is being cancelled (shutdown)
                stream_task.cancel()
            fields = {"status": Message.Status.STOPPED, "stop_reason": ""}
        except UpstreamError as exc:
            log.warning("generation %s failed: %r request_id=%s", self.message_id, exc, exc.request_id)
            fields = {
                "status": Message.Status.ERROR,
                "error_type": exc.error_type,
                "error": describe_error(exc.error_type, exc.message),
                "request_id": exc.request_id or "",
            }
        except Exception as exc:  # a bug of ours: never leave the message streaming
            log.exception("generation %s crashed", self.message_id)
            fields = {"status": Message.Status.ERROR, "error_type": "internal_error", "error": f"Internal error: {exc.__class__.__name__}"}
        finally:
            done.set()
            try:
                await asyncio.wait_for(asyncio.shield(ticker), timeout=10)
            except (asyncio.TimeoutError, Exception):
                ticker.cancel()
            await self._stop_listener(channel, listener)
        await self._finish(fields)

    async def _stop_listener(self, channel: str, listener: asyncio.Task) -> None:
        """End the listener with a message rather than by cancelling its receive():
        a receive cancelled mid-way can stall other receivers of a Redis layer."""
        try:
            await self.layer.send(channel, {"type": "generation.exit"})
            await asyncio.wait_for(asyncio.shield(listener), timeout=2)
        except (asyncio.TimeoutError, Exception):
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _finish(self, fields: dict[str, Any]) -> None:
        await self.flush()
        for index in list(self.thinking_started):  # stopped while thinking
            self._thinking_done(index)
        fields["meta"] = {"thinking_seconds": self.thinking_seconds} if self.thinking_seconds else {}
        acc = self.stream.accumulator if self.stream else None
        content = _copy_content(acc.content) if acc else []
        usage = dict(acc.message.get("usage", {})) if acc else {}
        fields.update(content=content, model=(acc.message.get("model") if acc else "") or self.body.get("model", ""))
        if acc and acc.message.get("id"):
            fields["upstream_id"] = acc.message["id"]
        if self.stream and self.stream.request_id and not fields.get("request_id"):
            fields["request_id"] = self.stream.request_id
        end = await finish(self.message_pk, fields, usage)
        await self.publish(self._next(end.pop("event"), **end))
        if fields["status"] == Message.Status.COMPLETE:
            _track(asyncio.get_running_loop().create_task(generate_title(self.conversation_pk)))


def _copy_content(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(block) for block in content]


def start_generation(
    *, message_pk: int, message_id: str, group: str, body: dict[str, Any], conversation_pk: int
) -> asyncio.Task:
    """Start the task; it belongs to the event loop, not to the calling socket."""
    generation = Generation(
        message_pk=message_pk, message_id=message_id, group=group, body=body, conversation_pk=conversation_pk
    )
    return _track(asyncio.get_running_loop().create_task(generation.run(), name=f"generation-{message_id}"))


def _track(task: asyncio.Task) -> asyncio.Task:
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


needs_title = database_sync_to_async(browsing.needs_title)
save_generated_title = database_sync_to_async(browsing.save_generated_title)


async def generate_title(conversation_pk: int) -> None:
    """After the first answer: a short title from a small non-streaming request on a
    cheap model (in demo mode the first words stay the title). Every tab of the
    owner sees it at once. A failure keeps the first-words title."""
    config = upstream_config()
    if config.is_demo or not settings.CHAT_GENERATE_TITLES:
        return
    try:
        first_message = await needs_title(conversation_pk)
        if not first_message:
            return
        answer = await create_message(get_client(config), config, browsing.title_request(first_message))
        title = browsing.clean_title("".join(b.get("text", "") for b in answer.get("content", []) if b.get("type") == "text"))
        event = await save_generated_title(conversation_pk, title)
    except (UpstreamError, ValueError, KeyError) as exc:
        log.info("title for conversation %s not generated: %r", conversation_pk, exc)
        return
    if event:
        layer = get_channel_layer()
        owner, group = event.pop("owner"), event.pop("group")
        await layer.group_send(browsing.user_group(owner), {"type": "chat.event", "payload": event})
        await layer.group_send(group, {"type": "chat.event", "payload": event})


async def sweep_once() -> int:
    """Mark answers whose process died interrupted, and tell their open pages."""
    layer = get_channel_layer()
    recovered = await recover_interrupted()
    for group, event in recovered:
        await layer.group_send(group, {"type": "chat.event", "payload": event})
    return len(recovered)


_sweepers: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


async def _sweep_forever() -> None:
    while True:
        try:
            count = await sweep_once()
            if count:
                log.warning("marked %d interrupted answer(s) whose process had stopped", count)
        except Exception:  # the database may be briefly away: try again next round
            log.exception("checking for interrupted answers failed")
        await asyncio.sleep(settings.CHAT_SWEEP_INTERVAL)


def ensure_sweeper() -> None:
    """Start this process's periodic check for interrupted answers, once per event loop."""
    loop = asyncio.get_running_loop()
    task = _sweepers.get(loop)
    if task is None or task.done():
        _sweepers[loop] = loop.create_task(_sweep_forever(), name="interrupted-answer-sweeper")


async def wait_for_generations(timeout: float = 10.0) -> None:
    """Wait until every running generation has finished (tests, shutdown)."""
    if _running:
        await asyncio.wait_for(asyncio.gather(*list(_running), return_exceptions=True), timeout)
