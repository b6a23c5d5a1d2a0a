"""The offline baselines: `prior` (tag frequency) and `knn` (JEC label transfer on colour and texture)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phototagger.http import LocalImage
from phototagger.prompting.providers.features import image_features, jec_distances, stack_features
from phototagger.prompting.prompter import Prompter, RetryPolicy
from phototagger.prompting.providers import ProviderError, make_provider
from tests.fakes.openai_server import FakeOpenAIServer

RED, GREEN, BLUE = (210, 40, 35), (40, 170, 60), (40, 70, 200)


def noisy(rgb: tuple[int, int, int], seed: int, stripes: bool = False) -> Image.Image:
    """A 48 x 48 image of one colour with pixel noise; optionally with dark vertical stripes."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (48, 48, 3)), 0, 255)
    if stripes:
        pixels[:, ::4] *= 0.3
    return Image.fromarray(pixels.astype(np.uint8))


def save(image: Image.Image, path: Path) -> str:
    image.save(path)
    return LocalImage(path, path.parent)


@pytest.fixture
def history(tmp_path: Path) -> list[dict]:
    """Two photos per colour class, each class with its own tags; one "apple" photo has an extra tag."""
    classes = [
        (RED, [["red", "apple", "fruit"], ["red", "apple", "fruit", "kitchen"]]),
        (GREEN, [["green", "grass", "nature"], ["green", "grass", "nature"]]),
        (BLUE, [["blue", "sky", "water"], ["blue", "sky", "water"]]),
    ]
    photos = []
    for c, (rgb, tag_lists) in enumerate(classes):
        for i, tags in enumerate(tag_lists):
            pid = f"p{c}{i}"
            photos.append({"id": pid, "image_url": save(noisy(rgb, 10 * c + i), tmp_path / f"{pid}.png"), "ground_truth_tags": tags})
    return photos


def tags_of(answer) -> list[str]:
    return json.loads(answer.text)["tags"]


# -- knn -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("rgb", "expected"), [(RED, {"red", "apple", "fruit"}), (GREEN, {"green", "grass", "nature"}), (BLUE, {"blue", "sky", "water"})])
def test_knn_transfers_the_tags_of_the_same_colour_class(history, tmp_path, rgb, expected):
    query = save(noisy(rgb, 99), tmp_path / "query.png")

    answer = make_provider("knn", "jec", history=history).complete("ignored", query, photo_id="new")

    assert set(tags_of(answer)) == expected  # median tag count is 3: the nearest photo's tags


def test_knn_leaves_the_query_photo_out_of_its_own_history(history):
    history[0]["ground_truth_tags"] = ["red", "apple", "fruit", "only-on-this-photo"]
    knn = make_provider("knn", "jec", history=history, n_tags=4)

    tags = tags_of(knn.complete("ignored", history[0]["image_url"], photo_id=history[0]["id"]))

    assert "only-on-this-photo" not in tags
    assert {"red", "apple", "fruit", "kitchen"} == set(tags)  # its twin p01 is now the nearest


def test_knn_fills_up_from_the_next_neighbours_by_cooccurrence(history, tmp_path):
    history.append({"id": "sparse", "image_url": save(noisy(GREEN, 11), tmp_path / "sparse.png"), "ground_truth_tags": ["green"]})
    knn = make_provider("knn", "jec", history=[p for p in history if p["id"] != "p11"], n_tags=3)

    tags = tags_of(knn.complete("ignored", history[3]["image_url"], photo_id="p11"))

    assert tags[0] == "green"
    assert set(tags) == {"green", "grass", "nature"}


def test_knn_features_combine_colour_and_texture():
    flat, striped = image_features(noisy(GREEN, 1)), image_features(noisy(GREEN, 2, stripes=True))
    flat_again = image_features(noisy(GREEN, 3))

    assert jec_distances(flat, stack_features([flat_again, striped])).argmin() == 0
    assert np.abs(flat["gabor"] - striped["gabor"]).sum() > 3 * np.abs(flat["gabor"] - flat_again["gabor"]).sum()
    assert all(abs(image_features(noisy(RED, 4))[name].sum() - 1) < 1e-4 for name in ("rgb", "hsv", "lab", "gabor"))


