"""Training checkpoints kept in Metaflow's datastore, so a retry on another machine resumes where a lost pod stopped.

The Trainer writes each checkpoint to a local directory (the cache); `train.UploadCheckpoints` copies it
to the datastore right after (`datastore_dirs`: file by file, each named in a manifest with its
size and sha256). A checkpoint is written into one of `keep` slots (the oldest is written over, as
the Trainer's save_total_limit rotates its local copies), files first and its manifest last, so a
slot whose manifest does not name its step is never resumed. `latest()` brings the newest complete
checkpoint back into the cache, keyed by a training id and step, not by the disk of the pod that
wrote it; a file the cache already holds is reused only when its content matches the manifest.

FineTuneVLM keys its checkpoints by the run id of the run that started the training: a `resume`
clones that run's `start`, and so does a resume of a resume, so every one of them continues from
the newest checkpoint any of them stored.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Optional, TypedDict

from phototagger.training import datastore_dirs
from phototagger.training.datastore_dirs import BlobStorage, FileEntry

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
# transformers' PREFIX_CHECKPOINT_DIR (its Trainer writes checkpoint-<step>), spelled out so that a pod restoring or
# storing checkpoints does not import transformers (seconds of CPU) before it needs to; a test checks they agree.
PREFIX_CHECKPOINT_DIR = "checkpoint"


class Manifest(TypedDict):
    """A slot's last-written file: which step it holds (None while being written) and its files."""

    step: Optional[int]
    files: dict[str, FileEntry]


def for_step(flow_name: str, training_id: str, step_name: str, cache_dir: str | Path, keep: int) -> "CheckpointStore":
    """The store of a training step in the configured datastore (the one its pods write to), at
    <flow>/checkpoints/<training id>/<step>: every attempt, and every resume, of that training finds the same checkpoints."""
    storage = datastore_dirs.configured_storage()
    return CheckpointStore(storage, storage.path_join(flow_name, "checkpoints", training_id, step_name), cache_dir, keep)


class CheckpointStore:
    """Checkpoints of one training step under `prefix` in the datastore, cached in `cache_dir`."""

    def __init__(self, storage: BlobStorage, prefix: str, cache_dir: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
        self.storage, self.prefix, self.cache_dir, self.keep = storage, prefix, Path(cache_dir), keep

    @property
    def uri(self) -> str:
        return self.storage.full_uri(self.prefix)

    def _slot(self, slot: int) -> str:
        return self.storage.path_join(self.prefix, f"slot-{slot}")

    def _manifests(self) -> list[Optional[Manifest]]:
        keys = [self.storage.path_join(self._slot(slot), MANIFEST) for slot in range(self.keep)]
        found: dict[str, Manifest] = {}
        with self.storage.load_bytes(keys) as loaded:
            for key, path, _ in loaded:
                if path is not None:
                    found[key] = json.loads(Path(path).read_text())
        return [found.get(key) for key in keys]

    def save(self, step_dir: str | Path) -> None:
        """Upload a checkpoint directory the Trainer has finished writing (`checkpoint-<step>`)."""
        step_dir = Path(step_dir)
        step = int(step_dir.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-"))
        files = datastore_dirs.describe(step_dir)
        manifests = self._manifests()
        slot = min(range(self.keep), key=lambda i: _step(manifests[i]))
        self._write_manifest(slot, Manifest(step=None, files={}))
        datastore_dirs.upload(self.storage, self._slot(slot), step_dir, files)
        self._write_manifest(slot, Manifest(step=step, files=files))
        logger.info("checkpoint %d stored in the datastore (%s, slot %d)", step, self.prefix, slot)

    def _write_manifest(self, slot: int, manifest: Manifest) -> None:
        data = io.BytesIO(json.dumps(manifest).encode())
        self.storage.save_bytes([(self.storage.path_join(self._slot(slot), MANIFEST), data)], overwrite=True)

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint of this training and step as a local directory, or None if there is none yet.

        Files the cache already holds with the manifest's content (this machine wrote them) are not fetched again."""
        manifests = self._manifests()
        slot = max(range(self.keep), key=lambda i: _step(manifests[i]))
        step = _step(manifests[slot])
        if step < 0:
            return None
        target = self.cache_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        fetched = datastore_dirs.download(self.storage, self._slot(slot), manifests[slot]["files"], target)
        logger.info("checkpoint %d from the datastore in %s (%d files fetched)", step, target, fetched)
        return target


def _step(manifest: Optional[Manifest]) -> int:
    """The step a slot holds, -1 for an empty slot or one being written."""
    return -1 if not manifest or manifest["step"] is None else manifest["step"]
