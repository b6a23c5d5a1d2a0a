"""diagnose_data.py: a deep report on a PrepareVLMData dataset.

    python diagnose_data.py                                         # latest dataset of your branch
    python diagnose_data.py --run PrepareVLMData/1234 --json report.json
    python diagnose_data.py --processor Qwen/Qwen2.5-VL-3B-Instruct  # adds token lengths per example

Reports tag frequency and its long tail, tags per photo, duplicate photos and images, broken or
tiny images, leaks between the splits and into the held-out set, and tokens per example under the
dataset's pixel caps (image tokens always; total and answer tokens with --processor). Loads every
image, so it takes a while on a large dataset of URLs; check_data.py is the fast check.
"""
import argparse
import json
import sys
from typing import Any

from phototagger.training import diagnose, vlm


def load_processor(path: str, dataset: dict) -> tuple[Any, str]:
    """The processor with the dataset's pixel caps, or None and the reason token lengths are skipped."""
    if not path:
        return None, "no --processor given: pass a Qwen2.5-VL path or hub id to measure them"
    try:
        return vlm.load_processor(path, *diagnose.pixel_caps(dataset)), ""
    except (OSError, ValueError, ImportError) as exc:
        return None, f"processor {path} unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deep report on a PrepareVLMData dataset.")
    diagnose.add_dataset_arguments(parser)
    parser.add_argument("--processor", default="", help="Qwen2.5-VL checkpoint path or hub id whose processor measures token lengths (optional)")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument("--top", type=int, default=20, help="how many of the most frequent tags to list")
    args = parser.parse_args(argv)
    dataset = diagnose.load_dataset_or_report(args)
    if dataset is None:
        return 1
    processor, note = load_processor(args.processor, dataset)
    report = diagnose.diagnose(dataset, processor, note, top=args.top)
    print("\n".join(diagnose.format_report(report)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
        print(f"Report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
