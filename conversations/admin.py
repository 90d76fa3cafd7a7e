"""The admin: staff review conversations, read-only towards what was said.

Reviewers (the "Reviewers" group, see `manage.py create_reviewers_group`) read
everything and change only a conversation's review status and notes. Message
content is never editable, by anyone. Opening a transcript is recorded
(TranscriptView). The logic lives in conversations/review.py.
"""

from __future__ import annotations

import json

from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from . import catalog, review
from .models import Attachment, Conversation, Message, Report, TranscriptView, format_cost

admin.site.site_header = "Claude Chat administration"
admin.site.site_title = "Claude Chat admin"
admin.site.index_title = "Review and administration"
admin.site.enable_nav_sidebar = False  # the room goes to transcripts and wide lists


def transcript_url(conversation_id: int, message_public_id=None) -> str:
    url = reverse("admin:conversations_conversation_change", args=[conversation_id])
    return f"{url}#message-{message_public_id}" if message_public_id else url


def when(value, short: bool = False) -> str:
    """A date and time, compact; in a list this year's dates drop the year."""
    if not value:
        return "—"
    value = timezone.localtime(value)
    if short:
        return date_format(value, "M j, H:i" if value.year == timezone.localdate().year else "M j, Y")
    return date_format(value, "M j, Y, H:i")


