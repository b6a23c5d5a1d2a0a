"""PrepareVLMData's logic: example format, leak guard, stable split, incremental builds, dropped reasons."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from phototagger.output import run_card
from phototagger.training import curate, vlm
from phototagger.images import load_image, photo_image
from phototagger.training.curate import CurationSettings, UpdateBatch
from phototagger.scoring.tags import parse_tags

PROMPT = 'Tag this photo. Answer {"tags": [...]}.'
TAGS = ["cat", "pet", "animal"]


def make_photo(root: Path, pid: str, tags: list[str] = TAGS, size: tuple[int, int] = (96, 80), colour: tuple | None = None) -> dict:
    """A photo record whose image is a PNG of a colour unique to its id (so no two are duplicates)."""
    path = root / f"{pid}.png"
    if not path.exists():
        seed = sum(ord(c) * 31**i for i, c in enumerate(pid))
        Image.new("RGB", size, colour or (seed % 251, seed // 251 % 251, seed // 63001 % 251)).save(path)
    return {"id": pid, "image_url": str(path), "ground_truth_tags": list(tags), "source": "folder", "name": path.name}


def batch(pathspec: str, *photos: dict) -> UpdateBatch:
    return UpdateBatch(pathspec=pathspec, photos={p["id"]: p for p in photos})


def ids(examples: list[dict]) -> list[str]:
    return [e["photo_id"] for e in examples]


def all_ids(dataset: curate.Dataset) -> set[str]:
    return set(ids(dataset.train_examples)) | set(ids(dataset.validation_examples))


def reasons(dataset: curate.Dataset) -> dict[str, str]:
    return {d["photo_id"]: d["reason"] for d in dataset.dropped}


def fake_run(pathspec: str, **artifacts) -> SimpleNamespace:
    return SimpleNamespace(pathspec=pathspec, data=SimpleNamespace(**artifacts))


# ---------------------------------------------------------------- example format
def test_example_renders_through_the_chat_template_with_the_answer_last(tmp_path, tiny_qwen_dir):
    photo = make_photo(tmp_path, "p1", ["cat", "Pet ", "café"])
    example = curate.make_example(photo, PROMPT)
    processor = vlm.load_processor(tiny_qwen_dir, 4 * 28 * 28, 16 * 28 * 28)

    text = processor.apply_chat_template(example["messages"], tokenize=False)
    assert f"<|im_start|>user\n{PROMPT}<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n" in text
    assert text.endswith('<|im_start|>assistant\n{"tags": ["cat", "pet", "café"]}<|im_end|>\n')
    batch_tensors = vlm.encode_chats(processor, [example["messages"]], [load_image(photo_image(photo))], add_generation_prompt=False)
    assert int((batch_tensors["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) > 1


def test_answer_is_the_photos_own_tags_as_valid_json_without_padding(tmp_path):
    example = curate.make_example(make_photo(tmp_path, "p1", ["dog", "grass"]), PROMPT)

    answer = curate.example_answer(example)
    assert json.loads(answer) == {"tags": ["dog", "grass"]}
    assert parse_tags(answer) == (["dog", "grass"], True, None)
    assert example["ground_truth_tags"] == ["dog", "grass"]
    assert example["photo_id"] == "p1" and curate.example_prompt(example) == PROMPT
    assert curate.example_image(example) == str(tmp_path / "p1.png")


# ---------------------------------------------------------------- leak guard
def test_held_out_ids_are_the_newest_nonempty_batch_and_every_scored_photo():
    update_runs = [  # newest first, as the client lists them
        fake_run("UpdatePhotos/4", unseen={}),
        fake_run("UpdatePhotos/3", unseen={"new1": {}, "new2": {}}),
        fake_run("UpdatePhotos/2", unseen={"old": {}}),
    ]
    evaluation_runs = [
        fake_run("PromptModels/7", models_eval={"photos": {"scored1": {}}, "results": {}}),
        fake_run("PromptCustomModels/8", models_eval={"photos": {"scored2": {}}, "results": {}}),
        fake_run("PromptModels/9"),  # an older run without the artifact
    ]
    assert curate.held_out_ids(update_runs, evaluation_runs) == ["new1", "new2", "scored1", "scored2"]


def test_held_out_photos_enter_neither_split_and_leave_an_earlier_dataset(tmp_path):
    photos = [make_photo(tmp_path, f"p{i}") for i in range(6)]
    settings = CurationSettings(PROMPT, validation_share=0.5)
    first = curate.curate([batch("UpdatePhotos/1", *photos)], {"p0"}, settings)
    assert "p0" not in all_ids(first) and reasons(first)["p0"] == "held_out"

    second = curate.curate([], {"p0", "p3"}, settings, previous=first)
    assert all_ids(second) == {"p1", "p2", "p4", "p5"}
    assert reasons(second)["p3"] == "held_out"


# ---------------------------------------------------------------- split
def test_split_depends_only_on_seed_and_photo_id(tmp_path):
    photos = [make_photo(tmp_path, f"p{i}") for i in range(40)]
    settings = CurationSettings(PROMPT, validation_share=0.25)
    full = curate.curate([batch("UpdatePhotos/1", *photos)], set(), settings)
    half = curate.curate([batch("UpdatePhotos/1", *photos[::2])], set(), settings)

    assert set(ids(half.validation_examples)) == set(ids(full.validation_examples)) & set(ids(half.train_examples + half.validation_examples))
    assert 0 < len(full.validation_examples) < 40
    assert ids(full.validation_examples) == [p["id"] for p in photos if curate.split_of(p["id"], 42, 0.25) == "validation"]
    reseeded = curate.curate([batch("UpdatePhotos/1", *photos)], set(), CurationSettings(PROMPT, validation_share=0.25, seed=7))
    assert ids(reseeded.validation_examples) != ids(full.validation_examples)


@pytest.mark.parametrize(("n", "expected"), [(1, (1, 0)), (2, (1, 1)), (3, (2, 1))])
def test_one_validation_example_once_there_are_two_and_always_one_to_train(tmp_path, n, expected):
    photos = [make_photo(tmp_path, f"p{i}") for i in range(n)]
    dataset = curate.curate([batch("UpdatePhotos/1", *photos)], set(), CurationSettings(PROMPT, validation_share=0.01))
    assert (len(dataset.train_examples), len(dataset.validation_examples)) == expected


# ---------------------------------------------------------------- incremental
def test_incremental_run_keeps_earlier_examples_in_their_split_and_adds_only_new_photos(tmp_path):
    settings = CurationSettings(PROMPT, validation_share=0.3)
    old = [make_photo(tmp_path, f"old{i}") for i in range(10)]
    first = curate.curate([batch("UpdatePhotos/1", *old)], set(), settings)
    for photo in old:  # an earlier example is not fetched again
        Path(photo["image_url"]).unlink()

    new = [make_photo(tmp_path, f"new{i}") for i in range(10)]
    second = curate.curate([batch("UpdatePhotos/2", *new)], set(), settings, previous=first)

    assert ids(second.train_examples)[: len(first.train_examples)] == ids(first.train_examples)
    assert ids(second.validation_examples)[: len(first.validation_examples)] == ids(first.validation_examples)
    assert all_ids(second) == {p["id"] for p in old + new}
    assert second.included_update_runs == ["UpdatePhotos/1", "UpdatePhotos/2"]
    assert second.dropped == []


def test_photo_held_out_as_newest_batch_is_trained_on_once_a_newer_batch_arrives(tmp_path):
    settings = CurationSettings(PROMPT)
    first = curate.curate(
        [batch("UpdatePhotos/1", make_photo(tmp_path, "a"), make_photo(tmp_path, "b")), batch("UpdatePhotos/2", make_photo(tmp_path, "c"))],
        {"c"},
        settings,
    )
    assert "c" in first.pending_photos

    second = curate.curate([batch("UpdatePhotos/3", make_photo(tmp_path, "d"))], {"d"}, settings, previous=first)
    assert all_ids(second) == {"a", "b", "c"}
    assert reasons(second) == {"d": "held_out"} and set(second.pending_photos) == {"d"}


def test_previous_dataset_is_extended_only_when_its_settings_match():
    settings = CurationSettings(PROMPT)
    example = {"photo_id": "p1", "messages": [], "ground_truth_tags": TAGS}
    run = fake_run(
        "PrepareVLMData/5",
        train_examples=[example],
        validation_examples=[],
        dropped=[],
        included_update_runs=["UpdatePhotos/1"],
        curation_settings=settings.fingerprint(),
    )
    previous, notes = curate.previous_dataset(run, settings)
    assert previous.train_examples == [example] and previous.included_update_runs == ["UpdatePhotos/1"]
    assert notes == ["Extending PrepareVLMData/5 (1 examples)."]

    for changed in (CurationSettings(PROMPT, seed=1), CurationSettings("Another prompt"), CurationSettings(PROMPT, min_tags=5)):
        previous, notes = curate.previous_dataset(run, changed)
        assert previous is None and notes[0].startswith("Rebuilding: settings differ from PrepareVLMData/5")
    assert curate.previous_dataset(None, settings) == (None, [])


def test_read_batches_lists_oldest_first_and_skips_included_runs():
    runs = [fake_run("UpdatePhotos/3", unseen={"c": {"id": "c"}}), fake_run("UpdatePhotos/2", unseen={}), fake_run("UpdatePhotos/1", unseen={"a": {"id": "a"}})]
    batches = curate.read_batches(runs, skip={"UpdatePhotos/1"})
    assert [b["pathspec"] for b in batches] == ["UpdatePhotos/2", "UpdatePhotos/3"]
    assert batches[1]["photos"] == {"c": {"id": "c"}}


# ---------------------------------------------------------------- dropped report
def test_every_photo_left_out_is_reported_with_its_reason(tmp_path):
    good = make_photo(tmp_path, "good")
    broken = make_photo(tmp_path, "broken")
    Path(broken["image_url"]).write_bytes(b"not an image at all")
    tiny = make_photo(tmp_path, "tiny", size=(20, 20))
    few = make_photo(tmp_path, "few", tags=["cat", "cat ", "pet"])  # two after normalising
    no_tags = make_photo(tmp_path, "notags", tags=[])
    missing = {**make_photo(tmp_path, "missing"), "image_url": str(tmp_path / "gone.png"), "name": "gone.png"}
    copy = {**make_photo(tmp_path, "copy"), "image_url": good["image_url"], "name": good["name"]}
    redelivered = dict(good)

    dataset = curate.curate(
        [batch("UpdatePhotos/1", good, broken, tiny, few, no_tags, missing, copy), batch("UpdatePhotos/2", redelivered)],
        set(),
        CurationSettings(PROMPT, min_tags=3),
    )
    why = reasons(dataset)
    assert all_ids(dataset) == {"good"}
    assert why["broken"].startswith("bad_image: image could not be decoded")
    assert why["missing"].startswith("bad_image: image file not found")
    assert why["tiny"] == "too_small: 20x20 px, the shorter side is under 64"
    assert why["few"] == "too_few_tags: 2 of at least 3"
    assert why["notags"] == "too_few_tags: 0 of at least 3"
    assert why["copy"] == "duplicate: the same image as photo good"
    assert [d["reason"] for d in dataset.dropped if d["photo_id"] == "good"] == ["duplicate: the same photo id was delivered before"]
    assert curate.dropped_counts(dataset.dropped) == {"bad_image": 2, "too_few_tags": 2, "too_small": 1, "duplicate": 2}


def test_same_pixels_in_another_file_format_is_a_duplicate(tmp_path):
    png = make_photo(tmp_path, "png", colour=(10, 200, 30))
    Image.open(png["image_url"]).save(tmp_path / "same.bmp")
    bmp = {**make_photo(tmp_path, "bmp"), "image_url": str(tmp_path / "same.bmp"), "name": "same.bmp"}
    dataset = curate.curate([batch("UpdatePhotos/1", png, bmp)], set(), CurationSettings(PROMPT))
    assert reasons(dataset) == {"bmp": "duplicate: the same image as photo png"}


def test_max_samples_keeps_the_earliest_photos_and_does_not_fetch_the_rest(tmp_path):
    photos = [make_photo(tmp_path, f"p{i}") for i in range(5)]
    Path(photos[4]["image_url"]).unlink()  # past the cap: never looked at, so not a bad_image
    dataset = curate.curate([batch("UpdatePhotos/1", *photos)], set(), CurationSettings(PROMPT, max_samples=2), workers=1)

    assert all_ids(dataset) == {"p0", "p1"}
    assert reasons(dataset) == {"p2": "over_max_samples", "p3": "over_max_samples", "p4": "over_max_samples"}
    assert set(dataset.pending_photos) == {"p2", "p3", "p4"}

    bigger = curate.curate([], set(), CurationSettings(PROMPT, max_samples=4), previous=dataset, workers=1)
    assert all_ids(bigger) == {"p0", "p1", "p2", "p3"}
    assert reasons(bigger) == {"p4": "over_max_samples"}


def test_empty_dataset_is_a_result_whose_notes_say_why(tmp_path):
    dataset = curate.curate([batch("UpdatePhotos/1", make_photo(tmp_path, "a"))], {"a"}, CurationSettings(PROMPT))
    assert dataset.train_examples == [] and dataset.validation_examples == []
    assert dataset.notes[-1].startswith("The dataset is empty: 1 photos were left out (held_out 1)")


def test_settings_refuse_values_that_cannot_make_a_dataset():
    with pytest.raises(ValueError, match="--min-tags"):
        CurationSettings(PROMPT, min_tags=0)
    with pytest.raises(ValueError, match="--validation-share"):
        CurationSettings(PROMPT, validation_share=1.0)
    with pytest.raises(ValueError, match="prompt"):
        CurationSettings("  ")


def test_card_lists_counts_and_every_dropped_photo(tmp_path):
    broken = make_photo(tmp_path, "a|b")
    Path(broken["image_url"]).write_bytes(b"x")
    dataset = curate.curate([batch("UpdatePhotos/1", make_photo(tmp_path, "ok"), broken)], set(), CurationSettings(PROMPT))
    card = run_card.dataset_card(dataset, n_held_out=3)
    assert "<li>1 train and 0 validation examples from 1 UpdatePhotos runs.</li>" in card
    assert "<li>Left out 1 photos (bad_image 1); 3 photo ids are held out for evaluation.</li>" in card
    assert "<tr><td>a|b</td><td>bad_image: image could not be decoded" in card
    assert curate.summary_lines(dataset, 3)[:2] == [
        "1 train and 0 validation examples from 1 UpdatePhotos runs.",
        "Left out 1 photos (bad_image 1); 3 photo ids are held out for evaluation.",
    ]


def test_a_photo_delivered_again_after_a_review_trains_on_the_confirmed_tags_in_its_split(tmp_path):
    photos = [make_photo(tmp_path, f"p{i}", tags=["cat", "pet", "sofa"]) for i in range(4)]
    settings = curate.CurationSettings(prompt_text="Tag.", min_tags=1)
    first = curate.curate([batch("UpdatePhotos/1", *photos)], {"new"}, settings)
    split = {e["photo_id"]: name for name, group in (("train", first.train_examples), ("validation", first.validation_examples)) for e in group}
    reviewed = {**photos[0], "id": "p0@review-1a2b", "corrects": "p0", "ground_truth_tags": ["cat", "pet", "sofa", "blanket"],
                "confirmed_tags": ["blanket"]}
    second = curate.curate([batch("UpdatePhotos/3", reviewed)], {"newer"}, settings, previous=first)
    examples = {e["photo_id"]: (name, e) for name, group in (("train", second.train_examples), ("validation", second.validation_examples)) for e in group}
    name, example = examples["p0"]
    assert name == split["p0"] and example["ground_truth_tags"] == ["cat", "pet", "sofa", "blanket"]
    assert '"blanket"' in curate.example_answer(example)
