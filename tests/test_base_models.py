"""Base models cached in the datastore: stored once, loaded on a machine with no hub and no local copy, checked by content."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from metaflow.plugins.datastores.local_storage import LocalStorage

from phototagger.errors import UserError
from phototagger.training import base_models

ROOT = Path(__file__).resolve().parent.parent


def saved_model(root: Path) -> Path:
    """A folder shaped like a saved model, with a nested file."""
    (root / "nested").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (root / "model.safetensors").write_bytes(b"weights" * 1000)
    (root / "nested" / "tokenizer.json").write_text("{}")
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def storage(tmp_path) -> LocalStorage:
    return LocalStorage(str(tmp_path / "datastore"))


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, the hub switched off, and this machine's model cache empty."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv(base_models.CACHE_DIR_ENV, str(tmp_path / "pod-disk"))


def test_a_cached_model_loads_with_no_hub_and_no_local_copy(storage, tmp_path, no_hub):
    source = saved_model(tmp_path / "qwen")
    base_models.store(storage, source, "Qwen/Qwen2.5-VL-3B-Instruct")
    expected = files_of(source)
    shutil.rmtree(source)

    assert base_models.check("Qwen/Qwen2.5-VL-3B-Instruct", storage) == "datastore"
    loaded = Path(base_models.local_path("Qwen/Qwen2.5-VL-3B-Instruct", storage))

    assert loaded.is_relative_to(tmp_path / "pod-disk")
    assert files_of(loaded) == expected
    assert base_models.list_stored(storage) == [("Qwen/Qwen2.5-VL-3B-Instruct", sum(map(len, expected.values())))]


def test_a_hub_download_is_stored_so_the_next_run_needs_no_hub(storage, tmp_path, no_hub, monkeypatch):
    """The first run finds the model in the Hugging Face cache (as after a hub download) and stores it; the
    second, on a machine whose Hugging Face cache is empty, loads the datastore's copy."""
    hf_cache = tmp_path / "hf-cache"
    snapshot = saved_model(hf_cache / "models--tiny-org--tiny-qwen" / "snapshots" / ("a" * 40))
    (hf_cache / "models--tiny-org--tiny-qwen" / "refs").mkdir()
    (hf_cache / "models--tiny-org--tiny-qwen" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hf_cache))
    assert base_models.local_path("tiny-org/tiny-qwen", storage) == str(snapshot)

    shutil.rmtree(hf_cache)
    second = Path(base_models.local_path("tiny-org/tiny-qwen", storage))

    assert files_of(second) == files_of_saved(tmp_path)


def files_of_saved(tmp_path: Path) -> dict[str, bytes]:
    return files_of(saved_model(tmp_path / "reference"))


def test_a_local_file_of_the_right_size_but_other_content_is_fetched_again(storage, tmp_path, no_hub):
    base_models.store(storage, saved_model(tmp_path / "qwen"), "my-qwen")
    loaded = Path(base_models.local_path("my-qwen", storage))
    (loaded / "model.safetensors").write_bytes(b"WEIGHTS" * 1000)  # same size, other bytes

    again = Path(base_models.local_path("my-qwen", storage))

    assert (again / "model.safetensors").read_bytes() == b"weights" * 1000


def test_a_damaged_stored_file_is_refused(storage, tmp_path, no_hub):
    base_models.store(storage, saved_model(tmp_path / "qwen"), "my-qwen")
    stored = next((tmp_path / "datastore").rglob("model.safetensors"))
    stored.write_bytes(b"x" * stored.stat().st_size)

    with pytest.raises(ValueError, match="damaged"):
        base_models.local_path("my-qwen", storage)


def test_a_copy_cut_off_while_being_written_is_not_loaded(storage, tmp_path, no_hub, monkeypatch):
    class LostAfterFirstFile(Exception):
        pass

    uploads = []

    def upload(storage_, prefix, local_dir, files):
        uploads.append(prefix)
        raise LostAfterFirstFile

    monkeypatch.setattr(base_models.datastore_dirs, "upload", upload)
    with pytest.raises(LostAfterFirstFile):
        base_models.store(storage, saved_model(tmp_path / "qwen"), "my-qwen")

    assert uploads and base_models.find(storage, "my-qwen") is None
    with pytest.raises(UserError, match="cache it once"):
        base_models.check("my-qwen", storage)


def test_the_cache_command_stores_a_folder_under_the_name_given(tmp_path):
    """Run as a user runs it, from another directory, against the datastore the flows are configured with."""
    env = {**os.environ, "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "sysroot"),
           "PYTHONPATH": str(ROOT)}
    source = saved_model(tmp_path / "qwen")

    def cache(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "phototagger.training.base_models", "cache", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    done = cache(str(source), "--name", "Qwen/Qwen2.5-VL-3B-Instruct")
    refused = cache(str(source), "--name", "../escape")

    assert done.returncode == 0, done.stderr
    assert "--base-model Qwen/Qwen2.5-VL-3B-Instruct" in done.stdout
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: '../escape' cannot name a cached base model")
    storage = LocalStorage(str(tmp_path / "sysroot" / ".metaflow"))
    assert base_models.find(storage, "Qwen/Qwen2.5-VL-3B-Instruct")["files"].keys() == files_of(source).keys()


def test_a_light_pod_without_huggingface_hub_checks_the_datastore_and_leaves_the_hub_to_the_gpu_step(storage, tmp_path, no_hub, monkeypatch):
    """A deployed `start` runs in the light image (no huggingface_hub): a cached copy is still found, an uncached hub id passes on."""
    base_models.store(storage, saved_model(tmp_path / "qwen"), "my-qwen")
    find_spec = base_models.importlib.util.find_spec
    monkeypatch.setattr(base_models.importlib.util, "find_spec", lambda name, *a: None if name == "huggingface_hub" else find_spec(name, *a))

    assert base_models.check("my-qwen", storage) == "datastore"
    assert base_models.check("Qwen/not-cached-anywhere", storage) == "hub"
