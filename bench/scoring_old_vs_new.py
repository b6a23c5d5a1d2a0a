"""Old and new scoring on one generated year: equal wherever a definition did not change on purpose.

Builds `--batches` batches of bench/synthetic_evals events for four models (one failing a share of its calls,
one joining late), ranks them with this checkout's scoring and with another checkout's (`--old`, e.g. a
`git archive` of the commit before the paired ranking), and compares every figure per row: those whose
definition did not change must be equal to the old one's 2 decimals (the old code rounded there); those that
changed on purpose (docs/metrics.md) are listed with their old and new values for one row.

    git archive 1ed9763 | tar -x -C /tmp/scoring-before
    .venv/bin/python bench/scoring_old_vs_new.py --old /tmp/scoring-before
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_evals import ROOT, batch_events  # noqa: E402

UNCHANGED = ("avg_recall", "avg_recall_all", "avg_precision", "avg_f1", "avg_recall_lenient", "avg_recall_all_lenient",
             "avg_latency_ms", "error_pct", "cost_usd", "valid_pct", "tags_per_photo", "p50_latency_ms",
             "p95_latency_ms", "n_scored", "n_with_truth", "n_scored_lenient", "n_with_truth_lenient")
CHANGED = ("order", "avg_recall_low", "avg_recall_high", "batch cells", "recall_vs_best", "tied_with_best")
MODELS = ("openai:gpt-4o-mini", "together:llama-vision", "knn:jec", "prior:tag-prior")

FIGURES = """
import json, pickle, sys
sys.path.insert(0, sys.argv[1])
from phototagger.scoring import evals
events = pickle.load(open(sys.argv[2], "rb"))
ranking = evals.rank_models(events)
rows = {}
for index, row in enumerate(ranking.rows):
    figures = {name: getattr(row, name, None) for name in %r}
    figures["order"] = index
    figures["batch cells"] = {b: row.batches[b].avg_recall for b in sorted(row.batches)}
    figures["recall_vs_best"] = getattr(row, "recall_vs_best", getattr(row, "vs_best", None))
    figures["tied_with_best"] = row.tied_with_best
    rows[row.key] = figures
print(json.dumps(rows))
""" % ((*UNCHANGED, "avg_recall_low", "avg_recall_high"),)


def year(batches: int, photos: int) -> list[dict]:
    """The events: every model on every batch, but the last model joins for the newest quarter only, and the first
    fails a fifth of its calls on top of synthetic_evals' 3%."""
    events = []
    for hour in range(batches):
        models = MODELS if hour >= batches * 3 // 4 else MODELS[:-1]
        for event in batch_events(hour * 24, photos, models):
            if event["model_key"] == MODELS[0] and zlib.crc32(event["photo_id"].encode()) % 5 == 0 and not event["error"]:
                event.update(error="timeout", tags=[], valid=False, recall=0.0 if event["recall"] is not None else None,
                             precision=0.0 if event["recall"] is not None else None,
                             f1=0.0 if event["recall"] is not None else None)
            events.append(event)
    return events


def figures(checkout: Path, events_file: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", FIGURES, str(checkout), str(events_file)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="a checkout of the scoring to compare with")
    parser.add_argument("--batches", type=int, default=151)
    parser.add_argument("--photos", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events_file = Path(tmp) / "events.pkl"
        events = year(args.batches, args.photos)
        events_file.write_bytes(pickle.dumps(events))
        old, new = figures(args.old, events_file), figures(ROOT, events_file)
    compared = mismatched = 0
    for key in sorted(old):
        for name in UNCHANGED:
            before, after = old[key][name], new[key][name]
            after = round(after, 2) if isinstance(after, float) and name not in ("cost_usd",) else after
            if name == "cost_usd":
                before, after = round(before or 0.0, 6), round(after or 0.0, 6)
            compared += 1
            if before != after:
                mismatched += 1
                print(f"  DIFFERENT {key} {name}: old {before} new {after}")
    print(f"{len(events):,} events, {len(old)} rows, {args.batches} batches: {compared} unchanged figures compared, "
          f"{mismatched} different")
    print("changed on purpose (docs/metrics.md), old -> new:")
    for key in sorted(old):
        print(f"  {key}: order {old[key]['order']} -> {new[key]['order']}; "
              f"recall vs best {old[key]['recall_vs_best']} -> {new[key]['recall_vs_best']}; "
              f"tied {old[key]['tied_with_best']} -> {new[key]['tied_with_best']}; "
              f"Avg Recall interval [{old[key]['avg_recall_low']}, {old[key]['avg_recall_high']}] -> "
              f"[{_r(new[key]['avg_recall_low'])}, {_r(new[key]['avg_recall_high'])}]")
        cells = [b for b in old[key]["batch cells"] if old[key]["batch cells"][b] != _r(new[key]["batch cells"].get(b))]
        print(f"    batch cells that differ (valid answers -> all photos): {len(cells)} of {len(old[key]['batch cells'])}")


def _r(value):
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    main()
