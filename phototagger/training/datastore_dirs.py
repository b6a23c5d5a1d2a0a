"""Directories of files kept in Metaflow's datastore, checked by content when they come back.

Training checkpoints and cached base models are both folders of files that must survive the disk
of the pod that wrote them. Each is stored file by file under a prefix of the datastore, through
Metaflow's own storage API (`DataStoreStorage`: local, S3, Azure or GCS, the same root and
credentials as the run's artifacts), beside a manifest that names every file with its size and
sha256. A file already on the local disk is reused only when its content hashes to the manifest's
sha256; a fetched file is hashed too, so a damaged copy is never loaded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol, TypedDict

HASH_CHUNK = 8 << 20


class BlobStorage(Protocol):
    """The part of metaflow.datastore.datastore_storage.DataStoreStorage these stores use."""

    def path_join(self, *components: str) -> str: ...
    def full_uri(self, path: str) -> str: ...
    def save_bytes(self, path_and_bytes_iter: Any, overwrite: bool = False, len_hint: int = 0) -> None: ...
    def load_bytes(self, keys: list[str]) -> Any: ...


class FileEntry(TypedDict):
    size: int
    sha256: str


def configured_storage() -> Any:
    """The datastore Metaflow is configured to use (METAFLOW_DEFAULT_DATASTORE and its root), as a
    DataStoreStorage: the one a deployed pod writes its artifacts to, and the one a command run
    beside the flows (caching a base model) reaches with the same settings."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE
    from metaflow.plugins import DATASTORES

    impl = next((impl for impl in DATASTORES if impl.TYPE == DEFAULT_DATASTORE), None)
    if impl is None:
        raise ValueError(f"METAFLOW_DEFAULT_DATASTORE={DEFAULT_DATASTORE!r} is not a datastore this Metaflow knows")
    return impl(impl.get_datastore_root_from_config(lambda *args, **kwargs: None))


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(local_dir: str | Path) -> dict[str, FileEntry]:
    """Every file under `local_dir` by relative POSIX path, with its size and sha256."""
    root = Path(local_dir)
    return {
        path.relative_to(root).as_posix(): FileEntry(size=path.stat().st_size, sha256=sha256_of(path))
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def is_intact(path: Path, entry: FileEntry) -> bool:
    """Whether a local file holds exactly the content the manifest names (size first: cheap)."""
    return path.is_file() and path.stat().st_size == entry["size"] and sha256_of(path) == entry["sha256"]


def upload(storage: BlobStorage, prefix: str, local_dir: str | Path, files: dict[str, FileEntry]) -> None:
    """Write each named file of `local_dir` under `prefix`, one at a time (a file is streamed, never held in memory)."""
    for name in files:
        with open(Path(local_dir) / name, "rb") as handle:
            storage.save_bytes([(storage.path_join(prefix, name), handle)], overwrite=True)


def download(storage: BlobStorage, prefix: str, files: dict[str, FileEntry], target: str | Path) -> int:
    """Bring the named files under `prefix` into `target`, fetching only those the disk does not hold intact;
    each fetched file is checked against its sha256 and moved into place whole. Returns how many were fetched."""
    target = Path(target)
    missing = {storage.path_join(prefix, name): name for name, entry in files.items() if not is_intact(target / name, entry)}
    with storage.load_bytes(list(missing)) as loaded:
        for key, path, _ in loaded:
            name = missing[key]
            if path is None:
                raise FileNotFoundError(f"{storage.full_uri(prefix)} lost its file {name}")
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
            os.close(fd)
            try:
                shutil.copyfile(path, partial)
                if sha256_of(partial) != files[name]["sha256"]:
                    raise ValueError(f"{storage.full_uri(key)} does not match the sha256 its manifest names: the stored copy is damaged")
                os.replace(partial, destination)
            finally:
                Path(partial).unlink(missing_ok=True)
    return len(missing)
