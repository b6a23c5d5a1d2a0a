"""check_data's verdicts and diagnose_data's report, on datasets built in a temp dir."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import metaflow.metaflow_config
import pytest
from PIL import Image

from phototagger.http import LocalImage
from phototagger import mfclient

from phototagger.training import curate, diagnose, vlm

PROMPT = "Tag this photo."


def image(root: Path, name: str, size: tuple[int, int] = (120, 90), colour: tuple = (200, 40, 40)) -> str:
    path = root / f"{name}.png"
    Image.new("RGB", size, colour).save(path)
    return LocalImage(path, root)


def example(pid: str, location: str, tags: list[str]) -> dict:
    return curate.make_example({"id": pid, "image_url": location, "ground_truth_tags": tags}, PROMPT)


@pytest.fixture
def good_dataset(tmp_path) -> dict:
    """What PrepareVLMData stores: 3 train and 1 validation examples, one id held out."""
    photos = {
        f"p{i}": {"id": f"p{i}", "image_url": image(tmp_path, f"p{i}", colour=(60 * i, 100, 20)), "ground_truth_tags": ["cat", "pet", f"tag{i}"]}
        for i in range(4)
    }
    built = curate.curate([curate.UpdateBatch(pathspec="UpdatePhotos/1", photos=photos)], {"held"}, curate.CurationSettings(PROMPT, min_tags=1, validation_share=0.25))
    assert (len(built.train_examples), len(built.validation_examples)) == (3, 1)
    return {
        "run": "PrepareVLMData/1",
        "train_examples": built.train_examples,
        "validation_examples": built.validation_examples,
        "dropped": [{"photo_id": "held", "reason": "held_out"}],
        "held_out_ids": ["held"],
        "prompt_text": PROMPT,
        "prompt_hash": curate.prompt_hash(PROMPT),
        "min_pixels": 4 * 28 * 28,
        "max_pixels": 16 * 28 * 28,
        "curation_settings": built.settings,
    }


def check(dataset: dict) -> tuple[int, str]:
    out = io.StringIO()
    return diagnose.run_check(dataset, out), out.getvalue()


def test_check_passes_a_curated_dataset(good_dataset):
    code, printed = check(good_dataset)
    assert code == 0
    assert printed.splitlines() == ["PrepareVLMData/1: 3 train and 1 validation examples.", "OK: no problems found."]


def _answer_not_json(d):
    d["train_examples"][0]["messages"][1]["content"][0]["text"] = "tags: cat, pet"


def _answer_other_tags(d):
    d["train_examples"][0]["messages"][1]["content"][0]["text"] = '{"tags": ["dog"]}'


def _no_tags(d):
    d["train_examples"][1]["ground_truth_tags"] = []


def _in_both_splits(d):
    d["validation_examples"].append(copy.deepcopy(d["train_examples"][0]))


def _held_out_in_training(d):
    d["held_out_ids"] = [d["train_examples"][2]["photo_id"]]


def _empty_validation(d):
    d["validation_examples"] = []


def _no_image(d):
    d["train_examples"][0]["messages"][0]["content"].pop(1)


def _other_prompt(d):
    d["prompt_text"] = "Another prompt."


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (_answer_not_json, "assistant answer is not JSON"),
        (_answer_other_tags, "assistant answer's tags differ from ground_truth_tags"),
        (_no_tags, "ground_truth_tags must be a non-empty list"),
        (_in_both_splits, "is in both train and validation"),
        (_held_out_in_training, "is held out for evaluation (a leak)"),
        (_empty_validation, "validation_examples is empty"),
        (_no_image, "malformed messages: example p0 has no user image"),
        (_other_prompt, "prompt_hash does not match prompt_text"),
    ],
)
def test_check_fails_with_exit_code_1_and_names_the_problem(good_dataset, breakage, problem):
    breakage(good_dataset)
    code, printed = check(good_dataset)
    assert code == 1
    assert any(line.startswith("PROBLEM") and problem in line for line in printed.splitlines()), printed
    assert printed.splitlines()[-1].endswith("problems found.")


def test_check_fails_on_a_run_that_is_not_a_dataset():
    code, printed = check({"run": "UpdatePhotos/3"})
    assert code == 1 and "has no train_examples, validation_examples" in printed


def test_report_counts_tags_duplicates_broken_and_tiny_images_and_leaks(tmp_path):
    same = image(tmp_path, "same", colour=(1, 2, 3))
    Image.open(same).save(tmp_path / "same_copy.png")
    train = [
        example("a", same, ["cat", "pet", "rare"]),
        example("b", image(tmp_path, "b", colour=(9, 9, 9)), ["cat", "pet"]),
        example("c", image(tmp_path, "tiny", size=(30, 20)), ["cat"]),
        example("d", str(tmp_path / "missing.png"), ["cat", "dog"]),
    ]
    validation = [example("e", LocalImage(tmp_path / "same_copy.png", tmp_path), ["cat", "owl"]), example("b", train[1]["messages"][0]["content"][1]["image"], ["cat", "pet"])]
    dataset = {
        "train_examples": train,
        "validation_examples": validation,
        "held_out_ids": ["d"],
        "dropped": [{"photo_id": "x", "reason": "too_small: 1x1"}, {"photo_id": "y", "reason": "too_small: 2x2"}],
        "min_pixels": 4 * 28 * 28,
        "max_pixels": 16 * 28 * 28,
    }
    report = diagnose.diagnose(dataset)
    json.dumps(report)  # --json writes it as it is

    assert report["counts"] == {"train": 4, "validation": 2, "dropped": 2, "held_out_ids": 1}
    assert report["dropped_by_reason"] == {"too_small": 2}
    tags = report["tags"]
    assert tags["top"][:2] == [("cat", 6), ("pet", 3)]
    assert (tags["distinct"], tags["total"], tags["seen_once"]) == (5, 12, 3)
    assert tags["tags_per_photo_histogram"] == {1: 1, 2: 4, 3: 1}
    assert tags["tags_per_photo"]["max"] == 3 and tags["tags_per_photo"]["median"] == 2
    assert tags["validation_only"] == ["owl"]
    assert [b["photo_id"] for b in report["images"]["broken"]] == ["d"]
    assert report["images"]["tiny"] == [{"photo_id": "c", "size": "30x20"}]
    assert report["duplicates"]["photo_ids"] == ["b"]
    assert report["duplicates"]["same_image"] == [["a", "e"]]
    assert report["leaks"]["in_both_splits"] == ["b"]
    assert report["leaks"]["held_out_in_dataset"] == ["d"]
    assert report["leaks"]["same_image_across_splits"] == [["a", "e"]]
    assert any("is in both train and validation" in p for p in report["problems"])
    assert report["tokens"]["image_tokens"]["max"] <= 16 and "skipped" in report["tokens"]
    text = "\n".join(diagnose.format_report(report))
    assert "total and answer tokens: skipped (no --processor given" in text
    assert "same image in both splits: a = e" in text


def test_report_measures_tokens_per_example_with_the_processor(good_dataset, tiny_qwen_dir):
    processor = vlm.load_processor(tiny_qwen_dir, good_dataset["min_pixels"], good_dataset["max_pixels"])
    report = diagnose.diagnose(good_dataset, processor)
    tokens = report["tokens"]

    answers = [curate.example_answer(e) for e in good_dataset["train_examples"] + good_dataset["validation_examples"]]
    byte_lengths = sorted(len(a.encode("utf-8")) + 1 for a in answers)  # byte-level tokenizer, plus <|im_end|>
    assert (tokens["answer_tokens"]["min"], tokens["answer_tokens"]["max"]) == (byte_lengths[0], byte_lengths[-1])
    image_tokens = vlm.image_token_count(120, 90, good_dataset["min_pixels"], good_dataset["max_pixels"])
    assert tokens["image_tokens"]["max"] == image_tokens
    assert tokens["total_tokens"]["min"] > len(PROMPT) + image_tokens + byte_lengths[0]
    assert "skipped" not in tokens and len(tokens["longest"]) == 4
    assert [r["split"] for r in report["examples"]] == ["train"] * 3 + ["validation"]
    assert all(r["total_tokens"] > r["image_tokens"] + r["answer_tokens"] for r in report["examples"])


def test_default_branch_is_the_user_branch_project_gives(monkeypatch):
    monkeypatch.delenv("METAFLOW_OWNER", raising=False)
    monkeypatch.setattr(metaflow.metaflow_config, "USER", "alice")
    assert mfclient.user_branch() == "user.alice"
