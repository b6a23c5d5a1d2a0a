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

from collections import Counter
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any, Iterable, Mapping, Optional, Sequence, TypedDict

import math

import numpy as np
from scipy.special import stdtr, stdtrit

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
    with_truth: int  # records with ground truth, failed or not: the n of the all-photos means
    no_ground_truth: int
    errors: int
    error_pct: float
    avg_recall: Optional[float]  # over scored (valid-call) photos
    avg_recall_all: Optional[float]  # over all photos with ground truth, errors as 0
    avg_precision: Optional[float]
    avg_f1: Optional[float]
    avg_precision_all: Optional[float]  # over all photos with ground truth, errors as 0, as avg_recall_all
    avg_f1_all: Optional[float]
    avg_latency_ms: Optional[float]  # a cached answer counts the latency measured when it was made
    valid_pct: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    avg_recall_lenient: Optional[float]  # the same four averages under the lenient rule
    avg_recall_all_lenient: Optional[float]
    avg_precision_lenient: Optional[float]
    avg_f1_lenient: Optional[float]


def _avg(total: Fraction, n: int) -> Optional[float]:
    """The mean, unrounded (the card rounds once, as it shows it); float(Fraction) rounds to a float once, exactly
    as statistics.mean does."""
    return float(total / n) if n else None


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
    precision_all_sum: Fraction = Fraction(0)
    f1_all_sum: Fraction = Fraction(0)
    precision_sum: Fraction = Fraction(0)
    f1_sum: Fraction = Fraction(0)
    latency_sum: Fraction = Fraction(0)  # over timed records; a cached answer keeps the latency measured when it was made
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_sum: Fraction = Fraction(0)
    scored_lenient: int = 0  # scored records with a lenient score (not every ground-truth tag a stop-tag)
    with_truth_lenient: int = 0
    recall_lenient_sum: Fraction = Fraction(0)  # over scored_lenient records
    recall_all_lenient_sum: Fraction = Fraction(0)  # over with_truth_lenient records, an error as 0
    precision_lenient_sum: Fraction = Fraction(0)
    f1_lenient_sum: Fraction = Fraction(0)
    tags: int = 0  # tags given over valid answers
    error_classes: Counter = field(default_factory=Counter)  # error class -> records failed with it

    @property
    def tags_per_photo(self) -> Optional[float]:
        """Tags per valid answer."""
        answered = self.photos - self.errors
        return self.tags / answered if answered else None

    @classmethod
    def of(cls, results: Iterable[ModelResult]) -> Totals:
        t = cls()
        for r in results:
            t.photos += 1
            t.valid += bool(r.get("valid"))
            t.prompt_tokens += r.get("prompt_tokens") or 0
            t.completion_tokens += r.get("completion_tokens") or 0
            t.cost_sum += Fraction(r.get("cost_usd") or 0.0)
            if r.get("latency_ms") is not None:
                t.timed += 1
                t.latency_sum += Fraction(r["latency_ms"])
            if r.get("recall") is not None:
                t.with_truth += 1
                t.recall_all_sum += Fraction(r["recall"])
                t.precision_all_sum += Fraction(r.get("precision") or 0.0)
                t.f1_all_sum += Fraction(r.get("f1") or 0.0)
                if r.get("recall_lenient") is not None:
                    t.with_truth_lenient += 1
                    t.recall_all_lenient_sum += Fraction(r["recall_lenient"])
            if r.get("error"):
                t.errors += 1
                t.error_classes[r["error"]] += 1
                continue
            t.tags += len(r.get("tags") or [])
            if r.get("recall") is None:
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
            with_truth=self.with_truth,
            no_ground_truth=self.no_ground_truth,
            errors=self.errors,
            error_pct=100.0 * self.errors / self.photos if self.photos else 0.0,
            avg_recall=_avg(self.recall_sum, self.scored),
            avg_recall_all=_avg(self.recall_all_sum, self.with_truth),
            avg_precision=_avg(self.precision_sum, self.scored),
            avg_f1=_avg(self.f1_sum, self.scored),
            avg_precision_all=_avg(self.precision_all_sum, self.with_truth),
            avg_f1_all=_avg(self.f1_all_sum, self.with_truth),
            avg_latency_ms=_avg(self.latency_sum, self.timed),
            valid_pct=100.0 * self.valid / self.photos if self.photos else 0.0,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=float(self.cost_sum),
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


# ---------------------------------------------------------------- uncertainty over photos
LEVEL = 0.95
MIN_INTERVAL_N = 30
"""Photos a mean needs before it gets an interval. Below it a t-interval (and a percentile bootstrap, worse) covers
less than 95% on skewed recalls: 0.87-0.92 at n=10 (tests/test_metrics.py simulates it); from 30 on, 0.93-0.96."""
ALPHA = 1 - LEVEL


