"""Qwen2.5-VL plumbing shared by curation, training and inference.

One place decides how big an image gets (the processor's pixel caps, and the side images are
shrunk to before it; images themselves are read by `images.load_image`), how the model is loaded (4-bit NF4 or not) and how a photo becomes chat tokens, so the fine-tuned
model is prompted at inference exactly as it was trained.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from PIL import Image

from phototagger.errors import UserError

logger = logging.getLogger(__name__)

PATCH_FACTOR = 28  # patch 14 x spatial merge 2: one image token covers 28x28 pixels
# Caps for Qwen2.5-VL-3B: 128 to 256 image tokens per photo (448x448 -> 256). Enough for tagging,
# and they keep a batch of 4 inside a 24 GB card when training 4-bit; the processor enforces them.
DEFAULT_MIN_PIXELS = 128 * PATCH_FACTOR * PATCH_FACTOR
DEFAULT_MAX_PIXELS = 256 * PATCH_FACTOR * PATCH_FACTOR
DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
ASSISTANT_HEADER = "<|im_start|>assistant\n"  # Qwen chat template: what precedes every assistant answer
END_OF_TURN = "<|im_end|>"


TINY_MODEL_FIX = "python -m phototagger.training.random_qwen models/tiny-qwen --size tiny"


def check_base_model(base_model: str) -> str:
    """Where `base_model` will load from ("local", "cache" or "hub"), checked before any GPU is asked for;
    UserError when it cannot load: neither a model folder here, nor in the Hugging Face cache, nor on a reachable hub."""
    fix = f"pass --base-model PATH to a local copy, or for a CPU trial build a tiny random model with `{TINY_MODEL_FIX}`"
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--base-model {base_model} is a folder without a config.json, not a saved model", fix)
        return "local"
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        if isinstance(try_to_load_from_cache(base_model, "config.json"), str):
            return "cache"
    except HFValidationError:
        raise UserError(f"--base-model {base_model} is neither a model folder nor a hub id (org/name)", fix) from None
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"--base-model {base_model} is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set", fix)
    try:
        HfApi().model_info(base_model, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        reason = "is gated: accept its licence on the hub and run `hf auth login`" if isinstance(exc, GatedRepoError) else "is not on the hub"
        raise UserError(f"--base-model {base_model} {reason}", fix) from None
    except Exception as exc:  # a DNS failure, a refused connection, a proxy: any of them means no download
        raise UserError(f"--base-model {base_model} is not cached and {constants.ENDPOINT} cannot be reached ({type(exc).__name__})", fix) from None
    return "hub"


def load_processor(path: str | Path, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """The model's AutoProcessor with the image processor capped to [min_pixels, max_pixels]."""
    from transformers import AutoProcessor

    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels}); swap or fix them")
    processor = AutoProcessor.from_pretrained(str(path))
    if not hasattr(processor, "image_processor"):
        raise ValueError(
            f"{path} has no image processor (AutoProcessor gave {type(processor).__name__}); "
            "point --base-model at a Qwen2.5-VL checkpoint with preprocessor_config.json"
        )
    processor.image_processor.size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    return processor


def saved_pixel_caps(path: str | Path) -> tuple[int, int] | None:
    """The (min_pixels, max_pixels) a saved processor (e.g. next to an adapter) was capped to, if any."""
    config = Path(path) / "processor_config.json"
    if not config.is_file():
        return None
    size = json.loads(config.read_text()).get("image_processor", {}).get("size") or {}
    if "shortest_edge" in size and "longest_edge" in size:
        return int(size["shortest_edge"]), int(size["longest_edge"])
    return None


def image_token_count(width: int, height: int, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """How many <|image_pad|> tokens a width x height photo costs under the pixel caps."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // PATCH_FACTOR) * (w // PATCH_FACTOR)


def max_side_for(max_pixels: int) -> int:
    """The longest side photos are shrunk to before the processor: keeps memory small for any aspect up
    to 4:1 without changing what the processor's own resize produces by more than resampling noise.

    Training and inference both load images with `images.load_image(location, max_side_for(max_pixels))`.
    """
    return 2 * math.isqrt(max_pixels)


def user_message(prompt_text: str, image: Any) -> dict:
    """The user turn, as DESIGN.md's training example has it: prompt text, then the image."""
    return {"role": "user", "content": [{"type": "text", "text": prompt_text}, {"type": "image", "image": image}]}


def encode_chats(
    processor: Any,
    conversations: Sequence[list[dict]],
    images: Sequence[Image.Image],
    *,
    add_generation_prompt: bool,
    padding_side: str = "right",
) -> dict:
    """Batch tensors (input_ids, attention_mask, pixel_values, image_grid_thw) for chats with one image each.

    Training passes user+assistant turns; inference passes the user turn with a generation prompt,
    which renders to exactly the training text up to the answer.
    """
    texts = [
        processor.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=add_generation_prompt)
        for chat in conversations
    ]
    return processor(text=texts, images=list(images), padding=True, padding_side=padding_side, return_tensors="pt")


