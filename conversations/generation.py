"""The generation runner: one asyncio task per assistant answer.

The task is not owned by any socket: closing the tab does not stop it. It
streams from the upstream client, publishes new text to the conversation's
sockets as it arrives (relay.py), and finishes the message at the end; the
process's saver writes every running answer about once a second. It listens
on a channel of its own (stored on the message) for "stop" and "snapshot"
requests, so that any socket on any process can stop it or catch up with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .markdown import StreamingMarkdown, remember_finished
from . import render_pool
from .loops import per_loop
from .models import USAGE_FIELDS, Message, valid_usage
from . import browsing, relay
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

_running: set[asyncio.Task] = set()  # answers and titles (wait_for_generations)
_detached: set[asyncio.Task] = set()  # listeners that may outlive their answer, and what ends them


# --- database work: plain values in and out, each wrapped once ------------


def _save_batch(partials: list[tuple[int, list, dict, str]], heartbeats: list[int]) -> None:
    """One round of the process's saver: every answer that changed gets its
    partial content, the others a heartbeat, in one transaction. Only answers
    still streaming are touched: a round that was queued behind an answer's
    finish never writes over the finished message."""
    now = timezone.now()
    streaming = Message.objects.filter(status=Message.Status.STREAMING)
    with transaction.atomic():
        for message_pk, content, usage, upstream_id in partials:
            fields = {"content": content, "updated_at": now, **valid_usage(usage)}
            if upstream_id:
                fields["upstream_id"] = upstream_id
            streaming.filter(pk=message_pk).update(**fields)
        if heartbeats:
            streaming.filter(pk__in=heartbeats).update(updated_at=now)


def _finish(message_pk: int, fields: dict[str, Any], usage: dict, want_title: bool = False) -> dict[str, Any]:
    """Save the finished answer; its message.end event, the conversation's
    totals and, with `want_title`, the text to title the conversation from
    (None when it needs no title), all in this one database call."""
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
    with transaction.atomic():  # one commit
        message.save(update_fields=[*fields, *USAGE_FIELDS, "worker_channel", "completed_at", "updated_at"])
        message.conversation.touch()
    end = {**message.end_event(), "totals": message.conversation.usage_totals()}
    title_from = browsing.needs_title(message.conversation) if want_title else None
    return {"end": end, "title_from": title_from}


def _recover_interrupted(running_here: list[int]) -> list[tuple[str, dict[str, Any]]]:
    return Message.objects.mark_interrupted(settings.CHAT_STALE_AFTER, exclude=running_here)


save_batch = database_sync_to_async(_save_batch)
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
        self.unrendered: set[int] = set()  # blocks whose newest text went out as text only
        self.dirty = False
        self.finished = False  # the stream is over (the flusher stops)
        self.ended = False  # message.end is out (the listener answers nothing more)
        self.wake = asyncio.Event()
        self.publishing = asyncio.Lock()
        self.last_flush = 0.0
        self.next_render = 0.0
        self.stream: MessageStream | None = None
        self.version = 0
        self.saved_version = 0
        self.last_write = time.monotonic()
        self.thinking_started: dict[int, float] = {}
        self.thinking_seconds: dict[str, float] = {}

    # events to the browser -------------------------------------------------

    async def publish(self, payload: dict[str, Any]) -> None:
        await relay.publish(self.layer, self.group, payload)

    def _next(self, event: str, **data: Any) -> dict[str, Any]:
        self.seq += 1
        return {"event": event, "message": self.message_id, "seq": self.seq, **data}

    async def flush(self, *, render: bool = False) -> None:
        """Publish the text that arrived since the last flush.

        Every part carries its new `text`. The markdown HTML (`append` and
        `tail`) is rendered only when this answer's render is due (see
        `render_interval`) or `render` is asked for; in between, the browser
        shows the new text as plain text after the tail."""
        async with self.publishing:  # frames leave in `seq` order
            if not (self.dirty or (render and self.unrendered)):
                return
            now = time.monotonic()
            render = render or now >= self.next_render
            parts, jobs = [], []
            # Text and what to render are taken together, before any await: text
            # arriving during the rendering goes out with the next delta.
            for index in sorted(self.pending_text.keys() | (self.unrendered if render else set())):
                part = {"index": index, "type": self.block_types[index], "text": self.pending_text.pop(index, "")}
                renderer = self.renderers.get(index)
                if renderer is None:  # blocks without text (redacted thinking)
                    part["append"] = part["tail"] = ""
                elif render:
                    jobs.append((part, renderer, *renderer.unfinished()))
                    self.unrendered.discard(index)
                else:
                    self.unrendered.add(index)
                parts.append(part)
            self.dirty = False
            if jobs:
                started = time.perf_counter()
                results = await render_pool.render_tails([tail for _part, _renderer, _upto, tail in jobs])
                for (part, renderer, upto, _tail), result in zip(jobs, results):
                    part["append"], part["tail"] = renderer.apply(result, upto)
                self.next_render = now + render_interval(time.perf_counter() - started)
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
        if self.dirty:
            self.wake.set()

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

    async def _flusher(self) -> None:
        """Publish new text as soon as the event loop gets to it, at most once
        per CHAT_FLUSH_INTERVAL. Events that arrive together (one network read,
        or while the loop is busy) leave in one frame. It ends when `finished`
        is set and `wake` with it, never by cancellation: a cancel landing
        inside a Redis group_send can be swallowed."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.finished:
                return
            delay = self.last_flush + settings.CHAT_FLUSH_INTERVAL - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                if self.finished:
                    return
            started = time.monotonic()  # the interval runs from flush to flush, however long one takes
            try:
                await self.flush()
            except Exception:  # the channel layer may be briefly away: the next flush sends it all
                log.exception("generation %s: publishing a delta failed", self.message_id)
                self.dirty = True
            self.last_flush = started

    def changed(self) -> bool:
        return self.stream is not None and self.version != self.saved_version

    def unsaved(self) -> tuple[int, list, dict, str] | None:
        """(pk, content, usage, upstream id) when the answer changed since its last save."""
        if not self.changed():
            return None
        self.saved_version = self.version
        acc = self.stream.accumulator
        return self.message_pk, _copy_content(acc.content), dict(acc.message.get("usage", {})), acc.message.get("id", "")

    async def _listen(self, channel: str, stream_task: asyncio.Task) -> None:
        while True:
            request = await self.layer.receive(channel)
            if request.get("type") == "generation.exit":
                return
            if self.ended:  # a late request: the answer's message.end is already out
                continue
            if request.get("type") == "generation.stop":
                stream_task.cancel()
            elif request.get("type") == "generation.snapshot" and request.get("reply_to"):
                relay.learn(self.layer, self.group, request.get("relay"))
                await self.flush()  # text already in the snapshot must not come again in a later delta
                await self.layer.send(request["reply_to"], {"type": "chat.event", "payload": self.snapshot()})

    async def run(self, channel: str) -> None:
        """Stream the answer. `channel` (from the layer's new_channel(), whose
        default prefix matters: channels_redis serves every process-specific
        channel of one prefix from one Redis list, and a second prefix would
        starve the sockets' own channels) is already the answer's
        worker_channel in the database: Stop from any process reaches it."""
        live = _live_here()
        live[self.message_pk] = self
        ensure_saver()
        render_pool.start_soon()
        try:
            await self._run(channel)
        finally:
            live.pop(self.message_pk, None)

    async def _run(self, channel: str) -> None:
        stream_task = asyncio.create_task(self._stream())
        flusher = asyncio.create_task(self._flusher())
        _track(asyncio.create_task(self._listen(channel, stream_task)), _detached)  # it may outlive the answer
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
            self.finished = True
            self.wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(flusher), timeout=10)
            except (asyncio.TimeoutError, Exception):
                flusher.cancel()
            _track(asyncio.get_running_loop().create_task(self._stop_listener(channel)), _detached)
        await self._finish(fields)

    async def _stop_listener(self, channel: str) -> None:
        """Tell the listener to end, without waiting for it, and never cancel
        its receive(): on a busy Redis layer the message can take seconds, and
        channels_redis may never return from a cancelled receive (answers then
        waited for their listener forever and never ended: bench/load.py,
        PostgreSQL + Redis at 100 streams). The listener ends when the message
        reaches it, and ignores requests that arrive after the answer ended."""
        for _attempt in range(20):
            try:
                await self.layer.send(channel, {"type": "generation.exit"})
                return
            except ChannelFull:  # the process's Redis inbox is backed up: try again shortly
                await asyncio.sleep(0.5)
            except Exception:
                break
        log.warning("generation %s: could not tell its listener to end", self.message_id)

    async def _finish(self, fields: dict[str, Any]) -> None:
        await self.flush(render=True)
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
        for renderer in self.renderers.values():  # the saved answer's rendering is the streamed one
            remember_finished(renderer.text, renderer.final_html())
        want_title = fields["status"] == Message.Status.COMPLETE and titles_wanted()
        done = await finish(self.message_pk, fields, usage, want_title)
        self.ended = True
        end = done["end"]
        await self.publish(self._next(end.pop("event"), **end))
        if done["title_from"]:
            _track(asyncio.get_running_loop().create_task(generate_title(self.conversation_pk, done["title_from"])))


