"""The chat websocket: one socket per open conversation page.

Client → server: {"action": "send", "text", "client_id"} · {"action": "stop"} ·
{"action": "retry", "message"} · {"action": "resync", "message"}. Server → client: {"event": ...} payloads
(see docs/websocket-protocol.md). Generation runs in a task of its own
(generation.py); this consumer only checks access, saves, starts, relays.
"""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string

from . import browsing, catalog, parameters, relay, render_pool
from .generation import ensure_sweeper, start_generation
from .models import (
    Attachment,
    Conversation,
    LimitReached,
    Message,
    RequestTooLarge,
    TranscriptWindow,
    article_html,
    with_articles,
)

MAX_ATTACHMENTS_PER_MESSAGE = 20


class ChatError(Exception):
    """A refusal the person should read: nothing was sent upstream."""

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.fields = fields or {}


def _settings_from(raw: Any) -> parameters.Settings:
    """Validate the settings panel's values as the API would (ChatError if not)."""
    if not isinstance(raw, dict):
        raise ChatError("The settings could not be read.")
    try:
        return catalog.parse_settings(raw)
    except parameters.Invalid as exc:
        first = next(iter(exc.errors.values()))
        raise ChatError(f"Not sent: {first}", exc.errors) from None


# --- database work ---------------------------------------------------------


def _load_conversation(user, public_id) -> tuple[int, str] | None:
    conversation = Conversation.objects.for_user(user).filter(public_id=public_id).only("pk").first()
    return (conversation.pk, str(conversation.public_id)) if conversation else None


def _find_attachments(user, ids: Any) -> list[Attachment]:
    if ids in (None, []):
        return []
    if not isinstance(ids, list) or len(ids) > MAX_ATTACHMENTS_PER_MESSAGE:
        raise ChatError(f"A message can carry at most {MAX_ATTACHMENTS_PER_MESSAGE} attachments.")
    try:
        wanted = [uuid.UUID(str(i)) for i in ids]
    except ValueError:
        raise ChatError("An attachment could not be found: remove it and attach it again.") from None
    found = {a.public_id: a for a in Attachment.objects.filter(owner=user, public_id__in=wanted)}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ChatError("An attachment could not be found: remove it and attach it again.")
    return [found[i] for i in dict.fromkeys(wanted)]


def _begin_turn(
    user,
    conversation_pk: int | None,
    text: str,
    chosen: parameters.Settings | None,
    attachment_ids: Any = None,
    worker_channel: str = "",
) -> dict[str, Any]:
    """Save the person's message and an empty streaming answer, atomically.

    Without a conversation (the "New chat" page) it is created here, in the
    same transaction: a refused first message leaves no empty chat behind.
    Refuses while another answer in this conversation is still streaming,
    when the owner is at a per-user limit, or when the request would be too
    large for the API; then nothing is saved.
    """
    new = conversation_pk is None
    with transaction.atomic():
        if new:
            conversation = Conversation.start(user)
        else:
            conversation = Conversation.objects.select_for_update().get(pk=conversation_pk)
        try:
            conversation.check_limits(new=new)
        except LimitReached as exc:
            raise ChatError(str(exc)) from None
        files = _find_attachments(conversation.owner, attachment_ids)
        if chosen is not None:
            conversation.apply_settings(chosen)
        user_message = conversation.add_user_message(text, files)
        # A new conversation's whole history is this message: nothing to load.
        body = conversation.request_body(history=[user_message] if new else None)
        try:
            conversation.check_request_size(body, uses=user_message.sent_attachments if new else None)
        except RequestTooLarge as exc:
            raise ChatError(str(exc)) from None  # leaving the block rolls everything back
        assistant = conversation.start_assistant_message(worker_channel=worker_channel)
    user_event = user_message.to_client()
    user_event["article"] = article_html(user_event)
    return {
        "conversation_pk": conversation.pk,
        "conversation_id": str(conversation.public_id),
        "url": conversation.get_absolute_url(),
        "user": user_event,
        "assistant_pk": assistant.pk,
        "assistant_id": str(assistant.public_id),
        "title": conversation.display_title,
        "body": body,
    }


