"""The prompt flows' Configs: the model list (models.json) and the prompt file (prompt.txt).

`select_models` reads and filters the model list, `make_prompter` turns one entry into a Prompter
(or says why the model is skipped here), `unavailable_models` says up front which entries cannot run
(so they get no task; `check_unavailable` fails the run unless the user said to skip them), `prompt_config` is the Metaflow Config parser every flow that reads
prompt.txt shares (the prompt flows, PrepareVLMData, export_tags.py), and `model_list_config`
checks models.json when the Config is read, so a mistake in it fails before the run starts.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from phototagger.errors import UserError
from phototagger.ingest.state import reference_photos
from phototagger.mfclient import UPDATE_FLOW, DatastoreBlobs, config_file
from phototagger.prompting.prompter import Prompter
from phototagger.prompting.providers import MissingKeyError, ProviderError, known_providers, provider_class
from phototagger.records import Photo
from phototagger.scoring.evals import model_key

ENTRY_FIELDS = frozenset({"provider", "model", "concurrency"})  # models.json fields that are not provider options


class ModelSkipped(Exception):
    """A configured model cannot run here (no key, no base URL, no history yet); the flow skips it with this reason."""


NO_HISTORY_YET = "no earlier batch to learn from yet; it is scored from the next batch on"


def make_prompter(entry: Mapping[str, Any], history: Sequence[Photo] = (), tag_stats: Optional[Mapping[str, Any]] = None) -> Prompter:
    """A Prompter for one models.json entry; the other fields are provider options (base_url, timeout_s, ...).
    An offline baseline learns from `history` (earlier photos, or UpdatePhotos' sample of them) and `tag_stats`.

    Raises ModelSkipped when the provider's key or base URL is missing, or when an offline baseline
    has no earlier batch to learn from (the first batch of a branch): neither is a failed call.
    """
    key = model_key(entry["provider"], entry["model"])
    options = {k: v for k, v in entry.items() if k not in ENTRY_FIELDS}
    if provider_class(entry["provider"]).learns_from_history:
        if not history and not (tag_stats or {}).get("photos"):
            raise ModelSkipped(NO_HISTORY_YET)
        options["history"] = list(history)
        if tag_stats:
            options["tag_stats"] = tag_stats
    try:
        return Prompter(entry["provider"], entry["model"], **options)
    except MissingKeyError as exc:
        raise ModelSkipped(str(exc)) from None
    except TypeError as exc:
        raise UserError(f"models.json entry {key}: unknown option ({exc})", "remove it, or see the provider's options in the README") from None


NO_KEYWORDS = "fewer than two photos with keywords to learn from, in this batch and none in an earlier one"


def baseline_history(entry: Mapping[str, Any], photos: Mapping[str, Photo], learns_from_batch: bool,
                     reference: Any, tag_stats: Mapping[str, Any]) -> tuple[list[Photo], Optional[Mapping[str, Any]]]:
    """(history, tag counts) an offline baseline learns from: UpdatePhotos' sample of earlier batches and its
    counts, or on a branch's first batch (`learns_from_batch`) that batch's own photos, which is honest because
    a baseline never looks at the photo it is asked about (leave-one-out); nothing for the other providers."""
    if not provider_class(entry["provider"]).learns_from_history:
        return [], None
    if learns_from_batch:
        return list(photos.values()), None
    return reference_photos(DatastoreBlobs(UPDATE_FLOW), reference), tag_stats


def unavailable_models(entries: Sequence[Mapping[str, Any]], can_learn: bool, probe: bool = True) -> dict[str, str]:
    """The entries that cannot run here, by model key, with the reason: decided in `start`, before any
    model task. A baseline needs keyworded photos to learn from (`can_learn`); the others are built, which
    checks the key and base URL, and with `probe` their server is asked once whether it is there."""
    unavailable = {}
    for entry in entries:
        try:
            if not provider_class(entry["provider"]).learns_from_history:
                prompter = make_prompter(entry)
                if probe:
                    prompter.backend.check_reachable()
            elif not can_learn:
                raise ModelSkipped(NO_KEYWORDS)
        except (ModelSkipped, ProviderError) as exc:
            unavailable[model_key(entry["provider"], entry["model"])] = str(exc)
    return unavailable


SKIP_FLAG = "--skip-unavailable"


def check_unavailable(unavailable: Mapping[str, str], runnable: Sequence[Mapping[str, Any]], skip: bool) -> None:
    """Raise UserError when a model asked for cannot run and the user did not pass --skip-unavailable, or
    when no model can run at all: a prompt run never ends successfully having prompted nothing."""
    listed = "; ".join(f"{key}: {reason}" for key, reason in unavailable.items())
    if unavailable and not skip:
        others = ",".join(model_key(e["provider"], e["model"]) for e in runnable)
        only = f", run the others alone with --models {others}" if others else ""
        raise UserError(f"{len(unavailable)} of the models asked for cannot run: {listed}",
                        f"do what each one says{only}, or pass {SKIP_FLAG} to run without them")
    if unavailable and not runnable:
        raise UserError(f"No model can run: {listed}",
                        "export a vendor key, start a model server (see the README's own-photos section), or give some photos keywords")


def prompt_config(text: str) -> dict[str, str]:
    """Metaflow Config parser for prompt.txt: a plain-text prompt becomes {"text": ...}."""
    if not text.strip():
        raise UserError(f"{config_file('prompt', 'prompt.txt')} is empty", "write the prompt into it, or pass --config prompt FILE")
    return {"text": text.strip()}


def model_list_config(text: str) -> dict[str, Any]:
    """Metaflow Config parser for models.json: a mistake in it fails at parse time, naming the file and the field."""
    name = config_file("model-list", "models.json")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{name} is not valid JSON ({exc})", "correct the file at that line and column, or pass --config model-list FILE") from None
    check_model_list(config, name)
    return config


def check_model_list(models_config: Any, name: str = "models.json") -> None:
    """Raise UserError unless `models_config` is {"models": [{"provider": <known>, "model": ...}, ...]}."""
    models = (models_config.get("models") or []) if isinstance(models_config, Mapping) else None
    if not isinstance(models, (list, tuple)) or not all(isinstance(entry, Mapping) for entry in models):
        raise UserError(
            f'{name}: "models" must be a list of objects, got {models!r:.80}',
            'write {"models": [{"provider": "openai", "model": "gpt-4o-mini"}, ...]}',
        )
    for number, entry in enumerate(models, 1):
        missing = [field for field in ("provider", "model") if not entry.get(field)]
        if missing:
            raise UserError(f'{name}: model {number} ({dict(entry)}) has no "{missing[0]}"', 'give every entry a "provider" and a "model"')
        if entry["provider"] not in known_providers():
            raise UserError(
                f'{name}: model {number} has an unknown "provider" {entry["provider"]!r}', f"use one of: {', '.join(known_providers())}"
            )


def select_models(models_config: Mapping[str, Any], only: str = "") -> list[dict[str, Any]]:
    """The entries of models.json to run: all, or those whose model key or provider is in comma-separated `only`."""
    check_model_list(models_config)
    entries = [dict(entry) for entry in models_config.get("models") or []]
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    if not wanted:
        return entries
    chosen = [e for e in entries if e["provider"] in wanted or model_key(e["provider"], e["model"]) in wanted]
    unknown = wanted - {e["provider"] for e in entries} - {model_key(e["provider"], e["model"]) for e in entries}
    if unknown or not chosen:
        known = ", ".join(model_key(e["provider"], e["model"]) for e in entries)
        raise UserError(
            f"--models {only!r}: no configured model matches {', '.join(sorted(unknown)) or only}; known: {known}",
            "name some of those, or add the model to models.json",
        )
    return chosen
