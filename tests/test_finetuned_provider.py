"""The `finetuned` provider: batched greedy generation answers each photo as one-at-a-time does."""
from __future__ import annotations

import pytest

from phototagger.http import LocalImage
from phototagger.prompting.providers.base import Answer, ProviderError, make_provider
from phototagger.prompting.providers.finetuned import FineTunedProvider


@pytest.fixture(scope="module")
def base_provider(tiny_qwen_dir) -> FineTunedProvider:
    return make_provider("finetuned", "tiny-base", base_model=str(tiny_qwen_dir), quantize="none",
                         min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, max_new_tokens=10, batch_size=3)


def test_batched_generation_returns_one_answer_per_image_same_as_one_at_a_time(base_provider, colour_photos):
    images = [LocalImage(path, path.parent) for path in colour_photos.values()]  # two sizes: the batch is left-padded

    batched = base_provider.complete_batch("Tag this photo.", images, [None] * len(images))
    single = [base_provider.complete("Tag this photo.", image) for image in images]

    assert base_provider.supports_batching
    assert all(isinstance(answer, Answer) for answer in batched)
    assert batched == single
    assert len({answer.prompt_tokens for answer in batched}) == 2


def test_an_answer_cut_at_max_new_tokens_is_marked_length_and_recorded_truncated(base_provider, colour_photos):
    from phototagger.prompting.prompter import read_answer

    answers = base_provider.complete_batch("Tag this photo.", [LocalImage(p, p.parent) for p in colour_photos.values()], [None] * 4)

    cut = [a for a in answers if a.completion_tokens == base_provider.max_new_tokens]
    assert cut, "the random tiny model never stops on its own within 10 tokens"
    assert all(a.finish_reason == "length" for a in cut)
    assert all(read_answer(a, str)[1].error == "truncated" for a in cut)


def test_unreadable_photo_is_an_error_in_its_own_slot(base_provider, colour_photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    images = [LocalImage(colour_photos["red"], colour_photos["red"].parent), LocalImage(broken, tmp_path), LocalImage(tmp_path / "missing.png", tmp_path)]

    answers = base_provider.complete_batch("Tag this photo.", images, ["r", "b", "m"])

    assert isinstance(answers[0], Answer)
    assert [a.error_class for a in answers[1:]] == ["bad_image", "bad_image"]
    assert all(isinstance(a, ProviderError) for a in answers[1:])


def test_settings_name_what_decides_the_answer(base_provider):
    settings = base_provider.settings()

    assert settings["provider"] == "finetuned" and settings["decoding"] == "greedy"
    assert settings["max_pixels"] == 16 * 28 * 28 and settings["adapter"] is None
