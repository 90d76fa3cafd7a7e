import json
import uuid

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods, require_POST

from . import attachments, browsing, catalog, parameters
from .curl import curl_command
from .forms import SignupForm
from .search import search as search_conversations
from .models import Attachment, Conversation, Message, Preferences, TranscriptWindow, with_articles

def _get_conversation_for_user(request, conversation_id) -> Conversation:
    """Someone else's conversation is a 404, exactly like a missing one."""
    return get_object_or_404(Conversation.objects.for_user(request.user), public_id=conversation_id)


def _new_chat_settings(user) -> parameters.Settings:
    prefs = Preferences.objects.filter(user=user).first()
    if prefs is not None:
        return parameters.Settings.from_params(prefs.model, prefs.params)
    rules = catalog.rules_for(settings.CHAT_DEFAULT_MODEL)
    return parameters.defaults(rules, settings.CHAT_DEFAULT_MAX_TOKENS)


def _message_id(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _chat_context(request, conversation: Conversation | None) -> dict:
    sidebar = browsing.sidebar_page(request.user, archived=False)
    window = TranscriptWindow(at=_message_id(request.GET.get("m")))
    if conversation is not None and window.at is not None:
        target = conversation.messages.filter(public_id=window.at).first()
        if target is not None and not conversation.on_visible_branch(target):
            conversation.switch_to(target)  # a search hit on another version: show that one
    messages = conversation.visible_messages(window) if conversation else []
    chosen = conversation.chat_settings if conversation else _new_chat_settings(request.user)
    models = catalog.available_models()
    if not any(m["id"] == chosen.model for m in models):
        models = [{"id": chosen.model, "display_name": catalog.rules_for(chosen.model).display_name}, *models]
    rules = {m["id"]: catalog.rules_for(m["id"]) for m in models}
    return {
        "conversation": conversation,
        "page": sidebar,
        "current_id": str(conversation.public_id) if conversation else "",
        "transcript": with_articles(messages),
        "earlier": window.earlier,
        "model_name": rules[chosen.model].display_name,
        "models": models,
        "form": chosen.to_form(),
        "totals": conversation.usage_totals() if conversation else None,
        "chat_config": {
            "conversationId": str(conversation.public_id) if conversation else None,
            "wsPath": f"/ws/chat/{conversation.public_id}/" if conversation else "/ws/chat/new/",
            "models": {
                mid: {
                    "name": r.display_name,
                    "maxOutput": r.max_output_tokens,
                    "thinking": r.thinking,
                    "temperatureAndTopP": r.temperature_and_top_p,
                }
                for mid, r in rules.items()
            },
        },
    }


@login_required
def home(request):
    return render(request, "conversations/chat.html", _chat_context(request, None))


@login_required
def conversation(request, conversation_id):
    conversation = _get_conversation_for_user(request, conversation_id)
    return render(request, "conversations/chat.html", _chat_context(request, conversation))


@login_required
def transcript(request, conversation_id):
    """The transcript alone: after a reconnect (the end of the branch), or
    `?before=<message id>` for the page of messages before that one."""
    conversation = _get_conversation_for_user(request, conversation_id)
    window = TranscriptWindow(before=_message_id(request.GET.get("before")))
    messages = with_articles(conversation.visible_messages(window))
    return render(request, "conversations/_transcript.html", {"transcript": messages, "earlier": window.earlier})


@require_http_methods(["GET", "POST"])
def signup(request):
    if not settings.CHAT_ALLOW_SIGNUP:
        raise Http404("Sign-up is closed on this server.")
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@require_http_methods(["GET", "POST"])
def logout_view(request):
    if request.method == "POST":
        logout(request)
        return redirect(settings.LOGOUT_REDIRECT_URL)
    return render(request, "registration/logout.html")


@login_required
@require_POST
def save_settings(request):
    """Validate the settings panel and save it (to the conversation, and as the
    person's defaults). Answers {ok, errors: {field: sentence}, settings}."""
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"ok": False, "errors": {"form": "The settings could not be read."}}, status=400)
    raw = payload.get("settings") if isinstance(payload, dict) else None
    conversation = None
    if payload.get("conversation"):
        conversation = _get_conversation_for_user(request, payload["conversation"])
    if not isinstance(raw, dict):
        return JsonResponse({"ok": False, "errors": {"form": "The settings could not be read."}}, status=400)
    try:
        chosen = catalog.parse_settings(raw)
    except parameters.Invalid as exc:
        return JsonResponse({"ok": False, "errors": exc.errors}, status=400)
    if conversation is not None:
        conversation.apply_settings(chosen)
    else:
        Preferences.remember(request.user.pk, chosen)
    return JsonResponse({"ok": True, "errors": {}, "settings": chosen.to_form()})


@login_required
def copy_as_curl(request, conversation_id, message_id):
    """The exact request that produced an answer, as a curl command."""
    conversation = _get_conversation_for_user(request, conversation_id)
    message = get_object_or_404(conversation.messages, public_id=message_id, role=Message.Role.ASSISTANT)
    command = curl_command(
        conversation.request_body_for(message),
        base_url=settings.ANTHROPIC_BASE_URL,
        bearer=bool(settings.ANTHROPIC_AUTH_TOKEN) and not settings.ANTHROPIC_API_KEY,
        include_attachments=request.GET.get("attachments") == "1",
    )
    return HttpResponse(command, content_type="text/plain; charset=utf-8")


