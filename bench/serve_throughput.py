"""Photos per second: the fine-tuned model in process (batched generate) against the same model served.

In one run, on the tiny random Qwen2.5-VL (or --base-model), with an adapter exported by
export_model.py's code path (phototagger.training.export: adapter merged onto the unquantised base):
  1. the in-process `finetuned` provider: greedy generation one photo per call, and batched (--batch-size),
  2. the merged model behind `transformers serve` on 127.0.0.1, called through the `openai-compatible`
     provider (the models.json entry the export writes) at concurrency 1, 4 and 16,
each through `batch.prompt_photos` (PromptModels' path) without a response cache, on the demo photos
repeated to --photos. The last lines print photos/s per setting and the machine's load, since on a
shared CPU the figures move with it. GPU figures for the 3B model need a GPU and vLLM; see docs/serving.md.

    .venv/bin/python bench/serve_throughput.py                 # 36 photos, 12 new tokens: a few minutes on 2 cores
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phototagger.ingest.sources.demo import DemoSource  # noqa: E402
from phototagger.prompting.batch import PromptSettings, prompt_photos  # noqa: E402
from phototagger.prompting.prompter import Prompter  # noqa: E402
from phototagger.training import export  # noqa: E402

PROMPT = (ROOT / "prompt.txt").read_text(encoding="utf-8").strip()


def exported_model(base: Path, work: Path) -> export.ExportResult:
    """A LoRA adapter of `base` (peft's own initialisation), stored and exported as a FineTuneVLM run's would be."""
    from peft import get_peft_model

    from phototagger.training import train, vlm

    config = train.FineTuneConfig()
    model = get_peft_model(vlm.load_model(base, "none"), config.lora_config())
    model.save_pretrained(work / "adapter")
    caps = vlm.saved_pixel_caps(base) or (vlm.DEFAULT_MIN_PIXELS, vlm.DEFAULT_MAX_PIXELS)
    vlm.load_processor(base, *caps).save_pretrained(work / "adapter")
    meta = {"base_model": str(base), "quantize": "none", "min_pixels": caps[0], "max_pixels": caps[1], "prompt_text": PROMPT,
            "prompt_hash": "bench", "dataset_run": "PrepareVLMData/bench", "lora": {"r": config.lora_rank}, "training": {}}
    return export.export_adapter(train.pack_adapter(work / "adapter"), meta, "FineTuneVLM/bench", work / "export")


def photos_per_second(prompter: Prompter, photos: list, settings: PromptSettings) -> float:
    started = time.perf_counter()
    results = prompt_photos(prompter, photos, PROMPT, settings, cache=None)
    elapsed = time.perf_counter() - started
    failed = [r for r in results if r["error"] not in (None, "truncated", "unparseable")]
    if failed:
        raise SystemExit(f"{len(failed)} calls failed, e.g. {failed[0]['error']}: {failed[0]['raw'][:200]}")
    return len(photos) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description="In-process batched generation vs the served merged model, photos/s.")
    parser.add_argument("--base-model", default="", help="base model folder (default: a tiny random Qwen2.5-VL built here)")
    parser.add_argument("--photos", type=int, default=36, help="photos per setting (the 18 demo photos, repeated)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="answer length (the random model never stops early)")
    parser.add_argument("--batch-size", type=int, default=8, help="photos per generate call in process")
    parser.add_argument("--device", default="cpu", help="device for both (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, in process and in the server (OMP_NUM_THREADS)")
    args = parser.parse_args()
    # Both sides get the same thread count: on a loaded 2-core machine, 2 OpenMP threads ran the tiny model 4-12x
    # slower than 1, and the server's worker thread would otherwise not run like the main thread here.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)

    demo = DemoSource().fetch(set(), 100)
    photos = [{**demo[i % len(demo)], "id": f"{demo[i % len(demo)]['id']}-{i}"} for i in range(args.photos)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        work = Path(work)
        base = Path(args.base_model) if args.base_model else None
        if base is None:
            from phototagger.training.random_qwen import build_random_qwen

            base = build_random_qwen(work / "tiny-qwen", "tiny")
        exported = exported_model(base, work)
        caps = {"min_pixels": exported.meta["min_pixels"], "max_pixels": exported.meta["max_pixels"]}
        figures = {}
        for batch_size in sorted({1, args.batch_size}):
            local = Prompter("finetuned", exported.served_name, base_model=str(exported.merged_dir), quantize="none",
                             max_new_tokens=args.max_new_tokens, batch_size=batch_size, **caps)
            local.prompt(PROMPT, photos[0]["image_url"])  # warm-up, as for the server
            figures[f"in-process, batch {batch_size}"] = photos_per_second(local, photos, PromptSettings(batch_size=batch_size, progress=False))
            del local
        with export.transformers_server(exported.out_dir, exported.served_name, device=args.device) as base_url:
            entry = {**exported.models_entry, "base_url": base_url, "max_tokens": args.max_new_tokens}
            served = Prompter(entry.pop("provider"), entry.pop("model"), **entry)
            served.prompt(PROMPT, photos[0]["image_url"])  # the first call pays for warm-up, not a setting
            for concurrency in (1, 4, 16):
                settings = PromptSettings(concurrency=concurrency, progress=False)
                figures[f"served, concurrency {concurrency}"] = photos_per_second(served, photos, settings)
    load_after = os.getloadavg()
    print(f"{args.photos} photos, {args.max_new_tokens} new tokens each, {base if args.base_model else 'tiny random Qwen2.5-VL'} "
          f"on {args.device}, {args.threads} CPU thread(s) each side")
    for name, rate in figures.items():
        print(f"  {name:<26} {rate:6.2f} photos/s")
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")


if __name__ == "__main__":
    main()
