"""Fine-tuning and inference speed of Qwen2.5-VL-3B's architecture (random weights) with our code.

    python bench/finetune_gpu.py                       # GPU: 3b shapes, 4-bit, batch 4, 448x448 photos
    python bench/finetune_gpu.py --size tiny --steps 3 --infer-photos 4   # CPU smoke check

Builds the random model with phototagger.training.random_qwen, trains a few steps through
phototagger.training.train.train_adapter (the FineTuneVLM code path) and reports samples/s (steps after the
first) and peak GPU memory; then loads the adapter with the `finetuned` provider and compares
batched generation (one generate call per --infer-batch photos) against one photo at a time.
With the byte-level stand-in tokenizer, prompt and answer are shortened to about the token count
the real Qwen tokenizer gives them (about 4 characters per token), so sequence lengths stay real.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback

from phototagger.training import train, vlm
from phototagger.images import load_image
from phototagger.prompting.providers.finetuned import FineTunedProvider
from phototagger.training.random_qwen import build_random_qwen

PROMPT = (Path(__file__).resolve().parent.parent / "prompt.txt").read_text().strip()
WORDS = ["beach", "sunset", "dog", "city street", "coffee cup", "mountain", "forest", "car", "portrait", "food",
         "snow", "river", "building", "flower", "night", "bicycle", "sky", "people", "table", "window"]
CHARS_PER_REAL_TOKEN = 4


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step (CUDA synchronised)."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def make_photos(folder: Path, count: int, side: int, seed: int) -> list[Path]:
    """Noisy gradient JPEGs of side x side: real decode and resize work, like camera photos."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        base = np.linspace(0, 255, side, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 40, size=(side, side, 3)), 0, 255).astype(np.uint8)
        path = folder / f"photo-{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def make_examples(photos: list[Path], prompt: str, tags_per_photo: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for path in photos:
        tags = rng.sample(WORDS, tags_per_photo)
        examples.append({
            "messages": [vlm.user_message(prompt, str(path)),
                         {"role": "assistant", "content": [{"type": "text", "text": json.dumps({"tags": tags})}]}],
            "ground_truth_tags": tags, "photo_id": path.stem,
        })
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["3b", "tiny"], default="3b", help="random model shapes")
    parser.add_argument("--quantize", choices=["4bit", "none"], default="4bit")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps to time (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=448, help="photo side in pixels")
    parser.add_argument("--infer-photos", type=int, default=16)
    parser.add_argument("--infer-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="a 10-tag answer is about 40 real tokens")
    parser.add_argument("--workdir", default="", help="where to build the model (default: a temp dir)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="finetune-bench-"))

    started = time.perf_counter()
    model_dir = build_random_qwen(work / f"qwen-{args.size}", size=args.size)
    print(f"built random {args.size} model in {time.perf_counter() - started:.0f}s at {model_dir}")
    processor = vlm.load_processor(model_dir)
    byte_level = len(processor.tokenizer) < 1000
    prompt = PROMPT[: len(PROMPT) // CHARS_PER_REAL_TOKEN] if byte_level else PROMPT
    tags_per_photo = 3 if byte_level else 10
    photos_dir = work / "photos"
    photos_dir.mkdir(exist_ok=True)
    photos = make_photos(photos_dir, max(args.batch_size * args.steps, args.infer_photos), args.image_size, seed=0)
    examples = make_examples(photos, prompt, tags_per_photo, seed=0)
    sample = train.make_collate_fn(processor)([{"messages": examples[0]["messages"],
                                                "image": load_image(str(photos[0]))}])
    seq_len = int(sample["input_ids"].shape[1])
    image_tokens = int((sample["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    print(f"sequence: {seq_len} tokens per example ({image_tokens} image tokens, "
          f"{int((sample['labels'] != train.IGNORE_INDEX).sum())} supervised)")

    # ------------------------------------------------------------ training
    config = train.FineTuneConfig(max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                                  quantize=args.quantize, save_steps=10_000, learning_rate=1e-4)
    clock = StepClock()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    result = train.train_adapter(examples[: args.batch_size * args.steps], [], str(model_dir), work / "run", config,
                                 callbacks=[clock])
    train_peak_gb = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
    timed = clock.times[1:] if len(clock.times) > 1 else clock.times
    span = (timed[-1] - clock.times[0]) if len(clock.times) > 1 else result.runtime_s
    samples_per_s = args.batch_size * (len(clock.times) - 1) / span if len(clock.times) > 1 else result.samples_per_second
    print(f"training: {samples_per_s:.2f} samples/s after the first step; peak GPU memory {train_peak_gb:.1f} GiB; "
          f"loss {result.train_loss[0]['loss']:.3f} -> {result.train_loss[-1]['loss']:.3f}")
    del result
    if gpu:
        torch.cuda.empty_cache()

    # ------------------------------------------------------------ inference
    provider = FineTunedProvider(f"bench-{args.size}", base_model=str(model_dir), adapter_path=str(work / "run" / "adapter"),
                                 quantize=args.quantize, max_new_tokens=args.max_new_tokens, batch_size=args.infer_batch)
    images = [str(p) for p in photos[: args.infer_photos]]
    provider.complete(prompt, images[0])  # warm-up
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    batched = provider.complete_batch(prompt, images, [None] * len(images))
    if gpu:
        torch.cuda.synchronize()
    batched_rate = len(images) / (time.perf_counter() - t0)
    infer_peak_gb = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
    t0 = time.perf_counter()
    single = [provider.complete(prompt, image) for image in images]
    if gpu:
        torch.cuda.synchronize()
    single_rate = len(images) / (time.perf_counter() - t0)
    generated = sum(a.completion_tokens for a in batched) / len(batched)
    same = sum(a == b for a, b in zip(batched, single))
    print(f"inference: batched ({args.infer_batch}/call) {batched_rate:.2f} photos/s vs one at a time {single_rate:.2f} "
          f"photos/s; {generated:.0f} new tokens per photo; {same}/{len(images)} answers identical; "
          f"peak GPU memory {infer_peak_gb:.1f} GiB")
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    print(f"RESULT device={device!r} size={args.size} quantize={args.quantize} batch={args.batch_size} "
          f"image={args.image_size}px seq={seq_len} train_samples_per_s={samples_per_s:.2f} "
          f"train_peak_gib={train_peak_gb:.1f} infer_batched_photos_per_s={batched_rate:.2f} "
          f"infer_single_photos_per_s={single_rate:.2f} speedup={batched_rate / single_rate:.2f}x")


if __name__ == "__main__":
    main()
