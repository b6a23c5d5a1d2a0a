"""How much faster Photo Tagger's prompting path is than calling a model one photo at a time.

A local OpenAI-compatible server answers every call after a fixed latency (0.3 s). In one run
this times, on the same photos and the same Prompter:
  1. the one-at-a-time loop (plain `Prompter.prompt` in a for loop, as the reference pipeline did),
  2. `batch.prompt_photos` at concurrency 16 with a fresh response cache (median of 3 such runs:
     a 4-second phase is more exposed to a busy machine than the minute-long loop),
  3. `batch.prompt_photos` again with the now warm cache of the last of them (a rerun).
The last line reads
  sequential_s=<x> concurrent_s=<y> speedup=<x/y> limit_ratio=<(n*latency/concurrency)/y> cached_s=<z>
where limit_ratio is the share of the ideal concurrent time reached (1.0 = no overhead at all).
Targets (issue 4): speedup >= 10, limit_ratio >= 0.9, cached_s < 2.

    .venv/bin/python bench/prompt_throughput.py            # 200 photos, about 75 s
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phototagger.prompting.batch import PromptSettings, prompt_photos  # noqa: E402
from phototagger.prompting.cache import LocalCacheBackend, ResponseCache  # noqa: E402
from phototagger.prompting.prompter import Prompter  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

PROMPT = (ROOT / "prompt.txt").read_text(encoding="utf-8").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description="Time sequential vs concurrent vs cached prompting on a local fake API.")
    parser.add_argument("--photos", type=int, default=200, help="photos to tag")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the fake server takes per call")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight for prompt_photos")
    parser.add_argument("--trials", type=int, default=3, help="cold-cache concurrent runs; the median is reported")
    args = parser.parse_args()

    photos = [
        {"id": f"bench-{i}", "image_url": f"https://images.example.com/photo-{i}.jpg", "ground_truth_tags": ["photo", "outdoor"]}
        for i in range(args.photos)
    ]
    with FakeOpenAIServer(latency_s=args.latency) as server, tempfile.TemporaryDirectory() as cache_dir:
        settings = PromptSettings(concurrency=args.concurrency, progress=False)
        prompter = Prompter("openai", "gpt-4o-mini", api_key="sk-bench-local", base_url=server.base_url, timeout_s=30)
        # SDK set-up and the connection pool (one connection per concurrent call), outside the timings.
        warm_up = [{"id": f"warm-up-{i}", "image_url": f"https://images.example.com/warm-up-{i}.jpg"} for i in range(args.concurrency)]
        prompt_photos(prompter, warm_up, PROMPT, settings)

        started = time.perf_counter()
        sequential = [prompter.prompt(PROMPT, p["image_url"], p["id"]) for p in photos]
        sequential_s = time.perf_counter() - started
        print(f"one at a time:     {len(sequential)} photos in {sequential_s:.2f} s", flush=True)

        # The concurrent phase is short, so it runs `--trials` times, each with a fresh cache; the median counts.
        trials = []
        for trial in range(args.trials):
            cache = ResponseCache(LocalCacheBackend(Path(cache_dir) / f"trial-{trial}"))
            started = time.perf_counter()
            concurrent = prompt_photos(prompter, photos, PROMPT, settings, cache=cache)
            trials.append(time.perf_counter() - started)
            print(f"prompt_photos x{args.concurrency}: {len(concurrent)} photos in {trials[-1]:.2f} s (cold cache)", flush=True)
        concurrent_s = statistics.median(trials)

        calls_before = server.calls
        started = time.perf_counter()
        cached = prompt_photos(prompter, photos, PROMPT, settings, cache=cache)
        cached_s = time.perf_counter() - started
        print(f"warm-cache rerun:  {len(cached)} photos in {cached_s:.2f} s, {server.calls - calls_before} calls", flush=True)

    failed = sum(1 for r in sequential + concurrent + cached if r.get("error"))
    if failed or not all(r.get("cached") for r in cached):
        sys.exit(f"benchmark invalid: {failed} errors, {sum(not r.get('cached') for r in cached)} cache misses on the rerun")
    ideal_s = args.photos * args.latency / args.concurrency
    print(
        f"sequential_s={sequential_s:.2f} concurrent_s={concurrent_s:.2f} speedup={sequential_s / concurrent_s:.2f} "
        f"limit_ratio={ideal_s / concurrent_s:.3f} cached_s={cached_s:.3f}"
    )


if __name__ == "__main__":
    main()
