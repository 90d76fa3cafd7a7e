import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware  # noqa: E402

from conversations.routing import websocket_urlpatterns  # noqa: E402


class WebsocketSessionMiddleware(SessionMiddleware):
    """channels' SessionMiddleware without its wrapper around `send`: that
    wrapper saves a changed session on an HTTP response, which a websocket
    never sends, yet it inspected the session on every frame of every
    streamed answer. The session is loaded from the cookie as before."""

    async def __call__(self, scope, receive, send):
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            CookieMiddleware(WebsocketSessionMiddleware(AuthMiddleware(URLRouter(websocket_urlpatterns))))
        ),
    }
)

# What is loaded by now (Django, the app, their modules) lives as long as the
# process. Freezing it keeps the garbage collector's full passes to what was
# made later: they walked all of it and stopped the event loop for 60 to 80 ms,
# every stream at once (bench/load.py, 100 streams; 12 ms frozen).
gc.collect()
gc.freeze()
