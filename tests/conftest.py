"""Shared fixtures: a tiny random Qwen2.5-VL (built once per session) and a few coloured photos."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image



def pytest_configure(config: pytest.Config) -> None:
    """One OpenMP thread for torch, here and in every flow the tests start (they inherit the environment),
    unless OMP_NUM_THREADS is set: the tiny models gain nothing from a second thread, and on a shared 2-core
    machine torch's threads wait on each other for a descheduled one (a training step of the tiny Qwen took
    twice as long with two threads beside two busy processes).

    Then import torch's compiler stack before any test runs a flow through Metaflow's Runner.

    The Runner loads Metaflow's vendored typing_extensions, which re-patches `typing` so that torch's
    own typing_extensions objects fail when torch._dynamo is first imported afterwards ("TypeError: Type
    parameter ~_T1 without a default follows type parameter with a default"): without this, whether the
    fine-tuning tests pass depends on which test ran a flow first.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch._dynamo  # noqa: F401


COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 210), "yellow": (235, 225, 20)}


@pytest.fixture(autouse=True)
def allow_private_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake servers serve images from 127.0.0.1, which the fetch policy refuses unless allowed."""
    monkeypatch.setenv("PHOTOTAGGER_ALLOW_PRIVATE_URLS", "1")


@pytest.fixture(autouse=True)
def cards_in_the_test_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every flow's cards inside the test's own folder.

    Metaflow does not put local cards beside METAFLOW_DATASTORE_SYSROOT_LOCAL. It puts them in the first
    `.metaflow` folder it finds walking up from the working directory, so a `/tmp/.metaflow` left by any
    run made in /tmp took every card of the tests whose datastore sits in a subfolder, and the secrets
    scan found no card."""
    monkeypatch.setenv("METAFLOW_CARD_LOCALROOT", str(tmp_path / "mf.cards"))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2.5-VL (200k parameters) with tokenizer, chat template and processor."""
    from phototagger.training.random_qwen import build_random_qwen

    return build_random_qwen(tmp_path_factory.mktemp("tiny-qwen"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def colour_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small PNG per colour, in two sizes so batches need padding: name -> path."""
    root = tmp_path_factory.mktemp("photos")
    paths = {}
    for i, (name, rgb) in enumerate(COLOURS.items()):
        path = root / f"{name}.png"
        Image.new("RGB", (64, 48) if i % 2 else (112, 112), rgb).save(path)
        paths[name] = path
    return paths


def chat_example(photo_id: str, image: str, tags: list[str], prompt: str = "Tag this photo.") -> dict:
    """A training example in DESIGN.md's format."""
    return {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image", "image": image}]},
            {"role": "assistant", "content": [{"type": "text", "text": json.dumps({"tags": tags})}]},
        ],
        "ground_truth_tags": tags,
        "photo_id": photo_id,
        **({"image_root": str(Path(image).parent)} if "://" not in image else {}),  # a local file, as curate records it
    }


@pytest.fixture(scope="session")
def make_chat_example():
    """The example builder, for tests that need their own answers."""
    return chat_example


@pytest.fixture(scope="session")
def colour_examples(colour_photos: dict[str, Path]) -> list[dict]:
    """One training example per colour photo; the answer is the colour and "plain colour"."""
    return [chat_example(name, str(path), [name, "plain colour"]) for name, path in colour_photos.items()]