@login_required
@require_POST
def upload_attachment(request):
    """One file from the composer (multipart, CSRF-protected): stored, or refused
    with a sentence naming the file and the reason."""
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"ok": False, "error": "No file arrived: attach it again."}, status=400)
    try:
        attachment = attachments.store(request.user, upload.name, upload)
    except attachments.Refused as exc:
        return JsonResponse({"ok": False, "error": str(exc)}, status=400)
    return JsonResponse({"ok": True, "attachment": attachment.to_client()})


@login_required
@require_http_methods(["GET", "HEAD"])
def attachment_file(request, attachment_id):
    """An attachment, to its owner and to staff only; anyone else gets 404.

    `?thumb=1` serves the smaller copy made for the API when there is one.
    """
    found = Attachment.objects.filter(public_id=attachment_id)
    if not request.user.is_staff:
        found = found.filter(owner=request.user)
    attachment = get_object_or_404(found)
    stored = attachment.sent_file if request.GET.get("thumb") and attachment.sent_file else attachment.file
    media_type = attachment.sent_media_type if stored is attachment.sent_file else attachment.media_type
    response = FileResponse(
        stored.storage.open(stored.name, "rb"),
        content_type=media_type,
        as_attachment=request.GET.get("download") == "1",
        filename=attachment.original_name,
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    if attachment.is_image:
        response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    return response


@login_required
def conversation_list(request):
    """A page of the sidebar (HTML items): ?cursor= for the next page, ?archived=1."""
    archived = request.GET.get("archived") == "1"
    page = browsing.sidebar_page(request.user, request.GET.get("cursor"), archived=archived)
    current = request.GET.get("current", "")
    return render(request, "conversations/_sidebar_items.html", {"page": page, "current_id": current, "archived": archived})


@login_required
def search(request):
    query = request.GET.get("q", "")
    return render(request, "conversations/_search_results.html", {"hits": search_conversations(request.user, query), "query": query})


@login_required
@require_POST
def conversation_action(request, conversation_id):
    """Rename, pin, unpin, archive, unarchive or delete; every tab of the owner hears of it."""
    conversation = _get_conversation_for_user(request, conversation_id)
    action = request.POST.get("action")
    if action == "rename":
        try:
            browsing.rename(conversation, request.POST.get("title", ""))
        except ValueError as exc:
            return JsonResponse({"ok": False, "error": str(exc)}, status=400)
    elif action in ("pin", "unpin"):
        conversation.pinned = action == "pin"
        Conversation.objects.filter(pk=conversation.pk).update(pinned=conversation.pinned)
    elif action in ("archive", "unarchive"):
        conversation.archived = action == "archive"
        Conversation.objects.filter(pk=conversation.pk).update(archived=conversation.archived)
    elif action == "delete":
        event = browsing.conversation_event(conversation, "conversation.deleted")
        conversation.delete()
        browsing.announce(request.user.pk, event)
        return JsonResponse({"ok": True, "deleted": True, "url": "/"})
    else:
        return JsonResponse({"ok": False, "error": "Unknown action."}, status=400)
    event = browsing.conversation_event(conversation)
    browsing.announce(request.user.pk, event)
    return JsonResponse({"ok": True, **event})


@login_required
def export_conversation(request, conversation_id, fmt):
    conversation = _get_conversation_for_user(request, conversation_id)
    if fmt not in ("md", "json"):
        raise Http404("Exports are .md or .json.")
    stem = slugify(conversation.display_title)[:60] or "conversation"
    if fmt == "md":
        response = HttpResponse(browsing.export_markdown(conversation), content_type="text/markdown; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{stem}.md"'
        return response
    data = browsing.export_json(conversation, include_attachments=request.GET.get("attachments") == "1")
    response = HttpResponse(json.dumps(data, indent=2, ensure_ascii=False), content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{stem}.json"'
    return response


@login_required
@require_POST
def import_conversation(request):
    """A JSON export (ours, or any Messages API body) becomes a new conversation."""
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"ok": False, "error": "Choose a JSON export to import."}, status=400)
    if upload.size > 64 * 1024 * 1024:
        return JsonResponse({"ok": False, "error": f"{upload.name} is larger than 64 MB."}, status=400)
    try:
        data = json.loads(upload.read())
    except (ValueError, UnicodeDecodeError):
        return JsonResponse({"ok": False, "error": f"{upload.name} is not a JSON file."}, status=400)
    try:
        conversation = browsing.import_json(request.user, data)
    except browsing.ImportRefused as exc:
        return JsonResponse({"ok": False, "error": f"{upload.name} was not imported: {exc}"}, status=400)
    browsing.announce(request.user.pk, browsing.conversation_event(conversation, "conversation.added"))
    return JsonResponse({"ok": True, "url": conversation.get_absolute_url()})
