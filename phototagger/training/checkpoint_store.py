"""Training checkpoints kept in Metaflow's datastore, so a retry on another machine resumes where a lost pod stopped.

The Trainer writes each checkpoint to a local directory (the cache); `UploadCheckpoints` copies it
to the datastore right after, through the datastore's own storage API (`DataStoreStorage`:
local, S3, Azure or GCS, the same root and credentials as the run's artifacts). A checkpoint is
written into one of `keep` slots (the oldest is written over, as the Trainer's save_total_limit
rotates its local copies), files first and its manifest last, so a slot whose manifest does not
name its step is never resumed. `latest()` brings the newest complete checkpoint back into the
cache, keyed by run id and step, not by the disk of the pod that wrote it.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Protocol, TypedDict

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"


class BlobStorage(Protocol):
    """The part of metaflow.datastore.datastore_storage.DataStoreStorage this store uses."""

    def path_join(self, *components: str) -> str: ...
    def full_uri(self, path: str) -> str: ...
    def save_bytes(self, path_and_bytes_iter: Any, overwrite: bool = False, len_hint: int = 0) -> None: ...
    def load_bytes(self, keys: list[str]) -> Any: ...


class Manifest(TypedDict):
    """A slot's last-written file: which step it holds (None while being written) and its files' sizes."""

    step: Optional[int]
    files: dict[str, int]


def for_task(flow: Any, run_id: str, step_name: str, cache_dir: str | Path, keep: int) -> "CheckpointStore":
    """The store of a running Metaflow step, in the task's own datastore (whatever --datastore and its root
    say), at <flow>/checkpoints/<run id>/<step>: every attempt of that run and step finds the same checkpoints."""
    storage = flow._datastore._storage_impl
    return CheckpointStore(storage, storage.path_join(flow.name, "checkpoints", run_id, step_name), cache_dir, keep)


class CheckpointStore:
    """Checkpoints of one training step under `prefix` in the datastore, cached in `cache_dir`."""

    def __init__(self, storage: BlobStorage, prefix: str, cache_dir: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
        self.storage, self.prefix, self.cache_dir, self.keep = storage, prefix, Path(cache_dir), keep

    @property
    def uri(self) -> str:
        return self.storage.full_uri(self.prefix)

    def _key(self, slot: int, name: str) -> str:
        return self.storage.path_join(self.prefix, f"slot-{slot}", name)

    def _manifests(self) -> list[Optional[Manifest]]:
        keys = [self._key(slot, MANIFEST) for slot in range(self.keep)]
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
        files = {p.relative_to(step_dir).as_posix(): p.stat().st_size for p in sorted(step_dir.rglob("*")) if p.is_file()}
        manifests = self._manifests()
        slot = min(range(self.keep), key=lambda i: _step(manifests[i]))
        self._write(slot, MANIFEST, json.dumps(Manifest(step=None, files={})).encode())
        for name in files:
            with open(step_dir / name, "rb") as handle:
                self.storage.save_bytes([(self._key(slot, name), handle)], overwrite=True)
        self._write(slot, MANIFEST, json.dumps(Manifest(step=step, files=files)).encode())
        logger.info("checkpoint %d stored in the datastore (%s, slot %d)", step, self.prefix, slot)

    def _write(self, slot: int, name: str, data: bytes) -> None:
        self.storage.save_bytes([(self._key(slot, name), io.BytesIO(data))], overwrite=True)

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint of this run and step as a local directory, or None if there is none yet.

        Files the cache already holds at the manifest's size (this machine wrote them) are not fetched again."""
        manifests = self._manifests()
        slot = max(range(self.keep), key=lambda i: _step(manifests[i]))
        step = _step(manifests[slot])
        if step < 0:
            return None
        files = manifests[slot]["files"]
        target = self.cache_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        missing = [name for name, size in files.items() if not (target / name).is_file() or (target / name).stat().st_size != size]
        keys = {self._key(slot, name): name for name in missing}
        with self.storage.load_bytes(list(keys)) as loaded:
            for key, path, _ in loaded:
                if path is None:
                    raise FileNotFoundError(f"checkpoint {step} in {self.prefix} lost its file {keys[key]}")
                (target / keys[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target / keys[key])
        logger.info("checkpoint %d from the datastore in %s (%d files fetched)", step, target, len(missing))
        return target


def _step(manifest: Optional[Manifest]) -> int:
    """The step a slot holds, -1 for an empty slot or one being written."""
    return -1 if not manifest or manifest["step"] is None else manifest["step"]


class UploadCheckpoints(TrainerCallback):
    """Stores each checkpoint in the datastore once the Trainer has written it."""

    def __init__(self, store: CheckpointStore):
        self.store = store

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.store.save(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