def render_interval(cost: float) -> float:
    """How long an answer waits before its markdown is rendered again, given
    what its last render cost (seconds). Re-rendering the unfinished tail is the
    costly part of streaming; this keeps it to about CHAT_RENDER_BUDGET of one
    core however many answers this process streams: one answer is rendered on
    every flush, hundreds up to every CHAT_MAX_RENDER_INTERVAL (never less
    often). The text itself is never held back."""
    live = max(1, len(_live_here()))
    return min(settings.CHAT_MAX_RENDER_INTERVAL, live * cost / settings.CHAT_RENDER_BUDGET)


# --- this process's running answers, and their saver --------------------------

_live: dict[asyncio.AbstractEventLoop, dict[int, Generation]] = {}
_savers: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def _live_here() -> dict[int, Generation]:
    return per_loop(_live, dict)


SAVE_SLICES = 10  # the saver wakes this many times per CHAT_SAVE_INTERVAL


async def save_round() -> None:
    """Write the running answers of this process that are due, in one
    database call: the partial content of those changed since their last
    write CHAT_SAVE_INTERVAL ago, a heartbeat for those silent for
    CHAT_HEARTBEAT_INTERVAL. At most a SAVE_SLICES-th of the running answers
    per round, the longest unwritten first: writing hundreds of growing
    answers at once held the GIL for tens of milliseconds every second and
    every stream stalled with it (bench/load.py, 200 streams); in slices
    each answer is still written about every CHAT_SAVE_INTERVAL. A stream
    never waits for it."""
    now = time.monotonic()
    live = list(_live_here().values())
    due = [
        generation for generation in live
        if now - generation.last_write >= settings.CHAT_HEARTBEAT_INTERVAL
        or (now - generation.last_write >= settings.CHAT_SAVE_INTERVAL and generation.changed())
    ]  # fmt: skip
    due.sort(key=lambda generation: generation.last_write)
    written = due[: -(-len(live) // SAVE_SLICES)]
    if not written:
        return
    partials, heartbeats = [], []
    for generation in written:
        partial = generation.unsaved()
        if partial is not None:
            partials.append(partial)
        else:
            heartbeats.append(generation.message_pk)
    try:
        await save_batch(partials, heartbeats)
    except Exception:
        for generation in written:
            generation.saved_version = -1  # write it again next round
        raise
    for generation in written:
        generation.last_write = now


async def _save_forever() -> None:
    while True:
        await asyncio.sleep(min(settings.CHAT_SAVE_INTERVAL, settings.CHAT_HEARTBEAT_INTERVAL) / SAVE_SLICES)
        try:
            await save_round()
        except Exception:  # the database may be briefly away: try again next round
            log.exception("saving the running answers failed")


def ensure_saver() -> None:
    """Start this process's saver of running answers, once per event loop."""
    _ensure(_savers, _save_forever, "running-answer-saver")


def _ensure(tasks: dict[asyncio.AbstractEventLoop, asyncio.Task], coroutine, name: str) -> None:
    def start() -> asyncio.Task:
        return asyncio.get_running_loop().create_task(coroutine(), name=name)

    if per_loop(tasks, start).done():  # it ended on an error it did not catch: start it again
        tasks[asyncio.get_running_loop()] = start()


def _copy_content(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(block) for block in content]


def start_generation(
    *, channel: str, message_pk: int, message_id: str, group: str, body: dict[str, Any], conversation_pk: int
) -> asyncio.Task:
    """Start the task; it belongs to the event loop, not to the calling socket."""
    generation = Generation(
        message_pk=message_pk, message_id=message_id, group=group, body=body, conversation_pk=conversation_pk
    )
    return _track(asyncio.get_running_loop().create_task(generation.run(channel), name=f"generation-{message_id}"))


def _track(task: asyncio.Task, tasks: set[asyncio.Task] = _running) -> asyncio.Task:
    """Hold a task in `tasks` until it is done (the loop keeps only weak references)."""
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


save_generated_title = database_sync_to_async(browsing.save_generated_title)


def titles_wanted() -> bool:
    """Titles are generated by the API (in demo mode the first words stay the title)."""
    return settings.CHAT_GENERATE_TITLES and not upstream_config().is_demo


async def generate_title(conversation_pk: int, first_message: str) -> None:
    """After the first answer (`_finish` found that the conversation needs a
    title, and from which text): a short title from a small non-streaming
    request on a cheap model. Every tab of the owner sees it at once. A
    failure keeps the first-words title."""
    config = upstream_config()
    try:
        answer = await create_message(get_client(config), config, browsing.title_request(first_message))
        title = browsing.clean_title("".join(b.get("text", "") for b in answer.get("content", []) if b.get("type") == "text"))
        event = await save_generated_title(conversation_pk, title)
    except (UpstreamError, ValueError, KeyError) as exc:
        log.info("title for conversation %s not generated: %r", conversation_pk, exc)
        return
    if event:
        layer = get_channel_layer()
        owner, group = event.pop("owner"), event.pop("group")
        await relay.publish(layer, browsing.user_group(owner), event)
        await relay.publish(layer, group, event)


async def sweep_once() -> int:
    """Mark answers whose process died interrupted, and tell their open pages.
    This process's own running answers are alive whatever their heartbeat says
    (a heartbeat late because the process is busy is not a death)."""
    layer = get_channel_layer()
    recovered = await recover_interrupted(list(_live_here()))
    for group, event in recovered:
        await relay.publish(layer, group, event)
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
    _ensure(_sweepers, _sweep_forever, "interrupted-answer-sweeper")


async def wait_for_generations(timeout: float = 10.0) -> None:
    """Wait until every running generation has finished (tests, shutdown)."""
    if _running:
        await asyncio.wait_for(asyncio.gather(*list(_running), return_exceptions=True), timeout)
