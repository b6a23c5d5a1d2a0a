"""What UpdatePhotos carries from run to run, bounded by the new batch plus a small constant.

A run stores, besides its batch (`unseen`), the state of everything delivered before it:
- `delivered`: the ids, as sealed chunks of CHUNK_IDS ids kept in Metaflow's content-addressed
  store (a chunk is written once: the same ids give the same key, and nothing rewrites it) plus
  the unsealed `tail` (< CHUNK_IDS ids), so a run stores at most CHUNK_IDS + its batch ids and one
  key per sealed chunk, however long the branch has run.
- `tag_stats`: how many tagged photos, how many carry each tag, how many have n tags: the prior
  baseline's whole input, bounded by the vocabulary.
- `reference`: a uniform sample of earlier batches (reservoir sampling over batches, about
  REFERENCE_PHOTOS photos), each batch's tagged photos a blob written once in the same store: what
  the knn baseline compares with, so its per-run cost is bounded too.
A run folds the previous run's batch into the previous run's state; it never reads older runs.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from typing import Collection, Mapping, Optional, TypedDict

from phototagger.blobs import BlobStore
from phototagger.records import Photo
from phototagger.scoring.tags import normalise_tags

CHUNK_IDS = 1024  # ids per sealed chunk: bounds the tail a run rewrites (~20 KB) and the keys it lists
REFERENCE_PHOTOS = 150  # about this many earlier photos in knn's sample: bench/knn_history.py measures time and recall against it


class Delivered(TypedDict):
    chunks: list[str]  # keys of sealed chunks of CHUNK_IDS ids, oldest first
    tail: list[str]  # ids delivered since the last sealed chunk
    count: int


class TagStats(TypedDict):
    photos: int  # photos with at least one ground-truth tag
    tags: dict[str, int]  # tag -> photos carrying it
    sizes: dict[int, int]  # number of tags -> photos with that many


class Reference(TypedDict):
    chunks: list[str]  # keys of sampled batches (their tagged photos, JSON)
    photos: list[int]  # photos in each sampled batch
    batches: int  # tagged batches seen, the reservoir's denominator


class IngestState(TypedDict):
    delivered: Delivered
    tag_stats: TagStats
    reference: Reference


def empty_state() -> IngestState:
    return IngestState(
        delivered=Delivered(chunks=[], tail=[], count=0),
        tag_stats=TagStats(photos=0, tags={}, sizes={}),
        reference=Reference(chunks=[], photos=[], batches=0),
    )


def fold_batch(store: BlobStore, state: IngestState, batch: Mapping[str, Photo], seed: str = "", again: Collection[str] = ()) -> IngestState:
    """The state once `batch` is delivered too; `seed` (the batch's id) makes the sample reproducible.
    Photos in `again` were delivered before (UpdatePhotos' `corrected`): they are counted once."""
    batch = {photo_id: photo for photo_id, photo in batch.items() if photo_id not in set(again)}
    tagged = [p for p in batch.values() if normalise_tags(p.get("ground_truth_tags") or [])]
    return IngestState(
        delivered=_add_ids(store, state["delivered"], list(batch)),
        tag_stats=_add_tags(state["tag_stats"], tagged),
        reference=_add_to_sample(store, state["reference"], tagged, seed),
    )


def delivered_ids(store: BlobStore, delivered: Delivered) -> set[str]:
    """Every delivered id: one load of the sealed chunks, plus the tail."""
    ids = set(delivered["tail"])
    for blob in store.load(delivered["chunks"]):
        ids.update(json.loads(blob))
    return ids


def reference_photos(store: BlobStore, reference: Reference) -> list[Photo]:
    """The sampled earlier photos, with their ground truth, oldest batch first."""
    return [photo for blob in store.load(reference["chunks"]) for photo in json.loads(blob)]


def _add_ids(store: BlobStore, delivered: Delivered, ids: list[str]) -> Delivered:
    tail = [*delivered["tail"], *ids]
    full = len(tail) // CHUNK_IDS * CHUNK_IDS
    sealed = store.save([_json(tail[i : i + CHUNK_IDS]) for i in range(0, full, CHUNK_IDS)]) if full else []
    return Delivered(chunks=[*delivered["chunks"], *sealed], tail=tail[full:], count=delivered["count"] + len(ids))


def _add_tags(stats: TagStats, tagged: list[Photo]) -> TagStats:
    tags, sizes = Counter(stats["tags"]), Counter(stats["sizes"])
    for photo in tagged:
        photo_tags = normalise_tags(photo["ground_truth_tags"])
        tags.update(photo_tags)
        sizes[len(photo_tags)] += 1
    return TagStats(photos=stats["photos"] + len(tagged), tags=dict(tags), sizes=dict(sizes))


def _add_to_sample(store: BlobStore, reference: Reference, tagged: list[Photo], seed: str) -> Reference:
    """Reservoir sampling over batches: a batch enters while the sample is under REFERENCE_PHOTOS, then
    replaces a random sampled batch with probability (sampled batches) / (batches seen)."""
    if not tagged:
        return reference
    chunks, photos, seen = list(reference["chunks"]), list(reference["photos"]), reference["batches"] + 1
    rng = random.Random(f"{seed}:{seen}")
    if sum(photos) + len(tagged) <= REFERENCE_PHOTOS or not chunks:
        slot: Optional[int] = len(chunks)
    else:
        pick = rng.randrange(seen)
        slot = pick if pick < len(chunks) else None
    if slot is not None:
        (key,) = store.save([_json(tagged)])
        chunks[slot:slot + 1], photos[slot:slot + 1] = [key], [len(tagged)]
    return Reference(chunks=chunks, photos=photos, batches=seen)


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
