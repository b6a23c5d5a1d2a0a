"""A random-weight Qwen2.5-VL checkpoint built from config, for tests, the demo and GPU benchmarks.

No hub is reachable in CI, so the training and inference code runs on a model with the real
architecture and random weights: "tiny" (200k parameters, for tests) or "3b" (Qwen2.5-VL-3B-Instruct's
published shapes, so speed and memory are real). The tokenizer is byte-level plus the Qwen special
tokens and the stock chat template, unless the real Qwen tokenizer is already on disk.

    python -m phototagger.training.random_qwen OUT_DIR --size tiny
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen2-VL / Qwen2.5-VL's published chat_template.json
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REAL_TOKENIZER = "Qwen/Qwen2.5-VL-3B-Instruct"
QWEN_3B_VOCAB = 151936

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, mrope_section=[2, 3, 3], tie_word_embeddings=False),
        "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       window_size=56, fullatt_block_indexes=[1]),
        "pixels": (4 * 28 * 28, 16 * 28 * 28),
    },
    "3b": {
        "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=2, mrope_section=[16, 24, 24], tie_word_embeddings=True,
                     vocab_size=QWEN_3B_VOCAB),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                       window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        "pixels": (56 * 56, 28 * 28 * 16384),  # the published processor's caps; vlm.load_processor overrides them
    },
}


def byte_level_tokenizer() -> Any:
    """A Qwen2Tokenizer over the 256 byte symbols (no merges) plus the Qwen special tokens: encodes any text."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def _tokenizer(size: str) -> Any:
    """The real Qwen tokenizer when it is in the local HF cache (3b only), else the byte-level one."""
    if size == "3b":
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(REAL_TOKENIZER, local_files_only=True)
        except (OSError, ValueError):
            logger.info("%s tokenizer not cached; using the byte-level tokenizer", REAL_TOKENIZER)
    return byte_level_tokenizer()


def qwen_config(size: str, tokenizer: Any) -> Any:
    """The Qwen2_5_VLConfig of a size, with special token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(spec["text"])
    mrope_section = text.pop("mrope_section")
    text.setdefault("vocab_size", len(tokenizer))
    return Qwen2_5_VLConfig(
        text_config=dict(
            text,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(spec["vision"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def build_random_qwen(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight Qwen2.5-VL (model, tokenizer, processor, chat template) to out_dir."""
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(size)
    config = qwen_config(size, tokenizer)
    torch.manual_seed(seed)
    # the 3b model is built (on the GPU when there is one) and saved in bf16, like the published checkpoint
    dtype = torch.bfloat16 if size == "3b" else torch.float32
    with torch.device("cuda" if size == "3b" and torch.cuda.is_available() else "cpu"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(out)

    min_pixels, max_pixels = SIZES[size]["pixels"]
    size_caps = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size_caps, patch_size=14, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size_caps, patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    logger.info("built random %s Qwen2.5-VL (%d parameters) in %s", size, model.num_parameters(), out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random-weight Qwen2.5-VL checkpoint (offline).")
    parser.add_argument("out_dir", help="directory to write the checkpoint to")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny (tests) or 3b (real shapes)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    args = parser.parse_args(argv)
    print(build_random_qwen(args.out_dir, args.size, args.seed))


if __name__ == "__main__":
    main()
