"""Which models can be chosen, and each one's limits, rules and prices.

The table is `settings.CHAT_MODELS` (operator-extendable); the list offered in
the "Model" box comes from the upstream's `GET /v1/models` when it answers,
cached, with the table as the fallback.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import httpx
from django.conf import settings
from django.core.cache import cache

from . import parameters
from .parameters import ModelRules
from .upstream import UpstreamConfig

log = logging.getLogger(__name__)

CACHE_KEY = "chat:model-list"
FAILURE_TTL = 300  # an upstream without /v1/models is asked again after 5 minutes


def upstream_config() -> UpstreamConfig:
    return UpstreamConfig(
        base_url=settings.ANTHROPIC_BASE_URL,
        api_key=settings.ANTHROPIC_API_KEY,
        auth_token=settings.ANTHROPIC_AUTH_TOKEN,
        timeout=httpx.Timeout(connect=10.0, read=settings.CHAT_UPSTREAM_READ_TIMEOUT, write=60.0, pool=30.0),
    )


def rules_for(model_id: str) -> ModelRules:
    entry = {**settings.CHAT_MODEL_DEFAULTS, **settings.CHAT_MODELS.get(model_id, {})}
    return ModelRules(
        id=model_id,
        display_name=entry.get("display_name") or model_id,
        max_output_tokens=int(entry["max_output_tokens"]),
        context_window=int(entry["context_window"]),
        thinking=bool(entry["thinking"]),
        temperature_and_top_p=bool(entry["temperature_and_top_p"]),
        price=entry.get("price"),
    )


def _fetch_model_list(config: UpstreamConfig) -> list[dict[str, str]]:
    url = config.base_url.rstrip("/") + "/v1/models"
    headers = {k: v for k, v in config.headers().items() if k != "content-type"}
    response = httpx.get(url, params={"limit": 1000}, headers=headers, timeout=5.0)
    response.raise_for_status()
    return [
        {"id": m["id"], "display_name": m.get("display_name") or m["id"]}
        for m in response.json().get("data", [])
        if isinstance(m, dict) and m.get("id")
    ]


def available_models() -> list[dict[str, str]]:
    """[{id, display_name}]: the upstream's list when it has one, else the table."""
    config = upstream_config()
    listed = None
    if not config.is_demo:
        key = f"{CACHE_KEY}:{config.base_url}"
        listed = cache.get(key)
        if listed is None:
            try:
                listed = _fetch_model_list(config)
                cache.set(key, listed, settings.CHAT_MODEL_LIST_TTL)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.info("GET /v1/models failed (%s); using the model table", exc)
                listed = []
                cache.set(key, listed, FAILURE_TTL)
    if not listed:
        listed = [{"id": mid, "display_name": rules_for(mid).display_name} for mid in settings.CHAT_MODELS]
    return listed


def is_known(model_id: str) -> bool:
    return model_id in settings.CHAT_MODELS or any(m["id"] == model_id for m in available_models())


def parse_settings(raw: dict) -> "parameters.Settings":
    """The settings panel's values for any known model, validated as the API
    would; parameters.Invalid (a sentence per field) if not."""
    model = raw.get("model")
    if not isinstance(model, str) or not is_known(model):
        raise parameters.Invalid({"model": "Choose a model from the list."})
    return parameters.parse(raw, rules_for(model))


def cost(model_id: str, usage: dict[str, int]) -> Decimal | None:
    """Dollars for one answer's usage, or None when the model has no price."""
    price = rules_for(model_id).price
    if not price:
        return None
    million = Decimal(1_000_000)
    total = (
        Decimal(usage.get("input_tokens", 0)) * Decimal(str(price["input"]))
        + Decimal(usage.get("output_tokens", 0)) * Decimal(str(price["output"]))
        + Decimal(usage.get("cache_creation_input_tokens", 0)) * Decimal(str(price["cache_write"]))
        + Decimal(usage.get("cache_read_input_tokens", 0)) * Decimal(str(price["cache_read"]))
    )
    return total / million
