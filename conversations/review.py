"""Staff review: what the admin shows and does, reports from the chat, the
transcript audit and the usage report.

The admin (conversations/admin.py) only wires these functions into Django's
ModelAdmin hooks; the two views here are the chat's "Report" button and the
staff usage report at /admin/usage/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import smart_split, unescape_string_literal
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from . import catalog
from .models import (
    USAGE_FIELDS,
    Conversation,
    Message,
    MessageAttachment,
    Report,
    TranscriptView,
    client_blocks,
    format_cost,
)

REASON_MAX_CHARS = 2000
FAILED = (Message.Status.ERROR, Message.Status.INTERRUPTED)
RECENT_VIEWS = 10


# --- searching message text ---------------------------------------------------


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class TextContains(models.Func):
    """True when a text or thinking block of a message contains `term` (any case).

    Only the words people and the model wrote count: not the JSON around them
    (searching "type" or "text" does not match every message), and not JSON
    escapes (SQLite stores "café" as "caf\\u00e9"). One EXISTS over the
    content's blocks, on SQLite and PostgreSQL alike.
    """

    output_field = models.BooleanField()

    def __init__(self, content: str, term: str):
        super().__init__(F(content), Value(f"%{_escape_like(term)}%"))

    def _parts(self, compiler, connection):
        content_sql, content_params = compiler.compile(self.source_expressions[0])
        pattern_sql, pattern_params = compiler.compile(self.source_expressions[1])
        return content_sql, tuple(content_params), pattern_sql, tuple(pattern_params)

    def as_sqlite(self, compiler, connection, **extra_context):
        content, content_params, pattern, pattern_params = self._parts(compiler, connection)
        sql = (
            f"EXISTS (SELECT 1 FROM json_each({content}) AS block WHERE "
            f"COALESCE(json_extract(block.value, '$.text'), json_extract(block.value, '$.thinking')) "
            f"LIKE {pattern} ESCAPE '\\')"
        )
        return sql, content_params + pattern_params

    def as_postgresql(self, compiler, connection, **extra_context):
        content, content_params, pattern, pattern_params = self._parts(compiler, connection)
        sql = (
            f"EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({content}) = 'array' "
            f"THEN {content} ELSE '[]'::jsonb END) AS block(value) WHERE "
            f"COALESCE(block.value ->> 'text', block.value ->> 'thinking') ILIKE {pattern})"
        )
        return sql, content_params + content_params + pattern_params

    def as_sql(self, compiler, connection, **extra_context):
        # Other databases: the JSON as text (keys and escapes included).
        content, content_params, pattern, pattern_params = self._parts(compiler, connection)
        return f"UPPER(CAST({content} AS TEXT)) LIKE UPPER({pattern})", content_params + pattern_params


def search_terms(search_term: str) -> list[str]:
    """Words of a search box, "quoted phrases" kept whole (as the admin splits them)."""
    terms = []
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        if bit:
            terms.append(bit)
    return terms


def search_conversations(queryset, search_term: str):
    """Conversations whose title, owner's username or email, or a message's text
    contains every term. EXISTS, not a join: no duplicate rows, no DISTINCT."""
    for term in search_terms(search_term):
        said = Message.objects.filter(conversation=OuterRef("pk")).filter(TextContains("content", term))
        queryset = queryset.filter(
            Q(title__icontains=term)
            | Q(owner__username__icontains=term)
            | Q(owner__email__icontains=term)
            | Q(Exists(said))
        )
    return queryset


def search_messages(queryset, search_term: str):
    for term in search_terms(search_term):
        queryset = queryset.filter(
            Q(TextContains("content", term))
            | Q(conversation__title__icontains=term)
            | Q(conversation__owner__username__icontains=term)
        )
    return queryset


# --- the conversation list ----------------------------------------------------


def has_errors() -> Exists:
    return Exists(Message.objects.filter(conversation=OuterRef("pk"), status__in=FAILED))


def has_attachments() -> Exists:
    return Exists(MessageAttachment.objects.filter(message__conversation=OuterRef("pk")))


def has_reports() -> Exists:
    return Exists(Report.objects.filter(message__conversation=OuterRef("pk")))


def _count_per_conversation(queryset, path: str, value) -> Coalesce:
    rows = queryset.order_by().values(path).annotate(n=value).values("n")
    return Coalesce(Subquery(rows), Value(0), output_field=models.BigIntegerField())


def with_review_columns(queryset):
    """The list's columns as annotations: a fixed number of queries per page."""
    messages = Message.objects.filter(conversation=OuterRef("pk"))
    tokens = Sum(F("input_tokens") + F("output_tokens") + F("cache_creation_input_tokens") + F("cache_read_input_tokens"))
    return queryset.select_related("owner", "reviewed_by").annotate(
        message_count=_count_per_conversation(messages, "conversation", Count("pk")),
        token_count=_count_per_conversation(messages, "conversation", tokens),
        attachment_count=_count_per_conversation(
            MessageAttachment.objects.filter(message__conversation=OuterRef("pk")), "message__conversation", Count("pk")
        ),
        report_count=_count_per_conversation(
            Report.objects.filter(message__conversation=OuterRef("pk")), "message__conversation", Count("pk")
        ),
        has_errors=has_errors(),
    )


