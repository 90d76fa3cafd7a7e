"""Conversations and their messages, stored in the Messages API's own shape."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from .markdown import render

TITLE_LENGTH = 80
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class LimitReached(Exception):
    """A per-user limit refuses a new answer; the text says which and for how long."""


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user) -> "ConversationQuerySet":
        return self.filter(owner=user)

    def for_sidebar(self) -> "ConversationQuerySet":
        return self.only("public_id", "title", "updated_at").order_by("-updated_at")


class Conversation(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=100)
    # Request parameters other than model and messages, in the API's names:
    # max_tokens, system, temperature, top_p, top_k, stop_sequences, thinking.
    params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, db_index=False)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["owner", "-updated_at"], name="conv_owner_recent")]
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or "New chat"

    @property
    def display_title(self) -> str:
        return self.title or "New chat"

    @property
    def group_name(self) -> str:
        """The channel-layer group of every socket showing this conversation."""
        return f"conversation-{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("conversation", args=[self.public_id])

    @classmethod
    def start(cls, owner) -> "Conversation":
        return cls.objects.create(
            owner=owner,
            model=settings.CHAT_DEFAULT_MODEL,
            params={"max_tokens": settings.CHAT_DEFAULT_MAX_TOKENS},
        )

    def touch(self) -> None:
        self.updated_at = timezone.now()
        Conversation.objects.filter(pk=self.pk).update(updated_at=self.updated_at)

    def add_user_message(self, text: str) -> "Message":
        """Save the person's message (before anything goes upstream)."""
        with transaction.atomic():
            message = self.messages.create(
                role=Message.Role.USER,
                content=[{"type": "text", "text": text}],
                status=Message.Status.COMPLETE,
            )
            fields = {"updated_at": message.created_at}
            if not self.title:
                self.title = title_from_text(text)
                fields["title"] = self.title
            Conversation.objects.filter(pk=self.pk).update(**fields)
            self.updated_at = message.created_at
        return message

    def check_limits(self) -> None:
        """Refuse a new answer when the owner is at a per-user limit."""
        mine = Message.objects.filter(conversation__owner_id=self.owner_id)
        if self.messages.filter(status=Message.Status.STREAMING).exists():
            raise LimitReached("Wait for the current answer to finish, or stop it, before sending another message.")
        running = mine.filter(status=Message.Status.STREAMING).count()
        if running >= settings.CHAT_MAX_CONCURRENT_GENERATIONS:
            raise LimitReached(
                f"You already have {running} answers being written at once, the most allowed. "
                "Wait for one to finish (or stop it), then send again."
            )
        window = timezone.now() - timedelta(seconds=60)
        recent = list(
            mine.filter(role=Message.Role.USER, created_at__gte=window)
            .order_by("created_at")
            .values_list("created_at", flat=True)[: settings.CHAT_MESSAGES_PER_MINUTE]
        )
        if len(recent) >= settings.CHAT_MESSAGES_PER_MINUTE:
            wait = max(1, int((recent[0] + timedelta(seconds=60) - timezone.now()).total_seconds()) + 1)
            raise LimitReached(
                f"You have sent {settings.CHAT_MESSAGES_PER_MINUTE} messages in the last minute, the most allowed. "
                f"Try again in {wait} seconds."
            )

    def start_assistant_message(self) -> "Message":
        return self.messages.create(
            role=Message.Role.ASSISTANT,
            content=[],
            status=Message.Status.STREAMING,
            model=self.model,
        )

    def api_messages(self) -> list[dict[str, Any]]:
        """The history resent upstream each turn, in the API's shape."""
        turns: list[dict[str, Any]] = []
        for message in self.messages.order_by("created_at", "pk"):
            content = message.to_api_content()
            if not content:
                continue
            if turns and turns[-1]["role"] == message.role:
                turns[-1]["content"] = turns[-1]["content"] + content
            else:
                turns.append({"role": message.role, "content": content})
        while turns and turns[-1]["role"] == Message.Role.ASSISTANT:
            turns.pop()  # the request must end with the person's turn
        return turns

    def request_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": settings.CHAT_DEFAULT_MAX_TOKENS}
        for key, value in (self.params or {}).items():
            if value not in (None, "", []):
                body[key] = value
        body["messages"] = self.api_messages()
        return body


