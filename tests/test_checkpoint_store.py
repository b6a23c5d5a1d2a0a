"""Checkpoints in the datastore: a fresh machine gets the newest complete one back, never a half-uploaded one."""
from __future__ import annotations

from pathlib import Path

import pytest
from metaflow.plugins.datastores.local_storage import LocalStorage

from phototagger.training import checkpoint_store
from phototagger.training.checkpoint_store import CheckpointStore

PREFIX = "FineTuneVLM/checkpoints/7/train"


def trainer_checkpoint(root: Path, step: int) -> Path:
    """A directory shaped like the Trainer's checkpoint-<step>, with a nested file."""
    step_dir = root / f"checkpoint-{step}"
    (step_dir / "nested").mkdir(parents=True)
    (step_dir / "adapter_model.safetensors").write_bytes(bytes([step]) * 1000)
    (step_dir / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (step_dir / "nested" / "rng_state.pth").write_bytes(b"rng" * step)
    return step_dir


class FailingAfter(LocalStorage):
    """A datastore whose connection drops after `writes` more files."""

    def __init__(self, root: str, writes: int):
        super().__init__(root)
        self.writes = writes

    def save_bytes(self, path_and_bytes_iter, overwrite=False, len_hint=0):
        if self.writes == 0:
            raise ConnectionError("pod lost")
        self.writes -= 1
        super().save_bytes(path_and_bytes_iter, overwrite, len_hint)


@pytest.fixture
def storage(tmp_path) -> LocalStorage:
    return LocalStorage(str(tmp_path / "datastore"))


def test_a_fresh_machine_gets_the_newest_checkpoint_back_from_the_datastore(storage, tmp_path):
    pod = CheckpointStore(storage, PREFIX, tmp_path / "pod-1")
    for step in (2, 4):
        pod.save(trainer_checkpoint(tmp_path / "pod-1", step))

    restored = CheckpointStore(storage, PREFIX, tmp_path / "pod-2").latest()

    assert restored == tmp_path / "pod-2" / "checkpoint-4"
    written = tmp_path / "pod-1" / "checkpoint-4"
    assert sorted(p.relative_to(restored) for p in restored.rglob("*") if p.is_file()) == sorted(
        p.relative_to(written) for p in written.rglob("*") if p.is_file())
    assert (restored / "adapter_model.safetensors").read_bytes() == bytes([4]) * 1000
    assert (restored / "nested" / "rng_state.pth").read_bytes() == b"rng" * 4


def test_nothing_stored_yet_means_no_checkpoint(storage, tmp_path):
    CheckpointStore(storage, "FineTuneVLM/checkpoints/6/train", tmp_path / "a").save(trainer_checkpoint(tmp_path / "a", 2))

    assert CheckpointStore(storage, PREFIX, tmp_path / "b").latest() is None


@pytest.mark.parametrize("writes", [1, 2, 3])
def test_a_half_uploaded_checkpoint_is_never_resumed(tmp_path, writes):
    root = str(tmp_path / "datastore")
    pod = CheckpointStore(LocalStorage(root), PREFIX, tmp_path / "pod-1")
    for step in (2, 4):
        pod.save(trainer_checkpoint(tmp_path / "pod-1", step))

    with pytest.raises(ConnectionError):
        CheckpointStore(FailingAfter(root, writes), PREFIX, tmp_path / "pod-1").save(trainer_checkpoint(tmp_path / "pod-1", 6))

    restored = CheckpointStore(LocalStorage(root), PREFIX, tmp_path / "pod-2").latest()
    assert restored == tmp_path / "pod-2" / "checkpoint-4"
    assert (restored / "adapter_model.safetensors").read_bytes() == bytes([4]) * 1000


def test_the_datastore_keeps_as_many_checkpoints_as_asked_writing_over_the_oldest(storage, tmp_path):
    pod = CheckpointStore(storage, PREFIX, tmp_path / "pod-1", keep=2)
    for step in (2, 4, 6):
        pod.save(trainer_checkpoint(tmp_path / "pod-1", step))

    assert len(storage.list_content([PREFIX])) == 2
    assert CheckpointStore(storage, PREFIX, tmp_path / "pod-2").latest() == tmp_path / "pod-2" / "checkpoint-6"


def test_a_slot_being_written_over_is_never_resumed_as_a_mix_of_two_checkpoints(tmp_path):
    root = str(tmp_path / "datastore")
    CheckpointStore(LocalStorage(root), PREFIX, tmp_path / "pod-1", keep=1).save(trainer_checkpoint(tmp_path / "pod-1", 2))

    with pytest.raises(ConnectionError):
        CheckpointStore(FailingAfter(root, 2), PREFIX, tmp_path / "pod-1", keep=1).save(trainer_checkpoint(tmp_path / "pod-1", 4))

    assert CheckpointStore(LocalStorage(root), PREFIX, tmp_path / "pod-2", keep=1).latest() is None


def test_a_cached_file_of_the_right_size_but_other_content_is_fetched_again(storage, tmp_path):
    """A file the cache holds at the stored size is still checked by content: a torn or stale write of the
    same length (optimizer state, weights) is replaced with the datastore's copy, not resumed from."""
    pod = CheckpointStore(storage, PREFIX, tmp_path / "pod-1")
    pod.save(trainer_checkpoint(tmp_path / "pod-1", 2))
    cached = tmp_path / "pod-1" / "checkpoint-2" / "adapter_model.safetensors"
    cached.write_bytes(bytes([9]) * 1000)  # same size as the stored file, other bytes

    restored = pod.latest()

    assert (restored / "adapter_model.safetensors").read_bytes() == bytes([2]) * 1000


def test_a_cached_checkpoint_that_matches_is_not_fetched_again(storage, tmp_path, monkeypatch):
    pod = CheckpointStore(storage, PREFIX, tmp_path / "pod-1")
    pod.save(trainer_checkpoint(tmp_path / "pod-1", 2))
    fetched = []
    load_bytes = storage.load_bytes
    monkeypatch.setattr(storage, "load_bytes", lambda keys: fetched.extend(k for k in keys if "MANIFEST" not in k) or load_bytes(keys))

    assert pod.latest() == tmp_path / "pod-1" / "checkpoint-2"
    assert fetched == []


def test_checkpoint_directories_are_named_as_the_trainer_names_them():
    """The store spells out transformers' prefix so that it imports without transformers; the two must agree."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    assert checkpoint_store.PREFIX_CHECKPOINT_DIR == PREFIX_CHECKPOINT_DIR
