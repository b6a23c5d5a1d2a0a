"""The exported tagger: adapter and merged model answer alike, and so does the merged model behind `transformers serve`.

A random tiny Qwen2.5-VL answers gibberish, so parity is asserted on the raw generated text (and the
tags parsed from it) under greedy decoding, on the demo photos. The adapter is built with peft with
random (non-zero) LoRA weights, so the merged model differs from the base and the comparison can fail.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phototagger.errors import UserError
from phototagger.http import LocalImage
from phototagger.images import photo_image
from phototagger.ingest.sources.demo import DemoSource
from phototagger.prompting.prompter import Prompter
from phototagger.training import export

ROOT = Path(__file__).resolve().parents[1]
CAPS = {"min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28}
PROMPT = "Tag this photo."
MAX_NEW_TOKENS = 12


def training_meta(base: Path) -> dict:
    """A FineTuneVLM `finetune_meta` for an adapter of `base`, trained without quantisation."""
    return {"base_model": str(base), "quantize": "none", **CAPS, "prompt_text": PROMPT, "prompt_hash": "0" * 64,
            "dataset_run": "PrepareVLMData/1", "lora": {"r": 8}, "train_loss": [], "eval_loss": [], "training": {"global_step": 3}}


def random_adapter(base: Path, out: Path) -> dict[str, bytes]:
    """A LoRA adapter with random A and B (peft's init leaves B zero, a no-op) and the capped processor, packed as FineTuneVLM stores it."""
    import torch
    from peft import get_peft_model

    from phototagger.training import train, vlm

    torch.manual_seed(1)
    config = train.FineTuneConfig(lora_rank=8, lora_alpha=16).lora_config()
    config.init_lora_weights = False
    model = get_peft_model(vlm.load_model(base, "none"), config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(0.3)  # a clear change of the answers that still leaves them varied
    model.save_pretrained(out)
    vlm.load_processor(base, **CAPS).save_pretrained(out)
    return train.pack_adapter(out)


@pytest.fixture(scope="module")
def exported(tiny_qwen_dir, tmp_path_factory) -> export.ExportResult:
    root = tmp_path_factory.mktemp("export")
    files = random_adapter(tiny_qwen_dir, root / "trained")
    return export.export_adapter(files, training_meta(tiny_qwen_dir), "FineTuneVLM/7", root / "out")


@pytest.fixture(scope="module")
def demo_images() -> list[str]:
    return [photo_image(photo) for photo in DemoSource().fetch(set(), 100)]


@pytest.fixture(scope="module")
def merged_results(exported, demo_images) -> list[dict]:
    """The merged model's answers to the demo photos from the in-process provider: what the adapter and the server must match."""
    return finetuned(exported, base_model=str(exported.merged_dir)).prompt_batch(PROMPT, demo_images, [None] * len(demo_images))


def finetuned(exported: export.ExportResult, **where) -> Prompter:
    """The in-process provider as PromptCustomModels runs it: batched greedy generation, the training pixel caps."""
    return Prompter("finetuned", "tiny", quantize="none", max_new_tokens=MAX_NEW_TOKENS, batch_size=6, **CAPS, **where)


def answers(prompter: Prompter, images: list[str]) -> list[tuple[str, list[str]]]:
    results = prompter.prompt_batch(PROMPT, images, [None] * len(images))
    return [(r["raw"], r["tags"]) for r in results]


def without_special_tokens(text: str) -> str:
    """`transformers serve` decodes a Qwen answer keeping special tokens such as <|box_end|> (its response
    parser needs them); the in-process provider skips them. The random model emits some; a tagger seldom does."""
    return re.sub(r"<\|[a-z_]+\|>", "", text).strip()


@pytest.mark.timeout(600)  # builds and merges the adapter, or generates 18 answers twice, on a busy CPU
def test_export_writes_the_adapter_with_its_training_metadata_and_a_16bit_merged_model(exported, tiny_qwen_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    meta = json.loads((exported.adapter_dir / export.EXPORT_META).read_text())
    assert {k: meta[k] for k in ("base_model", "min_pixels", "max_pixels", "prompt_hash", "dataset_run", "finetune_run")} == {
        "base_model": str(tiny_qwen_dir), **CAPS, "prompt_hash": "0" * 64, "dataset_run": "PrepareVLMData/1", "finetune_run": "FineTuneVLM/7"}
    assert (exported.adapter_dir / "adapter_model.safetensors").is_file()
    merged = exported.merged_dir
    assert merged.name == exported.served_name == "tiny-qwen0-lora-7"
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json", "preprocessor_config.json",
                 "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (merged / name).is_file(), f"{name} missing from the merged model"
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and meta["merged_dtype"] == "float32"
    processor = AutoProcessor.from_pretrained(merged)
    assert (processor.image_processor.size["shortest_edge"], processor.image_processor.size["longest_edge"]) == (CAPS["min_pixels"], CAPS["max_pixels"])
    assert not any("lora" in key for key in Qwen2_5_VLForConditionalGeneration.from_pretrained(merged).state_dict())
    assert json.loads((exported.out_dir / "models.json").read_text())["models"] == [exported.models_entry]
    assert exported.models_entry == {"provider": "openai-compatible", "model": "tiny-qwen0-lora-7", "base_url": "http://127.0.0.1:8000/v1",
                                     "max_pixels": CAPS["max_pixels"], "max_tokens": 128, "timeout_s": 120}
    assert (exported.out_dir / "prompt.txt").read_text().strip() == PROMPT


@pytest.mark.timeout(600)  # builds and merges the adapter, or generates 18 answers twice, on a busy CPU
def test_adapter_in_peft_and_merged_model_give_the_same_answers_greedily(exported, tiny_qwen_dir, demo_images, merged_results):
    adapter = answers(finetuned(exported, adapter_path=str(exported.adapter_dir)), demo_images)
    merged = [(r["raw"], r["tags"]) for r in merged_results]
    base = answers(finetuned(exported, base_model=str(tiny_qwen_dir)), demo_images)

    assert len(demo_images) == 18
    assert merged == adapter
    assert sum(a != b for a, b in zip(adapter, base)) >= len(base) // 2, "the adapter changes the answers: parity is not the base's"
    assert len({text for text, _ in adapter}) > 1, "answers vary by photo"


@pytest.mark.timeout(600)  # builds and merges the adapter, or generates 18 answers twice, on a busy CPU
def test_merged_model_served_by_transformers_serve_answers_as_the_in_process_provider(exported, demo_images, merged_results):
    local = merged_results
    with export.transformers_server(exported.out_dir, exported.served_name) as base_url:
        entry = {**exported.models_entry, "base_url": base_url, "max_tokens": MAX_NEW_TOKENS}
        served = Prompter(entry.pop("provider"), entry.pop("model"), **entry)
        results = [served.prompt(PROMPT, image) for image in demo_images]

    assert all(r["error"] in (None, "truncated", "unparseable") for r in results), [r["error"] for r in results]
    assert [without_special_tokens(r["raw"]) for r in results] == [r["raw"] for r in local]
    assert [r["tags"] for r in results] == [r["tags"] for r in local]
    assert [r["completion_tokens"] for r in results] == [r["completion_tokens"] for r in local], "as many tokens each"
    assert [r["prompt_tokens"] for r in results] == [r["prompt_tokens"] for r in local], "the same pixels and chat template"


def test_export_of_a_base_model_that_is_not_here_offline_is_one_clear_line(exported, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    meta = {**training_meta(Path("Qwen/Qwen2.5-VL-3B-Instruct")), "base_model": "Qwen/Qwen2.5-VL-3B-Instruct"}
    with pytest.raises(UserError) as raised:
        export.export_adapter({}, meta, "FineTuneVLM/7", tmp_path / "out")
    assert "HF_HUB_OFFLINE" in raised.value.one_line() and "--base-model" in raised.value.one_line()
    assert not (tmp_path / "out").exists(), "nothing written before the base is found"


def test_export_model_without_a_finetune_run_says_what_to_run(tmp_path, monkeypatch):
    from phototagger.mfclient import script_command

    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path), "METAFLOW_USER": "ci", "USER": "ci"}
    done = subprocess.run([sys.executable, str(ROOT / "export_model.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    monkeypatch.chdir(tmp_path)  # the command is printed as it can be typed in the directory the tool ran from
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "export_model.py: no FineTuneVLM run on branch user.ci has trained an adapter yet; "
        f"run `{script_command('finetune_vlm.py', 'run')}` first, or pass --run FineTuneVLM/<id>"]


def test_openai_compatible_max_pixels_sends_the_photo_as_training_loaded_it(tmp_path):
    import base64
    import io

    from PIL import Image

    from tests.fakes.openai_server import FakeOpenAIServer

    photo = tmp_path / "wide.jpg"
    Image.new("RGB", (640, 480), (200, 30, 30)).save(photo)
    with FakeOpenAIServer() as server:
        served = Prompter("openai-compatible", "tagger", base_url=server.base_url, max_pixels=CAPS["max_pixels"])
        result = served.prompt(PROMPT, LocalImage(photo, tmp_path))
        (_, _, request), = server.requests

    url = request["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (224, 168), "shrunk to vlm.max_side_for(max_pixels), as training and the finetuned provider load it"
    assert result["error"] is None and served.settings()["max_pixels"] == CAPS["max_pixels"]


def test_export_refuses_to_merge_into_a_quantised_base(tiny_qwen_dir, tmp_path):
    import shutil

    quantised = tmp_path / "tiny-4bit"
    shutil.copytree(tiny_qwen_dir, quantised)
    config = json.loads((quantised / "config.json").read_text())
    (quantised / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}))

    with pytest.raises(UserError, match="quantised checkpoint"):
        export.export_adapter({}, training_meta(quantised), "FineTuneVLM/7", tmp_path / "out")
    assert export.merge_dtype(str(tiny_qwen_dir), "auto") == "float32", "auto: the base checkpoint's own dtype"
