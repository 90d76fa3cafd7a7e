"""Full-text search over a person's conversation titles and message text.

No search server: SQLite's FTS5 on the embedded default, PostgreSQL's text
search with GIN indexes when DATABASE_URL points there (migration 0004 builds
both). Snippets come back with the matches marked; the text around them is
escaped here, because message text is untrusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchVector
from django.db import connection
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .models import Conversation, Message

START, STOP = "\x01", "\x02"  # match markers: control characters never typed in a query
MAX_RESULTS = 30


@dataclass
class Hit:
    conversation_id: str
    title: str
    message_id: str | None
    snippet: SafeString
    archived: bool

    @property
    def url(self) -> str:
        url = f"/c/{self.conversation_id}/"
        return f"{url}?m={self.message_id}#m-{self.message_id}" if self.message_id else url


def terms(query: str) -> list[str]:
    return re.findall(r"\w+", query.lower())[:12]


def highlight(text: str) -> SafeString:
    """Escape everything, then turn the markers into <mark>."""
    safe = escape(" ".join(text.split()))
    return mark_safe(safe.replace(START, "<mark>").replace(STOP, "</mark>"))


def search(user, query: str, limit: int = MAX_RESULTS) -> list[Hit]:
    """Message hits first (they open at the message); a title hit only for a
    conversation that has no message hit."""
    words = terms(query)
    if not words:
        return []
    if connection.vendor == "sqlite":
        hits = _sqlite(user, words, limit)
    elif connection.vendor == "postgresql":
        hits = _postgres(user, words, limit)
    else:
        hits = _fallback(user, words, limit)
    in_messages = {h.conversation_id for h in hits if h.message_id}
    messages = [h for h in hits if h.message_id]
    titles = [h for h in hits if not h.message_id and h.conversation_id not in in_messages]
    return (messages + titles)[:limit]


def _sqlite(user, words: list[str], limit: int) -> list[Hit]:
    match = " AND ".join(f'"{w}"*' for w in words)  # every word, each as a prefix
    hits: list[Hit] = []
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.public_id, c.title, c.archived, highlight(conversations_conversation_fts, 0, %s, %s)
            FROM conversations_conversation_fts f JOIN conversations_conversation c ON c.id = f.rowid
            WHERE conversations_conversation_fts MATCH %s AND c.owner_id = %s
            ORDER BY f.rank LIMIT %s
            """,
            [START, STOP, match, user.pk, limit],
        )
        for public_id, title, archived, marked in cursor.fetchall():
            hits.append(Hit(_uuid(public_id), title, None, highlight(marked), bool(archived)))
        cursor.execute(
            """
            SELECT c.public_id, c.title, c.archived, m.public_id,
                   snippet(conversations_message_fts, 0, %s, %s, '…', 16)
            FROM conversations_message_fts f
            JOIN conversations_message m ON m.id = f.rowid
            JOIN conversations_conversation c ON c.id = m.conversation_id
            WHERE conversations_message_fts MATCH %s AND c.owner_id = %s
            ORDER BY f.rank LIMIT %s
            """,
            [START, STOP, match, user.pk, limit],
        )
        for public_id, title, archived, message_id, marked in cursor.fetchall():
            hits.append(Hit(_uuid(public_id), title, _uuid(message_id), highlight(marked), bool(archived)))
    return hits


def _uuid(value) -> str:
    text = str(value).replace("-", "")
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _tsquery(words: list[str]) -> SearchQuery:
    return SearchQuery(" & ".join(f"{w}:*" for w in words), search_type="raw", config="english")


def _postgres(user, words: list[str], limit: int) -> list[Hit]:
    query = _tsquery(words)
    hits: list[Hit] = []
    titles = (
        Conversation.objects.for_user(user)
        .annotate(document=SearchVector("title", config="english"))
        .filter(document=query)
        .annotate(marked=SearchHeadline("title", query, config="english", start_sel=START, stop_sel=STOP))
        .order_by("-updated_at")
        .values_list("public_id", "title", "archived", "marked")[:limit]
    )
    for public_id, title, archived, marked in titles:
        hits.append(Hit(str(public_id), title, None, highlight(marked), archived))
    messages = (
        Message.objects.filter(conversation__owner=user)
        .annotate(document=SearchVector("search_text", config="english"))
        .filter(document=query)
        .annotate(
            marked=SearchHeadline(
                "search_text", query, config="english", start_sel=START, stop_sel=STOP, max_words=24, min_words=10
            )
        )
        .order_by("-created_at")
        .values_list("conversation__public_id", "conversation__title", "conversation__archived", "public_id", "marked")[
            :limit
        ]
    )
    for public_id, title, archived, message_id, marked in messages:
        hits.append(Hit(str(public_id), title, str(message_id), highlight(marked), archived))
    return hits


def _fallback(user, words: list[str], limit: int) -> list[Hit]:
    found = Message.objects.filter(conversation__owner=user)
    for word in words:
        found = found.filter(search_text__icontains=word)
    return [
        Hit(str(m.conversation.public_id), m.conversation.title, str(m.public_id), highlight(m.search_text[:200]), m.conversation.archived)
        for m in found.select_related("conversation")[:limit]
    ]
