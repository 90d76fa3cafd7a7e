"""Settings: wiring only. Every value comes from the environment, with safe
embedded defaults (SQLite, in-memory channel layer, local files, demo model)."""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    """Strict: a value that is neither true nor false is a typo, not a guess."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean: use true or false")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name, "")
    items = [item.strip() for item in raw.split(",") if item.strip()]
    return items or default


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY") or "insecure-local-only-" + "set-DJANGO_SECRET_KEY-in-production"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

DATA_DIR = Path(env_str("DATA_DIR") or BASE_DIR / "data").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "conversations",
    "django.contrib.postgres",  # full-text search helpers (used only on PostgreSQL)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "conversations.context_processors.chat",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'chat.sqlite3'}",
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the streaming writer and page readers work at the same time.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Keep connections open. Channels runs every socket's and answer's database
    # call on one thread; opening and closing SQLite there for each call cost
    # eight times the query (bench/load.py). Django advises against persistent
    # connections under ASGI because each HTTP request runs on a thread of its
    # own: for SQLite that costs nothing more than today (a connection per
    # request, closed with its thread), with no server to run out of connections.
    DATABASES["default"]["CONN_MAX_AGE"] = None
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # PostgreSQL: psycopg's connection pool (Django's advice under ASGI) instead of
    # a new connection for every database call.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env_int("DATABASE_POOL_SIZE", 20),
        "timeout": 20,
    }

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # channels_redis blocks 5 s in BZPOPMIN; redis-py 8 gives every connection
            # a 5 s socket timeout by default, which made an idle receive() fail
            # and close quiet sockets: give reads more time than the block.
            # redis-py 8 also caps a pool at 100 connections and fails the 101st
            # at once (MaxConnectionsError): every answer streaming in a process
            # may be publishing at the same moment, so allow many more.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 2000}],
                "capacity": 1500,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "conversations.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1500}}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
# Served straight from static/ by whitenoise's finders: no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG  # pick up edited files while developing
MEDIA_ROOT = DATA_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# The upstream: the same variable names as the official SDKs.
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_AUTH_TOKEN = env_str("ANTHROPIC_AUTH_TOKEN")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"

# The models the app knows: limits, rules and prices ($ per million tokens).
# An operator extends it with CHAT_MODELS_FILE, a JSON object of the same shape
# (entries there replace or add to these). Models that GET /v1/models lists but
# this table does not get CHAT_MODEL_DEFAULTS and no price.
CHAT_MODEL_DEFAULTS = {
    "max_output_tokens": 64000,
    "context_window": 200000,
    "thinking": True,
    "temperature_and_top_p": False,  # newer models refuse both together
    "price": None,
}
CHAT_MODELS = {
    "claude-opus-4-5-20251101": {
        "display_name": "Claude Opus 4.5",
        "max_output_tokens": 64000,
        "context_window": 200000,
        "thinking": True,
        "temperature_and_top_p": False,
        "price": {"input": 5.0, "output": 25.0, "cache_write": 6.25, "cache_read": 0.50},
    },
    "claude-haiku-4-5-20251001": {
        "display_name": "Claude Haiku 4.5",
        "max_output_tokens": 64000,
        "context_window": 200000,
        "thinking": True,
        "temperature_and_top_p": False,
        "price": {"input": 1.0, "output": 5.0, "cache_write": 1.25, "cache_read": 0.10},
    },
    "claude-sonnet-4-20250514": {
        "display_name": "Claude Sonnet 4",
        "max_output_tokens": 64000,
        "context_window": 200000,
        "thinking": True,
        "temperature_and_top_p": True,
        "price": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30},
    },
}
CHAT_MODELS_FILE = env_str("CHAT_MODELS_FILE")
if CHAT_MODELS_FILE:
    import json

    with open(CHAT_MODELS_FILE, encoding="utf-8") as models_file:
        CHAT_MODELS = {**CHAT_MODELS, **json.load(models_file)}
# How long the list from GET /v1/models is kept (seconds).
CHAT_MODEL_LIST_TTL = 3600

CHAT_ALLOW_SIGNUP = env_bool("CHAT_ALLOW_SIGNUP", True)
CHAT_DEFAULT_MODEL = env_str("CHAT_DEFAULT_MODEL") or "claude-opus-4-5-20251101"
CHAT_DEFAULT_MAX_TOKENS = env_int("CHAT_DEFAULT_MAX_TOKENS", 8192)
# Titles are written by a small non-streaming request to a cheap model.
CHAT_TITLE_MODEL = env_str("CHAT_TITLE_MODEL") or "claude-haiku-4-5-20251001"
CHAT_GENERATE_TITLES = env_bool("CHAT_GENERATE_TITLES", True)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 200_000)
# Streaming cadence: new text goes to the sockets as soon as it arrives, at most
# once per CHAT_FLUSH_INTERVAL per answer (one display frame); text arriving
# together leaves in one frame. Re-rendering an answer's unfinished markdown is
# kept to about CHAT_RENDER_BUDGET of one core per process (every flush for a
# few answers, less often for hundreds, at least every CHAT_MAX_RENDER_INTERVAL);
# the text is never held back for it. Running answers are written to the
# database about every CHAT_SAVE_INTERVAL seconds, a tenth of them every tenth
# of it (one database call each time).
CHAT_FLUSH_INTERVAL = 0.016
# Helper processes that render those tails (0: the server process itself).
CHAT_RENDER_PROCESSES = env_int("CHAT_RENDER_PROCESSES", 1)
CHAT_RENDER_BUDGET = 0.1
CHAT_MAX_RENDER_INTERVAL = 2.0
CHAT_SAVE_INTERVAL = 1.0
# Failures before the first byte (connection errors, 408, 409, 429, 5xx) are
# retried this many times, with exponential backoff from this base (seconds).
CHAT_UPSTREAM_MAX_RETRIES = env_int("CHAT_UPSTREAM_MAX_RETRIES", 2)
CHAT_RETRY_BASE_DELAY = 0.5
# The longest silence tolerated inside a stream (seconds). A model that thinks
# for a long time is not a failure: the default matches the SDKs' ten minutes.
CHAT_UPSTREAM_READ_TIMEOUT = float(env_int("CHAT_UPSTREAM_READ_TIMEOUT", 600))
# A running answer is saved at least this often even when nothing arrives, so an
# answer silent for CHAT_STALE_AFTER seconds lost its process: it is marked
# interrupted by the periodic check (every CHAT_SWEEP_INTERVAL seconds).
CHAT_STALE_AFTER = env_int("CHAT_STALE_AFTER", 30)
CHAT_HEARTBEAT_INTERVAL = min(5.0, CHAT_STALE_AFTER / 3)
CHAT_SWEEP_INTERVAL = min(10.0, CHAT_STALE_AFTER / 2)
# The API refuses requests over 32 MB (base64 makes files a third larger).
CHAT_MAX_REQUEST_BYTES = env_int("CHAT_MAX_REQUEST_BYTES", 32 * 1024 * 1024)
# Per-user limits.
CHAT_MAX_CONCURRENT_GENERATIONS = env_int("CHAT_MAX_CONCURRENT_GENERATIONS", 3)
CHAT_MESSAGES_PER_MINUTE = env_int("CHAT_MESSAGES_PER_MINUTE", 20)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"conversations": {"handlers": ["console"], "level": env_str("LOG_LEVEL") or "INFO"}},
}