def _begin_retry(conversation_pk: int, message_id: str, worker_channel: str = "") -> dict[str, Any]:
    """Write the conversation's last answer again, after a failure or a stop."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation_pk)
        last = conversation.current_leaf
        if last is None or str(last.public_id) != message_id or last.role != Message.Role.ASSISTANT:
            raise ChatError("Only the last answer can be retried.")
        if last.status not in Message.RETRYABLE:
            raise ChatError("This answer is complete; there is nothing to retry.")
        try:
            conversation.check_limits()
        except LimitReached as exc:
            raise ChatError(str(exc)) from None
        last.reset_for_retry(worker_channel)
        body = conversation.request_body()
    return {"assistant_pk": last.pk, "assistant_id": str(last.public_id), "body": body}


def _transcript_html(conversation: Conversation) -> str:
    window = TranscriptWindow()
    messages = with_articles(conversation.visible_messages(window))
    return render_to_string("conversations/_transcript.html", {"transcript": messages, "earlier": window.earlier})


def _branch_message(conversation: Conversation, message_id: str, role: str) -> Message:
    try:
        message = conversation.messages.get(public_id=uuid.UUID(str(message_id)), role=role)
    except (ValueError, Message.DoesNotExist):
        raise ChatError("That message is not in this conversation.") from None
    return message


def _begin_branch(
    conversation_pk: int, action: str, message_id: str, text: str = "", worker_channel: str = ""
) -> dict[str, Any]:
    """Regenerate an answer, or edit an earlier question and resend it: either
    way a new sibling (a branch) is written; the old one stays, one "‹ ›" away."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation_pk)
        try:
            conversation.check_limits()
        except LimitReached as exc:
            raise ChatError(str(exc)) from None
        if action == "regenerate":
            old = _branch_message(conversation, message_id, Message.Role.ASSISTANT)
            assistant = conversation.start_assistant_message(after=old.parent_id, worker_channel=worker_channel)
        else:
            old = _branch_message(conversation, message_id, Message.Role.USER)
            files = [use.attachment for use in old.included_attachments()]
            if not text.strip() and not files:
                raise ChatError("Type a message before sending.")
            conversation.add_user_message(text, files, after=old.parent_id)
            assistant = conversation.start_assistant_message(worker_channel=worker_channel)
        body = conversation.request_body()
        try:
            conversation.check_request_size(body)
        except RequestTooLarge as exc:
            raise ChatError(str(exc)) from None
        html = _transcript_html(conversation)
    return {"assistant_pk": assistant.pk, "assistant_id": str(assistant.public_id), "body": body, "html": html}


def _switch_branch(conversation_pk: int, message_id: str) -> str:
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation_pk)
        if conversation.messages.filter(status=Message.Status.STREAMING).exists():
            raise ChatError("Wait for the current answer to finish, or stop it, before switching versions.")
        try:
            message = conversation.messages.get(public_id=uuid.UUID(str(message_id)))
        except (ValueError, Message.DoesNotExist):
            raise ChatError("That message is not in this conversation.") from None
        conversation.switch_to(message)
        return _transcript_html(conversation)


def _streaming_workers(conversation_pk: int) -> list[tuple[str, str]]:
    return list(
        Message.objects.filter(conversation_id=conversation_pk, status=Message.Status.STREAMING)
        .exclude(worker_channel="")
        .values_list("public_id", "worker_channel")
    )


