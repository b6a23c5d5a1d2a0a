"""Money per answer, from the token usage the API reports and a price table (prices.json Config).

The table maps a model key ("provider:model", or "provider:*" for every model of a provider)
to USD per one million input and output tokens. A model missing from the table gets no cost
(None) rather than a made-up one; a free local model is listed with zero prices. Sums per model and batch are
`table.summarise(...)["cost_usd"]`.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Optional

from phototagger.records import ModelResult


class Price(NamedTuple):
    input_per_1m: float  # USD per 1M prompt tokens (images included, as the API counts them)
    output_per_1m: float  # USD per 1M completion tokens


def load_prices(table: Optional[Mapping[str, Any]]) -> dict[str, Price]:
    """Read the price table; entries whose name starts with "_" are comments."""
    prices: dict[str, Price] = {}
    for key, entry in (table or {}).items():
        if key.startswith("_"):
            continue
        try:
            prices[key] = Price(float(entry["input_per_1m"]), float(entry["output_per_1m"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"price entry {key!r} needs numbers input_per_1m and output_per_1m (USD per 1M tokens): {entry!r}"
            ) from exc
    return prices


def price_for(provider: str, model: str, prices: Mapping[str, Price]) -> Optional[Price]:
    return prices.get(f"{provider}:{model}") or prices.get(f"{provider}:*")


def result_cost(result: ModelResult, prices: Mapping[str, Price]) -> Optional[float]:
    """USD for one answer at list price; None when the model has no price or a paid call reported no usage."""
    price = price_for(result.get("provider", ""), result.get("model", ""), prices)
    if price is None:
        return None
    prompt, completion = result.get("prompt_tokens"), result.get("completion_tokens")
    if prompt is None and completion is None:
        return 0.0 if price == (0.0, 0.0) else None
    return round(((prompt or 0) * price.input_per_1m + (completion or 0) * price.output_per_1m) / 1e6, 8)


def price_results(results: Iterable[ModelResult], prices: Mapping[str, Price]) -> list[ModelResult]:
    """The results with `cost_usd` set from `prices` (a `load_prices` table; load it before prompting, so a bad
    table fails before any call)."""
    return [{**result, "cost_usd": result_cost(result, prices)} for result in results]
