"""Sanity checks and a deep report on a curated dataset: the artifacts of one PrepareVLMData run.

`check_data.py` runs `find_problems` (fast: no image is loaded) and fails on any problem;
`diagnose_data.py` runs `diagnose` (loads every image, optionally tokenises every example).
Both take the run's artifacts as a plain mapping, so they work the same on a dict in a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping, Optional, Sequence, TextIO

from phototagger.training import curate, vlm
from phototagger.errors import UserError
from phototagger.mfclient import DATASET_FLOW, flow_command, full_branch, resolve_run
from phototagger.http import ImageFetchError
from phototagger.images import load_image

SPLITS = ("train_examples", "validation_examples")
DATASET_ARTIFACTS = (
    *SPLITS,
    "dropped",
    "held_out_ids",
    "prompt_text",
    "prompt_hash",
    "min_pixels",
    "max_pixels",
    "image_digests",
    "curation_settings",
    "included_update_runs",
)
CHUNK = 32  # images held in memory at once while diagnosing


def dataset_artifacts(run: Any) -> dict[str, Any]:
    """The artifacts of a PrepareVLMData run (a client Run) that the checks read, plus its pathspec as `run`."""
    data = run.data
    return {"run": run.pathspec, **{name: getattr(data, name, None) for name in DATASET_ARTIFACTS}}


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """--run and --branch, shared by check_data.py and diagnose_data.py."""
    parser.add_argument("--run", default="", help="PrepareVLMData run to check (PrepareVLMData/<id> or <id>); default: the latest successful one of the branch")
    parser.add_argument("--branch", default="", help="@project branch: the name a flow's --branch took (x, meaning test.x) or the full one (test.x, prod, user.<name>); default: your user branch")


def load_dataset(pathspec: str = "", branch: str = "") -> dict[str, Any]:
    """The artifacts of the PrepareVLMData run `pathspec`, or of the branch's latest successful one."""
    from metaflow.exception import MetaflowNotFound

    branch = full_branch(branch)
    try:
        run = resolve_run(DATASET_FLOW, branch, pathspec)
    except MetaflowNotFound as exc:
        raise LookupError(f"No run {pathspec} in this Metaflow datastore: check the id, or run from the project directory") from exc
    if run is None:
        raise LookupError(
            f"No successful PrepareVLMData run on branch {branch}: run `{flow_command(DATASET_FLOW, branch)}` first, "
            "or pass --run PrepareVLMData/<id> or --branch"
        )
    return dataset_artifacts(run)


