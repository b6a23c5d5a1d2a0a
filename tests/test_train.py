"""Fine-tuning on a tiny random Qwen2.5-VL: answer-only loss, real steps, 4-bit, save/reload, resume (also on a fresh disk)."""
from __future__ import annotations

import json

import pytest
from bitsandbytes.functional import has_avx512bf16
from metaflow.plugins.datastores.local_storage import LocalStorage
from transformers import TrainerCallback

from phototagger.http import LocalImage
from phototagger.training import train, vlm
from phototagger.training.checkpoint_store import CheckpointStore
from phototagger.prompting.providers.base import Answer
from phototagger.prompting.providers.finetuned import FineTunedProvider

TINY_PIXELS = dict(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)


def tiny_config(**overrides) -> train.FineTuneConfig:
    settings = dict(batch_size=2, grad_accum=1, learning_rate=5e-3, quantize="none", max_steps=4,
                    save_steps=2, gradient_checkpointing=False, **TINY_PIXELS)
    settings.update(overrides)
    return train.FineTuneConfig(**settings)


def test_supervised_tokens_are_exactly_the_assistant_json_and_end_token(tiny_qwen_dir, colour_photos, make_chat_example):
    examples = [
        make_chat_example("a", str(colour_photos["red"]), ["red"]),
        make_chat_example("b", str(colour_photos["green"]), ["green", "grass", "lawn in spring"]),
    ]
    processor = vlm.load_processor(tiny_qwen_dir, **TINY_PIXELS)
    data = train.PhotoChats(examples, TINY_PIXELS["max_pixels"])
    batch = train.make_collate_fn(processor)([data[0], data[1]])

    for row, example in enumerate(examples):
        supervised = batch["input_ids"][row][batch["labels"][row] != train.IGNORE_INDEX]
        answer = example["messages"][1]["content"][0]["text"]
        assert processor.tokenizer.decode(supervised) == answer + "<|im_end|>"
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["labels"][batch["input_ids"] == image_token] == train.IGNORE_INDEX).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == train.IGNORE_INDEX).all()


def test_a_few_training_steps_lower_the_loss_with_lora_on_the_language_model_only(tiny_qwen_dir, colour_examples, tmp_path):
    result = train.train_adapter(colour_examples * 2, colour_examples[:2], str(tiny_qwen_dir), tmp_path,
                                 tiny_config(max_steps=8))

    losses = [point["loss"] for point in result.train_loss]
    assert len(losses) == 8 and result.global_step == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert result.eval_loss and result.eval_loss[-1]["loss"] < losses[0]
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter["target_modules"] == train.LM_LINEAR_LAYERS
    assert 0 < result.trainable_params < result.total_params // 5


def linear4bit_layers(net) -> list:
    return [module for module in net.modules() if type(module).__name__ == "Linear4bit"]


@pytest.mark.parametrize("cpu_kernel", ["avx512bf16-packed", "generic"])
def test_4bit_adapter_saves_reloads_and_generates(cpu_kernel, tiny_qwen_dir, colour_examples, colour_photos, tmp_path):
    """Both CPU 4-bit paths of bitsandbytes: the AVX512-BF16 one repacks weights on the first eval
    forward pass (where this CPU has it), the generic one dequantises; each must train, reload and generate."""
    if cpu_kernel == "avx512bf16-packed" and not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never takes its packed 4-bit path here")
    result = train.train_adapter(colour_examples, colour_examples[:1], str(tiny_qwen_dir), tmp_path / "run",
                                 tiny_config(quantize="4bit", max_steps=2, gradient_checkpointing=True))
    files = train.pack_adapter(result.adapter_dir)
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json"} <= set(files)
    assert "model.safetensors" not in files  # the adapter only: never merged into the 4-bit base

    unpacked = train.unpack_adapter(files, tmp_path / "unpacked")
    provider = FineTunedProvider("tiny-lora", base_model=str(tiny_qwen_dir), adapter_path=str(unpacked),
                                 quantize="4bit", max_new_tokens=8)
    quantised = linear4bit_layers(provider.net)
    assert quantised, "the language model's linears are 4-bit"
    for module in quantised:
        module.support_avx512bf16_for_cpu = cpu_kernel == "avx512bf16-packed"
    answer = provider.complete("Tag this photo.", LocalImage(colour_photos["red"], colour_photos["red"].parent))

    assert isinstance(answer, Answer) and 1 <= answer.completion_tokens <= 8 and answer.prompt_tokens > 0
    packed = [getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in quantised]
    assert all(packed) if cpu_kernel == "avx512bf16-packed" else not any(packed)
    assert (provider.min_pixels, provider.max_pixels) == (TINY_PIXELS["min_pixels"], TINY_PIXELS["max_pixels"])


def test_cpu_4bit_load_keeps_layers_the_packed_kernel_cannot_take_unquantised(tmp_path):
    """On Qwen2.5-VL-3B's real shapes: the 3420-wide vision MLP projection stays unquantised on the CPU,
    the language model's projections are quantised, and the lm_head stays as transformers keeps it."""
    from phototagger.training.random_qwen import byte_level_tokenizer, qwen_config

    qwen_config("3b", byte_level_tokenizer()).save_pretrained(tmp_path)
    skipped = set(vlm.cpu_4bit_skip_modules(tmp_path))

    assert r"model\.visual\.blocks\.0\.mlp\.down_proj" in skipped  # in_features 3420 is not a multiple of 64
    assert not any("language_model\\.layers" in name for name in skipped)
    assert "lm_head" in skipped


def test_unpack_refuses_paths_outside_the_target(tmp_path):
    with pytest.raises(ValueError, match="relative"):
        train.unpack_adapter({"../evil.json": b"{}"}, tmp_path)


class CrashAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated preemption")


def test_interrupted_run_resumes_from_its_last_checkpoint(tiny_qwen_dir, colour_examples, tmp_path):
    config = tiny_config(max_steps=4, save_steps=2)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train.train_adapter(colour_examples, [], str(tiny_qwen_dir), tmp_path, config, callbacks=[CrashAtStep(3)])

    result = train.train_adapter(colour_examples, [], str(tiny_qwen_dir), tmp_path, config)

    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.global_step == 4
    assert [point["step"] for point in result.train_loss] == [1, 2, 3, 4]


def test_a_run_killed_after_its_first_checkpoint_resumes_from_the_datastore_on_a_fresh_disk(tiny_qwen_dir, colour_examples, tmp_path):
    config = tiny_config(max_steps=4, save_steps=2)
    storage = LocalStorage(str(tmp_path / "datastore"))
    prefix = "FineTuneVLM/checkpoints/7/train"
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train.train_adapter(colour_examples, [], str(tiny_qwen_dir), tmp_path / "pod-1", config, callbacks=[CrashAtStep(3)],
                            store=CheckpointStore(storage, prefix, tmp_path / "pod-1"))

    result = train.train_adapter(colour_examples, [], str(tiny_qwen_dir), tmp_path / "pod-2", config,
                                 store=CheckpointStore(storage, prefix, tmp_path / "pod-2"))

    assert result.resumed_from == str(tmp_path / "pod-2" / "checkpoint-2")
    assert result.global_step == 4
    assert [point["step"] for point in result.train_loss] == [1, 2, 3, 4]
    assert CheckpointStore(storage, prefix, tmp_path / "pod-3").latest() == tmp_path / "pod-3" / "checkpoint-4"
