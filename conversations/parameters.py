"""Request parameters: parsed from the settings panel, validated the way the
Messages API validates them, and turned into the API's own fields.

Pure functions over plain values; the per-model rules come from the model
table (`conversations.catalog`), so new models need no code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_THINKING_BUDGET = 1024
DEFAULT_THINKING_BUDGET = 4096
THINKING_TOP_P_MIN = 0.95


@dataclass(frozen=True)
class ModelRules:
    id: str
    display_name: str
    max_output_tokens: int
    context_window: int
    thinking: bool
    temperature_and_top_p: bool
    price: dict[str, float] | None


@dataclass
class Settings:
    """What the settings panel shows, in the panel's terms."""

    model: str
    max_tokens: int | None = None
    system: str = ""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: tuple[str, ...] = ()
    thinking: bool = False
    thinking_budget: int | None = None

    def to_request(self) -> dict[str, Any]:
        """The API body fields other than `messages` (unset ones are left out)."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if self.system.strip():
            body["system"] = self.system
        for name in ("temperature", "top_p", "top_k"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.stop_sequences:
            body["stop_sequences"] = list(self.stop_sequences)
        if self.thinking:
            body["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget}
        return body

    def to_params(self) -> dict[str, Any]:
        """What a conversation stores: the request fields without the model."""
        body = self.to_request()
        body.pop("model")
        return body

    def to_form(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop_sequences": "\n".join(self.stop_sequences),
            "thinking": self.thinking,
            "thinking_budget": self.thinking_budget or DEFAULT_THINKING_BUDGET,
        }

    @classmethod
    def from_params(cls, model: str, params: dict[str, Any]) -> "Settings":
        thinking = params.get("thinking") or {}
        enabled = thinking.get("type") == "enabled"
        return cls(
            model=model,
            max_tokens=params.get("max_tokens"),
            system=params.get("system") or "",
            temperature=params.get("temperature"),
            top_p=params.get("top_p"),
            top_k=params.get("top_k"),
            stop_sequences=tuple(params.get("stop_sequences") or ()),
            thinking=enabled,
            thinking_budget=thinking.get("budget_tokens") if enabled else None,
        )


class Invalid(Exception):
    """Settings the API would refuse; `errors` maps each field to a sentence."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def _number(raw: Any, field: str, label: str, errors: dict[str, str], whole: bool = False):
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        errors[field] = f"{label} must be a number."
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        errors[field] = f"{label} must be {'a whole number' if whole else 'a number'}."
        return None
    if not math.isfinite(value):
        errors[field] = f"{label} must be a number."
        return None
    if whole:
        if value != int(value):
            errors[field] = f"{label} must be a whole number."
            return None
        return int(value)
    return value


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    return str(raw).strip().lower() in {"1", "true", "on", "yes"}


def parse(raw: dict[str, Any], rules: ModelRules) -> Settings:
    """Panel values (strings or JSON numbers) → validated Settings, or Invalid."""
    errors: dict[str, str] = {}
    max_tokens = _number(raw.get("max_tokens"), "max_tokens", "Max tokens", errors, whole=True)
    temperature = _number(raw.get("temperature"), "temperature", "Temperature", errors)
    top_p = _number(raw.get("top_p"), "top_p", "Top P", errors)
    top_k = _number(raw.get("top_k"), "top_k", "Top K", errors, whole=True)
    thinking = _bool(raw.get("thinking", False))
    budget = _number(raw.get("thinking_budget"), "thinking_budget", "Thinking budget", errors, whole=True)
    system = raw.get("system") or ""
    if not isinstance(system, str):
        errors["system"] = "System prompt must be text."
        system = ""
    stops_raw = raw.get("stop_sequences") or ""
    if isinstance(stops_raw, str):
        stops = tuple(line for line in stops_raw.splitlines() if line != "")
    elif isinstance(stops_raw, (list, tuple)) and all(isinstance(s, str) for s in stops_raw):
        stops = tuple(stops_raw)
    else:
        errors["stop_sequences"] = "Stop sequences must be text, one per line."
        stops = ()
    settings = Settings(
        model=rules.id,
        max_tokens=max_tokens,
        system=system,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop_sequences=stops,
        thinking=thinking,
        thinking_budget=budget if thinking else None,
    )
    errors.update({k: v for k, v in check(settings, rules).items() if k not in errors})
    if errors:
        raise Invalid(errors)
    return settings


def check(s: Settings, rules: ModelRules) -> dict[str, str]:
    """The API's documented rules, each broken one as field → sentence."""
    errors: dict[str, str] = {}
    name = rules.display_name
    if s.max_tokens is None:
        errors["max_tokens"] = "Max tokens is required."
    elif s.max_tokens < 1:
        errors["max_tokens"] = "Max tokens must be at least 1."
    elif s.max_tokens > rules.max_output_tokens:
        errors["max_tokens"] = f"Max tokens can be at most {rules.max_output_tokens:,} for {name}."
    if s.temperature is not None and not 0 <= s.temperature <= 1:
        errors["temperature"] = "Temperature must be between 0 and 1."
    if s.top_p is not None and not 0 <= s.top_p <= 1:
        errors["top_p"] = "Top P must be between 0 and 1."
    if s.top_k is not None and s.top_k < 0:
        errors["top_k"] = "Top K must be 0 or more."
    if any(not stop.strip() for stop in s.stop_sequences):
        errors["stop_sequences"] = "A stop sequence cannot be only spaces."
    if (
        s.temperature is not None
        and s.top_p is not None
        and not rules.temperature_and_top_p
        and "temperature" not in errors
        and "top_p" not in errors
    ):
        errors["top_p"] = f"{name} does not accept Temperature and Top P together: leave one of them empty."
    if s.thinking:
        if not rules.thinking:
            errors["thinking"] = f"{name} does not support extended thinking."
        if s.thinking_budget is None:
            errors["thinking_budget"] = "Thinking budget is required when extended thinking is on."
        elif s.thinking_budget < MIN_THINKING_BUDGET:
            errors["thinking_budget"] = f"Thinking budget must be at least {MIN_THINKING_BUDGET:,} tokens."
        elif s.max_tokens is not None and s.thinking_budget >= s.max_tokens:
            errors["thinking_budget"] = f"Thinking budget must be less than Max tokens ({s.max_tokens:,})."
        if s.temperature is not None and s.temperature != 1 and "temperature" not in errors:
            errors["temperature"] = "With extended thinking on, Temperature must be 1 or left empty."
        if s.top_k is not None and "top_k" not in errors:
            errors["top_k"] = "With extended thinking on, Top K must be left empty."
        if s.top_p is not None and not THINKING_TOP_P_MIN <= s.top_p <= 1 and "top_p" not in errors:
            errors["top_p"] = "With extended thinking on, Top P must be between 0.95 and 1, or left empty."
    return errors


def defaults(rules: ModelRules, max_tokens: int) -> Settings:
    return Settings(model=rules.id, max_tokens=min(max_tokens, rules.max_output_tokens))
