from django.conf import settings


def chat(request):
    return {
        "demo_mode": not (settings.ANTHROPIC_API_KEY or settings.ANTHROPIC_AUTH_TOKEN),
        "allow_signup": settings.CHAT_ALLOW_SIGNUP,
    }
