"""Per-photo and aggregate scores, defined once (DESIGN.md, README "Metrics").

recall%    = |ground truth ∩ predicted| / |ground truth| x 100
precision% = |ground truth ∩ predicted| / |predicted| x 100 (0 when nothing predicted)
F1%        = harmonic mean of the two
Both sides are normalised with `tags.normalise_tags` first. Photos without ground truth get
None and are counted apart; errors are counted apart too and reported two ways: recall over
valid answers only, and recall over all photos with an error scoring 0 (the scorer gives a
failed call on a photo with ground truth recall 0 and keeps its error class beside it).
"""
from __future__ import annotations

from statistics import mean
from typing import Iterable, Optional, Sequence, TypedDict

from phototagger.records import ModelResult, Photo
from phototagger.scoring.tags import normalise_tags


class PhotoScore(TypedDict):
    recall: Optional[float]
    precision: Optional[float]
    f1: Optional[float]


def score_photo(ground_truth: Iterable[str], predicted: Iterable[str]) -> PhotoScore:
    truth = set(normalise_tags(ground_truth))
    pred = set(normalise_tags(predicted))
    if not truth:
        return PhotoScore(recall=None, precision=None, f1=None)
    hits = len(truth & pred)
    recall = 100.0 * hits / len(truth)
    precision = 100.0 * hits / len(pred) if pred else 0.0
    f1 = 2 * recall * precision / (recall + precision) if hits else 0.0
    return PhotoScore(recall=recall, precision=precision, f1=f1)


def score_results(photos: Sequence[Photo], results: Iterable[ModelResult]) -> list[ModelResult]:
    """The results with recall, precision and F1 against their photo's ground truth (matched by `photo_id`).

    A failed call is scored as an empty answer, so on a photo with ground truth it counts as recall 0.
    """
    truth = {photo["id"]: photo.get("ground_truth_tags") or [] for photo in photos}
    return [{**r, **score_photo(truth.get(r["photo_id"], []), [] if r.get("error") else r.get("tags") or [])}
            for r in results]


class Summary(TypedDict):
    photos: int  # result records in
    scored: int  # records with ground truth and no error
    no_ground_truth: int
    errors: int
    error_pct: float
    avg_recall: Optional[float]  # over scored (valid-call) photos
    avg_recall_all: Optional[float]  # over all photos with ground truth, errors as 0
    avg_precision: Optional[float]
    avg_f1: Optional[float]
    avg_latency_ms: Optional[float]  # over calls that were not served from cache
    valid_pct: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def _avg(values: list[float]) -> Optional[float]:
    return round(mean(values), 2) if values else None


def summarise(results: Iterable[ModelResult]) -> Summary:
    """Aggregate result records of one model (any number of batches)."""
    results = list(results)
    errored = [r for r in results if r.get("error")]
    with_truth = [r for r in results if r.get("recall") is not None]
    scored = [r for r in results if not r.get("error") and r.get("recall") is not None]
    no_truth = [r for r in results if not r.get("error") and r.get("recall") is None]
    timed = [r["latency_ms"] for r in results if not r.get("cached") and r.get("latency_ms") is not None]
    return Summary(
        photos=len(results),
        scored=len(scored),
        no_ground_truth=len(no_truth),
        errors=len(errored),
        error_pct=round(100.0 * len(errored) / len(results), 2) if results else 0.0,
        avg_recall=_avg([r["recall"] for r in scored]),
        avg_recall_all=_avg([r.get("recall") or 0.0 for r in with_truth]),
        avg_precision=_avg([r["precision"] for r in scored]),
        avg_f1=_avg([r["f1"] for r in scored]),
        avg_latency_ms=_avg(timed),
        valid_pct=round(100.0 * sum(1 for r in results if r.get("valid")) / len(results), 2) if results else 0.0,
        prompt_tokens=sum(r.get("prompt_tokens") or 0 for r in results),
        completion_tokens=sum(r.get("completion_tokens") or 0 for r in results),
        cost_usd=round(sum(r.get("cost_usd") or 0.0 for r in results), 6),
    )
