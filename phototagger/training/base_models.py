"""Base models cached in Metaflow's datastore: downloaded once, then loaded by every run and pod from there.

A GPU pod starts with an empty disk and often without a route to the Hugging Face hub, and the
base model is 7.5 GB. So a copy is kept in the datastore, at FineTuneVLM/base_models/<name>, under
a name `--base-model` gives (a hub id such as Qwen/Qwen2.5-VL-3B-Instruct, or any name of your
own), with a manifest of every file's size and sha256, written last. Cache one once, from a
machine that has the model or reaches the hub, with the same datastore settings as the flows:

    python -m phototagger.training.base_models cache Qwen/Qwen2.5-VL-3B-Instruct          # from the hub
    python -m phototagger.training.base_models cache /models/qwen2.5-vl-3b --name Qwen/Qwen2.5-VL-3B-Instruct
    python -m phototagger.training.base_models list

`--base-model X` then loads, in this order: the local folder X; the datastore's copy named X
(fetched into $PHOTOTAGGER_CACHE_DIR/base_models, reusing files whose sha256 matches); the Hugging
Face cache or hub, after which the step stores the download in the datastore so no later run
downloads it again.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, TypedDict

from phototagger.errors import UserError
from phototagger.training import datastore_dirs, vlm
from phototagger.training.datastore_dirs import BlobStorage, FileEntry

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
ROOT = ("FineTuneVLM", "base_models")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
CACHE_DIR_ENV = "PHOTOTAGGER_CACHE_DIR"
CACHE_COMMAND = "python -m phototagger.training.base_models cache"


class StoredModel(TypedDict):
    """A cached base model's manifest: its name, where it came from, and its files."""

    name: str
    source: str
    files: dict[str, FileEntry]


def _check_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or ".." in name:
        raise UserError(f"{name!r} cannot name a cached base model", "use letters, digits, . _ - and at most one /, e.g. Qwen/Qwen2.5-VL-3B-Instruct")
    return name


def _prefix(storage: BlobStorage, name: str) -> str:
    return storage.path_join(*ROOT, _check_name(name).replace("/", "--"))


def find(storage: BlobStorage, name: str) -> Optional[StoredModel]:
    """The manifest of the datastore's copy named `name`, or None when there is none (or it is being written)."""
    if not NAME_PATTERN.match(name):
        return None
    key = storage.path_join(_prefix(storage, name), MANIFEST)
    with storage.load_bytes([key]) as loaded:
        for _, path, _ in loaded:
            if path is not None:
                return json.loads(Path(path).read_text())
    return None


def store(storage: BlobStorage, model_dir: str | Path, name: str, source: str = "") -> StoredModel:
    """Copy a saved model folder into the datastore under `name`; the manifest goes last, so a copy cut
    off half-way is never loaded (a cut-off rewrite of an existing copy hides it until cached again)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} holds no config.json, so it is not a saved model", "point at the folder that save_pretrained or `hf download` wrote")
    prefix = _prefix(storage, name)
    manifest_key = storage.path_join(prefix, MANIFEST)
    storage.save_bytes([(manifest_key, io.BytesIO(b"null"))], overwrite=True)
    files = datastore_dirs.describe(model_dir)
    datastore_dirs.upload(storage, prefix, model_dir, files)
    stored = StoredModel(name=name, source=source or str(model_dir), files=files)
    storage.save_bytes([(manifest_key, io.BytesIO(json.dumps(stored).encode()))], overwrite=True)
    logger.info("base model %s stored at %s (%d files)", name, storage.full_uri(prefix), len(files))
    return stored


def cache_dir() -> Path:
    """Where fetched copies live on this machine: $PHOTOTAGGER_CACHE_DIR/base_models, else .phototagger_cache/base_models."""
    return Path(os.environ.get(CACHE_DIR_ENV) or ".phototagger_cache") / "base_models"


def fetch(storage: BlobStorage, stored: StoredModel, target_root: Optional[Path] = None) -> Path:
    """The datastore's copy as a local folder; files already there with the right sha256 are not fetched again."""
    target = (target_root or cache_dir()) / stored["name"].replace("/", "--")
    fetched = datastore_dirs.download(storage, _prefix(storage, stored["name"]), stored["files"], target)
    logger.info("base model %s in %s (%d of %d files fetched from the datastore)", stored["name"], target, fetched, len(stored["files"]))
    return target


