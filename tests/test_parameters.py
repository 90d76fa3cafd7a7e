"""Request parameters are validated the way the Messages API validates them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from conversations import catalog
from conversations.parameters import Invalid, Settings, parse

MODELS = ["claude-opus-4-5-20251101", "claude-haiku-4-5-20251001", "claude-sonnet-4-20250514"]


def api_refusals(body: dict, max_output: int, temperature_and_top_p: bool) -> list[str]:
    """A strict reading of the documented rules (../shared/anthropic-messages-api.md),
    written independently of the app's validator."""
    problems = []
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= max_output:
        problems.append("max_tokens")
    if "temperature" in body and not 0 <= body["temperature"] <= 1:
        problems.append("temperature range")
    if "top_p" in body and not 0 <= body["top_p"] <= 1:
        problems.append("top_p range")
    if "top_k" in body and (not isinstance(body["top_k"], int) or body["top_k"] < 0):
        problems.append("top_k")
    if any(not s.strip() for s in body.get("stop_sequences", [])):
        problems.append("blank stop sequence")
    if "temperature" in body and "top_p" in body and not temperature_and_top_p:
        problems.append("temperature with top_p")
    thinking = body.get("thinking")
    if thinking and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            problems.append("budget minimum")
        elif isinstance(max_tokens, int) and budget >= max_tokens:
            problems.append("budget below max_tokens")
        if body.get("temperature", 1) != 1:
            problems.append("thinking temperature")
        if "top_k" in body:
            problems.append("thinking top_k")
        if "top_p" in body and not 0.95 <= body["top_p"] <= 1:
            problems.append("thinking top_p")
    return problems


def intended_body(raw: dict) -> dict:
    """The request a person meant with these panel values, unvalidated."""
    body = {"model": raw["model"], "max_tokens": raw["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if raw.get(name) is not None:
            body[name] = raw[name]
    if raw["stop_sequences"]:
        body["stop_sequences"] = raw["stop_sequences"]
    if raw["thinking"]:
        body["thinking"] = {"type": "enabled", "budget_tokens": raw["thinking_budget"]}
    return body


maybe_unit = st.none() | st.floats(min_value=-0.5, max_value=1.5, allow_nan=False) | st.sampled_from([0, 0.95, 1, 1.0, 0.5])
panel = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "max_tokens": st.integers(min_value=-5, max_value=70000) | st.sampled_from([1, 1024, 1025, 64000, 64001]),
        "temperature": maybe_unit,
        "top_p": maybe_unit,
        "top_k": st.none() | st.integers(min_value=-3, max_value=600),
        "stop_sequences": st.lists(st.sampled_from(["END", "\n\nHuman:", " ", "", "  \t", "###"]), max_size=3).map(
            lambda items: [i for i in items if i != ""]
        ),
        "thinking": st.booleans(),
        "thinking_budget": st.integers(min_value=0, max_value=70000) | st.sampled_from([1023, 1024, 2048]),
        "system": st.sampled_from(["", "Be brief.", "  "]),
    }
)


@hypothesis_settings(max_examples=600, deadline=None)
@given(panel)
def test_accepted_settings_make_requests_the_api_accepts_and_refused_ones_it_would_refuse(raw):
    rules = catalog.rules_for(raw["model"])
    try:
        chosen = parse(raw, rules)
    except Invalid as refused:
        assert refused.errors and all(refused.errors.values())
        problems = api_refusals(intended_body(raw), rules.max_output_tokens, rules.temperature_and_top_p)
        assert problems, f"refused {refused.errors} but the API would accept {intended_body(raw)}"
        return
    body = chosen.to_request()
    assert api_refusals(body, rules.max_output_tokens, rules.temperature_and_top_p) == []
    assert body == {**intended_body(raw), **({"system": raw["system"]} if raw["system"].strip() else {})}


def values(**changes):
    base = {"model": MODELS[0], "max_tokens": 4096, "temperature": None, "top_p": None, "top_k": None,
            "stop_sequences": "", "thinking": False, "thinking_budget": None, "system": ""}
    return {**base, **changes}


