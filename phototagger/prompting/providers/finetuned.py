"""The `finetuned` provider: Qwen2.5-VL base (4-bit or not) plus a LoRA adapter, local transformers.

Prompts are built by `vlm.encode_chats` with the processor saved next to the adapter, so a photo
is seen at inference exactly as in training (same chat template, same pixel caps). The adapter is
applied on top of the base, never merged into it. `complete_batch` is real batched generation:
left padding, one greedy `generate` call per batch.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from phototagger.training import vlm
from phototagger.http import ImageFetchError
from phototagger.images import load_image
from phototagger.prompting.providers.base import Answer, Provider, ProviderError, register_provider

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 8


def adapter_base_model(adapter_path: str | Path) -> Optional[str]:
    """The base model an adapter was trained on, as peft recorded it in adapter_config.json."""
    config = Path(adapter_path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


@register_provider("finetuned")
class FineTunedProvider(Provider):
    """Tags photos with a local Qwen2.5-VL and an optional LoRA adapter (no adapter: the base, zero-shot)."""

    def __init__(
        self,
        model: str,
        *,
        base_model: Optional[str] = None,
        adapter_path: Optional[str] = None,
        quantize: str = "4bit",
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        super().__init__(model)
        if adapter_path and not (Path(adapter_path) / "adapter_config.json").is_file():
            raise ValueError(f"{adapter_path} is not a LoRA adapter dir (no adapter_config.json); pass FineTuneVLM's adapter")
        self.adapter_path = adapter_path
        self.base_model = base_model or (adapter_base_model(adapter_path) if adapter_path else None) or vlm.DEFAULT_BASE_MODEL
        self.quantize = quantize
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)
        # the processor saved with the adapter carries the training pixel caps and chat template
        has_processor = bool(adapter_path) and (Path(adapter_path) / "processor_config.json").is_file()
        processor_source = adapter_path if has_processor else self.base_model
        trained_caps = vlm.saved_pixel_caps(adapter_path) if has_processor else None
        default_min, default_max = trained_caps or (vlm.DEFAULT_MIN_PIXELS, vlm.DEFAULT_MAX_PIXELS)
        self.min_pixels = min_pixels or default_min
        self.max_pixels = max_pixels or default_max
        self.processor = vlm.load_processor(processor_source, self.min_pixels, self.max_pixels)
        self.net = self._load_network()
        tokenizer = self.processor.tokenizer
        self.eos_id = tokenizer.convert_tokens_to_ids(vlm.END_OF_TURN)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def _load_network(self) -> Any:
        model = vlm.load_model(self.base_model, self.quantize)
        if self.adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter_path)
        model.eval()
        return model

    def settings(self) -> dict[str, Any]:
        return {
            "provider": self.name, "model": self.model, "base_model": self.base_model,
            "adapter": self._adapter_digest(), "quantize": self.quantize, "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels, "max_new_tokens": self.max_new_tokens, "decoding": "greedy",
        }

    def _adapter_digest(self) -> Optional[str]:
        if not self.adapter_path:
            return None
        weights = sorted(Path(self.adapter_path).glob("adapter_model.*"))
        return hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()[:16]

    def complete(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> Answer:
        (answer,) = self.complete_batch(prompt_text, [image], [photo_id])
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    def complete_batch(
        self, prompt_text: str, images: Sequence[str], photo_ids: Sequence[Optional[str]]
    ) -> list[Union[Answer, ProviderError]]:
        """One answer or error per image; images are generated in chunks of `batch_size`."""
        answers: list[Union[Answer, ProviderError, None]] = [None] * len(images)
        loaded: list[tuple[int, Any]] = []
        max_side = vlm.max_side_for(self.max_pixels)
        for index, location in enumerate(images):
            try:
                loaded.append((index, load_image(location, max_side)))
            except ImageFetchError as exc:
                answers[index] = ProviderError(exc.error_class, str(exc))
        for start in range(0, len(loaded), self.batch_size):
            chunk = loaded[start : start + self.batch_size]
            for (index, _), answer in zip(chunk, self._generate_or_split(prompt_text, [im for _, im in chunk])):
                answers[index] = answer
        return answers  # type: ignore[return-value]

    def _generate_or_split(self, prompt_text: str, images: list[Any]) -> list[Union[Answer, ProviderError]]:
        """Generate for a chunk; on GPU out-of-memory, halve it, down to one photo."""
        try:
            return self._generate(prompt_text, images)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            if len(images) == 1:
                return [ProviderError("internal", f"GPU out of memory on one photo: lower max_pixels ({exc})", retryable=False)]
            half = len(images) // 2
            log.warning("GPU out of memory at batch %d; splitting", len(images))
            return self._generate_or_split(prompt_text, images[:half]) + self._generate_or_split(prompt_text, images[half:])

    @torch.inference_mode()
    def _generate(self, prompt_text: str, images: list[Any]) -> list[Answer]:
        from transformers import GenerationConfig

        chats = [[vlm.user_message(prompt_text, image)] for image in images]
        batch = vlm.encode_chats(self.processor, chats, images, add_generation_prompt=True, padding_side="left")
        batch = batch.to(self.net.device)
        generation = GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
        )
        output = self.net.generate(**batch, generation_config=generation)
        new_tokens = output[:, batch["input_ids"].shape[1] :].cpu()
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        answers = []
        for row, prompt_length in zip(new_tokens, prompt_lengths):
            ends = (row == self.eos_id).nonzero().flatten()
            used = row[: int(ends[0]) + 1] if len(ends) else row
            text = self.processor.tokenizer.decode(used, skip_special_tokens=True).strip()
            answers.append(Answer(text, int(prompt_length), int(len(used)), finish_reason="stop" if len(ends) else "length"))
        return answers
