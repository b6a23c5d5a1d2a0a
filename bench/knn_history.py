"""What an hourly run costs as history grows: knn's time and UpdatePhotos' stored bytes.

In one run, in-process (no Runner), this prints:
  1. knn per-run time on a batch of 30 new photos with 100 and with 5,000 earlier photos, after a
     first run has stored their features (UpdatePhotos' reference sample bounds what knn compares
     with to about state.REFERENCE_PHOTOS, 150). Target (issue 12): ratio within 1.5x.
  2. knn's avg recall on the demo set's last 6 photos with the first 12 as history, at several
     caps of the reference sample and with no cap: what the cap costs in recall.
  3. bytes a run stores for its state (artifacts and new blobs), the mean of the 10 rounds up to K=10, 100
     and 1,000 rounds of 30 photos, beside what storing all of `history` again (the old design) would take.

    .venv/bin/python bench/knn_history.py        # a few minutes on 2 busy cores
"""
from __future__ import annotations

import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phototagger.blobs import MemoryBlobStore  # noqa: E402
from phototagger.ingest import state  # noqa: E402
from phototagger.ingest.sources.demo import DemoSource  # noqa: E402
from phototagger.prompting.providers import make_provider  # noqa: E402
from phototagger.scoring.metrics import score_photo  # noqa: E402
from phototagger.scoring.tags import parse_tags  # noqa: E402

BATCH = 30
VOCABULARY = [f"tag{i}" for i in range(300)]


def synthetic_photos(folder: Path, count: int, prefix: str) -> list[dict]:
    rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
    photos = []
    for i in range(count):
        path = folder / f"{prefix}{i}.png"
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.normal(0, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
        tags = list(rng.choice(VOCABULARY, 5, replace=False))
        photos.append({"id": f"{prefix}{i}", "image_url": str(path), "ground_truth_tags": tags})
    return photos


def sampled_state(photos: list[dict]) -> tuple[MemoryBlobStore, state.IngestState]:
    store, current = MemoryBlobStore(), state.empty_state()
    for start in range(0, len(photos), BATCH):
        batch = {p["id"]: p for p in photos[start : start + BATCH]}
        current = state.fold_batch(store, current, batch, seed=str(start))
    return store, current


def knn_run(store, current, queries) -> float:
    """One PromptModels knn task: build the provider from the state, tag every query; seconds."""
    started = time.perf_counter()
    knn = make_provider("knn", "jec", history=state.reference_photos(store, current["reference"]), tag_stats=current["tag_stats"])
    for photo in queries:
        knn.complete("", photo["image_url"], photo_id=photo["id"])
    return time.perf_counter() - started


def knn_time(folder: Path, history_size: int) -> float:
    history = synthetic_photos(folder, history_size, f"h{history_size}-")
    queries = synthetic_photos(folder, BATCH, f"q{history_size}-")
    store, current = sampled_state(history)
    knn_run(store, current, queries)  # the first run computes and stores the features
    return statistics.median(knn_run(store, current, queries) for _ in range(3))


def demo_recall(cap: int) -> float:
    photos = DemoSource().fetch(set(), 100)
    history, queries = photos[:12], photos[12:]
    state.REFERENCE_PHOTOS = cap
    store, current = MemoryBlobStore(), state.empty_state()
    for photo in history:  # batches of one, so a cap can fall between photos
        current = state.fold_batch(store, current, {photo["id"]: photo}, seed=photo["id"])
    knn = make_provider("knn", "jec", history=state.reference_photos(store, current["reference"]), tag_stats=current["tag_stats"])
    recalls = [
        score_photo(p["ground_truth_tags"], parse_tags(knn.complete("", p["image_url"], photo_id=p["id"]).text).tags)["recall"]
        for p in queries
    ]
    return statistics.mean(r for r in recalls if r is not None)


def stored_bytes(rounds: int, window: int = 10) -> tuple[float, int]:
    """Mean bytes one of the `window` rounds up to round `rounds` stores (state artifacts + new blobs: a round
    that seals a chunk of ids writes more than the others), and what the old design stored in the last one."""
    store, current, history, per_round = MemoryBlobStore(), state.empty_state(), {}, []
    for round_no in range(rounds + 1):
        batch = {
            f"r{round_no}-{i}": {"id": f"r{round_no}-{i}", "image_url": f"https://images.example/{round_no}/{i}.jpg",
                                 "ground_truth_tags": VOCABULARY[i : i + 5], "source": "unsplash", "created_at": "2026-01-01T00:00:00Z"}
            for i in range(BATCH)
        }
        written = store.bytes_written
        current = state.fold_batch(store, current, batch, seed=str(round_no))
        per_round.append(len(pickle.dumps(current)) + store.bytes_written - written + len(pickle.dumps(batch)))
        old_state = len(pickle.dumps(history)) + len(pickle.dumps(batch))
        history.update(batch)
    return statistics.mean(per_round[-window:]), old_state


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PHOTOTAGGER_CACHE_DIR"] = str(Path(tmp) / "cache")
        small, large = knn_time(Path(tmp), 100), knn_time(Path(tmp), 5000)
    print(f"knn per run, {BATCH} new photos: history=100 {small:.2f}s history=5000 {large:.2f}s "
          f"ratio={large / small:.2f} (target <= 1.5; reference sample ~{state.REFERENCE_PHOTOS} photos)")
    caps = {cap: demo_recall(cap) for cap in (3, 6, 9)}
    no_cap = demo_recall(10**9)
    print("knn avg recall on the demo set (12 history photos, 6 queries): "
          + " ".join(f"cap={cap} {recall:.1f}%" for cap, recall in caps.items()) + f" no_cap {no_cap:.1f}%")
    sizes = {k: stored_bytes(k) for k in (10, 100, 1000)}
    print(f"UpdatePhotos stored bytes per run ({BATCH} photos, mean of the 10 rounds up to K): "
          + " ".join(f"K={k} {new:,.0f}" for k, (new, _) in sizes.items())
          + f" ratio K=100/K=10 {sizes[100][0] / sizes[10][0]:.2f}; old design, the K-th round: "
          + " ".join(f"K={k} {old:,}" for k, (_, old) in sizes.items()))


if __name__ == "__main__":
    main()