def check(base_model: str, storage: Optional[BlobStorage] = None) -> str:
    """Where `base_model` will load from ("local", "datastore", "cache" or "hub"), checked before any GPU is
    asked for; UserError when it cannot load from any of them. A deployed `start` runs in the light image,
    without huggingface_hub: there a name that is neither a folder nor cached in the datastore is left to
    the GPU step to look up on the hub."""
    if Path(base_model).expanduser().is_dir():
        return vlm.check_base_model(base_model)
    if find(storage or datastore_dirs.configured_storage(), base_model) is not None:
        return "datastore"
    if importlib.util.find_spec("huggingface_hub") is None:
        return "hub"
    try:
        return vlm.check_base_model(base_model)
    except UserError as exc:
        raise UserError(f"{exc.problem}; nor is it cached in the datastore", f"cache it once with `{CACHE_COMMAND} PATH-OR-HUB-ID --name {base_model}`, or {exc.fix}") from None


def local_path(base_model: str, storage: Optional[BlobStorage] = None) -> str:
    """A local folder holding `base_model`: the folder itself, the datastore's copy, or a hub download,
    which is then stored in the datastore under its hub id so that no later run downloads it again."""
    if Path(base_model).expanduser().is_dir():
        return str(Path(base_model).expanduser())
    storage = storage or datastore_dirs.configured_storage()
    stored = find(storage, base_model)
    if stored is not None:
        return str(fetch(storage, stored))
    from huggingface_hub import snapshot_download

    vlm.check_base_model(base_model)
    downloaded = snapshot_download(repo_id=base_model)
    store(storage, downloaded, base_model, source=f"hub:{base_model}")
    print(f"Stored {base_model} in the datastore: later runs load it from there, not from the hub.")
    return downloaded


def list_stored(storage: BlobStorage) -> list[tuple[str, int]]:
    """(name, bytes) of every complete copy in the datastore."""
    root = storage.path_join(*ROOT)
    names = [Path(entry.path).name.replace("--", "/") for entry in storage.list_content([root]) if not entry.is_file]
    found = [find(storage, name) for name in sorted(names)]
    return [(s["name"], sum(f["size"] for f in s["files"].values())) for s in found if s]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phototagger.training.base_models", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cache = commands.add_parser("cache", help="Store a base model in the datastore (a local folder, or a hub id to download).")
    cache.add_argument("source", help="A saved model folder, or a hub id such as Qwen/Qwen2.5-VL-3B-Instruct.")
    cache.add_argument("--name", default="", help="The name --base-model will use; default: the hub id, or the folder's name.")
    commands.add_parser("list", help="The base models cached in the datastore.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        storage = datastore_dirs.configured_storage()
        if args.command == "list":
            stored = list_stored(storage)
            for name, size in stored:
                print(f"{name}\t{size / 1e9:.2f} GB")
            if not stored:
                print(f"No base model cached in {storage.full_uri(storage.path_join(*ROOT))} yet: {CACHE_COMMAND} PATH-OR-HUB-ID")
            return 0
        return _cache(storage, args.source, args.name)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2


def _cache(storage: Any, source: str, name: str) -> int:
    folder = Path(source).expanduser()
    if folder.is_dir():
        name = name or folder.resolve().name
        store(storage, folder, name, source=str(folder.resolve()))
    else:
        from huggingface_hub import snapshot_download

        name = _check_name(name or source)
        try:
            vlm.check_base_model(source)
        except UserError as exc:
            raise UserError(f"cannot cache {source}: {exc.problem.removeprefix(f'--base-model {source} ')}",
                            f"run this where the hub is reachable, or cache a local copy: {CACHE_COMMAND} /path/to/model --name {name}") from None
        store(storage, snapshot_download(repo_id=source), name, source=f"hub:{source}")
    print(f"Cached {name} in the datastore. Use it with: python finetune_vlm.py run --base-model {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