def test_knn_reads_images_over_http_once_and_caches_their_features(tmp_path):
    def png(rgb, seed):
        buffer = io.BytesIO()
        noisy(rgb, seed).save(buffer, format="PNG")
        return buffer.getvalue()

    with FakeOpenAIServer(images={"r.png": png(RED, 1), "b.png": png(BLUE, 2), "q.png": png(RED, 3)}) as server:
        history = [
            {"id": "r", "image_url": server.image_url("r.png"), "ground_truth_tags": ["red"]},
            {"id": "b", "image_url": server.image_url("b.png"), "ground_truth_tags": ["blue"]},
        ]
        knn = make_provider("knn", "jec", history=history)
        first = tags_of(knn.complete("ignored", server.image_url("q.png"), photo_id="q"))
        second = tags_of(knn.complete("ignored", server.image_url("q.png"), photo_id="q"))

    assert first == second == ["red"]
    assert sorted(server.image_requests) == ["/images/b.png", "/images/q.png", "/images/r.png"]


def test_knn_unreadable_photo_is_bad_image(history, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")

    with pytest.raises(ProviderError) as info:
        make_provider("knn", "jec", history=history).complete("ignored", LocalImage(not_an_image, tmp_path), photo_id="x")

    assert info.value.error_class == "bad_image"
    assert info.value.retryable is False


def test_knn_skips_unreadable_history_photos(history, tmp_path):
    history.append({"id": "gone", "image_url": LocalImage(tmp_path / "gone.png", tmp_path), "ground_truth_tags": ["ghost"]})

    tags = tags_of(make_provider("knn", "jec", history=history).complete("ignored", history[4]["image_url"], photo_id="q"))

    assert "ghost" not in tags


# -- prior ---------------------------------------------------------------------------------
def test_prior_predicts_the_most_frequent_tags_median_many():
    history = [
        {"id": "a", "ground_truth_tags": ["sky", "cloud", "blue"]},
        {"id": "b", "ground_truth_tags": ["sky", "cloud"]},
        {"id": "c", "ground_truth_tags": ["sky", "tree", "green", "grass"]},
    ]

    answer = make_provider("prior", "tag-prior", history=history).complete("ignored", "unused.jpg", photo_id="new")

    assert tags_of(answer) == ["sky", "cloud", "blue"]  # median of 3, 2, 4 tags is 3; ties by name


def test_prior_leaves_the_query_photo_out_of_its_own_history():
    history = [
        {"id": "a", "ground_truth_tags": ["cat"]},
        {"id": "b", "ground_truth_tags": ["dog"]},
        {"id": "c", "ground_truth_tags": ["dog"]},
        {"id": "q", "ground_truth_tags": ["cat", "cat-only"]},
    ]
    prior = make_provider("prior", "tag-prior", history=history, n_tags=2)

    assert tags_of(prior.complete("ignored", "unused.jpg", photo_id="q")) == ["dog", "cat"]


def test_prior_settings_change_with_the_history():
    one = make_provider("prior", "tag-prior", history=[{"id": "a", "ground_truth_tags": ["cat"]}]).settings()
    two = make_provider("prior", "tag-prior", history=[{"id": "a", "ground_truth_tags": ["dog"]}]).settings()

    assert one["history_digest"] != two["history_digest"]
    assert one["history_size"] == 1


# -- no history ----------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["prior", "knn"])
def test_baseline_without_history_raises_no_history(provider):
    with pytest.raises(ProviderError) as info:
        make_provider(provider, "m", history=[]).complete("ignored", "unused.jpg", photo_id="p")

    assert info.value.error_class == "no_history"
    assert info.value.retryable is False


@pytest.mark.parametrize("provider", ["prior", "knn"])
def test_baseline_whose_only_history_is_the_photo_itself_records_no_history(provider, history):
    tagger = Prompter(provider, "m", history=history[:1], retry=RetryPolicy(max_attempts=3))

    result = tagger.prompt("ignored", history[0]["image_url"], photo_id=history[0]["id"])

    assert result["error"] == "no_history"
    assert result["tags"] == []
    assert "second batch" in result["raw"]


def test_baseline_answers_are_valid_tag_json_for_the_prompter(history):
    result = Prompter("knn", "jec", history=history).prompt("ignored", history[0]["image_url"], photo_id="new")

    assert result["valid"] is True
    assert result["error"] is None
    assert result["provider"] == "knn"
    assert result["prompt_tokens"] is None


# -- cost per run ---------------------------------------------------------------------------

def test_knn_computes_each_photos_features_once_across_runs(history, tmp_path, monkeypatch):
    from phototagger.prompting.providers import baselines

    monkeypatch.setenv("PHOTOTAGGER_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = baselines.image_features
    monkeypatch.setattr(baselines, "image_features", lambda image: calls.append(1) or real(image))
    query = save(noisy(RED, 99), tmp_path / "query.png")

    first = make_provider("knn", "jec", history=history)
    for _ in range(3):
        first.complete("ignored", query, photo_id="new")
    assert len(calls) == len(history) + 1  # each history photo once, the query once
    make_provider("knn", "jec", history=history).complete("ignored", query, photo_id="new")
    assert len(calls) == len(history) + 1  # the next run reads them all from the cache


def test_prior_counts_the_history_once_per_run_not_per_photo(monkeypatch):
    from phototagger.prompting.providers import baselines

    counted = []
    real = baselines.count_tags
    monkeypatch.setattr(baselines, "count_tags", lambda tag_lists: counted.append(1) or real(tag_lists))
    prior = make_provider("prior", "tag-prior", history=[{"id": "a", "ground_truth_tags": ["cat", "sky"]}, {"id": "b", "ground_truth_tags": ["sky"]}])
    answers = [tags_of(prior.complete("ignored", "unused.jpg", photo_id=f"new{i}")) for i in range(5)]

    assert counted == [1] and answers == [["sky", "cat"]] * 5


def test_prior_ranks_by_the_running_tag_counts_of_every_earlier_photo():
    stats = {"photos": 1000, "tags": {"sea": 900, "cat": 5}, "sizes": {2: 1000}}
    prior = make_provider("prior", "tag-prior", history=[{"id": "a", "ground_truth_tags": ["cat"]}], tag_stats=stats)

    assert tags_of(prior.complete("ignored", "unused.jpg", photo_id="new")) == ["sea", "cat"]


@pytest.mark.parametrize("provider, model", [("knn", "jec"), ("prior", "tag-prior")])
def test_on_a_first_batch_the_baselines_learn_from_its_keyworded_photos_leave_one_out(tmp_path, monkeypatch, provider, model):
    """One folder, no earlier batch: each keyworded photo is tagged from the others only (so a tag no other photo
    has is never found, and the score is honest), and a photo without keywords gets the tags of those that have some."""
    from phototagger.prompting.batch import PromptSettings, prompt_photos
    from phototagger.prompting.configs import baseline_history, make_prompter
    from phototagger.scoring.metrics import score_results

    monkeypatch.setenv("PHOTOTAGGER_CACHE_DIR", str(tmp_path / "cache"))
    batch = {}
    for i, (rgb, own) in enumerate([(RED, "rose"), (RED, "poppy"), (GREEN, "fern"), (GREEN, "moss"), (RED, None)]):
        batch[f"p{i}"] = {"id": f"p{i}", "image_url": save(noisy(rgb, i), tmp_path / f"p{i}.png"),
                          "ground_truth_tags": [own, "red" if rgb == RED else "green"] if own else []}
    entry = {"provider": provider, "model": model}
    history, stats = baseline_history(entry, batch, True, None, {"photos": 0, "tags": {}, "sizes": {}})
    prompter = make_prompter(entry, history, stats)
    results = score_results(list(batch.values()), prompt_photos(prompter, list(batch.values()), "tag it",
                                                                PromptSettings(progress=False)))

    by_id = {r["photo_id"]: r for r in results}
    assert all(r["error"] is None for r in results)
    for photo_id in ("p0", "p1", "p2", "p3"):
        own = batch[photo_id]["ground_truth_tags"][0]
        assert own not in by_id[photo_id]["tags"], f"{photo_id} learnt its own tag {own!r} from itself"
    assert by_id["p4"]["tags"] and by_id["p4"]["recall"] is None  # tagged, not scored: it has no keywords
    if provider == "knn":
        assert [by_id[p]["recall"] for p in ("p0", "p1", "p2", "p3")] == [50.0] * 4  # its colour from its twin, not its own tag
        assert "red" in by_id["p4"]["tags"]