@dataclass
class Totals:
    """Answers, tokens and cost, priced per model with the catalog's table."""

    answers: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    unpriced: bool = False  # some tokens came from a model without a price

    def add(self, row: dict[str, Any]) -> None:
        usage = {name: row.get(name) or 0 for name in USAGE_FIELDS}
        self.answers += row.get("answers") or 0
        for name in USAGE_FIELDS:
            setattr(self, name, getattr(self, name) + usage[name])
        price = catalog.cost(row["model"], usage)
        if price is None:
            self.unpriced = self.unpriced or any(usage.values())
        else:
            self.cost += price

    @property
    def tokens(self) -> int:
        return sum(getattr(self, name) for name in USAGE_FIELDS)

    @property
    def cost_text(self) -> str:
        if self.unpriced and not self.cost:
            return "—"
        return (format_cost(self.cost) or "") + ("*" if self.unpriced else "")


USAGE_SUMS = {name: Sum(name) for name in USAGE_FIELDS}


def costs_for(conversation_ids: list[int]) -> dict[int, Totals]:
    """Totals of the given conversations' answers: one query, however many."""
    rows = (
        Message.objects.filter(conversation_id__in=conversation_ids, role=Message.Role.ASSISTANT)
        .values("conversation_id", "model")
        .annotate(answers=Count("pk"), **USAGE_SUMS)
        .order_by()
    )
    totals: dict[int, Totals] = {}
    for row in rows:
        totals.setdefault(row["conversation_id"], Totals()).add(row)
    return totals


# --- reviewing ----------------------------------------------------------------


def set_review_status(queryset, status: str, reviewer) -> int:
    """Bulk review: the selected conversations get `status`, signed by `reviewer`.
    Only the review fields change (not `updated_at`: the chat's last activity)."""
    return queryset.update(review_status=status, reviewed_by=reviewer, reviewed_at=timezone.now())


def save_review(conversation: Conversation, reviewer, status_changed: bool) -> None:
    """Save a reviewer's edit of status and notes; a new status is signed and dated."""
    if status_changed:
        conversation.reviewed_by = reviewer
        conversation.reviewed_at = timezone.now()
    conversation.save(update_fields=["review_status", "review_notes", "reviewed_by", "reviewed_at"])


def report_answer(message: Message, reporter, reason: str) -> Report:
    """A person reports an answer: recorded, and its conversation flagged for review.

    The previous review no longer holds, so its signature is cleared: a flagged
    conversation with no reviewer is one a report flagged.
    """
    with transaction.atomic():
        report = Report.objects.create(message=message, reporter=reporter, reason=reason)
        Conversation.objects.filter(pk=message.conversation_id).update(
            review_status=Conversation.ReviewStatus.FLAGGED, reviewed_by=None, reviewed_at=None
        )
    return report


def record_transcript_view(conversation: Conversation, viewer) -> TranscriptView:
    return TranscriptView.objects.create(conversation=conversation, viewer=viewer, viewer_name=viewer.get_username())


