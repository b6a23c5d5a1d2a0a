"""Per-photo and aggregate scores, defined once (DESIGN.md, README "Metrics").

recall%    = |ground truth ∩ predicted| / |ground truth| x 100
precision% = |ground truth ∩ predicted| / |predicted| x 100 (0 when nothing predicted)
F1%        = harmonic mean of the two
Each is computed under two named matching rules (vocabulary.RULES): "exact" (the `recall`,
`precision`, `f1` fields) compares tags normalised with `tags.normalise_tags`; "lenient" (the
`*_lenient` fields) compares the vocabulary's canonical forms (inflections and synonyms folded,
stop-tags dropped), and a tag counts as found when a more specific tag was given ("kitten" finds
"cat" and "animal", and is right); a predicted parent is right too ("animal" for a "cat") but finds nothing. Photos without ground truth get
None and are counted apart; errors are counted apart too and reported two ways: recall over
valid answers only, and recall over all photos with an error scoring 0 (the scorer gives a
failed call on a photo with ground truth recall 0 and keeps its error class beside it).
"""
from __future__ import annotations

from statistics import mean
from typing import Any, Iterable, Mapping, Optional, Sequence, TypedDict

from phototagger.records import ModelResult, Photo
from phototagger.scoring.tags import normalise_tags
from phototagger.scoring.vocabulary import Vocabulary


class PhotoScore(TypedDict):
    recall: Optional[float]  # the exact rule
    precision: Optional[float]
    f1: Optional[float]
    recall_lenient: Optional[float]  # the lenient rule; None also when every ground-truth tag is a stop-tag
    precision_lenient: Optional[float]
    f1_lenient: Optional[float]


def _scores(found: int, truth: int, right: int, pred: int) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(recall, precision, F1) from `found` of `truth` ground-truth tags and `right` of `pred` predicted ones."""
    if not truth:
        return None, None, None
    recall = 100.0 * found / truth
    precision = 100.0 * right / pred if pred else 0.0
    f1 = 2 * recall * precision / (recall + precision) if recall and precision else 0.0
    return recall, precision, f1


def score_photo(ground_truth: Iterable[str], predicted: Iterable[str], vocabulary: Optional[Vocabulary] = None) -> PhotoScore:
    """One photo's scores under both rules; `vocabulary` None: the lenient rule folds inflections only."""
    vocabulary = vocabulary or Vocabulary()
    ground_truth, predicted = list(ground_truth or ()), list(predicted or ())
    truth, pred = set(normalise_tags(ground_truth)), set(normalise_tags(predicted))
    hits = len(truth & pred)
    recall, precision, f1 = _scores(hits, len(truth), hits, len(pred))
    truth_c, pred_c = set(vocabulary.canonical_tags(ground_truth)), set(vocabulary.canonical_tags(predicted))
    found = len(truth_c & vocabulary.closure(pred_c))
    implied = vocabulary.closure(truth_c)
    right = sum(1 for tag in pred_c if tag in implied or truth_c & vocabulary.closure([tag]))
    recall_l, precision_l, f1_l = _scores(found, len(truth_c), right, len(pred_c))
    return PhotoScore(recall=recall, precision=precision, f1=f1,
                      recall_lenient=recall_l, precision_lenient=precision_l, f1_lenient=f1_l)


def score_results(photos: Sequence[Photo], results: Iterable[ModelResult],
                  vocabulary: Optional[Vocabulary] = None) -> list[ModelResult]:
    """The results with recall, precision and F1 under both rules (`vocabulary` for the lenient one)
    against their photo's ground truth (matched by `photo_id`).

    A failed call is scored as an empty answer, so on a photo with ground truth it counts as recall 0.
    """
    truth = {photo["id"]: photo.get("ground_truth_tags") or [] for photo in photos}
    return [{**r, **score_photo(truth.get(r["photo_id"], []), [] if r.get("error") else r.get("tags") or [], vocabulary)}
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
    avg_recall_lenient: Optional[float]  # the same four averages under the lenient rule
    avg_recall_all_lenient: Optional[float]
    avg_precision_lenient: Optional[float]
    avg_f1_lenient: Optional[float]


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
        avg_recall_lenient=_avg([r["recall_lenient"] for r in scored if r.get("recall_lenient") is not None]),
        avg_recall_all_lenient=_avg([r["recall_lenient"] for r in with_truth if r.get("recall_lenient") is not None]),
        avg_precision_lenient=_avg([r["precision_lenient"] for r in scored if r.get("precision_lenient") is not None]),
        avg_f1_lenient=_avg([r["f1_lenient"] for r in scored if r.get("f1_lenient") is not None]),
    )


def rescore(results: Iterable[Mapping[str, Any]], vocabulary: Vocabulary) -> list[dict[str, Any]]:
    """Copies of result records (or eval events, which carry `ground_truth_tags`) scored again under both
    rules with `vocabulary`: how EvaluationFlow puts every run, older ones included, under one vocabulary."""
    out = []
    for result in results:
        record = dict(result)
        if record.get("recall") is not None:
            predicted = [] if record.get("error") else record.get("tags") or []
            record.update(score_photo(record.get("ground_truth_tags") or [], predicted, vocabulary))
        out.append(record)
    return out