class ScoredPhoto(TypedDict):
    """One model's answer on one photo, as the intervals, the paired comparison and the per-tag view read it."""

    recall: Optional[float]  # None without ground truth; 0 for a failed call on a photo with ground truth
    recall_lenient: Optional[float]  # None where the lenient rule has no truth left (only stop-tags)
    precision: Optional[float]
    f1: Optional[float]
    error: Optional[str]
    latency_ms: Optional[float]  # as measured when the answer was made (a cached answer keeps it); None if never timed
    tags: list[str]  # predicted, normalised
    truth: list[str]  # ground truth, normalised


@dataclass(frozen=True)
class Interval:
    """A mean over n photos and its 95% t-interval (low and high None below MIN_INTERVAL_N; mean None at n 0).
    For a paired difference, `p` is the two-sided p-value of "the mean difference is 0" (None below MIN_INTERVAL_N)."""

    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int
    p: Optional[float] = None

    @property
    def half_width(self) -> Optional[float]:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def includes(self, value: float) -> bool:
        return self.low is not None and self.high is not None and self.low <= value <= self.high


def interval_of_sums(n: int, total: float, squares: float, min_n: int = MIN_INTERVAL_N) -> Interval:
    """The mean of n values from their sum and sum of squares, with its Student-t interval and the p-value of a
    zero mean: what sums kept per batch add up to over any span, so no value has to be kept."""
    if n == 0:
        return Interval(mean=None, low=None, high=None, n=0)
    mean = total / n
    if n < min_n:
        return Interval(mean=mean, low=None, high=None, n=n)
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    se = math.sqrt(variance / n)
    if se <= 1e-12 * max(1.0, abs(mean)):
        return Interval(mean=mean, low=mean, high=mean, n=n, p=1.0 if abs(mean) <= 1e-12 else 0.0)
    half = float(stdtrit(n - 1, 1 - ALPHA / 2)) * se  # Student's t quantile and tail: scipy.special's, fast on scalars
    return Interval(mean=mean, low=mean - half, high=mean + half, n=n, p=float(2 * stdtr(n - 1, -abs(mean) / se)))


def mean_interval(values: Sequence[float], min_n: int = MIN_INTERVAL_N) -> Interval:
    """The mean of `values` with its 95% t-interval (none below `min_n` values)."""
    data = np.asarray(list(values), dtype=float)
    return interval_of_sums(len(data), float(data.sum()), float((data * data).sum()), min_n)


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], min_n: int = MIN_INTERVAL_N) -> Interval:
    """Mean of a - b over the photo ids both have, with its paired t-interval and p-value: what is hard for both
    models does not widen the interval of their difference."""
    shared = sorted(a.keys() & b.keys())
    return mean_interval([a[p] - b[p] for p in shared], min_n)