def compute_dtype() -> Any:
    """bf16 where the GPU supports it, else fp32 (fp16 overflows in Qwen's vision tower)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


NF4_BLOCKSIZE = 64  # bitsandbytes' default 4-bit blocksize: one absmax per 64 weights of a row
CPU_PACKED_ROWS = 32  # its AVX512-BF16 CPU kernel repacks a 4-bit weight in blocks of 32 output rows


def quantization_config(quantize: str, skip_modules: Sequence[str] | None = None) -> Any:
    """BitsAndBytesConfig for QLoRA (NF4, double quantisation), or None for full precision.

    `skip_modules` are full module names kept in the compute dtype instead of 4-bit."""
    from transformers import BitsAndBytesConfig

    if quantize == "none":
        return None
    if quantize != "4bit":
        raise ValueError(f"quantize must be '4bit' or 'none', got {quantize!r}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
        llm_int8_skip_modules=list(skip_modules) if skip_modules is not None else None,
    )


def cpu_4bit_skip_modules(path: str | Path) -> list[str]:
    """The modules a 4-bit load on the CPU keeps unquantised: transformers' usual skips (output
    embeddings, tied weights) plus every Linear whose shape the CPU 4-bit kernel cannot repack.

    On a CPU with AVX512-BF16, bitsandbytes repacks each 4-bit weight on its first forward pass in eval
    mode, which needs in_features to be a multiple of the blocksize and out_features a multiple of 32;
    any other layer fails there ("shape '[96, 0]' is invalid"). Qwen2.5-VL-3B's vision MLP (3420 wide)
    and the tiny test model's vision tower (32 wide) are such layers. The rule is the same on every CPU,
    so a model quantises alike whichever CPU it lands on; on a GPU every layer is quantised.
    """
    import re

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.quantizers.base import get_keys_to_not_convert

    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(path)))
    unpackable = [
        name
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (module.in_features % NF4_BLOCKSIZE or module.out_features % CPU_PACKED_ROWS)
    ]
    # transformers reads each entry as a regex anchored at the module name's start
    return sorted(set(get_keys_to_not_convert(skeleton)) | {re.escape(name) for name in unpackable})


def load_model(path: str | Path, quantize: str = "4bit", **kwargs: Any) -> Any:
    """Qwen2.5-VL for conditional generation, 4-bit NF4 or full precision, on GPU when there is one."""
    import torch
    from transformers import AutoModelForImageTextToText

    on_gpu = torch.cuda.is_available()
    skip_modules = cpu_4bit_skip_modules(path) if quantize == "4bit" and not on_gpu else None
    options: dict[str, Any] = {"dtype": compute_dtype(), "quantization_config": quantization_config(quantize, skip_modules)}
    if on_gpu:
        options["device_map"] = "auto"
    options.update(kwargs)
    model = AutoModelForImageTextToText.from_pretrained(str(path), **options)
    logger.info("loaded %s (%s) on %s", path, quantize, model.device)
    return model


def adapter_model_name(base_model: str, finetune_run_id: str) -> str:
    """The name a FineTuneVLM run's adapter goes by: PromptCustomModels' model name and the exported model's served name."""
    return f"{PurePosixPath(base_model.rstrip('/')).name}-lora-{finetune_run_id}"


def pixel_caps_note(min_pixels: int, max_pixels: int) -> str:
    """A one-line description of the caps for cards and logs."""
    lo, hi = min_pixels // (PATCH_FACTOR**2), max_pixels // (PATCH_FACTOR**2)
    side = int(math.sqrt(max_pixels))
    return f"{lo}-{hi} image tokens per photo (about {side}x{side} pixels at most)"
