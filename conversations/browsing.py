"""Browsing past conversations: the sidebar's pages and groups, live updates
to every tab of a person, titles, and export/import in the API's shape."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import attachments, catalog, parameters
from .models import Conversation, Message, MessageAttachment, title_from_text

log = logging.getLogger(__name__)

PAGE_SIZE = 50
PINNED_LIMIT = 100


def user_group(user_id: int) -> str:
    """The channel-layer group of every socket of one person (any conversation)."""
    return f"user-{user_id}"


@dataclass
class SidebarPage:
    groups: list[tuple[str, list[Conversation]]]
    next_cursor: str | None


def group_label(when: datetime, now: datetime) -> str:
    days = (timezone.localdate(now) - timezone.localdate(when)).days
    if days <= 0:
        return "Today"
    if days == 1:
        return "Yesterday"
    if days <= 7:
        return "Previous 7 days"
    if days <= 30:
        return "Previous 30 days"
    return "Older"


def encode_cursor(conversation: Conversation) -> str:
    return f"{conversation.updated_at.isoformat()}|{conversation.pk}"


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    when, _, pk = (cursor or "").partition("|")
    moment = parse_datetime(when) if when else None
    return (moment, int(pk)) if moment and pk.isdigit() else None


def sidebar_page(user, cursor: str | None = None, archived: bool = False) -> SidebarPage:
    """One page of the sidebar, newest activity first: the pinned ones on top of the
    first page, then 50 at a time (keyset pagination: no OFFSET, no bodies loaded)."""
    mine = Conversation.objects.for_user(user).for_sidebar().filter(archived=archived)
    groups: list[tuple[str, list[Conversation]]] = []
    position = decode_cursor(cursor) if cursor else None
    if position is None and not archived:
        pinned = list(mine.filter(pinned=True)[:PINNED_LIMIT])
        if pinned:
            groups.append(("Pinned", pinned))
    rest = mine if archived else mine.filter(pinned=False)
    if position is not None:
        when, pk = position
        rest = rest.filter(updated_at__lte=when).exclude(updated_at=when, pk__gte=pk)
    page = list(rest.order_by("-updated_at", "-pk")[: PAGE_SIZE + 1])
    more = len(page) > PAGE_SIZE
    page = page[:PAGE_SIZE]
    now = timezone.now()
    for conversation in page:
        label = "Archived" if archived else group_label(conversation.updated_at, now)
        if groups and groups[-1][0] == label:
            groups[-1][1].append(conversation)
        else:
            groups.append((label, [conversation]))
    return SidebarPage(groups, encode_cursor(page[-1]) if more else None)


def announce(user_id: int, event: dict[str, Any]) -> None:
    """Tell every open tab of this person (sidebar, header) about a change."""
    async_to_sync(get_channel_layer().group_send)(user_group(user_id), {"type": "chat.event", "payload": event})


def conversation_event(conversation: Conversation, event: str = "conversation.updated") -> dict[str, Any]:
    return {
        "event": event,
        "conversation": {
            "id": str(conversation.public_id),
            "title": conversation.display_title,
            "pinned": conversation.pinned,
            "archived": conversation.archived,
        },
    }


def rename(conversation: Conversation, title: str) -> None:
    title = " ".join(title.split())[:200]
    if not title:
        raise ValueError("A title cannot be empty.")
    Conversation.objects.filter(pk=conversation.pk).update(title=title, title_locked=True)
    conversation.title, conversation.title_locked = title, True


# --- titles ---------------------------------------------------------------------

TITLE_PROMPT = (
    "Write a short title, at most six words, for a conversation that begins with the message below. "
    "Answer with the title only: no quotes, no final full stop.\n\n<message>\n{text}\n</message>"
)


def clean_title(text: str) -> str:
    title = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    quotes = "\"'“”‘’*#_ "
    title = title.strip(quotes).removeprefix("Title:").strip(quotes).rstrip(".").strip(quotes)
    return title[:80]


def title_request(first_message: str) -> dict[str, Any]:
    return {
        "model": settings.CHAT_TITLE_MODEL,
        "max_tokens": 30,
        "messages": [{"role": "user", "content": TITLE_PROMPT.format(text=first_message[:4000])}],
    }


def needs_title(conversation: Conversation) -> str | None:
    """The first message's text when this conversation should get a generated
    title (two queries), else None."""
    if conversation.title_locked:
        return None
    answers = conversation.messages.filter(role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE).count()
    first = conversation.messages.filter(role=Message.Role.USER).order_by("created_at", "pk").first()
    if answers != 1 or first is None:
        return None
    if conversation.title != title_from_text(first.text) and conversation.title:
        return None  # already generated (or set some other way)
    return first.text or conversation.title


def save_generated_title(conversation_pk: int, title: str) -> dict[str, Any] | None:
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().filter(pk=conversation_pk).first()
        if conversation is None or conversation.title_locked or not title:
            return None
        conversation.title = title
        Conversation.objects.filter(pk=conversation.pk).update(title=title)
    return {"owner": conversation.owner_id, "group": conversation.group_name, **conversation_event(conversation)}


# --- export and import ------------------------------------------------------------


def export_json(conversation: Conversation, include_attachments: bool) -> dict[str, Any]:
    """The conversation as a Messages API request body (plus title and metadata):
    importable here, and close to replayable against the API."""
    body = conversation.request_params()
    messages, meta = [], []
    for message in conversation.visible_messages():
        content: list[dict[str, Any]] = []
        files = []
        for use in message.all_attachments if message.role == Message.Role.USER else []:
            attachment = use.attachment
            files.append({"name": attachment.original_name, "media_type": attachment.media_type, "size": attachment.size})
            if include_attachments:
                with attachment.file.open("rb") as handle:
                    data = base64.b64encode(handle.read()).decode()
                kind = "image" if attachment.is_image else "document"
                block = {"type": kind, "source": {"type": "base64", "media_type": attachment.media_type, "data": data}}
                if kind == "document":
                    block["title"] = attachment.original_name
                content.append(block)
        content += [b for b in message.content if b.get("type") in ("text", "thinking", "redacted_thinking")]
        if not content:
            continue
        messages.append({"role": message.role, "content": content})
        meta.append({"created_at": message.created_at.isoformat(), "status": message.status, "attachments": files})
    return {
        **body,
        "messages": messages,
        "title": conversation.display_title,
        "exported_at": timezone.now().isoformat(),
        "messages_meta": meta,
    }


def export_markdown(conversation: Conversation) -> str:
    lines = [f"# {conversation.display_title}", ""]
    for message in conversation.visible_messages():
        speaker = "You" if message.role == Message.Role.USER else "Claude"
        lines.append(f"**{speaker}:**")
        lines.append("")
        for use in getattr(message, "all_attachments", []):
            a = use.attachment
            pages = f", {a.page_count} pages" if a.page_count else ""
            lines.append(f"_Attached: {a.original_name} ({attachments.human_size(a.size)}{pages})_")
            lines.append("")
        if message.text:
            lines += [message.text, ""]
        if message.status in (Message.Status.ERROR, Message.Status.INTERRUPTED):
            lines += [f"_({message.error})_", ""]
    return "\n".join(lines).rstrip() + "\n"


class ImportRefused(Exception):
    """An export that cannot be imported; the text says why."""


def import_json(user, data: Any) -> Conversation:
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list) or not data["messages"]:
        raise ImportRefused("This file is not a conversation export: it has no \"messages\" list.")
    model = data.get("model") if isinstance(data.get("model"), str) and catalog.is_known(data["model"]) else None
    params = {k: v for k, v in data.items() if k in ("max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "thinking")}
    chosen = None
    if model:
        candidate = parameters.Settings.from_params(model, params)
        if candidate.max_tokens is None or parameters.check(candidate, catalog.rules_for(model)):
            candidate = parameters.defaults(catalog.rules_for(model), settings.CHAT_DEFAULT_MAX_TOKENS)
        chosen = candidate
    with transaction.atomic():
        conversation = Conversation.start(user)
        if chosen is not None:
            Conversation.objects.filter(pk=conversation.pk).update(model=chosen.model, params=chosen.to_params())
        for number, turn in enumerate(data["messages"], start=1):
            _import_turn(user, conversation, number, turn)
        title = data.get("title") if isinstance(data.get("title"), str) else ""
        first = conversation.messages.filter(role=Message.Role.USER).order_by("created_at").first()
        conversation.title = (" ".join(title.split())[:200]) or (title_from_text(first.text) if first else "Imported chat")
        Conversation.objects.filter(pk=conversation.pk).update(title=conversation.title, updated_at=timezone.now())
    return conversation


def _import_turn(user, conversation: Conversation, number: int, turn: Any) -> None:
    if not isinstance(turn, dict) or turn.get("role") not in (Message.Role.USER, Message.Role.ASSISTANT):
        raise ImportRefused(f"Message {number} has no role \"user\" or \"assistant\".")
    content = turn.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ImportRefused(f"Message {number} has no content.")
    blocks, files = [], []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            blocks.append({"type": "text", "text": block["text"]})
        elif kind in ("thinking", "redacted_thinking") and turn["role"] == Message.Role.ASSISTANT:
            blocks.append(block)
        elif kind in ("image", "document") and turn["role"] == Message.Role.USER:
            files.append(_import_file(user, number, block))
    message = conversation.messages.create(
        role=turn["role"], content=blocks, status=Message.Status.COMPLETE, parent_id=conversation.current_leaf_id
    )
    conversation.current_leaf = message
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=message)
    MessageAttachment.objects.bulk_create(
        MessageAttachment(message=message, attachment=attachment, position=i) for i, attachment in enumerate(files)
    )


def _import_file(user, number: int, block: dict[str, Any]):
    source = block.get("source") or {}
    if source.get("type") != "base64" or not isinstance(source.get("data"), str):
        raise ImportRefused(
            f"Message {number} refers to an attachment without its data: export it again with attachments included."
        )
    try:
        data = base64.b64decode(source["data"], validate=True)
    except ValueError:
        raise ImportRefused(f"Message {number} has an attachment whose base64 data is damaged.") from None
    name = block.get("title") or ("image" if block.get("type") == "image" else "document")
    try:
        return attachments.store(user, name, ContentFile(data, name=name))
    except attachments.Refused as exc:
        raise ImportRefused(f"Message {number}: {exc}") from None
