"""Does an hourly run's cost stay flat as history grows? Real flows for K rounds, and a model of a year.

1. K hourly rounds through the real flows (Metaflow Runner, a temporary local datastore): UpdatePhotos
   delivers `--photos` new photos from a generated folder, PromptModels runs the offline baselines
   (prior, knn), EvaluationFlow folds them. Per round and flow: wall time and the bytes the round added
   to the datastore (artifacts, metadata and cards). Figures at each K of `--ks` (mean of the rounds K-2..K) side by side,
   with the ratio of the largest K to the smallest.
2. A year in-process: the ScoreState of 8,760 hourly rounds x 30 photos x 2 models (bench/synthetic_evals),
   then one hourly EvaluationFlow run's library work on it, in a child process: load the state,
   score the new batch with the vocabulary and fold it, write photo_results, rank, render the card, store the state. Its wall time
   and peak RAM (targets: < 60 s, < 2 GB).

    .venv/bin/python bench/hourly_growth.py                   # K=5 and K=20, then the year (about 25 min here)
    .venv/bin/python bench/hourly_growth.py --ks 10,100       # the issue's target: K=100 within 1.2x of K=10
    .venv/bin/python bench/hourly_growth.py --ks 0            # the year model only
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_evals import ROOT, VOCABULARY, batch_events, year_state  # noqa: E402

sys.path.insert(0, str(ROOT))
from phototagger.blobs import MemoryBlobStore  # noqa: E402
FLOWS = (("UpdatePhotos", "updatephotos.py"), ("PromptModels", "promptmodels.py"), ("EvaluationFlow", "evalsflow.py"))


def photo_folder(path: Path, photos: int) -> None:
    """`photos` small JPEGs with tags in tags.json: what the folder source reads."""
    path.mkdir(parents=True)
    rng, tags = random.Random(0), {}
    for i in range(photos):
        name = f"photo-{i:05d}.jpg"
        Image.effect_noise((96, 72), 30 + rng.random() * 60).convert("RGB").save(path / name, quality=80)
        tags[name] = rng.sample(VOCABULARY[:20], 4)
    (path / "tags.json").write_text(json.dumps(tags))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def real_rounds(rounds: int, photos: int, work: Path) -> list[dict[str, tuple[float, int]]]:
    """Per round: flow name -> (wall seconds, bytes its run added to the datastore, cards included)."""
    from metaflow import Runner

    folder = work / "photos"
    photo_folder(folder, rounds * photos)
    env = {**os.environ, "METAFLOW_USER": "bench", "USER": "bench", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work / "ds"),
           "METAFLOW_CARD_LOCALROOT": str(work / "ds" / ".metaflow" / "mf.cards"),  # else cards land under the cwd
           "PHOTOTAGGER_CACHE_DIR": str(work / "cache"), "openai_api": "", "togetherai_api": "", "client_id": ""}
    params = {"UpdatePhotos": {"source": f"folder:{folder}", "batch_size": photos}, "PromptModels": {"models": "prior,knn"},
              "EvaluationFlow": {}}
    out = []
    for round_no in range(1, rounds + 1):
        figures = {}
        for flow, script in FLOWS:
            before, started = dir_bytes(work / "ds"), time.perf_counter()  # flows run one at a time
            with Runner(str(ROOT / script), show_output=False, env=env, cwd=str(ROOT)).run(**params[flow]) as running:
                if running.status != "successful":
                    sys.exit(f"round {round_no}: {flow} failed:\n{running.stderr[-3000:]}")
            figures[flow] = (time.perf_counter() - started, dir_bytes(work / "ds") - before)
        out.append(figures)
        print(f"round {round_no:3d}: " + "  ".join(f"{f} {s:5.1f} s {b / 1024:7.1f} KiB" for f, (s, b) in figures.items()),
              flush=True)
    return out


def report_rounds(per_round: list[dict[str, tuple[float, int]]], ks: list[int]) -> None:
    def at(k: int, flow: str, i: int) -> float:
        window = per_round[max(0, k - 3):k]
        return sum(r[flow][i] for r in window) / len(window)

    print("\nper round, mean of rounds K-2..K:")
    for flow, _ in FLOWS:
        cells = "  ".join(f"K={k}: {at(k, flow, 0):5.1f} s {at(k, flow, 1) / 1024:7.1f} KiB" for k in ks)
        lo, hi = ks[0], ks[-1]
        print(f"  {flow:15s} {cells}  time_ratio={at(hi, flow, 0) / at(lo, flow, 0):.2f} "
              f"bytes_ratio={at(hi, flow, 1) / max(1.0, at(lo, flow, 1)):.2f}")


def one_hourly_run(state_file: Path, hour: int, photos: int) -> None:
    """EvaluationFlow's library work for one run on a stored state (run in a child process for its peak RAM)."""
    from phototagger.output import dashboard
    from phototagger.scoring import metrics
    from phototagger.scoring.ranking import rank
    from phototagger.scoring.table import photo_frame, to_parquet
    from phototagger.scoring.vocabulary import Vocabulary

    started = time.perf_counter()
    store = pickle.loads(state_file.with_suffix(".store").read_bytes())  # the batches' parts and closed months
    state = pickle.loads(state_file.read_bytes())
    loaded, blob_bytes = time.perf_counter(), store.bytes_written
    new = metrics.rescore(batch_events(hour, photos), Vocabulary.from_file(ROOT / "vocabulary.json"))
    state = state.fold(new, store)
    photo_results = to_parquet(photo_frame(new))
    recent = state.recent_events(store)
    ranking = rank(state, recent)
    table = ranking.table()
    html = dashboard.render_dashboard(ranking, recent)
    stored = pickle.dumps(state)
    done = time.perf_counter()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"run_s": round(done - started, 2), "load_s": round(loaded - started, 2), "rss_mb": round(rss_mb),
                      "state_mb": round(len(stored) / 1e6, 2),
                      "blobs_kb_written": round((store.bytes_written - blob_bytes) / 1024, 1), "html_mb": round(len(html.encode()) / 1e6, 2),
                      "photo_results_kb": round(len(photo_results) / 1024, 1), "columns": len(table["headers"])}))


