"""Synthetic EvaluationFlow inputs for the benchmarks: hourly batches of events, and the state of a year of them.

The events are what prompt flows store (DESIGN.md records), scored by metrics.score_photo, with the
rates a live run shows: a few errors, some photos without ground truth, a few cached answers.
"""
from __future__ import annotations

import datetime as dt
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phototagger.blobs import BlobStore  # noqa: E402
from phototagger.scoring import evals  # noqa: E402
from phototagger.scoring.table import ScoreState  # noqa: E402
from phototagger.scoring.metrics import score_photo  # noqa: E402

MODELS = ("knn:jec", "prior:tag-prior")
VOCABULARY = [f"tag{i}" for i in range(60)]
START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def batch_events(hour: int, photos: int, models=MODELS, image_dir: str = "") -> list[evals.EvalEvent]:
    """The events of the batch delivered at `hour` after START: every model on every photo."""
    rng = random.Random(hour)
    batch_id, date = str(100_000 + hour), (START + dt.timedelta(hours=hour)).isoformat()
    out = []
    for i in range(photos):
        photo_id = f"h{hour}-p{i}"
        truth = rng.sample(VOCABULARY, rng.choice((0, 3, 5, 8)))
        photo = {"id": photo_id, "ground_truth_tags": truth, "image_url": f"{image_dir}/{photo_id}.jpg" if image_dir else ""}
        for model in models:
            provider, name = model.split(":", 1)
            error = "timeout" if rng.random() < 0.03 else None
            tags = [] if error else rng.sample(truth, len(truth) // 2) + rng.sample(VOCABULARY, 4)
            result = {"photo_id": photo_id, "provider": provider, "model": name, "tags": tags, "raw": '{"tags": [...]}',
                      "valid": not error, "error": error, "latency_ms": rng.uniform(2, 400), "cached": rng.random() < 0.05,
                      "cost_usd": None, **score_photo(truth, tags)}
            out.append(evals.make_event(result, photo, batch_id=batch_id, batch_date=date, source_flow="PromptModels",
                                        source_run=str(hour)))
    return out


def year_state(rounds: int, photos: int, store: BlobStore, models=MODELS) -> ScoreState:
    """The ScoreState after `rounds` hourly batches, folded a week at a time (as the hourly runs would leave it:
    the closed months summed, the other batches on their own, every batch's part in `store`)."""
    state = ScoreState()
    for week in range(0, rounds, 168):
        state = state.fold([e for hour in range(week, min(rounds, week + 168)) for e in batch_events(hour, photos, models)],
                           store)
    return state
