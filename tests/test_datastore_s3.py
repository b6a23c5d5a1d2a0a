"""The base-model cache and the checkpoint store on an S3 datastore (a moto server on 127.0.0.1), as a pod uses them.

Each side runs in its own process with the pod's settings (METAFLOW_DEFAULT_DATASTORE=s3 and its root),
so what one machine stores, another with an empty disk, no hub and no local copy gets back intact.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fakes.moto_s3 import moto_s3

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "photo-tagger-models"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    with moto_s3(BUCKET) as endpoint:
        yield {
            **os.environ, "PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_S3_ENDPOINT_URL": endpoint,
            "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow", "METAFLOW_HOME": str(tmp_path_factory.mktemp("mfhome")),
            "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path_factory.mktemp("empty-hf-cache")),
        }


def python(env: dict, cwd: Path, code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, *args] if not code else [sys.executable, "-c", textwrap.dedent(code), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_model_cached_from_a_folder_loads_on_another_machine_from_s3(s3_env, tmp_path):
    source = tmp_path / "tiny-qwen"
    (source / "nested").mkdir(parents=True)
    (source / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (source / "model.safetensors").write_bytes(os.urandom(200_000))
    for i in range(12):  # more than ten files: Metaflow's S3 layer fetches them in parallel
        (source / "nested" / f"shard-{i}.json").write_text(f'{{"shard": {i}}}')
    python(s3_env, tmp_path, "", "-m", "phototagger.training.base_models", "cache", str(source), "--name", "tiny-org/tiny-qwen")

    pod = tmp_path / "pod"
    pod.mkdir()
    loaded = python({**s3_env, "PHOTOTAGGER_CACHE_DIR": str(pod / "cache")}, pod, """
        from phototagger.training import base_models
        print(base_models.check("tiny-org/tiny-qwen"), base_models.local_path("tiny-org/tiny-qwen"))
    """).split()

    assert loaded[0] == "datastore"
    assert files_of(pod / loaded[1]) == files_of(source)


def test_checkpoints_come_back_from_s3_on_an_empty_disk_checked_by_content(s3_env, tmp_path):
    writer = tmp_path / "pod-1"
    for step in (2, 4, 6):
        (writer / f"checkpoint-{step}").mkdir(parents=True)
        (writer / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(bytes([step]) * 5000)
        (writer / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    store = textwrap.dedent("""
        import sys
        from phototagger.training import checkpoint_store
        store = checkpoint_store.for_step("FineTuneVLM", "1234", "train", sys.argv[1], keep=2)
    """)
    python(s3_env, tmp_path, store + "for step in (2, 4, 6): store.save(f'{sys.argv[1]}/checkpoint-{step}')", str(writer))

    reader = tmp_path / "pod-2"
    (reader / "checkpoint-6").mkdir(parents=True)
    (reader / "checkpoint-6" / "adapter_model.safetensors").write_bytes(bytes([9]) * 5000)  # right size, other content
    restored = python(s3_env, tmp_path, store + "print(store.latest(), store.uri)", str(reader)).split()

    assert restored == [str(reader / "checkpoint-6"), f"s3://{BUCKET}/metaflow/FineTuneVLM/checkpoints/1234/train"]
    assert files_of(reader / "checkpoint-6") == files_of(writer / "checkpoint-6")