def year_model(rounds: int, photos: int, work: Path) -> None:
    started = time.perf_counter()
    state_file, store = work / "year_state.pkl", MemoryBlobStore()
    state = year_state(rounds - 1, photos, store)
    state_file.write_bytes(pickle.dumps(state))
    state_file.with_suffix(".store").write_bytes(pickle.dumps(store))
    print(f"\nyear model: state of {rounds - 1} rounds x {photos} photos x 2 models built in "
          f"{time.perf_counter() - started:.0f} s, {state_file.stat().st_size / 1e6:.2f} MB: {len(state.open.batches)} "
          f"batches on their own and {len(state.closed.batches)} closed months; {store.bytes_written / 1e6:.2f} MB of "
          "blobs (each batch's part and each month's rows)")
    child = subprocess.run([sys.executable, __file__, "--one-run", str(state_file), "--hour", str(rounds - 1),
                            "--photos", str(photos)], capture_output=True, text=True, check=True)
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    print("  one hourly run: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    print(f"  targets run_s<60 rss_mb<2048: {'met' if figures['run_s'] < 60 and figures['rss_mb'] < 2048 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="5,20", help="comma-separated round counts to report (0: skip the real flows)")
    parser.add_argument("--photos", type=int, default=10, help="photos per round (real flows) / per hour (year model)")
    parser.add_argument("--year-rounds", type=int, default=8760, help="hourly rounds in the year model (0: skip it)")
    parser.add_argument("--year-photos", type=int, default=30, help="photos per round in the year model")
    parser.add_argument("--one-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hour", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        return one_hourly_run(args.one_run, args.hour, args.photos)
    ks = sorted(int(k) for k in args.ks.split(",") if int(k) > 0)
    with tempfile.TemporaryDirectory() as tmp:
        if ks:
            report_rounds(real_rounds(ks[-1], args.photos, Path(tmp) / "flows"), ks)
        if args.year_rounds:
            year_model(args.year_rounds, args.year_photos, Path(tmp))


if __name__ == "__main__":
    main()
