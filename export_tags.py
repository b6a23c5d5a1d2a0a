"""Export a model's tags as XMP sidecars (Lightroom, darktable, digiKam), CSV and JSONL.

    python export_tags.py                                  # best model on the dashboard, its latest batch
    python export_tags.py --model openai:gpt-4o-mini       # another model, its latest batch
    python export_tags.py --run PromptModels/1712345678    # a given prompt run
    python export_tags.py --folder ~/Pictures/trip         # prompt the best model on your own photos now
    python export_tags.py --folder ~/Pictures/trip --xmp-naming basename --no-ai-hierarchy --dry-run

Sidecars are merged into, never overwritten: keywords, ratings and everything else already in them
stay. Every tag is a suggestion, filed under the keyword AI (AI|cat) and listed with the model and run
in the sidecar's Photo Tagger namespace, until you confirm it (docs/own-library.md). Tags go out as the lenient matching rule reads them (vocabulary.json, or --vocabulary FILE):
synonyms folded, stop-tags left out, each tag filed under its parents in the keyword paths.
The library code is phototagger/output/export.py and phototagger/output/xmp.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from phototagger import mfclient
from phototagger.errors import UserError
from phototagger.output import export
from phototagger.prompting.configs import prompt_config
from phototagger.prompting.providers.base import ProviderError
from phototagger.output.xmp import NAMINGS
from phototagger.scoring.provenance import AI_ROOT
from phototagger.scoring.vocabulary import Vocabulary, VocabularyError, parse_file

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_tags.py",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Sidecar names: fullname = photo.jpg.xmp (digiKam, darktable), basename = photo.xmp (Lightroom). "
            "Sidecars of local images go next to them; those of image URLs go into --out as <photo id>.xmp. "
            "Photos whose model result is an error are listed and left out of every file."
        ),
    )
    parser.add_argument("--model", metavar="KEY", help="Model key provider:model (e.g. knn:jec); default: the best model on the latest EvaluationFlow dashboard.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run", metavar="PATHSPEC", default="", help="PromptModels or PromptCustomModels run to read (PromptModels/123); default: the latest one holding the model.")
    where.add_argument("--folder", metavar="PATH", help="Tag the images under PATH by prompting the model now (recursively; hidden folders skipped).")
    parser.add_argument("--out", metavar="DIR", type=Path, default=Path("exports"), help="Folder for the CSV, the JSONL and the sidecars of URL images (default: %(default)s).")
    parser.add_argument("--xmp-naming", choices=NAMINGS, default="fullname", help="Sidecar naming (default: %(default)s).")
    hierarchy = parser.add_mutually_exclusive_group()
    hierarchy.add_argument("--tag-prefix", metavar="TEXT", default=AI_ROOT, help='File suggestions under this keyword in digiKam:TagsList and lr:hierarchicalSubject ("/" between levels); confirm one by keeping it outside (default: %(default)s).')
    hierarchy.add_argument("--no-ai-hierarchy", action="store_true", help="Write suggestions as plain keywords: the Photo Tagger namespace still marks them as the model's, but they cannot be confirmed in a photo tool.")
    parser.add_argument("--vocabulary", metavar="FILE", type=Path, default=HERE / "vocabulary.json", help="Synonyms, stop-tags and parent tags to export with (default: vocabulary.json, the lenient matching rule's).")
    parser.add_argument("--no-vocabulary", action="store_true", help="Export the tags as the model gave them, flat.")
    parser.add_argument("--csv", metavar="FILE", type=Path, help="CSV file to write (default: DIR/tags.csv).")
    parser.add_argument("--jsonl", metavar="FILE", type=Path, help="JSONL file to write (default: DIR/tags.jsonl).")
    parser.add_argument("--no-xmp", action="store_true", help="Write the CSV and JSONL only.")
    parser.add_argument("--dry-run", action="store_true", help="Show what would be written and write nothing (--folder still prompts the model; answers are cached).")
    parser.add_argument("--branch", metavar="NAME", help="@project branch whose runs to read: the name a flow's --branch took (x, meaning test.x) or the full one (test.x, prod, user.<name>); default: user.<your Metaflow user>.")
    parser.add_argument("--prompt", metavar="FILE", type=Path, default=HERE / "prompt.txt", help="Prompt for --folder (default: prompt.txt).")
    parser.add_argument("--models-config", metavar="FILE", type=Path, help="Model options (base_url, timeout_s, concurrency) for --folder (default: models.json, if there).")
    parser.add_argument("--concurrency", metavar="N", type=int, help="Most calls in flight for --folder (default: the model's models.json entry, else 4).")
    parser.add_argument("--no-cache", action="store_true", help="With --folder, call the model again instead of reusing cached answers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log what happens along the way.")
    return parser


def collect_tags(args: argparse.Namespace, branch: str) -> export.TagSet:
    """Pick the model and gather its tags, from a prompt run or by prompting it on --folder."""
    ranking = export.dashboard_ranking(branch)
    model = export.choose_model(args.model, ranking, branch)
    print(f"Model: {model}" + ("" if args.model else f" (best on the dashboard of {branch})"))
    if not args.folder:
        return export.tags_from_runs(model, branch, args.run, listed=export.dashboard_models(ranking))
    prompt_text = prompt_config(_read(args.prompt, "--prompt"))["text"]
    models_path = args.models_config or HERE / "models.json"
    models_config = json.loads(_read(models_path, "--models-config")) if args.models_config or models_path.is_file() else None
    return export.tags_from_folder(
        args.folder,
        model,
        prompt_text,
        models_config=models_config,
        history=export.history_photos(branch),
        concurrency=args.concurrency,
        use_cache=not args.no_cache,
    )


def _read(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise export.ExportError(f"Cannot read {path} ({exc.strerror}): pass the right file with {option}") from None


def load_vocabulary(args: argparse.Namespace) -> Optional[Vocabulary]:
    """The vocabulary to export with, read before any work starts; None with --no-vocabulary."""
    if args.no_vocabulary:
        return None
    return Vocabulary.from_dict(parse_file(_read(args.vocabulary, "--vocabulary"), str(args.vocabulary)), str(args.vocabulary))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        vocabulary = load_vocabulary(args)
    except (export.ExportError, VocabularyError) as exc:
        print(f"export_tags.py: {exc}", file=sys.stderr)
        return 1
    options = export.ExportOptions(
        out_dir=args.out,
        xmp_naming=args.xmp_naming,
        csv_path=args.csv,
        jsonl_path=args.jsonl,
        write_xmp=not args.no_xmp,
        tag_prefix="" if args.no_ai_hierarchy else args.tag_prefix,
        dry_run=args.dry_run,
        vocabulary=vocabulary,
    )
    try:
        branch = mfclient.full_branch(args.branch)
        tagset = collect_tags(args, branch)
        if vocabulary:
            tagset = export.with_vocabulary(tagset, vocabulary)
        report = export.export(tagset, options)
    except UserError as exc:
        print(f"export_tags.py: {exc.one_line()}", file=sys.stderr)
        return 1
    except (ProviderError, ValueError) as exc:
        print(f"export_tags.py: {exc}", file=sys.stderr)
        return 1
    for line in export.report_lines(tagset, report):
        print(line)
    if not tagset.tagged:
        print("export_tags.py: no photo has a result to export; see the reasons above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
