"""Cost per answer from token usage and the prices.json table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from phototagger.prompting.cost import Price, load_prices, price_for, result_cost

ROOT = Path(__file__).resolve().parent.parent


def test_cost_is_tokens_times_price_per_million():
    prices = load_prices({"openai:gpt-4o-mini": {"input_per_1m": 0.15, "output_per_1m": 0.60}})
    result = {"provider": "openai", "model": "gpt-4o-mini", "prompt_tokens": 10_000, "completion_tokens": 1_000}
    assert result_cost(result, prices) == pytest.approx(0.0015 + 0.0006)


def test_unpriced_model_and_paid_call_without_usage_get_no_cost():
    prices = load_prices({"openai:gpt-4o-mini": {"input_per_1m": 0.15, "output_per_1m": 0.60}})
    assert result_cost({"provider": "openai", "model": "gpt-5", "prompt_tokens": 5}, prices) is None
    assert result_cost({"provider": "openai", "model": "gpt-4o-mini"}, prices) is None


def test_provider_wildcard_prices_free_local_models_at_zero():
    prices = load_prices({"knn:*": {"input_per_1m": 0, "output_per_1m": 0}, "_about": "a comment"})
    assert price_for("knn", "jec", prices) == Price(0.0, 0.0)
    assert result_cost({"provider": "knn", "model": "jec"}, prices) == 0.0


def test_malformed_price_entry_names_the_entry():
    with pytest.raises(ValueError, match="openai:gpt-4o.*input_per_1m"):
        load_prices({"openai:gpt-4o": {"input": 2.5}})


def test_shipped_price_table_covers_the_default_models():
    prices = load_prices(json.loads((ROOT / "prices.json").read_text()))
    for entry in json.loads((ROOT / "models.json").read_text())["models"]:
        assert price_for(entry["provider"], entry["model"], prices) is not None, entry