@pytest.mark.parametrize(
    "changes, field, sentence",
    [
        ({"max_tokens": 0}, "max_tokens", "Max tokens must be at least 1."),
        ({"max_tokens": 64001}, "max_tokens", "Max tokens can be at most 64,000 for Claude Opus 4.5."),
        ({"max_tokens": "12.5"}, "max_tokens", "Max tokens must be a whole number."),
        ({"max_tokens": ""}, "max_tokens", "Max tokens is required."),
        ({"temperature": "1.2"}, "temperature", "Temperature must be between 0 and 1."),
        ({"temperature": "warm"}, "temperature", "Temperature must be a number."),
        ({"top_p": -0.1}, "top_p", "Top P must be between 0 and 1."),
        ({"top_k": -1}, "top_k", "Top K must be 0 or more."),
        ({"temperature": 0.5, "top_p": 0.9}, "top_p", "Claude Opus 4.5 does not accept Temperature and Top P together: leave one of them empty."),
        ({"thinking": True, "thinking_budget": 1000}, "thinking_budget", "Thinking budget must be at least 1,024 tokens."),
        ({"thinking": True, "thinking_budget": 4096}, "thinking_budget", "Thinking budget must be less than Max tokens (4,096)."),
        ({"thinking": True, "thinking_budget": 2048, "temperature": 0.7}, "temperature", "With extended thinking on, Temperature must be 1 or left empty."),
        ({"thinking": True, "thinking_budget": 2048, "top_k": 5}, "top_k", "With extended thinking on, Top K must be left empty."),
        ({"thinking": True, "thinking_budget": 2048, "top_p": 0.9}, "top_p", "With extended thinking on, Top P must be between 0.95 and 1, or left empty."),
        ({"stop_sequences": "END\n   "}, "stop_sequences", "A stop sequence cannot be only spaces."),
    ],
)
def test_each_rule_has_its_own_sentence(changes, field, sentence):
    with pytest.raises(Invalid) as refused:
        parse(values(**changes), catalog.rules_for(MODELS[0]))
    assert refused.value.errors[field] == sentence


def test_sonnet_4_accepts_temperature_with_top_p():
    chosen = parse(values(model=MODELS[2], temperature=0.5, top_p=0.9), catalog.rules_for(MODELS[2]))
    assert chosen.to_request()["temperature"] == 0.5 and chosen.to_request()["top_p"] == 0.9


def test_thinking_with_allowed_sampling_values():
    chosen = parse(values(thinking="on", thinking_budget="2048", temperature="1"), catalog.rules_for(MODELS[1]))
    assert chosen.to_request()["temperature"] == 1
    chosen = parse(values(thinking="on", thinking_budget="2048", top_p="0.95"), catalog.rules_for(MODELS[1]))
    assert chosen.to_request()["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_panel_values_round_trip_through_the_stored_params():
    chosen = parse(values(system="Be kind", stop_sequences="END\n###", temperature="0.3"), catalog.rules_for(MODELS[0]))
    again = Settings.from_params(chosen.model, chosen.to_params())
    assert again == chosen
    assert again.to_form()["stop_sequences"] == "END\n###"


def test_an_operator_can_add_a_model_with_its_own_limits(settings):
    settings.CHAT_MODELS = {**settings.CHAT_MODELS, "claude-new-1": {"display_name": "Claude New", "max_output_tokens": 128000,
                                                                      "price": {"input": 2, "output": 10, "cache_write": 2.5, "cache_read": 0.2}}}
    rules = catalog.rules_for("claude-new-1")
    assert parse(values(model="claude-new-1", max_tokens=100000), rules).max_tokens == 100000
    assert catalog.cost("claude-new-1", {"input_tokens": 1_000_000, "output_tokens": 100_000}) == 3


def test_cost_uses_the_price_table():
    usage = {"input_tokens": 1000, "output_tokens": 2000, "cache_creation_input_tokens": 4000, "cache_read_input_tokens": 10000}
    # Opus 4.5: 5 / 25 / 6.25 / 0.50 dollars per million tokens
    assert catalog.cost(MODELS[0], usage) == Decimal("0.085")
    assert catalog.cost("unknown-model", usage) is None
