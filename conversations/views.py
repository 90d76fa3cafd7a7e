from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from .forms import SignupForm
from .models import Conversation

SIDEBAR_SIZE = 50


def _get_conversation_for_user(request, conversation_id) -> Conversation:
    """Someone else's conversation is a 404, exactly like a missing one."""
    return get_object_or_404(Conversation.objects.for_user(request.user), public_id=conversation_id)


def _chat_context(request, conversation: Conversation | None) -> dict:
    sidebar = Conversation.objects.for_user(request.user).for_sidebar()[:SIDEBAR_SIZE]
    messages = list(conversation.messages.all()) if conversation else []
    return {
        "conversation": conversation,
        "sidebar": sidebar,
        "transcript": [m.to_client() for m in messages],
        "model_name": conversation.model if conversation else settings.CHAT_DEFAULT_MODEL,
        "chat_config": {
            "conversationId": str(conversation.public_id) if conversation else None,
            "wsPath": f"/ws/chat/{conversation.public_id}/" if conversation else "/ws/chat/new/",
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
    """The transcript alone: the page fetches it after a reconnect."""
    conversation = _get_conversation_for_user(request, conversation_id)
    messages = [m.to_client() for m in conversation.messages.all()]
    return render(request, "conversations/_transcript.html", {"transcript": messages})


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
