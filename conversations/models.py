"""Conversations and their messages, stored in the Messages API's own shape."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Callable, Iterable

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete, pre_delete
from django.dispatch import receiver
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from . import catalog, parameters
from .attachments import human_size
from .markdown import render_finished
from .upstream import FileData, encode_body

TITLE_LENGTH = 80
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def valid_usage(usage: dict[str, Any]) -> dict[str, int]:
    """The token counts of an API `usage` object that can be stored (whole, not negative)."""
    return {name: usage[name] for name in USAGE_FIELDS if isinstance(usage.get(name), int) and usage[name] >= 0}


MAX_IMAGES_PER_REQUEST = 100
MANY_IMAGES = 20  # above this many images in a request, each must be small
MANY_IMAGES_MAX_SIDE = 2000


class RequestTooLarge(Exception):
    """The request would break the API's size or image rules; the text names the largest files."""


@dataclass
class TranscriptWindow:
    """Which part of a long visible branch a page shows: the last `size`
    messages, the `size` before message `before`, or from a little ahead of
    message `at` (a search hit) to the end."""

    size: int = 50
    before: uuid.UUID | None = None
    at: uuid.UUID | None = None
    earlier: str | None = None  # the first shown message's id, when more come before it
    more_before: bool = False

    def cut(self, ids: list[int], pk_of: Callable[[uuid.UUID], int | None]) -> list[int]:
        """The shown part of the branch `ids`; `earlier` is then set by the caller."""
        end = len(ids)
        before = pk_of(self.before) if self.before is not None else None
        if before in ids:
            end = ids.index(before)
        start = max(0, end - self.size)
        at = pk_of(self.at) if self.at is not None else None
        if at in ids:
            start = min(start, max(0, ids.index(at) - 5))
        self.more_before = start > 0
        return ids[start:end]