def recent_views(conversation: Conversation) -> tuple[list[TranscriptView], int]:
    views = conversation.transcript_views.all()
    return list(views[:RECENT_VIEWS]), views.count()


# --- the transcript, as its owner saw it ----------------------------------------


def attachment_url(attachment) -> str:
    return reverse("attachment", args=[attachment.public_id])


def _messages_for_review(conversation: Conversation):
    return conversation.messages.order_by("created_at", "pk").prefetch_related(
        Prefetch(
            "message_attachments",
            queryset=MessageAttachment.objects.select_related("attachment").order_by("position", "pk"),
            to_attr="review_attachments",
        ),
        Prefetch("reports", queryset=Report.objects.select_related("reporter"), to_attr="review_reports"),
    )


def transcript(conversation: Conversation) -> list[dict[str, Any]]:
    """Every message as plain data for the admin's transcript: sanitized HTML
    for answers (the chat's one markdown path), attachments, reports. Three
    queries however long the conversation."""
    entries = []
    for message in _messages_for_review(conversation):
        assistant = message.role == Message.Role.ASSISTANT
        entries.append(
            {
                "id": str(message.public_id),
                "role": message.role,
                "status": message.status,
                "created_at": message.created_at,
                "text": message.text,
                "blocks": client_blocks(message.content, message.meta) if assistant else [],
                "model": message.model,
                "model_name": catalog.rules_for(message.model).display_name if message.model else "",
                "usage": message.usage,
                "cost": format_cost(message.cost) if assistant else None,
                "stop_reason": message.stop_reason,
                "stop_sequence": message.stop_sequence,
                "error": message.error,
                "request_id": message.request_id,
                "attachments": [
                    {
                        "id": str(use.attachment.public_id),
                        "name": use.attachment.original_name,
                        "media_type": use.attachment.media_type,
                        "is_image": use.attachment.is_image,
                        "width": use.attachment.width,
                        "height": use.attachment.height,
                        "pages": use.attachment.page_count,
                        "size": use.attachment.size,
                        "url": attachment_url(use.attachment),
                        "excluded": getattr(use, "excluded", False),
                    }
                    for use in message.review_attachments
                ],
                "reports": message.review_reports,
            }
        )
    return entries


# --- export -------------------------------------------------------------------


def export(queryset, absolute_uri=lambda path: path) -> dict[str, Any]:
    """The conversations in the Messages API's shape (model, params, messages of
    {role, content}, attachments as URL sources) plus who, when and the review.

    `messages_meta[i]` describes `messages[i]`: ids, status, usage, cost.
    """
    conversations = (
        queryset.select_related("owner", "reviewed_by")
        .prefetch_related(
            Prefetch(
                "messages",
                queryset=Message.objects.order_by("created_at", "pk").prefetch_related(
                    Prefetch(
                        "message_attachments",
                        queryset=MessageAttachment.objects.select_related("attachment"),
                        to_attr="review_attachments",
                    ),
                    Prefetch("reports", queryset=Report.objects.select_related("reporter"), to_attr="review_reports"),
                ),
            )
        )
        .order_by("-updated_at")
    )
    out = []
    for conversation in conversations:
        messages, meta = [], []
        for message in conversation.messages.all():
            files = [
                {
                    "type": "image" if use.attachment.is_image else "document",
                    "source": {"type": "url", "url": absolute_uri(attachment_url(use.attachment))},
                    **({} if use.attachment.is_image else {"title": use.attachment.original_name}),
                }
                for use in message.review_attachments
            ]
            messages.append({"role": message.role, "content": files + list(message.content)})
            meta.append(
                {
                    "id": str(message.public_id),
                    "created_at": message.created_at,
                    "status": message.status,
                    "model": message.model,
                    "stop_reason": message.stop_reason,
                    "usage": message.usage,
                    "cost": format_cost(message.cost),
                    "error": message.error,
                    "attachments": [
                        {"id": str(use.attachment.public_id), "name": use.attachment.original_name,
                         "media_type": use.attachment.media_type, "size": use.attachment.size}
                        for use in message.review_attachments
                    ],  # fmt: skip
                    "reports": [
                        {"reporter": r.reporter.get_username(), "reason": r.reason, "created_at": r.created_at}
                        for r in message.review_reports
                    ],
                }
            )
        out.append(
            {
                "id": str(conversation.public_id),
                "title": conversation.title,
                "owner": {"username": conversation.owner.get_username(), "email": conversation.owner.email},
                "created_at": conversation.created_at,
                "updated_at": conversation.updated_at,
                "review": {
                    "status": conversation.review_status,
                    "notes": conversation.review_notes,
                    "reviewed_by": conversation.reviewed_by.get_username() if conversation.reviewed_by else None,
                    "reviewed_at": conversation.reviewed_at,
                },
                "model": conversation.model,
                "params": conversation.params,
                "messages": messages,
                "messages_meta": meta,
            }
        )
    return {"exported_at": timezone.now(), "conversations": out}


