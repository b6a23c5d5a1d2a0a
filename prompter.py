"""Tag one image with one model and print the result record as JSON.

    python prompter.py --provider openai --model gpt-4o-mini photo.jpg
    python prompter.py --provider openai-compatible --model qwen2.5-vl --option base_url=http://localhost:8000/v1 URL

The prompt comes from --prompt-file (default: prompt.txt beside this script). Keys come from the
environment (openai_api, togetherai_api, OPENAI_COMPATIBLE_API_KEY). Exit status 1 when the
record carries an error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from phototagger.http import LocalImage, is_url
from phototagger.prompting.prompter import Prompter
from phototagger.prompting.providers import MissingKeyError, known_providers

DEFAULT_PROMPT_FILE = Path(__file__).resolve().parent / "prompt.txt"


def _option(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value read as JSON when it is JSON (numbers, true/false), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="an http(s) image URL or a local image file")
    parser.add_argument("--provider", required=True, help=f"one of: {', '.join(known_providers())}")
    parser.add_argument("--model", required=True, help="the provider's model name, e.g. gpt-4o-mini")
    parser.add_argument("--prompt-file", type=Path, default=DEFAULT_PROMPT_FILE, help="file with the prompt text")
    parser.add_argument("--photo-id", default=None, help="the photo's id (offline baselines leave it out of their history)")
    parser.add_argument(
        "--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
        help="a provider option, e.g. base_url=http://localhost:8000/v1, json_mode=false, timeout_s=30",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if not args.prompt_file.is_file():
        parser.error(f"prompt file not found: {args.prompt_file} (pass --prompt-file PATH)")
    try:
        prompter = Prompter(args.provider, args.model, **dict(args.option))
    except (ValueError, TypeError, MissingKeyError) as exc:
        parser.error(str(exc))
    image = args.image if is_url(args.image) else LocalImage(args.image, Path(args.image).resolve().parent)  # a file you named
    result = prompter.prompt(args.prompt_file.read_text(encoding="utf-8"), image, args.photo_id)
    print(json.dumps(result, indent=2))
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