def model_name(model_id: str):
    """The model's display name, its id on hover."""
    if not model_id:
        return "—"
    return format_html('<span title="{}">{}</span>', model_id, catalog.rules_for(model_id).display_name)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shown, never added, changed or deleted through the admin."""

    class Media:
        css = {"all": ("css/admin.css",)}

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- filters ------------------------------------------------------------------


class YesNoFilter(admin.SimpleListFilter):
    """A yes/no filter over one condition (an EXISTS on the conversation)."""

    def condition(self):
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(self.condition())
        if self.value() == "no":
            return queryset.filter(~self.condition())
        return queryset


class ReportedFilter(YesNoFilter):
    title = "flagged by a report"
    parameter_name = "reported"

    def condition(self):
        return review.has_reports()


class HasErrorsFilter(YesNoFilter):
    title = "has errors"
    parameter_name = "errors"

    def condition(self):
        return review.has_errors()


class HasAttachmentsFilter(YesNoFilter):
    title = "has attachments"
    parameter_name = "attachments"

    def condition(self):
        return review.has_attachments()


class LastActivityFilter(admin.DateFieldListFilter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "last activity"


# --- conversations --------------------------------------------------------------


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "title_column",
        "owner_column",
        "model_column",
        "message_count",
        "tokens_column",
        "cost_column",
        "last_activity_short",
        "review_column",
    )
    list_display_links = ("title_column",)
    list_filter = (
        "review_status",
        ReportedFilter,
        HasErrorsFilter,
        HasAttachmentsFilter,
        "model",
        ("updated_at", LastActivityFilter),
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    # Message text is searched too: see get_search_results.
    search_fields = ("title", "owner__username", "owner__email")
    search_help_text = "Searches titles, message text, and the owner's username and email."
    list_per_page = 50
    show_full_result_count = False
    actions = ("mark_reviewed", "flag", "export_json")
    view_on_site = False  # the chat page is its owner's alone (404 for staff)
    fieldsets = (
        (None, {"fields": (("owner", "model_column"), ("created", "last_activity"), "usage", "public_id")}),
        ("Settings", {"classes": ("collapse",), "fields": ("request_parameters",)}),
        ("Review", {"fields": ("review_status", "review_notes", "reviewer", "reviewed_when")}),
    )
    # Everything but review_status and review_notes (users with only the view
    # permission see those read-only too).
    readonly_fields = (
        "owner", "model_column", "created", "last_activity", "usage", "public_id", "request_parameters", "reviewer",
        "reviewed_when",
    )

    class Media:
        css = {"all": ("css/code.css", "css/admin.css")}

    def get_queryset(self, request):
        return review.with_review_columns(super().get_queryset(request))

    def get_search_results(self, request, queryset, search_term):
        return review.search_conversations(queryset, search_term), False

    def get_changelist_instance(self, request):
        """Cost of the page's rows from the price table: one query for the page."""
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)  # evaluated once; the template reuses it
        costs = review.costs_for([row.pk for row in rows])
        for row in rows:
            row.review_totals = costs.get(row.pk, review.Totals())
        return changelist

    def has_add_permission(self, request):
        return False  # conversations come from the chat

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        """A superuser deletes a conversation with everything in it, although
        messages, reports and audit entries cannot be deleted one by one."""
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected

    def save_model(self, request, obj, form, change):
        review.save_review(obj, request.user, status_changed="review_status" in form.changed_data)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            if request.method == "GET":
                # The audit: staff opened this transcript.
                review.record_transcript_view(obj, request.user)
            views, view_count = review.recent_views(obj)
            context.update(
                transcript=review.transcript(obj),
                recent_views=views,
                view_count=view_count,
                views_url=reverse("admin:conversations_transcriptview_changelist") + f"?conversation__id__exact={obj.pk}",
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    # columns

    @admin.display(description="title", ordering="title")
    def title_column(self, obj):
        badges = []
        if obj.attachment_count:
            badges.append(("badge", f"{obj.attachment_count} file{'s' if obj.attachment_count != 1 else ''}"))
        if obj.has_errors:
            badges.append(("badge badge-error", "errors"))
        if obj.report_count:
            badges.append(("badge badge-flag", f"{obj.report_count} report{'s' if obj.report_count != 1 else ''}"))
        return format_html(
            "{}{}", obj.display_title, format_html_join("", ' <span class="{}">{}</span>', badges)
        )

    @admin.display(description="owner", ordering="owner__username")
    def owner_column(self, obj):
        url = reverse("admin:conversations_conversation_changelist") + f"?owner__id__exact={obj.owner_id}"
        return format_html('<a href="{}" title="{}">{}</a>', url, obj.owner.email or "", obj.owner.get_username())

    @admin.display(description="model", ordering="model")
    def model_column(self, obj):
        return model_name(obj.model)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return when(obj.created_at)

    @admin.display(description="reviewed by")
    def reviewer(self, obj):
        return obj.reviewed_by.get_username() if obj.reviewed_by else "—"

    @admin.display(description="reviewed at")
    def reviewed_when(self, obj):
        return when(obj.reviewed_at)

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj):
        return obj.message_count

    @admin.display(description="tokens", ordering="token_count")
    def tokens_column(self, obj):
        return f"{obj.token_count:,}"

    @admin.display(description="cost")
    def cost_column(self, obj):
        totals = getattr(obj, "review_totals", None)
        return totals.cost_text if totals is not None and totals.answers else "—"

    @admin.display(description="last activity", ordering="updated_at")
    def last_activity(self, obj):
        return when(obj.updated_at)

    @admin.display(description="last activity", ordering="updated_at")
    def last_activity_short(self, obj):
        return format_html(
            '<time datetime="{}" title="{}">{}</time>',
            obj.updated_at.isoformat(),
            when(obj.updated_at),
            when(obj.updated_at, short=True),
        )

    @admin.display(description="review", ordering="review_status")
    def review_column(self, obj):
        return format_html(
            '<span class="review-status review-{}">{}</span>', obj.review_status, obj.get_review_status_display()
        )

    # read-only fields of the change page

    @admin.display(description="usage")
    def usage(self, obj):
        totals = obj.usage_totals()
        return format_html(
            "{} in · {} out · {} cache write · {} cache read{}",
            f"{totals['input_tokens']:,}",
            f"{totals['output_tokens']:,}",
            f"{totals['cache_creation_input_tokens']:,}",
            f"{totals['cache_read_input_tokens']:,}",
            f" · {totals['cost']}" if totals["cost"] else "",
        )

    @admin.display(description="request parameters")
    def request_parameters(self, obj):
        return format_html(
            '<pre class="review-json">{}</pre>', json.dumps(obj.params or {}, indent=2, ensure_ascii=False)
        )

    # actions

    def _bulk_review(self, request, queryset, status: str) -> int:
        """Set the status and write one history entry per conversation."""
        conversations = list(queryset)
        count = review.set_review_status(queryset, status, request.user)
        LogEntry.objects.log_actions(
            request.user.pk, conversations, CHANGE, change_message=f"Review status set to {status} (bulk action)."
        )
        return count

    @admin.action(description="Mark selected conversations reviewed (OK)", permissions=["change"])
    def mark_reviewed(self, request, queryset):
        count = self._bulk_review(request, queryset, Conversation.ReviewStatus.OK)
        self.message_user(request, f"Marked {count} conversation{'s' if count != 1 else ''} reviewed.")

    @admin.action(description="Flag selected conversations", permissions=["change"])
    def flag(self, request, queryset):
        count = self._bulk_review(request, queryset, Conversation.ReviewStatus.FLAGGED)
        self.message_user(request, f"Flagged {count} conversation{'s' if count != 1 else ''}.")

    @admin.action(description="Export selected conversations as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        return review.export_response(queryset, request)


# --- messages: read-only; reading one opens its conversation's transcript -------


class OpensTranscriptAdmin(ReadOnlyAdmin):
    """A message or report is read in its context: the (audited) transcript."""

    def message_of(self, obj) -> Message:
        raise NotImplementedError

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method != "GET":
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None or not self.has_view_permission(request, obj):
            return super().change_view(request, object_id, form_url, extra_context)
        message = self.message_of(obj)
        return HttpResponseRedirect(transcript_url(message.conversation_id, message.public_id))


@admin.register(Message)
class MessageAdmin(OpensTranscriptAdmin):
    list_display = (
        "excerpt", "conversation_column", "owner", "role", "status", "model_column", "tokens", "cost_column", "created",
    )  # fmt: skip
    list_select_related = ("conversation__owner",)
    ordering = ("-created_at",)
    list_filter = ("role", "status", "model", "created_at")
    search_fields = ("conversation__title", "conversation__owner__username")
    search_help_text = "Searches message text, conversation titles and owners' usernames."
    list_per_page = 50
    show_full_result_count = False

    def message_of(self, obj):
        return obj

    def get_search_results(self, request, queryset, search_term):
        return review.search_messages(queryset, search_term), False

    @admin.display(description="message")
    def excerpt(self, obj):
        return Truncator(obj.text).chars(140) or "—"

    @admin.display(description="model", ordering="model")
    def model_column(self, obj):
        return model_name(obj.model)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return when(obj.created_at, short=True)

    @admin.display(description="conversation", ordering="conversation__title")
    def conversation_column(self, obj):
        return obj.conversation.display_title

    @admin.display(description="owner", ordering="conversation__owner__username")
    def owner(self, obj):
        return obj.conversation.owner.get_username()

    @admin.display(description="tokens")
    def tokens(self, obj):
        return f"{sum(obj.usage.values()):,}" if obj.role == Message.Role.ASSISTANT else ""

    @admin.display(description="cost")
    def cost_column(self, obj):
        return format_cost(obj.cost) or ""


# --- attachments ------------------------------------------------------------------


@admin.register(Attachment)
class AttachmentAdmin(ReadOnlyAdmin):
    list_display = ("preview", "original_name", "owner", "media_type", "size_column", "dimensions", "created_at")
    list_display_links = ("preview", "original_name")
    list_select_related = ("owner",)
    list_filter = ("media_type", "created_at")
    search_fields = ("original_name", "owner__username", "owner__email", "sha256")
    list_per_page = 50
    show_full_result_count = False
    fields = (
        "large_preview", "original_name", "owner", "media_type", "size_column", "dimensions",
        "sha256", "created_at", "used_in",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description="preview")
    def preview(self, obj):
        url = review.attachment_url(obj)
        if obj.is_image:
            return format_html('<img class="attachment-thumb" src="{}?thumb=1" alt="" loading="lazy">', url)
        return mark_safe('<span class="attachment-doc" aria-hidden="true">PDF</span>')

    @admin.display(description="file")
    def large_preview(self, obj):
        url = review.attachment_url(obj)
        if obj.is_image:
            return format_html(
                '<a href="{}"><img class="attachment-large" src="{}" alt="{}"></a>', url, url, obj.original_name
            )
        return format_html('<a href="{}">Open {}</a>', url, obj.original_name)

    @admin.display(description="size", ordering="size")
    def size_column(self, obj):
        return filesizeformat(obj.size)

    @admin.display(description="dimensions")
    def dimensions(self, obj):
        if obj.width and obj.height:
            return f"{obj.width} × {obj.height}"
        if obj.page_count:
            return f"{obj.page_count} page{'s' if obj.page_count != 1 else ''}"
        return ""

    @admin.display(description="used in")
    def used_in(self, obj):
        uses = obj.uses.select_related("message__conversation").order_by("message__created_at")
        links = [
            (transcript_url(use.message.conversation_id, use.message.public_id), use.message.conversation.display_title)
            for use in uses
        ]
        return format_html_join("", '<div><a href="{}">{}</a></div>', links) if links else "—"


# --- reports and the audit ---------------------------------------------------------


@admin.register(Report)
class ReportAdmin(OpensTranscriptAdmin):
    list_display = ("reported", "reporter", "conversation_column", "answer", "reason_column", "review_status")
    list_select_related = ("reporter", "message__conversation")
    list_filter = ("message__conversation__review_status", "created_at")
    search_fields = ("reason", "reporter__username", "message__conversation__title")
    list_per_page = 50
    show_full_result_count = False

    def message_of(self, obj):
        return obj.message

    @admin.display(description="reported", ordering="created_at")
    def reported(self, obj):
        return when(obj.created_at, short=True)

    @admin.display(description="conversation", ordering="message__conversation__title")
    def conversation_column(self, obj):
        return obj.message.conversation.display_title

    @admin.display(description="answer")
    def answer(self, obj):
        return Truncator(obj.message.text).chars(80)

    @admin.display(description="reason")
    def reason_column(self, obj):
        return Truncator(obj.reason).chars(120)

    @admin.display(description="review", ordering="message__conversation__review_status")
    def review_status(self, obj):
        conversation = obj.message.conversation
        return format_html(
            '<span class="review-status review-{}">{}</span>',
            conversation.review_status,
            conversation.get_review_status_display(),
        )


@admin.register(TranscriptView)
class TranscriptViewAdmin(ReadOnlyAdmin):
    """Who opened which transcript, and when: shown, never changed."""

    list_display = ("viewed", "viewer_name", "conversation_column", "owner")
    list_display_links = None
    list_select_related = ("conversation__owner",)
    list_filter = (("viewer", admin.RelatedOnlyFieldListFilter), "viewed_at")
    search_fields = ("viewer_name", "conversation__title", "conversation__owner__username")
    list_per_page = 100
    show_full_result_count = False

    @admin.display(description="viewed", ordering="viewed_at")
    def viewed(self, obj):
        return date_format(timezone.localtime(obj.viewed_at), "M j, Y, H:i:s")

    @admin.display(description="conversation", ordering="conversation__title")
    def conversation_column(self, obj):
        return format_html('<a href="{}">{}</a>', transcript_url(obj.conversation_id), obj.conversation.display_title)

    @admin.display(description="owner", ordering="conversation__owner__username")
    def owner(self, obj):
        return obj.conversation.owner.get_username()
