"""The prompt flows' fan-out: one task per (model, prompt variant, shard of photos), joined back in photo order.

A batch of 100,000 photos is not one task per model: `plan` cuts it into shards of `shard_size`
photos, so `--with kubernetes` or Argo spreads it over many pods, and a small batch stays one task
per (model, prompt). A model's concurrency is shared by its tasks: each gets
`max(1, concurrency // tasks)` calls in flight (its prompts x shards), so a model's calls in flight
stay within its concurrency as long as no more of its tasks than that run at once (Metaflow's
`run --max-workers` bounds the tasks of a local run, `argo-workflows create --max-workers` a
deployed one), and each task's AdaptiveLimiter still backs off on the vendor's 429s.
`join` puts the shards back together and checks that every photo is there once, in photo order.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, TypedDict

from phototagger.prompting.providers import reads_prompt
from phototagger.prompting.variants import PromptVariant
from phototagger.records import ModelResult, Photo
from phototagger.scoring.evals import RowKey, model_key

DEFAULT_SHARD_SIZE = 500


class WorkItem(TypedDict):
    """One foreach task: a model (its models.json entry) on one prompt variant and one shard of the batch."""

    entry: dict[str, Any]
    variant: PromptVariant
    shard: int  # 0-based, in photo order
    shards: int  # how many shards the batch has
    start: int  # the shard's photos: [start, stop) of the batch in photo order
    stop: int
    concurrency: int  # this task's share of the model's concurrency


class ShardOutput(TypedDict):
    item: WorkItem
    results: list[ModelResult]
    skip_reason: Optional[str]


def shard_ranges(n_photos: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) index ranges of `shard_size` photos covering 0..n_photos; one empty range for an empty batch."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1 photo per task, got {shard_size}")
    return [(start, min(start + shard_size, n_photos)) for start in range(0, n_photos, shard_size)] or [(0, 0)]


def share(concurrency: int, tasks: int) -> int:
    """A task's share of a model's concurrency when `tasks` tasks of that model may run at once (at least 1)."""
    return max(1, concurrency // max(1, tasks))


def plan(
    entries: Sequence[Mapping[str, Any]],
    variants: Sequence[PromptVariant],
    n_photos: int,
    shard_size: int = DEFAULT_SHARD_SIZE,
    concurrency: int = 1,
) -> list[WorkItem]:
    """The foreach items: every model x every variant x every shard, model by model, shards in photo order.
    A model that reads no prompt (the offline baselines) runs on the first variant only: its answers would
    be the same on every variant, so it is one ranking row.

    `concurrency` is the default calls in flight per model; an entry's own "concurrency" wins."""
    ranges = shard_ranges(n_photos, shard_size)
    items = []
    for entry in entries:
        own_variants = variants if reads_prompt(entry["provider"]) else variants[:1]
        own = share(int(entry.get("concurrency") or concurrency), len(own_variants) * len(ranges))
        for variant in own_variants:
            for shard, (start, stop) in enumerate(ranges):
                items.append(WorkItem(entry=dict(entry), variant=variant, shard=shard, shards=len(ranges),
                                      start=start, stop=stop, concurrency=own))
    return items


def item_model(item: WorkItem) -> str:
    return model_key(item["entry"]["provider"], item["entry"]["model"])


def item_variant(item: WorkItem) -> Optional[str]:
    """The prompt variant the item's results are labelled with; None for a model that reads no prompt."""
    return item["variant"]["id"] if reads_prompt(item["entry"]["provider"]) else None


def item_row(item: WorkItem) -> str:
    """The ranking row the item's results go to: `provider:model | variant@hash`, or the model alone."""
    return str(RowKey(item_model(item), item_variant(item) or ""))


def shard_photos(photos: Mapping[str, Photo], item: WorkItem) -> list[Photo]:
    """The item's photos, from the batch (photo id -> Photo) in its stored order."""
    return list(photos.values())[item["start"] : item["stop"]]


def join(outputs: Iterable[ShardOutput], photo_ids: Sequence[str]) -> tuple[dict[str, list[ModelResult]], dict[str, str]]:
    """(results by row key, skipped models: model key -> reason) from the tasks' outputs, in any order.

    Each row's shards are concatenated in shard order and every record is labelled with its
    `prompt_variant`. A model is skipped when a shard skipped it (the reason does not depend on the
    shard: a missing key, no history). Raises RuntimeError when a row lacks a shard or a photo, or has
    one twice: a bug, never a result to store.
    """
    by_row: dict[str, dict[int, ShardOutput]] = {}
    skipped: dict[str, str] = {}
    for out in outputs:
        item = out["item"]
        shards = by_row.setdefault(item_row(item), {})
        if item["shard"] in shards:
            raise RuntimeError(f"{item_row(item)}: shard {item['shard']} joined twice")
        shards[item["shard"]] = out
        if out["skip_reason"]:
            skipped.setdefault(item_model(item), out["skip_reason"])
    results: dict[str, list[ModelResult]] = {}
    for row, shards in by_row.items():
        first = next(iter(shards.values()))["item"]
        if sorted(shards) != list(range(first["shards"])):
            raise RuntimeError(f"{row}: joined shards {sorted(shards)} of {first['shards']}")
        if item_model(first) in skipped:
            continue
        rows = [dict(r, prompt_variant=item_variant(first)) for i in range(first["shards"]) for r in shards[i]["results"]]
        if [r.get("photo_id") for r in rows] != list(photo_ids):
            raise RuntimeError(f"{row}: the joined results are not the batch's {len(photo_ids)} photos in order")
        if rows:
            results[row] = rows  # type: ignore[assignment]
    return results, skipped


def models_eval(batch_id: str, batch_date: str, photos: Mapping[str, Photo], results: Mapping[str, list[ModelResult]],
                variants: Iterable[PromptVariant]) -> dict[str, Any]:
    """The `models_eval` artifact both prompt flows store from their join (DESIGN.md), EvaluationFlow's input: the
    batch, its photos, the joined results by row key and the text of each prompt variant by id."""
    return {"batch_id": batch_id, "batch_date": batch_date, "photos": photos, "results": results,
            "prompts": {v["id"]: v["text"] for v in variants}}
