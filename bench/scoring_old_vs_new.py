"""Old and new scoring on one generated year: equal wherever a definition did not change on purpose.

Builds `--batches` batches of bench/synthetic_evals events for four models (one failing a share of its calls,
one joining late), ranks them with this checkout's scoring and with another checkout's (`--old`, e.g. a
`git archive` of the commit before the paired ranking), and compares every figure per row: those whose
definition did not change must be equal to 1e-9 and as the card shows them (one decimal); those that changed on
purpose (CHANGED, docs/metrics.md) are listed with their old and new values.

    mkdir /tmp/scoring-before && git archive 71b773d | tar -x -C /tmp/scoring-before   # before the scoring tables
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

CHANGED = {"p50 Latency (ms)": "a latency histogram (buckets 2^(1/16) wide), not a sample",
           "p95 Latency (ms)": "a latency histogram (buckets 2^(1/16) wide), not a sample"}
"""Columns whose definition changed on purpose since the `--old` checkout (docs/metrics.md)."""
MODELS = ("openai:gpt-4o-mini", "together:llama-vision", "knn:jec", "prior:tag-prior")

FIGURES = """
import json, pickle, sys
sys.path.insert(0, sys.argv[1])
events = pickle.load(open(sys.argv[2], "rb"))
try:
    from phototagger.scoring.ranking import rank_events
    table = rank_events(events).table()
except ImportError:  # a checkout before the scoring tables
    from phototagger.scoring import evals
    table = evals.rank_models(events).table()
print(json.dumps(table))
"""


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
    old_rows = {row[0]: dict(zip(old["headers"], row)) for row in old["rows"]}
    new_rows = {row[0]: dict(zip(new["headers"], row)) for row in new["rows"]}
    shared = [h for h in old["headers"] if h in new["headers"] and h not in CHANGED]
    compared = mismatched = 0
    for key, before_row in old_rows.items():
        for header in shared:
            before, after = before_row[header], new_rows[key][header]
            compared += 1
            if not _equal(before, after):
                mismatched += 1
                print(f"  DIFFERENT {key} / {header}: old {before!r} new {after!r}")
    print(f"{len(events):,} events, {len(old_rows)} rows, {args.batches} batches: {compared} figures in {len(shared)} "
          f"columns compared (equal to 1e-9, and equal as the card shows them), {mismatched} different")
    print(f"columns only in the old table: {[h for h in old['headers'] if h not in new['headers']]}")
    print(f"columns only in the new table: {[h for h in new['headers'] if h not in old['headers']]}")
    for header, why in CHANGED.items():
        print(f"changed on purpose: {header}: {why}; old -> new: "
              + "; ".join(f"{k} {old_rows[k].get(header)} -> {new_rows[k].get(header)}" for k in old_rows))


def _equal(before, after) -> bool:
    if isinstance(before, float) and isinstance(after, float):
        return abs(before - after) <= 1e-9 * max(1.0, abs(before)) and f"{before:.1f}" == f"{after:.1f}"
    return before == after


if __name__ == "__main__":
    main()