def export_response(queryset, request) -> HttpResponse:
    """The export as a download; exporting a transcript counts as opening it (audited)."""
    data = export(queryset, absolute_uri=request.build_absolute_uri)
    ids = [row["id"] for row in data["conversations"]]
    TranscriptView.objects.bulk_create(
        TranscriptView(conversation_id=pk, viewer=request.user, viewer_name=request.user.get_username())
        for pk in Conversation.objects.filter(public_id__in=ids).values_list("pk", flat=True)
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = HttpResponse(
        json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False, indent=2),
        content_type="application/json; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.json"'
    return response


# --- reporting an answer from the chat ------------------------------------------


@login_required
@require_POST
def report_message(request, message_id):
    """The chat's "Report": the owner says why an answer is wrong or harmful."""
    message = get_object_or_404(
        Message.objects.select_related("conversation"),
        public_id=message_id,
        role=Message.Role.ASSISTANT,
        conversation__owner=request.user,
    )
    reason = (request.POST.get("reason") or "").strip()
    if not reason:
        return JsonResponse({"ok": False, "error": "Say why you are reporting this answer."}, status=400)
    if len(reason) > REASON_MAX_CHARS:
        return JsonResponse(
            {"ok": False, "error": f"The reason is too long: at most {REASON_MAX_CHARS:,} characters."}, status=400
        )
    report_answer(message, request.user, reason)
    return JsonResponse({"ok": True, "message": "Reported. Thank you."})


# --- the usage report ---------------------------------------------------------

DEFAULT_DAYS = 30
MAX_DAYS = 366


class UsageRangeForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        end = data.get("end") or timezone.localdate()
        start = data.get("start") or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise forms.ValidationError("The start date is after the end date.")
        if (end - start).days + 1 > MAX_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_DAYS} days.")
        data["start"], data["end"] = start, end
        return data


def usage_report(start: date, end: date) -> dict[str, Any]:
    """Tokens and cost of the answers written from `start` to `end` (inclusive,
    server time): per person, per model and per day. Two queries."""
    since = timezone.make_aware(datetime.combine(start, time.min))
    until = timezone.make_aware(datetime.combine(end + timedelta(days=1), time.min))
    answers = Message.objects.filter(role=Message.Role.ASSISTANT, created_at__gte=since, created_at__lt=until)

    per_owner_model = (
        answers.values("conversation__owner_id", "conversation__owner__username", "conversation__owner__email", "model")
        .annotate(answers=Count("pk"), **USAGE_SUMS)
        .order_by()
    )
    users: dict[int, dict[str, Any]] = {}
    by_model: dict[str, Totals] = {}
    total = Totals()
    for row in per_owner_model:
        user = users.setdefault(
            row["conversation__owner_id"],
            {
                "id": row["conversation__owner_id"],
                "username": row["conversation__owner__username"],
                "email": row["conversation__owner__email"],
                "totals": Totals(),
            },
        )
        user["totals"].add(row)
        by_model.setdefault(row["model"], Totals()).add(row)
        total.add(row)

    per_day_model = (
        answers.annotate(day=TruncDate("created_at"))
        .values("day", "model")
        .annotate(answers=Count("pk"), **USAGE_SUMS)
        .order_by()
    )
    days = {start + timedelta(days=n): Totals() for n in range((end - start).days + 1)}
    for row in per_day_model:
        if row["day"] in days:
            days[row["day"]].add(row)

    def by_cost(item):
        return (-item.cost, -item.tokens)

    return {
        "start": start,
        "end": end,
        "total": total,
        "users": sorted(users.values(), key=lambda u: (by_cost(u["totals"]), u["username"])),
        "models": [
            {"id": model or "—", "name": catalog.rules_for(model).display_name if model else "—", "totals": totals}
            for model, totals in sorted(by_model.items(), key=lambda item: (by_cost(item[1]), item[0]))
        ],
        "days": [{"day": day, "totals": totals} for day, totals in days.items()],
        "chart": bar_chart(days),
    }