def holm(p_values: Mapping[Any, float], alpha: float = ALPHA) -> set:
    """The keys whose hypotheses Holm's step-down procedure rejects at family-wise error `alpha`."""
    ordered = sorted(p_values.items(), key=lambda item: (item[1], str(item[0])))
    rejected = set()
    for rank, (key, p) in enumerate(ordered):
        if p > alpha / (len(ordered) - rank):
            break
        rejected.add(key)
    return rejected


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (0-100, linear interpolation), None for no values."""
    return float(np.percentile(values, q)) if len(values) else None


@dataclass(frozen=True)
class PhotoFigures:
    """One model's figures that need its answers photo by photo: the intervals of its means and latency
    percentiles."""

    recall: Interval  # over valid answers on photos with ground truth
    recall_all: Interval  # over photos with ground truth, a failed call as 0: the headline
    recall_lenient: Interval  # the two above under the lenient rule, over the photos it scores
    recall_all_lenient: Interval
    precision: Interval  # over valid answers, as recall
    f1: Interval
    precision_all: Interval  # over photos with ground truth, a failed call as 0, as recall_all
    f1_all: Interval
    p50_latency_ms: Optional[float]  # over timed answers, cached ones with the latency measured when they were made
    p95_latency_ms: Optional[float]


SORT_METRICS = ("recall", "f1")
"""What the ranking can be sorted by: the mean over every photo with ground truth, a failed call as 0."""


def all_photo_scores(photos: Mapping[str, ScoredPhoto], metric: str = "recall") -> dict[str, float]:
    """Photo id -> `metric` over the photos with ground truth, a failed call as 0 (the scorer already gives it 0):
    the scores the headline figures average and the paired comparisons pair."""
    return {p: s[metric] or 0.0 for p, s in photos.items() if s["recall"] is not None}


def recall_interval(results: Iterable[ModelResult]) -> Interval:
    """Recall over all photos of `results` (every photo with ground truth, a failed call as 0) with its interval."""
    return mean_interval([r["recall"] or 0.0 for r in results if r.get("recall") is not None])


def photo_figures(photos: Mapping[str, ScoredPhoto]) -> PhotoFigures:
    ordered = [photos[p] for p in sorted(photos)]  # the same photos give the same sums, in any order
    scored = [s for s in ordered if not s["error"] and s["recall"] is not None]
    with_truth = [s for s in ordered if s["recall"] is not None]
    timed = [s["latency_ms"] for s in ordered if s["latency_ms"] is not None]
    return PhotoFigures(
        recall=mean_interval([s["recall"] for s in scored]),
        recall_all=mean_interval([s["recall"] or 0.0 for s in with_truth]),
        recall_lenient=mean_interval([s["recall_lenient"] for s in scored if s["recall_lenient"] is not None]),
        recall_all_lenient=mean_interval([s["recall_lenient"] or 0.0 for s in ordered if s["recall_lenient"] is not None]),
        precision=mean_interval([s["precision"] for s in scored]),
        f1=mean_interval([s["f1"] for s in scored]),
        precision_all=mean_interval([s["precision"] or 0.0 for s in with_truth]),
        f1_all=mean_interval([s["f1"] or 0.0 for s in with_truth]),
        p50_latency_ms=percentile(timed, 50),
        p95_latency_ms=percentile(timed, 95),
    )


# ---------------------------------------------------------------- what each model misses
PER_TAG_TOP = 15  # most frequent ground-truth tags in the per-tag view
OVER_PREDICTED_TOP = 5  # over-predicted tags listed per model
OVER_PREDICTED_MIN_WRONG = 2  # a tag is over-predicted from this many photos where it was not in the truth


class TagCount(TypedDict):
    tag: str
    photos: int  # photos with this tag in their ground truth


class TagRecall(TypedDict):
    """One model on one ground-truth tag: on how many of its answered photos with the tag it found it."""

    recall: Optional[float]  # found / photos x 100; None when the model answered no photo with the tag
    found: int
    photos: int


class OverPredicted(TypedDict):
    """A tag a model gives often where the ground truth rarely has it."""

    tag: str
    predicted: int  # answered photos with ground truth where the model gave the tag
    right: int  # of those, photos whose ground truth has it


class PerTag(TypedDict):
    tags: list[TagCount]  # the most frequent ground-truth tags, most frequent first
    recall: dict[str, dict[str, TagRecall]]  # row (model or row key) -> tag -> its recall on that tag
    over_predicted: dict[str, list[OverPredicted]]  # row -> its most over-predicted tags


def per_tag(scores: Mapping[str, Mapping[str, ScoredPhoto]], top: int = PER_TAG_TOP,
            over_top: int = OVER_PREDICTED_TOP) -> PerTag:
    """The per-tag view of `scores` (row -> photo id -> ScoredPhoto), over each row's valid answers on
    photos with ground truth: what a user reads before editing a prompt."""
    truth_of = {p: s["truth"] for photos in scores.values() for p, s in photos.items() if s["truth"]}
    counts = Counter(tag for truth in truth_of.values() for tag in set(truth))
    frequent = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    recall: dict[str, dict[str, TagRecall]] = {}
    over: dict[str, list[OverPredicted]] = {}
    for model, photos in scores.items():
        answered = [s for s in photos.values() if not s["error"] and s["truth"]]
        with_tag = Counter(tag for s in answered for tag in set(s["truth"]))
        found = Counter(tag for s in answered for tag in set(s["truth"]) & set(s["tags"]))
        recall[model] = {tag: TagRecall(recall=100.0 * found[tag] / with_tag[tag] if with_tag[tag] else None,
                                        found=found[tag], photos=with_tag[tag]) for tag, _ in frequent}
        given = Counter(tag for s in answered for tag in set(s["tags"]))
        right = Counter(tag for s in answered for tag in set(s["tags"]) & set(s["truth"]))
        flagged = [OverPredicted(tag=tag, predicted=n, right=right[tag]) for tag, n in given.items()
                   if n - right[tag] >= OVER_PREDICTED_MIN_WRONG and 2 * right[tag] < n]
        over[model] = sorted(flagged, key=lambda o: (o["right"] - o["predicted"], o["tag"]))[:over_top]
    return PerTag(tags=[TagCount(tag=t, photos=n) for t, n in frequent], recall=recall, over_predicted=over)