def client_blocks(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An answer's displayable blocks: raw text (for copying) and safe HTML."""
    blocks = []
    for index, block in enumerate(content):
        kind = block.get("type")
        if kind in ("text", "thinking", "redacted_thinking"):
            text = block.get("text") or block.get("thinking") or ""
            blocks.append({"index": index, "type": kind, "text": text, "html": render(text)})
    return blocks


def title_from_text(text: str) -> str:
    words = " ".join(text.split())
    if len(words) <= TITLE_LENGTH:
        return words or "New chat"
    cut = words[:TITLE_LENGTH].rsplit(" ", 1)[0] or words[:TITLE_LENGTH]
    return cut + "…"


class MessageQuerySet(models.QuerySet):
    def stale_streaming(self, older_than_seconds: float) -> "MessageQuerySet":
        """Answers still marked streaming whose writer has not saved for a while.

        A running generation saves at least every heartbeat interval, so one
        that has been silent for longer than `older_than_seconds` lost its
        process (a crash, a kill, a restart).
        """
        cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
        return self.filter(status=Message.Status.STREAMING, updated_at__lt=cutoff)

    def mark_interrupted(self, older_than_seconds: float) -> list[tuple[str, dict[str, Any]]]:
        """Mark stale streaming answers interrupted, keeping their saved text.

        Returns (group name, message.end event) for each, to tell open pages.
        """
        from .upstream import describe_error

        recovered = []
        for message in self.stale_streaming(older_than_seconds).select_related("conversation"):
            updated = Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(
                status=Message.Status.INTERRUPTED,
                error_type="interrupted",
                error=describe_error("interrupted"),
                worker_channel="",
                completed_at=timezone.now(),
                updated_at=timezone.now(),
            )
            if updated:
                message.refresh_from_db()
                recovered.append((message.conversation.group_name, message.end_event()))
        return recovered


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"  # the process writing it died mid-stream

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.JSONField(default=list, blank=True)  # the API's content blocks
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=100, blank=True)
    stop_reason = models.CharField(max_length=40, blank=True)
    stop_sequence = models.CharField(max_length=200, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cache_creation_input_tokens = models.PositiveIntegerField(default=0)
    cache_read_input_tokens = models.PositiveIntegerField(default=0)
    upstream_id = models.CharField(max_length=100, blank=True)
    request_id = models.CharField(max_length=100, blank=True)
    error_type = models.CharField(max_length=60, blank=True)
    error = models.TextField(blank=True)
    # The channel-layer channel of the task generating this message: Stop and
    # late joiners reach the task through it, from any process.
    worker_channel = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    # Answers that "Retry" may write again.
    RETRYABLE = (Status.ERROR, Status.INTERRUPTED, Status.STOPPED)

    objects = MessageQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="msg_conversation_order"),
            models.Index(fields=["status", "updated_at"], name="msg_status_recent"),
        ]
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"

    @property
    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if b.get("type") == "text")

    @property
    def usage(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in USAGE_FIELDS}

    def set_usage(self, usage: dict[str, Any]) -> None:
        for name in USAGE_FIELDS:
            value = usage.get(name)
            if isinstance(value, int) and value >= 0:
                setattr(self, name, value)

    def to_api_content(self) -> list[dict[str, Any]]:
        """Content blocks as they may be sent back upstream.

        Empty text blocks are refused by the API and unsigned (cut-off)
        thinking blocks would be too: both are left out. Finished thinking
        blocks are returned byte for byte as they were received.
        """
        blocks = []
        for block in self.content:
            kind = block.get("type")
            if kind == "text":
                if block.get("text", "").strip():
                    blocks.append({"type": "text", "text": block["text"]})
            elif kind == "thinking":
                if block.get("signature"):
                    blocks.append(block)
            elif kind == "redacted_thinking":
                if block.get("data"):
                    blocks.append(block)
            else:
                blocks.append(block)
        if self.role == Message.Role.ASSISTANT and self.status != Message.Status.COMPLETE:
            # A partial answer ends where it was cut: keep its text, but no
            # trailing whitespace and no thinking without a following answer.
            while blocks and blocks[-1]["type"] != "text":
                blocks.pop()
            if blocks:
                blocks[-1] = {"type": "text", "text": blocks[-1]["text"].rstrip()}
        return blocks

    def reset_for_retry(self) -> None:
        """Empty this answer so that a new generation writes it again."""
        self.content = []
        self.status = Message.Status.STREAMING
        self.stop_reason = self.stop_sequence = self.error = self.error_type = ""
        self.upstream_id = self.request_id = self.worker_channel = ""
        self.set_usage({name: 0 for name in USAGE_FIELDS})
        self.completed_at = None
        self.model = self.conversation.model
        self.save()

    def end_event(self) -> dict[str, Any]:
        """The `message.end` event for a finished answer (see docs/websocket-protocol.md)."""
        return {
            "event": "message.end",
            "message": str(self.public_id),
            "status": self.status,
            "stop_reason": self.stop_reason,
            "blocks": client_blocks(self.content),
            "usage": self.usage,
            "error": self.error,
            "error_type": self.error_type,
            "request_id": self.request_id,
        }

    def to_client(self) -> dict[str, Any]:
        """Plain data for the browser (rendered, sanitized HTML; never raw HTML)."""
        return {
            "id": str(self.public_id),
            "role": self.role,
            "status": self.status,
            "blocks": client_blocks(self.content) if self.role == Message.Role.ASSISTANT else [],
            "text": self.text,
            "stop_reason": self.stop_reason,
            "usage": self.usage,
            "error": self.error,
            "error_type": self.error_type,
            "request_id": self.request_id,
        }