CHART_WIDTH, CHART_HEIGHT = 720, 220
CHART_LEFT, CHART_BOTTOM, CHART_TOP = 64, 28, 12
CHART_LABELS = 7


def _nice_ceiling(value: float) -> float:
    """1, 2 or 5 times a power of ten, at least `value`: round axis labels."""
    if value <= 0:
        return 1.0
    power = 10 ** int(f"{value:e}".split("e")[1])
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def bar_chart(days: dict[date, Totals]) -> dict[str, Any] | None:
    """Geometry of an inline SVG bar chart of daily cost (or tokens when no
    answer has a price). None when nothing was used."""
    if not any(t.tokens for t in days.values()):
        return None
    use_cost = any(t.cost for t in days.values())
    values = [float(t.cost) if use_cost else t.tokens for t in days.values()]
    top = _nice_ceiling(max(values))
    plot_w = CHART_WIDTH - CHART_LEFT - 8
    plot_h = CHART_HEIGHT - CHART_BOTTOM - CHART_TOP
    slot = plot_w / len(values)
    bar_w = max(1.0, slot * 0.7)

    def label(value: float) -> str:
        if use_cost:
            return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"
        return f"{value:,.0f}"

    bars = []
    for n, ((day, totals), value) in enumerate(zip(days.items(), values)):
        height = plot_h * value / top
        bars.append(
            {
                "x": round(CHART_LEFT + n * slot + (slot - bar_w) / 2, 2),
                "y": round(CHART_TOP + plot_h - height, 2),
                "width": round(bar_w, 2),
                "height": round(height, 2),
                "title": f"{day:%b} {day.day}: {label(value)} ({totals.tokens:,} tokens, {totals.answers} answers)",
            }
        )
    every = max(1, -(-len(values) // CHART_LABELS))
    x_labels = [
        {"x": round(CHART_LEFT + n * slot + slot / 2, 2), "text": f"{day:%b} {day.day}"}
        for n, day in enumerate(days)
        if n % every == 0
    ]
    y_labels = [
        {"y": round(CHART_TOP + plot_h - plot_h * fraction, 2), "text": label(top * fraction)}
        for fraction in (0, 0.5, 1)
    ]
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_LEFT,
        "right": CHART_WIDTH - 8,
        "bottom": CHART_TOP + plot_h,
        "label_y": CHART_HEIGHT - 8,
        "metric": "cost" if use_cost else "tokens",
        "bars": bars,
        "x_labels": x_labels,
        "y_labels": y_labels,
    }


@staff_member_required
@never_cache
def usage_report_view(request):
    """Staff only: tokens and cost per person and per model over a date range."""
    form = UsageRangeForm(request.GET)
    if form.is_valid():
        start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    else:
        end = timezone.localdate()
        start = end - timedelta(days=DEFAULT_DAYS - 1)
    today = timezone.localdate()
    presets = [
        {"label": f"Last {days} days", "start": today - timedelta(days=days - 1), "end": today} for days in (7, 30, 90)
    ] + [{"label": "This month", "start": today.replace(day=1), "end": today}]
    context = {
        **admin.site.each_context(request),
        "title": "Usage report",
        "form": form,
        "presets": presets,
        "report": usage_report(start, end),
        "tz_name": timezone.get_current_timezone_name(),
        "conversation_list_url": reverse("admin:conversations_conversation_changelist"),
    }
    return render(request, "conversations/usage_report.html", context)