class LimitReached(Exception):
    """A per-user limit refuses a new answer; the text says which and for how long."""


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user) -> "ConversationQuerySet":
        return self.filter(owner=user)

    def for_sidebar(self) -> "ConversationQuerySet":
        """Only what the sidebar shows: never message bodies or attachments."""
        return self.only("public_id", "title", "updated_at", "pinned", "archived").order_by("-updated_at")


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

    # Staff review (the admin): what a reviewer concluded, who, and when.
    class ReviewStatus(models.TextChoices):
        UNREVIEWED = "unreviewed"
        OK = "ok"
        FLAGGED = "flagged"

    # The last message of the branch on screen: the visible path (and the
    # history sent upstream) is it and its ancestors.
    current_leaf = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    pinned = models.BooleanField(default=False)
    archived = models.BooleanField(default=False)
    title_locked = models.BooleanField(default=False)  # the person renamed it: never generate over it

    review_status = models.CharField(max_length=12, choices=ReviewStatus.choices, default=ReviewStatus.UNREVIEWED)
    review_notes = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["owner", "-updated_at"], name="conv_owner_recent"),
            models.Index(fields=["owner", "archived", "-pinned", "-updated_at", "-id"], name="conv_owner_sidebar"),
            models.Index(fields=["review_status", "-updated_at"], name="conv_review_recent"),
        ]
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
        """A new chat, with the owner's last choices of model and parameters."""
        prefs = Preferences.objects.filter(user=owner).first()
        if prefs is not None:
            return cls.objects.create(owner=owner, model=prefs.model, params=prefs.params)
        defaults = parameters.defaults(catalog.rules_for(settings.CHAT_DEFAULT_MODEL), settings.CHAT_DEFAULT_MAX_TOKENS)
        return cls.objects.create(owner=owner, model=defaults.model, params=defaults.to_params())

    @property
    def chat_settings(self) -> parameters.Settings:
        return parameters.Settings.from_params(self.model, self.params or {})

    def apply_settings(self, new: parameters.Settings) -> None:
        """Save validated settings here and as the owner's defaults for new chats."""
        self.model, self.params = new.model, new.to_params()
        Conversation.objects.filter(pk=self.pk).update(model=self.model, params=self.params)
        Preferences.remember(self.owner_id, new)

    def touch(self) -> None:
        self.updated_at = timezone.now()
        Conversation.objects.filter(pk=self.pk).update(updated_at=self.updated_at)

    def add_user_message(self, text: str, attachments: list["Attachment"] = (), *, after: Any = "leaf") -> "Message":
        """Save the person's message (before anything goes upstream).

        It follows the visible branch's last message, or `after` (a message
        pk, or None for the very start) when it edits an earlier question.
        """
        with transaction.atomic(savepoint=False):
            message = self.messages.create(
                role=Message.Role.USER,
                content=[{"type": "text", "text": text}] if text.strip() else [],
                status=Message.Status.COMPLETE,
                parent_id=self.current_leaf_id if after == "leaf" else after,
            )
            uses = MessageAttachment.objects.bulk_create(
                MessageAttachment(message=message, attachment=attachment, position=position)
                for position, attachment in enumerate(attachments)
            )
            message.all_attachments = message.sent_attachments = uses  # what the prefetches would load
            fields = {"updated_at": message.created_at, "current_leaf": message}
            self.current_leaf = message
            if not self.title:
                self.title = title_from_text(text) if text.strip() else attachments[0].original_name
                fields["title"] = self.title
            Conversation.objects.filter(pk=self.pk).update(**fields)
            self.updated_at = message.created_at
        return message

    def check_limits(self, *, new: bool = False) -> None:
        """Refuse a new answer when the owner is at a per-user limit. A `new`
        conversation has no answer running yet. (Two indexed queries: one
        query OR-ing both conditions scanned all of a person's messages, twice
        as slow for someone with 10,000 conversations.)"""
        mine = Message.objects.filter(conversation__owner_id=self.owner_id)
        if not new and self.messages.filter(status=Message.Status.STREAMING).exists():
            raise LimitReached("Wait for the current answer to finish, or stop it, before sending another message.")
        running = mine.filter(status=Message.Status.STREAMING).count()
        if running >= settings.CHAT_MAX_CONCURRENT_GENERATIONS:
            raise LimitReached(
                f"You already have {running} answer{'s' if running != 1 else ''} being written at once, the most allowed. "
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

    def start_assistant_message(self, *, after: int | None = None, worker_channel: str = "") -> "Message":
        """An empty streaming answer to the visible branch's last message (or to
        `after`, when regenerating an earlier answer); it becomes the branch's end.
        `worker_channel` is where its generation will listen for Stop."""
        answer = self.messages.create(
            role=Message.Role.ASSISTANT,
            content=[],
            status=Message.Status.STREAMING,
            model=self.model,
            request_params=self.request_params(),
            parent_id=after if after is not None else self.current_leaf_id,
            worker_channel=worker_channel,
        )
        self.current_leaf = answer
        Conversation.objects.filter(pk=self.pk).update(current_leaf=answer)
        return answer

    # --- branches -----------------------------------------------------------------

    def _tree(self) -> list[tuple[int, int | None]]:
        """(pk, parent pk) of every message, oldest first: one light query."""
        return list(self.messages.order_by("created_at", "pk").values_list("pk", "parent_id"))

    def path(self, leaf_id: int | None = "current", tree: list[tuple] | None = None) -> list[int]:
        """Pks of the visible branch (the leaf and its ancestors), oldest first."""
        tree = self._tree() if tree is None else tree
        if leaf_id == "current" and self.current_leaf_id is None:
            return [pk for pk, _ in tree]  # messages saved without a tree: one straight line
        parents = dict(tree)
        leaf = self.current_leaf_id if leaf_id == "current" else leaf_id
        ids: list[int] = []
        while leaf is not None and leaf in parents:
            ids.append(leaf)
            leaf = parents[leaf]
        return ids[::-1]

    def visible_messages(self, window: "TranscriptWindow | None" = None) -> list["Message"]:
        """The branch on screen, with attachments, and for each message its place
        among its siblings (the "‹ 2/3 ›" of an edited or regenerated turn).

        With a `window`, only part of it (a long conversation is shown from its
        end, page by page); the window learns whether earlier messages exist.
        """
        tree = self._tree()
        ids = self.path(tree=tree)
        if window is not None:
            ids = window.cut(ids, self._pk_of)
        parents = dict(tree)
        children: dict[int | None, list[int]] = {}
        for pk, parent in tree:
            children.setdefault(parent, []).append(pk)
        places = {}
        for pk in ids:
            siblings = children.get(parents[pk], []) if self.current_leaf_id else [pk]
            position = siblings.index(pk)
            before = siblings[position - 1] if position > 0 else None
            after = siblings[position + 1] if position + 1 < len(siblings) else None
            places[pk] = (position + 1, len(siblings), before, after)
        wanted = set(ids) | {p for _, _, b, a in places.values() for p in (b, a) if p}
        by_pk = {m.pk: m for m in self.messages.filter(pk__in=ids).with_attachments()}
        public = dict(self.messages.filter(pk__in=wanted - set(by_pk)).values_list("pk", "public_id"))
        public.update({pk: m.public_id for pk, m in by_pk.items()})
        messages = []
        for pk in ids:
            message = by_pk[pk]
            index, count, before, after = places[pk]
            message.branch = {
                "index": index,
                "count": count,
                "previous": str(public[before]) if before else None,
                "next": str(public[after]) if after else None,
            }
            messages.append(message)
        if window is not None and window.more_before and messages:
            window.earlier = str(messages[0].public_id)
        return messages

    def _pk_of(self, public_id: uuid.UUID) -> int | None:
        return self.messages.filter(public_id=public_id).values_list("pk", flat=True).first()

    def switch_to(self, message: "Message") -> None:
        """Show the branch through `message`: it and its newest descendants."""
        tree = self._tree()
        children: dict[int, list[int]] = {}
        for pk, parent in tree:
            children.setdefault(parent, []).append(pk)
        leaf = message.pk
        while children.get(leaf):
            leaf = children[leaf][-1]
        self.current_leaf_id = leaf
        Conversation.objects.filter(pk=self.pk).update(current_leaf_id=leaf)

    def on_visible_branch(self, message: "Message") -> bool:
        return message.pk in self.path()

    def api_messages(
        self, before: "Message | None" = None, history: list["Message"] | None = None
    ) -> list[dict[str, Any]]:
        """The history resent upstream each turn, in the API's shape.

        The visible branch only. With `before`, the branch that led to that
        message: the history that was sent when it was written. A caller that
        holds the branch already (a new conversation's first message, with its
        attachments) passes it as `history`.
        """
        turns: list[dict[str, Any]] = []
        if history is None:
            ids = self.path(before.parent_id if before is not None else "current")
            found = self.messages.filter(pk__in=ids).prefetch_related(
                models.Prefetch(
                    "message_attachments",
                    queryset=MessageAttachment.objects.filter(excluded=False).select_related("attachment"),
                    to_attr="sent_attachments",
                )
            )
            by_pk = {m.pk: m for m in found}
            history = [by_pk[pk] for pk in ids]
        with_files: list[int] = []  # turns holding attachments
        for message in history:
            content = message.to_api_content()
            if not content:
                continue
            if turns and turns[-1]["role"] == message.role:
                turns[-1]["content"] = turns[-1]["content"] + content
            else:
                turns.append({"role": message.role, "content": content})
            if message.sent_attachments:
                with_files.append(len(turns) - 1)
        while turns and turns[-1]["role"] == Message.Role.ASSISTANT:
            turns.pop()  # the request must end with the person's turn
        if with_files:
            place_cache_breakpoints(turns, [i for i in with_files if i < len(turns)])
        return turns

    def usage_totals(self) -> dict[str, Any]:
        """Tokens and cost of every answer in this conversation (one query)."""
        rows = (
            self.messages.filter(role=Message.Role.ASSISTANT)
            .values("model")
            .annotate(**{name: models.Sum(name) for name in USAGE_FIELDS})
        )
        totals: dict[str, Any] = {name: 0 for name in USAGE_FIELDS}
        cost, priced = Decimal(0), True
        for row in rows:
            usage = {name: row[name] or 0 for name in USAGE_FIELDS}
            for name in USAGE_FIELDS:
                totals[name] += usage[name]
            row_cost = catalog.cost(row["model"], usage)
            if row_cost is None and any(usage.values()):
                priced = False
            cost += row_cost or 0
        totals["cost"] = format_cost(cost) if priced else None
        return totals

    def exclude_refused_attachments(self, answer: "Message", error_type: str, error: str) -> int:
        """After the API refused a turn because of its files, leave them out of
        the history, or every later request would be refused too."""
        about_files = error_type == "request_too_large" or (
            error_type == "invalid_request_error" and re.search(r"image|document|pdf|media.type|base64", error, re.I)
        )
        if not about_files:
            return 0
        turn = answer.parent if answer.parent_id else None
        if turn is None or turn.role != Message.Role.USER:
            turn = (
                self.messages.filter(role=Message.Role.USER, created_at__lte=answer.created_at)
                .order_by("-created_at", "-pk")
                .first()
            )
        return MessageAttachment.objects.filter(message=turn, excluded=False).update(excluded=True) if turn else 0

    def check_request_size(self, body: dict[str, Any], uses: list["MessageAttachment"] | None = None) -> None:
        """Refuse, before sending, a request the API would refuse for its size or images.

        The whole history is resent each turn, so earlier attachments count too
        (`uses`: the conversation's attachments, when the caller holds them all).
        """
        length, _ = encode_body(body)
        if uses is None:
            uses = list(
                MessageAttachment.objects.filter(message__conversation=self, excluded=False).select_related("attachment")
            )
        images = [u.attachment for u in uses if u.attachment.is_image]
        if length > settings.CHAT_MAX_REQUEST_BYTES:
            largest = sorted({u.attachment for u in uses}, key=lambda a: a.sent_size_bytes, reverse=True)[:3]
            named = ", ".join(f"{a.original_name} ({human_size(a.sent_size_bytes)})" for a in largest)
            raise RequestTooLarge(
                f"Not sent: with its attachments this conversation would be a {human_size(length)} request, "
                f"over the API's {human_size(settings.CHAT_MAX_REQUEST_BYTES)} limit. The largest attachments: {named}. "
                "Remove some attachments from your message, or start a new chat for them."
            )
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise RequestTooLarge(
                f"Not sent: this conversation would send {len(images)} images; the API accepts at most "
                f"{MAX_IMAGES_PER_REQUEST} in one request. Remove some, or start a new chat for them."
            )
        if len(images) > MANY_IMAGES:
            too_big = [a for a in images if max(a.sent_dimensions) > MANY_IMAGES_MAX_SIDE]
            if too_big:
                raise RequestTooLarge(
                    f"Not sent: with more than {MANY_IMAGES} images in a request, each must be at most "
                    f"{MANY_IMAGES_MAX_SIDE}×{MANY_IMAGES_MAX_SIDE} pixels; {too_big[0].original_name} is larger."
                )

    def request_params(self) -> dict[str, Any]:
        """The request's fields other than `messages`, from the saved settings."""
        return self.chat_settings.to_request()

    def request_body(self, history: list["Message"] | None = None) -> dict[str, Any]:
        return {**self.request_params(), "messages": self.api_messages(history=history)}

    def request_body_for(self, answer: "Message") -> dict[str, Any]:
        """The request that produced `answer`, as it was streamed."""
        params = answer.request_params or self.request_params()
        return {**params, "messages": self.api_messages(before=answer), "stream": True}


class Preferences(models.Model):
    """A person's last choices of model and parameters: the defaults of a new chat."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_preferences")
    model = models.CharField(max_length=100)
    params = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "preferences"

    @classmethod
    def remember(cls, user_id: int, chosen: parameters.Settings) -> None:
        cls.objects.update_or_create(user_id=user_id, defaults={"model": chosen.model, "params": chosen.to_params()})


MAX_CACHE_BREAKPOINTS = 4


def place_cache_breakpoints(turns: list[dict[str, Any]], turns_with_files: list[int]) -> None:
    """Mark cached prefixes so that later turns reuse the one holding attachments.

    Breakpoints go on the last block of: the newest user turn (cached for the
    next request), the user turn before it (where the previous request put its
    breakpoint: read back now), and the newest turn holding attachments. At
    most three, under the API's limit of four.
    """
    users = [i for i, turn in enumerate(turns) if turn["role"] == Message.Role.USER]
    chosen = []
    for index in (users[-1:] + users[-2:-1] + turns_with_files[-1:]):
        if index not in chosen:
            chosen.append(index)
    for index in chosen[: MAX_CACHE_BREAKPOINTS - 1]:
        content = turns[index]["content"]
        for position in range(len(content) - 1, -1, -1):
            block = content[position]
            if block.get("type") in ("text", "image", "document") and (block.get("type") != "text" or block.get("text")):
                content[position] = {**block, "cache_control": {"type": "ephemeral"}}
                break


def client_blocks(content: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """An answer's displayable blocks: raw text (for copying) and safe HTML."""
    seconds = (meta or {}).get("thinking_seconds", {})
    blocks = []
    for index, block in enumerate(content):
        kind = block.get("type")
        if kind in ("text", "thinking", "redacted_thinking"):
            text = block.get("text") or block.get("thinking") or ""
            item = {"index": index, "type": kind, "text": text, "html": render_finished(text)}
            if kind == "thinking" and str(index) in seconds:
                item["seconds"] = seconds[str(index)]
            blocks.append(item)
    return blocks


def article_html(client: dict[str, Any]) -> str:
    """A message as the page shows it (templates/conversations/_message.html).

    A finished message looks the same until something in its client data
    changes, so its HTML is kept per process, keyed by that data: reopening a
    long conversation does not render its messages again.
    """
    if client["status"] == Message.Status.STREAMING:
        return render_to_string("conversations/_message.html", {"m": client})
    return _cached_article(json.dumps(client, sort_keys=True, default=str))


@lru_cache(maxsize=4096)
def _cached_article(client_json: str) -> str:
    return render_to_string("conversations/_message.html", {"m": json.loads(client_json)})


def with_articles(messages: list["Message"]) -> list[dict[str, Any]]:
    """Client data of messages, each with its rendered `article`."""
    return [{**client, "article": article_html(client)} for client in (m.to_client() for m in messages)]


def format_cost(value: Decimal | None) -> str | None:
    if value is None:
        return None
    return f"${value:.4f}" if value < 1 else f"${value:.2f}"


def title_from_text(text: str) -> str:
    words = " ".join(text.split())
    if len(words) <= TITLE_LENGTH:
        return words or "New chat"
    cut = words[:TITLE_LENGTH].rsplit(" ", 1)[0] or words[:TITLE_LENGTH]
    return cut + "…"


class MessageQuerySet(models.QuerySet):
    def with_attachments(self) -> "MessageQuerySet":
        """Prefetch each message's attachments (for the page: one query for all)."""
        return self.prefetch_related(
            models.Prefetch(
                "message_attachments",
                queryset=MessageAttachment.objects.select_related("attachment"),
                to_attr="all_attachments",
            )
        )

    def stale_streaming(self, older_than_seconds: float) -> "MessageQuerySet":
        """Answers still marked streaming whose writer has not saved for a while.

        A running generation saves at least every heartbeat interval, so one
        that has been silent for longer than `older_than_seconds` lost its
        process (a crash, a kill, a restart).
        """
        cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
        return self.filter(status=Message.Status.STREAMING, updated_at__lt=cutoff)

    def mark_interrupted(self, older_than_seconds: float, exclude: Iterable[int] = ()) -> list[tuple[str, dict[str, Any]]]:
        """Mark stale streaming answers interrupted, keeping their saved text;
        `exclude` names answers known to be running (the caller's own).

        Returns (group name, message.end event) for each, to tell open pages.
        """
        from .upstream import describe_error

        recovered = []
        stale = self.stale_streaming(older_than_seconds).exclude(pk__in=list(exclude))
        for message in stale.select_related("conversation"):
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
    # The message this one follows: messages form a tree, and an edited
    # question or a regenerated answer is a sibling (a branch), as in Claude's app.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.JSONField(default=list, blank=True)  # the API's content blocks
    # The plain text of the text blocks, kept for full-text search (SQLite FTS5
    # or a PostgreSQL GIN index; see migration 0004).
    search_text = models.TextField(blank=True, default="")
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
    # The request fields other than `messages` that produced this answer (for
    # "Copy as cURL"), and facts about the answer that are not API content,
    # such as how long each thinking block took.
    request_params = models.JSONField(default=dict, blank=True)
    meta = models.JSONField(default=dict, blank=True)
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

    def save(self, *args, **kwargs):
        self.search_text = self.text
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "content" in update_fields:
            kwargs["update_fields"] = {*update_fields, "search_text"}
        super().save(*args, **kwargs)

    @property
    def usage(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in USAGE_FIELDS}

    @property
    def cost(self) -> Decimal | None:
        return catalog.cost(self.model, self.usage) if self.role == Message.Role.ASSISTANT else None

    def set_usage(self, usage: dict[str, Any]) -> None:
        for name, value in valid_usage(usage).items():
            setattr(self, name, value)

    def to_api_content(self) -> list[dict[str, Any]]:
        """Content blocks as they may be sent back upstream.

        Empty text blocks are refused by the API and unsigned (cut-off)
        thinking blocks would be too: both are left out. Finished thinking
        blocks are returned byte for byte as they were received.
        """
        blocks = []
        if self.role == Message.Role.USER:  # images and documents come before the text
            uses = self.sent_attachments if hasattr(self, "sent_attachments") else self.included_attachments()
            blocks = [use.attachment.api_block() for use in uses]
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

    def included_attachments(self) -> list["MessageAttachment"]:
        return list(self.message_attachments.filter(excluded=False).select_related("attachment"))

    def reset_for_retry(self, worker_channel: str = "") -> None:
        """Empty this answer so that a new generation (listening on
        `worker_channel`) writes it again."""
        self.content = []
        self.status = Message.Status.STREAMING
        self.stop_reason = self.stop_sequence = self.error = self.error_type = ""
        self.upstream_id = self.request_id = ""
        self.worker_channel = worker_channel
        self.set_usage({name: 0 for name in USAGE_FIELDS})
        self.completed_at = None
        self.model = self.conversation.model
        self.request_params = self.conversation.request_params()
        self.meta = {}
        self.save()

    def compute_branch(self) -> dict[str, Any]:
        """This message's place among its siblings (one query)."""
        siblings = [
            str(public_id)
            for public_id in Message.objects.filter(conversation_id=self.conversation_id, parent_id=self.parent_id)
            .order_by("created_at", "pk")
            .values_list("public_id", flat=True)
        ]
        position = siblings.index(str(self.public_id)) if str(self.public_id) in siblings else 0
        self.branch = {
            "index": position + 1,
            "count": len(siblings),
            "previous": siblings[position - 1] if position > 0 else None,
            "next": siblings[position + 1] if position + 1 < len(siblings) else None,
        }
        return self.branch

    def end_event(self) -> dict[str, Any]:
        """The `message.end` event for a finished answer (see docs/websocket-protocol.md).

        `article` is the answer rendered by the same template as the page, so a
        live page and a reloaded one show exactly the same thing.
        """
        if not hasattr(self, "branch"):
            self.compute_branch()
        client = self.to_client()
        shared = ("status", "stop_reason", "stop_sequence", "blocks", "usage", "cost", "error", "error_type", "request_id")
        return {
            "event": "message.end",
            "message": client["id"],
            "article": article_html(client),
            **{name: client[name] for name in shared},
        }

    def to_client(self) -> dict[str, Any]:
        """Plain data for the browser (rendered, sanitized HTML; never raw HTML)."""
        return {
            "id": str(self.public_id),
            "role": self.role,
            "status": self.status,
            "blocks": client_blocks(self.content, self.meta) if self.role == Message.Role.ASSISTANT else [],
            "branch": getattr(self, "branch", None),
            "attachments": [
                {**use.attachment.to_client(), "excluded": use.excluded}
                for use in (
                    self.all_attachments if hasattr(self, "all_attachments") else self.message_attachments.select_related("attachment")
                )
            ]
            if self.role == Message.Role.USER
            else [],
            "cost": format_cost(self.cost) if self.role == Message.Role.ASSISTANT else None,
            "stop_sequence": self.stop_sequence,
            "model": self.model,
            "text": self.text,
            "stop_reason": self.stop_reason,
            "usage": self.usage,
            "error": self.error,
            "error_type": self.error_type,
            "request_id": self.request_id,
        }


def attachment_path(attachment: "Attachment", filename: str) -> str:
    """Content-addressed: the same bytes always live at the same path."""
    digest = attachment.sha256
    return f"attachments/{attachment.owner_id}/{digest[:2]}/{digest}{attachment.extension}"


def sent_path(attachment: "Attachment", filename: str) -> str:
    digest = attachment.sha256
    return f"attachments/{attachment.owner_id}/{digest[:2]}/{digest}.sent{attachment.sent_extension}"


class Attachment(models.Model):
    """An uploaded image or PDF, stored once per owner and content.

    `file` is the original (shown and downloaded); `sent_file`, when set, is
    the version sent upstream (an image downscaled to the API's useful size).
    Files go through Django's storage API, so an S3-compatible backend is a
    setting away; they are only ever served by an authenticated view.
    """

    EXTENSIONS = {
        "image/jpeg": ".jpg",
        "image/png": ".png",
        "image/gif": ".gif",
        "image/webp": ".webp",
        "application/pdf": ".pdf",
    }

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments")
    original_name = models.CharField(max_length=255)
    media_type = models.CharField(max_length=100)  # detected from the bytes
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    file = models.FileField(upload_to=attachment_path, max_length=255)
    sent_file = models.FileField(upload_to=sent_path, max_length=255, blank=True)
    sent_media_type = models.CharField(max_length=100, blank=True)
    sent_size = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "sha256"], name="attachment_once_per_owner")]

    def __str__(self) -> str:
        return self.original_name

    @property
    def extension(self) -> str:
        return self.EXTENSIONS.get(self.media_type, "")

    @property
    def sent_extension(self) -> str:
        return self.EXTENSIONS.get(self.sent_media_type or self.media_type, "")

    @property
    def is_image(self) -> bool:
        return self.media_type.startswith("image/")

    @property
    def sent_size_bytes(self) -> int:
        return self.sent_size if self.sent_file else self.size

    @property
    def sent_dimensions(self) -> tuple[int, int]:
        """Width and height of what is sent (the downscaled copy when there is one)."""
        width, height = self.width or 0, self.height or 0
        longest = max(width, height)
        if self.sent_file and longest > 1568:
            return round(width * 1568 / longest), round(height * 1568 / longest)
        return width, height

    def api_block(self) -> dict[str, Any]:
        """An image or document block whose base64 data is read while the request is sent."""
        stored = self.sent_file if self.sent_file else self.file
        data = FileData(lambda: stored.storage.open(stored.name, "rb"), self.sent_size_bytes)
        if self.is_image:
            media_type = self.sent_media_type if self.sent_file else self.media_type
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {
            "type": "document",
            "source": {"type": "base64", "media_type": self.media_type, "data": data},
            "title": self.original_name,
        }

    def to_client(self) -> dict[str, Any]:
        return {
            "id": str(self.public_id),
            "name": self.original_name,
            "media_type": self.media_type,
            "size": self.size,
            "size_text": human_size(self.size),
            "width": self.width,
            "height": self.height,
            "pages": self.page_count,
            "url": reverse("attachment", args=[self.public_id]),
            "is_image": self.is_image,
        }