def load_dataset_or_report(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """The dataset --run/--branch (add_dataset_arguments) name, or None once the reason is printed."""
    try:
        return load_dataset(args.run, args.branch)
    except (LookupError, ValueError, UserError) as exc:
        print(f"PROBLEM {exc.one_line() if isinstance(exc, UserError) else exc}")
        return None


def pixel_caps(dataset: Mapping[str, Any]) -> tuple[int, int]:
    """The (min_pixels, max_pixels) the dataset was built for, the defaults where it does not say."""
    return int(dataset.get("min_pixels") or vlm.DEFAULT_MIN_PIXELS), int(dataset.get("max_pixels") or vlm.DEFAULT_MAX_PIXELS)


# ---------------------------------------------------------------- fast checks
def example_problems(example: Any, prompt_text: Optional[str] = None) -> list[str]:
    """What is wrong with one example's shape: the chat format, the tags, the answer JSON, the prompt."""
    if not isinstance(example, Mapping) or not all(k in example for k in ("messages", "ground_truth_tags", "photo_id")):
        return ["not an example: needs messages, ground_truth_tags and photo_id"]
    problems = []
    messages = example["messages"]
    if not isinstance(messages, list) or [m.get("role") if isinstance(m, Mapping) else None for m in messages] != ["user", "assistant"]:
        return ["messages must be one user turn then one assistant turn"]
    tags = example["ground_truth_tags"]
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
        problems.append("ground_truth_tags must be a non-empty list of non-empty strings")
    try:
        image = curate.example_image(example)
        prompt = curate.example_prompt(example)
        answer = curate.example_answer(example)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [*problems, f"malformed messages: {exc}"]
    if not isinstance(image, str) or not image:
        problems.append("the user turn's image is not a URL or path")
    if prompt_text is not None and prompt != prompt_text:
        problems.append("the user turn's text is not the dataset's prompt_text")
    try:
        parsed = json.loads(answer)
    except (TypeError, ValueError):
        return [*problems, f"assistant answer is not JSON: {str(answer)[:80]!r}"]
    if not isinstance(parsed, dict) or set(parsed) != {"tags"} or not isinstance(parsed["tags"], list):
        problems.append('assistant answer is not {"tags": [...]}')
    elif parsed["tags"] != tags:
        problems.append("assistant answer's tags differ from ground_truth_tags")
    return problems


def find_problems(dataset: Mapping[str, Any]) -> list[str]:
    """Everything that would make training or evaluation wrong, found without loading an image.

    Empty splits, malformed examples, a photo twice in a split or in both splits, a held-out
    photo in the dataset, a prompt_hash that does not match prompt_text.
    """
    missing = [name for name in SPLITS if dataset.get(name) is None]
    if missing:
        return [f"{dataset.get('run', 'the dataset')} has no {', '.join(missing)}: is it a PrepareVLMData run?"]
    problems = []
    prompt_text = dataset.get("prompt_text")
    if prompt_text is not None and dataset.get("prompt_hash") not in (None, curate.prompt_hash(prompt_text)):
        problems.append("prompt_hash does not match prompt_text")
    held_out = set(dataset.get("held_out_ids") or ())
    ids_by_split: dict[str, list[str]] = {}
    for split in SPLITS:
        examples = dataset[split]
        if not examples:
            problems.append(f"{split} is empty")
        ids = ids_by_split[split] = []
        for i, example in enumerate(examples):
            photo_id = example.get("photo_id") if isinstance(example, Mapping) else None
            problems += [f"{split}[{i}] (photo {photo_id}): {p}" for p in example_problems(example, prompt_text)]
            if photo_id is not None:
                ids.append(str(photo_id))
        problems += [f"{split}: photo {pid} appears {n} times" for pid, n in Counter(ids).items() if n > 1]
        problems += [f"{split}: photo {pid} is held out for evaluation (a leak)" for pid in dict.fromkeys(ids) if pid in held_out]
    both = sorted(set(ids_by_split["train_examples"]) & set(ids_by_split["validation_examples"]))
    problems += [f"photo {pid} is in both train and validation" for pid in both]
    return problems


def run_check(dataset: Mapping[str, Any], out: Optional[TextIO] = None) -> int:
    """Print the problems of `dataset` (or that there are none) and return the exit code: 1 on any problem."""
    def say(line: str) -> None:
        print(line, file=out)

    problems = find_problems(dataset)
    train, validation = (len(dataset.get(name) or ()) for name in SPLITS)
    say(f"{dataset.get('run', 'dataset')}: {train} train and {validation} validation examples.")
    for problem in problems:
        say(f"PROBLEM {problem}")
    say(f"{len(problems)} problems found." if problems else "OK: no problems found.")
    return 1 if problems else 0


# ---------------------------------------------------------------- deep report
def _stats(values: Sequence[float]) -> Optional[dict[str, float]]:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "mean": round(statistics.fmean(ordered), 2),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def tag_report(examples: Sequence[Mapping[str, Any]], validation_ids: Iterable[str], top: int = 20) -> dict[str, Any]:
    """Tag frequency and its long tail, tags per photo, and validation tags never seen in training."""
    counts = Counter(tag for example in examples for tag in example["ground_truth_tags"])
    per_photo = [len(example["ground_truth_tags"]) for example in examples]
    validation_ids = set(validation_ids)
    train_tags = {t for e in examples if e["photo_id"] not in validation_ids for t in e["ground_truth_tags"]}
    validation_tags = {t for e in examples if e["photo_id"] in validation_ids for t in e["ground_truth_tags"]}
    seen_once = sorted(tag for tag, n in counts.items() if n == 1)
    return {
        "distinct": len(counts),
        "total": sum(counts.values()),
        "top": counts.most_common(top),
        "seen_once": len(seen_once),
        "seen_once_share": round(len(seen_once) / len(counts), 3) if counts else 0.0,
        "seen_once_examples": seen_once[:top],
        "seen_at_most_twice": sum(1 for n in counts.values() if n <= 2),
        "tags_per_photo": _stats(per_photo),
        "tags_per_photo_histogram": dict(sorted(Counter(per_photo).items())),
        "validation_only": sorted(validation_tags - train_tags),
    }


def _readable(example: Any) -> bool:
    """Whether the deep report can read an example at all (find_problems reports the ones it cannot)."""
    try:
        return bool(curate.example_image(example)) and isinstance(example["ground_truth_tags"], list)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def _inspect(example: Mapping[str, Any], max_side: int) -> dict[str, Any]:
    """Load one example's image: its size, pixel digest, and a copy shrunk the way training shrinks it."""
    row: dict[str, Any] = {"photo_id": example["photo_id"]}
    try:
        image = load_image(curate.example_image(example))
    except (ImageFetchError, ValueError) as exc:
        return {**row, "error": str(exc)}
    row.update(width=image.width, height=image.height, digest=curate.image_digest(image))
    image.thumbnail((max_side, max_side))
    return {**row, "image": image}


def _token_counts(row: dict[str, Any], example: Mapping[str, Any], processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Image tokens from the pixel caps; total and answer tokens when a processor is at hand."""
    image = row.pop("image")
    row["image_tokens"] = vlm.image_token_count(image.width, image.height, min_pixels, max_pixels)
    if processor is not None:
        batch = vlm.encode_chats(processor, [example["messages"]], [image], add_generation_prompt=False)
        row["total_tokens"] = int(batch["input_ids"].shape[1])
        answer = curate.example_answer(example) + vlm.END_OF_TURN
        row["answer_tokens"] = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"])


def image_report(
    examples: Sequence[Mapping[str, Any]],
    min_side: int,
    min_pixels: int,
    max_pixels: int,
    processor: Any = None,
    workers: int = curate.DEFAULT_WORKERS,
) -> list[dict[str, Any]]:
    """One row per example: size and digest of its image (or the error), image tokens, and with a processor
    the example's total tokens and answer tokens, as training sees it (image shrunk, then capped)."""
    max_side = vlm.max_side_for(max_pixels)
    rows = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(examples), CHUNK):
            chunk = examples[start : start + CHUNK]
            for example, row in zip(chunk, pool.map(lambda e: _inspect(e, max_side), chunk)):
                if "image" in row:
                    row["tiny"] = min(row["width"], row["height"]) < min_side
                    _token_counts(row, example, processor, min_pixels, max_pixels)
                rows.append(row)
    return rows


def _shared(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Groups of distinct photo ids that share a key (an image digest, an image location)."""
    groups: dict[str, dict[str, None]] = {}
    for key, photo_id in pairs:
        groups.setdefault(key, {})[photo_id] = None
    return [list(ids) for ids in groups.values() if len(ids) > 1]


def diagnose(dataset: Mapping[str, Any], processor: Any = None, processor_note: str = "", top: int = 20) -> dict[str, Any]:
    """The deep report on a dataset as a JSON-ready dict: problems, counts, tags, images, duplicates, leaks,
    tokens, and one row per example (image size, digest or error, token counts).

    `processor` (from vlm.load_processor with the dataset's pixel caps) adds total and answer token
    lengths per example; without it `tokens["skipped"]` says why they are missing.
    """
    train = [e for e in dataset.get("train_examples") or [] if _readable(e)]
    validation = [e for e in dataset.get("validation_examples") or [] if _readable(e)]
    examples = train + validation
    split_of = {e["photo_id"]: "train" for e in train} | {e["photo_id"]: "validation" for e in validation}
    settings = dataset.get("curation_settings") or {}
    min_pixels, max_pixels = pixel_caps(dataset)
    rows = image_report(examples, int(settings.get("min_side") or curate.DEFAULT_MIN_SIDE), min_pixels, max_pixels, processor)
    loaded = [r for r in rows if "error" not in r]

    same_image = _shared([(row["digest"], row["photo_id"]) for row in loaded])
    same_location = _shared([(curate.example_image(e), e["photo_id"]) for e in examples])
    held_out = set(dataset.get("held_out_ids") or ())
    train_ids = [e["photo_id"] for e in train]
    validation_ids = [e["photo_id"] for e in validation]

    tokens: dict[str, Any] = {"min_pixels": min_pixels, "max_pixels": max_pixels, "caps": vlm.pixel_caps_note(min_pixels, max_pixels)}
    tokens["image_tokens"] = _stats([r["image_tokens"] for r in loaded])
    if processor is None:
        tokens["skipped"] = processor_note or "no --processor given: total and answer token lengths not measured"
    else:
        tokens["total_tokens"] = _stats([r["total_tokens"] for r in loaded])
        tokens["answer_tokens"] = _stats([r["answer_tokens"] for r in loaded])
        tokens["longest"] = [
            {"photo_id": r["photo_id"], "total_tokens": r["total_tokens"]}
            for r in sorted(loaded, key=lambda r: -r["total_tokens"])[:5]
        ]
    return {
        "run": dataset.get("run"),
        "problems": find_problems(dataset),
        "counts": {
            "train": len(dataset.get("train_examples") or []),
            "validation": len(dataset.get("validation_examples") or []),
            "dropped": len(dataset.get("dropped") or []),
            "held_out_ids": len(held_out),
        },
        "dropped_by_reason": curate.dropped_counts(dataset.get("dropped") or []),
        "tags": tag_report(examples, validation_ids, top),
        "images": {
            "checked": len(rows),
            "broken": [{"photo_id": r["photo_id"], "error": r["error"]} for r in rows if "error" in r],
            "tiny": [{"photo_id": r["photo_id"], "size": f"{r['width']}x{r['height']}"} for r in loaded if r["tiny"]],
            "shorter_side": _stats([min(r["width"], r["height"]) for r in loaded]),
            "longer_side": _stats([max(r["width"], r["height"]) for r in loaded]),
        },
        "duplicates": {
            "photo_ids": sorted(pid for pid, n in Counter(train_ids + validation_ids).items() if n > 1),
            "same_image": same_image,
            "same_location": same_location,
        },
        "leaks": {
            "in_both_splits": sorted(set(train_ids) & set(validation_ids)),
            "held_out_in_dataset": sorted(held_out & set(split_of)),
            "same_image_across_splits": [ids for ids in same_image if len({split_of[i] for i in ids}) > 1],
        },
        "tokens": tokens,
        "examples": [{**row, "split": split_of[row["photo_id"]]} for row in rows],
    }


def _fmt_stats(stats: Optional[Mapping[str, float]]) -> str:
    if not stats:
        return "n/a"
    return f"min {stats['min']}, median {stats['median']}, mean {stats['mean']}, p95 {stats['p95']}, max {stats['max']}"


def format_report(report: Mapping[str, Any]) -> list[str]:
    """The report as the lines diagnose_data.py prints."""
    counts, tags, images, dups, leaks, tokens = (
        report[k] for k in ("counts", "tags", "images", "duplicates", "leaks", "tokens")
    )
    dropped = ", ".join(f"{code} {n}" for code, n in report["dropped_by_reason"].items()) or "none"
    lines = [
        f"Dataset {report.get('run') or ''}".rstrip(),
        *(f"  PROBLEM {p}" for p in report["problems"]),
        f"  {counts['train']} train, {counts['validation']} validation; dropped {counts['dropped']} ({dropped}); "
        f"{counts['held_out_ids']} ids held out for evaluation",
        "Tags",
        f"  {tags['distinct']} distinct, {tags['total']} in all; top: "
        + ", ".join(f"{tag} {n}" for tag, n in tags["top"][:10]),
        f"  long tail: {tags['seen_once']} tags seen once ({tags['seen_once_share']:.0%} of distinct), "
        f"{tags['seen_at_most_twice']} seen at most twice",
        f"  tags per photo: {_fmt_stats(tags['tags_per_photo'])}",
        "  histogram: " + ", ".join(f"{k} tags: {v}" for k, v in tags["tags_per_photo_histogram"].items()),
        f"  validation tags never seen in training: {len(tags['validation_only'])}"
        + (f" ({', '.join(tags['validation_only'][:10])})" if tags["validation_only"] else ""),
        "Images",
        f"  {images['checked']} checked; {len(images['broken'])} broken, {len(images['tiny'])} tiny",
        f"  shorter side px: {_fmt_stats(images['shorter_side'])}",
        *(f"  broken {b['photo_id']}: {b['error']}" for b in images["broken"]),
        *(f"  tiny {t['photo_id']}: {t['size']}" for t in images["tiny"]),
        "Duplicates",
        f"  photo ids: {', '.join(dups['photo_ids']) or 'none'}",
        f"  same image: {'; '.join(' = '.join(ids) for ids in dups['same_image']) or 'none'}",
        f"  same image location: {'; '.join(' = '.join(ids) for ids in dups['same_location']) or 'none'}",
        "Leaks",
        f"  in both splits: {', '.join(leaks['in_both_splits']) or 'none'}",
        f"  held-out ids in the dataset: {', '.join(leaks['held_out_in_dataset']) or 'none'}",
        f"  same image in both splits: {'; '.join(' = '.join(ids) for ids in leaks['same_image_across_splits']) or 'none'}",
        f"Tokens per example ({tokens['caps']})",
        f"  image tokens: {_fmt_stats(tokens['image_tokens'])}",
    ]
    if "skipped" in tokens:
        lines.append(f"  total and answer tokens: skipped ({tokens['skipped']})")
    else:
        lines += [
            f"  total tokens: {_fmt_stats(tokens['total_tokens'])}",
            f"  answer tokens (the supervised part): {_fmt_stats(tokens['answer_tokens'])}",
            "  longest: " + ", ".join(f"{r['photo_id']} {r['total_tokens']}" for r in tokens["longest"]),
        ]
    return lines
