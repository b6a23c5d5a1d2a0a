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

from dataclasses import dataclass, fields
from fractions import Fraction
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


def _avg(total: Fraction, n: int) -> Optional[float]:
    """The mean, rounded as the card shows it; float(Fraction) rounds once, exactly as statistics.mean does."""
    return round(float(total / n), 2) if n else None


@dataclass
class Totals:
    """The counts and exact sums behind a Summary: adding two Totals gives the Totals of both sets of records.

    EvaluationFlow keeps one per (model, batch) instead of every result, and combines them into any
    span of batches (a week, a month, all history). The sums are Fractions (a float is one exactly),
    so a combined mean is the mean of all the records to the last bit, whatever the grouping.
    """

    photos: int = 0
    scored: int = 0
    no_ground_truth: int = 0
    errors: int = 0
    valid: int = 0
    with_truth: int = 0
    timed: int = 0
    recall_sum: Fraction = Fraction(0)  # over scored records
    recall_all_sum: Fraction = Fraction(0)  # over records with ground truth, an error as 0
    precision_sum: Fraction = Fraction(0)
    f1_sum: Fraction = Fraction(0)
    latency_sum: Fraction = Fraction(0)  # over timed records: not served from the cache
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_sum: Fraction = Fraction(0)
    scored_lenient: int = 0  # scored records with a lenient score (not every ground-truth tag a stop-tag)
    with_truth_lenient: int = 0
    recall_lenient_sum: Fraction = Fraction(0)  # over scored_lenient records
    recall_all_lenient_sum: Fraction = Fraction(0)  # over with_truth_lenient records, an error as 0
    precision_lenient_sum: Fraction = Fraction(0)
    f1_lenient_sum: Fraction = Fraction(0)

    @classmethod
    def of(cls, results: Iterable[ModelResult]) -> Totals:
        t = cls()
        for r in results:
            t.photos += 1
            t.valid += bool(r.get("valid"))
            t.prompt_tokens += r.get("prompt_tokens") or 0
            t.completion_tokens += r.get("completion_tokens") or 0
            t.cost_sum += Fraction(r.get("cost_usd") or 0.0)
            if not r.get("cached") and r.get("latency_ms") is not None:
                t.timed += 1
                t.latency_sum += Fraction(r["latency_ms"])
            if r.get("recall") is not None:
                t.with_truth += 1
                t.recall_all_sum += Fraction(r["recall"])
                if r.get("recall_lenient") is not None:
                    t.with_truth_lenient += 1
                    t.recall_all_lenient_sum += Fraction(r["recall_lenient"])
            if r.get("error"):
                t.errors += 1
            elif r.get("recall") is None:
                t.no_ground_truth += 1
            else:
                t.scored += 1
                t.recall_sum += Fraction(r["recall"])
                t.precision_sum += Fraction(r["precision"])
                t.f1_sum += Fraction(r["f1"])
                if r.get("recall_lenient") is not None:
                    t.scored_lenient += 1
                    t.recall_lenient_sum += Fraction(r["recall_lenient"])
                    t.precision_lenient_sum += Fraction(r.get("precision_lenient") or 0.0)
                    t.f1_lenient_sum += Fraction(r.get("f1_lenient") or 0.0)
        return t

    def __add__(self, other: Totals) -> Totals:
        return Totals(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def summary(self) -> Summary:
        return Summary(
            photos=self.photos,
            scored=self.scored,
            no_ground_truth=self.no_ground_truth,
            errors=self.errors,
            error_pct=round(100.0 * self.errors / self.photos, 2) if self.photos else 0.0,
            avg_recall=_avg(self.recall_sum, self.scored),
            avg_recall_all=_avg(self.recall_all_sum, self.with_truth),
            avg_precision=_avg(self.precision_sum, self.scored),
            avg_f1=_avg(self.f1_sum, self.scored),
            avg_latency_ms=_avg(self.latency_sum, self.timed),
            valid_pct=round(100.0 * self.valid / self.photos, 2) if self.photos else 0.0,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=round(float(self.cost_sum), 6),
            avg_recall_lenient=_avg(self.recall_lenient_sum, self.scored_lenient),
            avg_recall_all_lenient=_avg(self.recall_all_lenient_sum, self.with_truth_lenient),
            avg_precision_lenient=_avg(self.precision_lenient_sum, self.scored_lenient),
            avg_f1_lenient=_avg(self.f1_lenient_sum, self.scored_lenient),
        )


def summarise(results: Iterable[ModelResult]) -> Summary:
    """Aggregate result records of one model (any number of batches)."""
    return Totals.of(results).summary()


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