class MessageAttachment(models.Model):
    """An attachment in a message, in the order the person attached them."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="message_attachments")
    attachment = models.ForeignKey(Attachment, on_delete=models.PROTECT, related_name="uses")
    position = models.PositiveSmallIntegerField(default=0)
    # Left out of the history resent upstream: the API refused the request
    # because of it, and resending it would make every later turn fail too.
    excluded = models.BooleanField(default=False)

    class Meta:
        ordering = ["position", "pk"]
        constraints = [models.UniqueConstraint(fields=["message", "attachment"], name="attachment_once_per_message")]


class Report(models.Model):
    """A person reported an answer from the chat: it flags the conversation for review."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]


class TranscriptView(models.Model):
    """Audit: a staff member opened a conversation's transcript in the admin."""

    viewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    viewer_name = models.CharField(max_length=150)  # kept if the staff account is deleted
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="transcript_views")
    viewed_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-viewed_at"]
        indexes = [models.Index(fields=["conversation", "-viewed_at"], name="audit_conversation_recent")]


@receiver(pre_delete, sender=Conversation)
def _remember_attachments(sender, instance: Conversation, **kwargs) -> None:
    instance._attachment_ids = set(
        MessageAttachment.objects.filter(message__conversation=instance).values_list("attachment_id", flat=True)
    )


@receiver(post_delete, sender=Conversation)
def _delete_unused_attachments(sender, instance: Conversation, **kwargs) -> None:
    """Deleting a conversation frees the files that no other message uses."""
    ids = getattr(instance, "_attachment_ids", set())
    if ids:
        for attachment in Attachment.objects.filter(pk__in=ids, uses__isnull=True):
            attachment.delete()


@receiver(post_delete, sender=Attachment)
def _delete_attachment_files(sender, instance: Attachment, **kwargs) -> None:
    for stored in (instance.file, instance.sent_file):
        if stored:
            stored.storage.delete(stored.name)