load_conversation = database_sync_to_async(_load_conversation)
settings_from = database_sync_to_async(_settings_from)  # may ask the upstream for its model list
begin_turn = database_sync_to_async(_begin_turn)
begin_retry = database_sync_to_async(_begin_retry)
begin_branch = database_sync_to_async(_begin_branch)
switch_branch = database_sync_to_async(_switch_branch)
streaming_workers = database_sync_to_async(_streaming_workers)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    conversation_pk: int | None = None
    conversation_id: str | None = None

    @property
    def group(self) -> str:
        return f"conversation-{self.conversation_pk}"

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        public_id = self.scope["url_route"]["kwargs"].get("conversation_id")
        if public_id is not None:
            found = await load_conversation(user, public_id)
            if found is None:
                await self.close(code=4404)  # someone else's, or no such conversation
                return
            self.conversation_pk, self.conversation_id = found
            await self.join(self.group)
        # Every socket of this person hears of renamed, pinned, archived, new and
        # deleted conversations, whatever conversation it shows.
        await self.join(browsing.user_group(user.pk))
        await self.accept()
        ensure_sweeper()
        render_pool.start_soon()  # ready before this person's first answer
        if self.conversation_pk is not None:
            await self.catch_up()

    async def join(self, group: str) -> None:
        await relay.join(self.channel_layer, group, self)
        await self.channel_layer.group_add(group, self.channel_name)  # events sent by views

    async def disconnect(self, code: int) -> None:
        groups = [self.group] if self.conversation_pk is not None else []
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            groups.append(browsing.user_group(user.pk))
        for group in groups:
            await relay.leave(self.channel_layer, group, self)
            await self.channel_layer.group_discard(group, self.channel_name)

    async def publish(self, group: str, payload: dict[str, Any]) -> None:
        await relay.publish(self.channel_layer, group, payload)

    async def catch_up(self, only: str | None = None) -> None:
        """Ask each running generation for the text so far (sent to this socket only).

        Called after joining the group, so nothing published later is missed;
        the browser drops the events the snapshot already contains (by seq).
        """
        workers = await streaming_workers(self.conversation_pk)
        await self.send_json({"event": "state", "streaming": [str(mid) for mid, _ in workers]})
        request = {
            "type": "generation.snapshot",
            "reply_to": self.channel_name,
            "relay": await relay.channel_name(self.channel_layer),  # later deltas reach this process
        }
        for message_id, channel in workers:
            if only is None or str(message_id) == only:
                await self.channel_layer.send(channel, request)

    async def receive_json(self, content: Any, **kwargs) -> None:
        if not isinstance(content, dict):
            return
        action = content.get("action")
        try:
            if action == "send":
                await self.send_message(content)
            elif action == "stop":
                await self.stop()
            elif action == "retry" and self.conversation_pk is not None:
                await self.retry(str(content.get("message") or ""))
            elif action in ("regenerate", "edit") and self.conversation_pk is not None:
                await self.branch(action, content)
            elif action == "switch" and self.conversation_pk is not None:
                html = await switch_branch(self.conversation_pk, str(content.get("message") or ""))
                await self.replace_transcript(html)
            elif action == "resync" and self.conversation_pk is not None:
                await self.catch_up(only=str(content.get("message") or "") or None)
            else:
                raise ChatError("Unknown action.")
        except ChatError as exc:
            await self.send_json(
                {"event": "error", "message": str(exc), "fields": exc.fields, "client_id": content.get("client_id")}
            )

    async def send_message(self, content: dict[str, Any]) -> None:
        text = content.get("text") or ""
        attachment_ids = content.get("attachments") or []
        if not isinstance(text, str) or (not text.strip() and not attachment_ids):
            raise ChatError("Type a message before sending.")
        if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise ChatError(
                f"This message is {len(text):,} characters long; the limit is {settings.CHAT_MAX_MESSAGE_CHARS:,}."
            )
        client_id = str(content.get("client_id") or uuid.uuid4())
        chosen = await settings_from(content["settings"]) if content.get("settings") is not None else None
        channel = await self.channel_layer.new_channel()
        turn = await begin_turn(self.scope["user"], self.conversation_pk, text, chosen, attachment_ids, channel)
        if self.conversation_pk is None:
            self.conversation_pk, self.conversation_id = turn["conversation_pk"], turn["conversation_id"]
            await self.join(self.group)
            await self.send_json({"event": "conversation.created", "id": self.conversation_id, "url": turn["url"]})
            await self.publish(
                browsing.user_group(self.scope["user"].pk),
                {"event": "conversation.added", "conversation": {"id": self.conversation_id, "title": turn["title"]}},
            )
        await self.publish(
            self.group,
            {
                "event": "message.user",
                "client_id": client_id,
                "message": turn["user"],
                "conversation": {"id": self.conversation_id, "title": turn["title"]},
            },
        )
        await self.start_answer(turn, channel)

    async def branch(self, action: str, content: dict[str, Any]) -> None:
        text = content.get("text") or ""
        if not isinstance(text, str) or len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise ChatError(f"A message can be at most {settings.CHAT_MAX_MESSAGE_CHARS:,} characters long.")
        channel = await self.channel_layer.new_channel()
        turn = await begin_branch(self.conversation_pk, action, str(content.get("message") or ""), text, channel)
        await self.replace_transcript(turn["html"], client_id=content.get("client_id"))
        await self.start_answer(turn, channel)

    async def replace_transcript(self, html: str, client_id: Any = None) -> None:
        """Every page on this conversation now shows another branch."""
        await self.publish(self.group, {"event": "transcript.replace", "html": html, "client_id": client_id})

    async def retry(self, message_id: str) -> None:
        channel = await self.channel_layer.new_channel()
        await self.start_answer(await begin_retry(self.conversation_pk, message_id, channel), channel)

    async def start_answer(self, turn: dict[str, Any], channel: str) -> None:
        """Start the generation: it listens for Stop on `channel`, which the
        answer's row already names (written with it, so that the upstream
        request waits for no further database call)."""
        await self.publish(self.group, {"event": "message.start", "message": turn["assistant_id"], "seq": 0})
        start_generation(
            channel=channel,
            message_pk=turn["assistant_pk"],
            message_id=turn["assistant_id"],
            group=self.group,
            body=turn["body"],
            conversation_pk=self.conversation_pk,
        )

    async def stop(self) -> None:
        if self.conversation_pk is None:
            return
        for _message_id, channel in await streaming_workers(self.conversation_pk):
            await self.channel_layer.send(channel, {"type": "generation.stop"})

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Relay streaming events straight away. Channels runs
        close_old_connections() on the one database thread before every
        handler; for events that touch no database that hop serialized every
        delta of every socket behind one thread (bench/load.py showed seconds
        of delay at 100 streams)."""
        if message.get("type") == "chat.event":
            await self.chat_event(message)
        else:
            await super().dispatch(message)

    async def chat_event(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"])
