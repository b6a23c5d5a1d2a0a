"""Prompt variants: several prompts side by side, each known by its name and the hash of its text.

A variant's id is `name@hash` (`default@3f2a1c`): editing a prompt's text makes a new id, so its
answers stand beside the earlier ones on the dashboard instead of silently replacing them (the
response cache already keys on the text). The flows read the variants from a Metaflow Config:

    {"variants": [{"name": "default", "file": "prompt.txt"}, {"name": "short", "file": "prompts/short.txt"}]}

A `file` is read when the run starts (relative to the working directory, else to the project folder
where prompt.txt ships), so the texts travel with the run's Config to every task and pod.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence, TypedDict

from phototagger.training.curate import prompt_hash

DEFAULT_VARIANT = "default"
TRAINED_VARIANT = "trained"  # the prompt a fine-tuned model was trained with
HASH_DIGITS = 6
PROJECT_DIR = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


class PromptVariant(TypedDict):
    name: str
    text: str
    id: str  # name@hash of the text


def make_variant(name: str, text: str) -> PromptVariant:
    text = text.strip()
    return PromptVariant(name=name, text=text, id=f"{name}@{prompt_hash(text)[:HASH_DIGITS]}")


def variants_config(text: str) -> dict[str, Any]:
    """Metaflow Config parser for a variants file: {"variants": [{"name", "file" or "text"}]} -> {"variants": [{"name", "text"}]}.
    An empty list (the flows' default) means prompt.txt alone."""
    try:
        listed = json.loads(text).get("variants")
    except (ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list) or not all(isinstance(v, Mapping) for v in listed):
        raise ValueError('--config prompts: write {"variants": [{"name": "default", "file": "prompt.txt"}, '
                         '{"name": "short", "file": "prompts/short.txt"}]}')
    variants, seen = [], set()
    for entry in listed:
        name = str(entry.get("name") or "")
        if not _NAME.match(name) or name in seen:
            raise ValueError(f"--config prompts: variant name {name!r} must be unique, 1-40 letters, digits, '_', '-' or '.'")
        seen.add(name)
        body = entry["text"] if "text" in entry else _read_prompt_file(name, entry.get("file"))
        if not str(body).strip():
            raise ValueError(f"--config prompts: variant {name!r} has an empty prompt")
        variants.append({"name": name, "text": str(body).strip()})
    return {"variants": variants}


def _read_prompt_file(name: str, file: Any) -> str:
    if not file:
        raise ValueError(f"--config prompts: variant {name!r} needs a \"file\" (or a \"text\")")
    for path in (Path(file), PROJECT_DIR / file):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise ValueError(f"--config prompts: variant {name!r}: no file {file} here or in {PROJECT_DIR}")


def prompt_variants(default_text: str, configured: Mapping[str, Any]) -> list[PromptVariant]:
    """The variants to prompt: those of the `prompts` Config when it lists any, else prompt.txt as `default`."""
    listed: Sequence[Mapping[str, str]] = configured.get("variants") or []
    if not listed:
        return [make_variant(DEFAULT_VARIANT, default_text)]
    return [make_variant(v["name"], v["text"]) for v in listed]


def trained_variants(trained_text: str, configured: Sequence[PromptVariant], all_prompts: bool) -> list[PromptVariant]:
    """The fine-tuned model's variants: the prompt it was trained with (named like the configured variant
    with the same text, else `trained`), then with `all_prompts` every other configured variant."""
    trained_text = trained_text.strip()
    same = [v for v in configured if v["text"] == trained_text]
    first = same[0] if same else make_variant(TRAINED_VARIANT, trained_text)
    return [first] + ([v for v in configured if v["id"] != first["id"]] if all_prompts else [])
