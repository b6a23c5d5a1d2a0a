"""UpdatePhotos' state: what a run stores stays bounded by its batch however long the branch has run."""
from __future__ import annotations

import pickle

import pytest

from phototagger.blobs import MemoryBlobStore
from phototagger.ingest import state
from phototagger.records import Photo


def photo(photo_id: str, *tags: str) -> Photo:
    return Photo(id=photo_id, image_url=f"/photos/{photo_id}.jpg", ground_truth_tags=list(tags), source="demo")


KEY_BYTES = 48  # one more sealed chunk's key in the pickled `delivered`


def rounds(store: MemoryBlobStore, count: int, batch_size: int = 10, tags: tuple[str, ...] = ()) -> list[tuple[int, int]]:
    """Fold `count` batches; per round, the bytes it stores (`delivered` and new blobs) and the pickled state's size."""
    current, stored = state.empty_state(), []
    for round_no in range(count):
        batch = {f"r{round_no}-{i:03}": photo(f"r{round_no}-{i:03}", *tags) for i in range(batch_size)}
        written = store.bytes_written
        current = state.fold_batch(store, current, batch, seed=str(round_no))
        stored.append((len(pickle.dumps(current["delivered"])) + store.bytes_written - written, len(pickle.dumps(current))))
    return stored


def test_a_run_stores_no_more_ids_after_many_runs_than_after_a_few(monkeypatch):
    monkeypatch.setattr(state, "CHUNK_IDS", 40)
    stored = rounds(MemoryBlobStore(), 60)

    # Four batches of 10 fill a chunk, so the 2nd and the 58th run are in the same phase: they store the
    # same ids, the 58th lists 14 more sealed chunks (a key each), and no run stores more than the first ones did.
    assert stored[1][0] < stored[57][0] <= stored[1][0] + 14 * KEY_BYTES
    assert max(size for size, _ in stored[40:]) <= max(size for size, _ in stored[:20]) + 15 * KEY_BYTES


def test_sealed_chunks_are_written_once_and_hold_every_id(monkeypatch):
    monkeypatch.setattr(state, "CHUNK_IDS", 8)
    store = MemoryBlobStore()
    current = state.empty_state()
    for round_no in range(10):
        current = state.fold_batch(store, current, {f"p{round_no}-{i}": photo(f"p{round_no}-{i}") for i in range(3)})

    assert state.delivered_ids(store, current["delivered"]) == {f"p{r}-{i}" for r in range(10) for i in range(3)}
    assert len(current["delivered"]["chunks"]) == 3 and len(current["delivered"]["tail"]) == 6
    assert len(store.blobs) == 3  # untagged photos never enter the reference sample


def test_tag_stats_count_every_tagged_photo_without_keeping_them():
    current = state.fold_batch(MemoryBlobStore(), state.empty_state(), {"a": photo("a", "Cat", "sky"), "b": photo("b", "sky"), "c": photo("c")})

    assert current["tag_stats"] == {"photos": 2, "tags": {"cat": 1, "sky": 2}, "sizes": {2: 1, 1: 1}}


@pytest.mark.parametrize("batch_size", [10, 60])
def test_the_reference_sample_stays_near_its_cap_and_state_size_stops_growing(monkeypatch, batch_size):
    monkeypatch.setattr(state, "REFERENCE_PHOTOS", 100)
    store = MemoryBlobStore()
    stored = rounds(store, 80, batch_size, tags=("sky",))
    current = state.empty_state()
    for round_no in range(80):
        batch = {f"r{round_no}-{i}": photo(f"r{round_no}-{i}", "sky") for i in range(batch_size)}
        current = state.fold_batch(store, current, batch, seed=str(round_no))

    assert len(state.reference_photos(store, current["reference"])) <= 100 + batch_size
    assert len(current["reference"]["chunks"]) <= 100 // batch_size + 1
    assert current["reference"]["batches"] == 80
    assert stored[-1][1] < 2 * stored[len(stored) // 2][1]
