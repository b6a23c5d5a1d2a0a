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
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, TypedDict

import math

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


def holm(p_values: Mapping[Any, float], alpha: float = ALPHA) -> set:
    """The keys whose hypotheses Holm's step-down procedure rejects at family-wise error `alpha`."""
    ordered = sorted(p_values.items(), key=lambda item: (item[1], str(item[0])))
    rejected = set()
    for rank, (key, p) in enumerate(ordered):
        if p > alpha / (len(ordered) - rank):
            break
        rejected.add(key)
    return rejected


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
    recall: dict[str, dict[str, TagRecall]]  # row key (its text) -> tag -> its recall on that tag
    over_predicted: dict[str, list[OverPredicted]]  # row -> its most over-predicted tags


def per_tag(events: Iterable[Mapping[str, Any]], top: int = PER_TAG_TOP, over_top: int = OVER_PREDICTED_TOP) -> PerTag:
    """The per-tag view of scored events (each with its `model_key`), over each row's valid answers on photos with
    ground truth: what a user reads before editing a prompt."""
    answers: dict[str, dict[tuple[str, str], tuple[set, set, bool]]] = {}  # row -> photo -> (truth, tags, failed)
    for e in events:
        truth = set(normalise_tags(e.get("ground_truth_tags") or []))
        tags = set() if e.get("error") else set(normalise_tags(e.get("tags") or []))
        answers.setdefault(e["model_key"], {})[(str(e.get("batch_id", "")), str(e["photo_id"]))] = \
            (truth, tags, bool(e.get("error")))
    truth_of = {photo: truth for photos in answers.values() for photo, (truth, _, _) in photos.items() if truth}
    counts = Counter(tag for truth in truth_of.values() for tag in truth)
    frequent = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    recall: dict[str, dict[str, TagRecall]] = {}
    over: dict[str, list[OverPredicted]] = {}
    for row, photos in answers.items():
        answered = [(truth, tags) for truth, tags, failed in photos.values() if truth and not failed]
        with_tag = Counter(tag for truth, _ in answered for tag in truth)
        found = Counter(tag for truth, tags in answered for tag in truth & tags)
        recall[row] = {tag: TagRecall(recall=100.0 * found[tag] / with_tag[tag] if with_tag[tag] else None,
                                      found=found[tag], photos=with_tag[tag]) for tag, _ in frequent}
        given = Counter(tag for _, tags in answered for tag in tags)
        right = Counter(tag for truth, tags in answered for tag in tags & truth)
        flagged = [OverPredicted(tag=tag, predicted=n, right=right[tag]) for tag, n in given.items()
                   if n - right[tag] >= OVER_PREDICTED_MIN_WRONG and 2 * right[tag] < n]
        over[row] = sorted(flagged, key=lambda o: (o["right"] - o["predicted"], o["tag"]))[:over_top]
    return PerTag(tags=[TagCount(tag=t, photos=n) for t, n in frequent], recall=recall, over_predicted=over)
