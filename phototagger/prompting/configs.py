"""The prompt flows' Configs: the model list (models.json) and the prompt file (prompt.txt).

`select_models` reads and filters the model list, `make_prompter` turns one entry into a Prompter
(or says why the model is skipped here), and `prompt_config` is the Metaflow Config parser every
flow that reads prompt.txt shares (the prompt flows, PrepareVLMData, export_tags.py).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from phototagger.prompting.prompter import Prompter
from phototagger.prompting.providers import MissingKeyError, provider_class
from phototagger.records import Photo
from phototagger.scoring.evals import model_key

ENTRY_FIELDS = frozenset({"provider", "model", "concurrency"})  # models.json fields that are not provider options


class ModelSkipped(Exception):
    """A configured model cannot run here (no key, no base URL, no history yet); the flow skips it with this reason."""


def make_prompter(entry: Mapping[str, Any], history: Sequence[Photo] = ()) -> Prompter:
    """A Prompter for one models.json entry; the other fields are provider options (base_url, timeout_s, ...).

    Raises ModelSkipped when the provider's key or base URL is missing, or when an offline baseline
    has no earlier batch to learn from (the first batch of a branch): neither is a failed call.
    """
    key = model_key(entry["provider"], entry["model"])
    options = {k: v for k, v in entry.items() if k not in ENTRY_FIELDS}
    if provider_class(entry["provider"]).learns_from_history:
        if not history:
            raise ModelSkipped("no earlier batch to learn from yet; it is scored from the next batch on")
        options["history"] = list(history)
    try:
        return Prompter(entry["provider"], entry["model"], **options)
    except MissingKeyError as exc:
        raise ModelSkipped(str(exc)) from None
    except TypeError as exc:
        raise ValueError(f"models.json entry {key}: unknown option ({exc})") from None


def prompt_config(text: str) -> dict[str, str]:
    """Metaflow Config parser for prompt.txt: a plain-text prompt becomes {"text": ...}."""
    return {"text": text.strip()}


def select_models(models_config: Mapping[str, Any], only: str = "") -> list[dict[str, Any]]:
    """The entries of models.json to run: all, or those whose model key or provider is in comma-separated `only`."""
    models = models_config.get("models") or []
    if not isinstance(models, (list, tuple)) or not all(isinstance(entry, Mapping) for entry in models):
        raise ValueError(
            f'models.json: "models" must be a list of objects, got {models!r:.80}; '
            'write {"models": [{"provider": "openai", "model": "gpt-4o-mini"}, ...]}'
        )
    entries = [dict(entry) for entry in models]
    for entry in entries:
        if not entry.get("provider") or not entry.get("model"):
            raise ValueError(f"models.json entry {entry!r} needs a provider and a model")
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    if not wanted:
        return entries
    chosen = [e for e in entries if e["provider"] in wanted or model_key(e["provider"], e["model"]) in wanted]
    unknown = wanted - {e["provider"] for e in entries} - {model_key(e["provider"], e["model"]) for e in entries}
    if unknown or not chosen:
        known = ", ".join(model_key(e["provider"], e["model"]) for e in entries)
        raise ValueError(f"--models {only!r}: no configured model matches {', '.join(sorted(unknown)) or only}; known: {known}")
    return chosen
