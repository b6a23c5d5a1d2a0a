
import numpy as np
import pytest

from phototagger.scoring.metrics import MIN_INTERVAL_N, Interval, interval_of_sums, per_tag, rescore, score_photo, score_results
from phototagger.scoring.ranking import rank_events
from phototagger.scoring.table import summarise
from phototagger.scoring.vocabulary import Vocabulary


def mean_interval(values):
    values = np.asarray(list(values), dtype=float)
    return interval_of_sums(len(values), float(values.sum()), float((values ** 2).sum()))


def test_recall_counts_ground_truth_tags_predicted_after_normalisation():
    score = score_photo(["Cat", "pet", "fur", "indoor"], ["cat", "PET", "sofa"])
    assert score["recall"] == pytest.approx(50.0)
    assert score["precision"] == pytest.approx(200 / 3)
    assert score["f1"] == pytest.approx(2 * 50 * (200 / 3) / (50 + 200 / 3))


def test_photo_without_ground_truth_scores_none():
    assert set(score_photo([], ["cat"]).values()) == {None}


def test_nothing_predicted_scores_zero_not_error():
    assert set(score_photo(["cat"], []).values()) == {0.0}


def _result(recall, error=None, latency=100.0, cached=False, cost=0.001):
    return {
        "recall": recall,
        "precision": recall,
        "f1": recall,
        "error": error,
        "latency_ms": latency,
        "cached": cached,
        "valid": error is None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": cost,
    }


def test_summary_keeps_errors_apart_from_recall_and_reports_both_averages():
    results = [_result(100.0), _result(50.0), _result(0.0, error="rate_limited"), _result(None)]
    s = summarise(results)
    assert s["photos"] == 4
    assert s["errors"] == 1 and s["error_pct"] == 25.0
    assert s["no_ground_truth"] == 1
    assert s["avg_recall"] == 75.0  # valid answers only
    assert s["avg_recall_all"] == 50.0  # errors count as 0
    assert s["prompt_tokens"] == 40 and s["cost_usd"] == pytest.approx(0.004)


def test_summary_latency_counts_a_cached_answer_at_the_latency_measured_when_it_was_made():
    s = summarise([_result(10.0, latency=300.0), _result(10.0, latency=100.0, cached=True)])
    assert s["avg_latency_ms"] == 200.0


def test_summary_of_nothing_is_empty_not_a_crash():
    s = summarise([])
    assert s["photos"] == 0 and s["avg_recall"] is None and s["error_pct"] == 0.0


def test_constant_recall_has_a_zero_width_interval():
    interval = mean_interval([40.0] * 35)
    assert (interval.mean, interval.low, interval.high, interval.n) == (40.0, 40.0, 40.0, 35)


def test_no_photos_or_too_few_photos_give_no_interval_not_a_crash():
    assert mean_interval([]) == Interval(mean=None, low=None, high=None, n=0)
    assert mean_interval([70.0]) == Interval(mean=70.0, low=None, high=None, n=1)
    assert mean_interval([0.0, 100.0] * ((MIN_INTERVAL_N - 1) // 2)).low is None


def test_interval_is_the_student_t_interval_and_sums_give_the_same():
    values = np.random.default_rng(7).uniform(0, 100, size=300)
    interval = mean_interval(values)
    half = 1.9679 * values.std(ddof=1) / np.sqrt(len(values))  # t(299) 97.5% quantile
    assert interval.low == pytest.approx(values.mean() - half, abs=1e-3)
    assert interval.high == pytest.approx(values.mean() + half, abs=1e-3)
    assert interval_of_sums(len(values), values.sum(), (values ** 2).sum()).low == pytest.approx(interval.low)


def _event(photo, row, recall, tags=(), truth=("cat",), error=None, latency=100.0, batch="1"):
    model, _, variant = row.partition(" | ")
    provider, name = model.split(":")
    return {"photo_id": photo, "batch_id": batch, "batch_date": "2024-05-01", "provider": provider, "model": name,
            "prompt_variant": variant or None, "model_key": row, "recall": recall, "recall_lenient": recall,
            "precision": recall, "f1": recall, "error": error, "valid": error is None, "latency_ms": latency,
            "tags": list(tags), "ground_truth_tags": list(truth)}


def test_paired_difference_sees_a_steady_gap_that_separate_intervals_overlap_on():
    recalls = np.linspace(10, 100, 30)
    ranking = rank_events([_event(f"p{i}", "a:best", r) for i, r in enumerate(recalls)]
                          + [_event(f"p{i}", "b:worse", r - 8.0) for i, r in enumerate(recalls)])
    best, worse = ranking.rows
    assert best.figures["recall_all"].low < worse.figures["recall_all"].high  # on their own the two means look alike
    gap = worse.vs_best
    assert gap.n == 30 and gap.mean == pytest.approx(-8.0) and gap.high < 0 and not gap.includes(0.0)
    assert worse.behind_best and ranking.comparisons == 1


def test_paired_difference_uses_only_the_photos_both_answered():
    ranking = rank_events([_event("p1", "a:m", 50.0), _event("p2", "a:m", 0.0), _event("p3", "a:m", 100.0),
                           _event("p1", "b:m", 50.0), _event("p3", "b:m", 0.0), _event("p4", "b:m", 100.0)])
    assert ranking.rows[1].vs_best.n == 2 and ranking.rows[1].vs_best.mean == -50.0


def test_figures_give_precision_f1_latency_percentiles_and_tags_per_photo():
    events = [_event("p1", "knn:jec", 100.0, ["cat", "pet"], latency=10.0), _event("p2", "knn:jec", 0.0, ["dog"], latency=20.0),
              _event("p3", "knn:jec", 0.0, error="timeout", latency=None),
              _event("p4", "knn:jec", None, ["sky"], truth=(), latency=30.0)]
    [row] = rank_events(events).rows
    figures = row.figures
    assert (figures["recall"].mean, figures["recall"].n) == (50.0, 2)
    assert (figures["recall_all"].mean, figures["recall_all"].n) == (pytest.approx(100 / 3), 3)  # the timeout counts as 0
    assert figures["precision"].n == figures["f1"].n == 2
    assert (figures["recall_lenient"].mean, figures["recall_lenient"].n) == (50.0, 2)  # the same photos, lenient rule
    assert (figures["recall_all_lenient"].mean, figures["recall_all_lenient"].n) == (pytest.approx(100 / 3), 3)
    assert (figures["f1_all"].mean, figures["precision_all"].n) == (pytest.approx(100 / 3), 3)
    assert row.tags_per_photo == pytest.approx(4 / 3)  # (2 + 1 + 1) tags over the 3 valid answers
    assert figures["latency_ms"].n == 3  # the timeout has no latency
    assert row.p50_latency_ms == pytest.approx(20.0, rel=0.022) and row.p95_latency_ms == pytest.approx(30.0, rel=0.022)


def test_per_tag_view_shows_recall_on_frequent_tags_and_over_predicted_tags():
    events = [_event("p1", "knn:jec", 50.0, ["cat", "sky"], ["cat", "pet"]), _event("p2", "knn:jec", 0.0, ["sky"], ["cat"]),
              _event("p3", "knn:jec", 0.0, ["sky"], ["tree"]), _event("p4", "knn:jec", 0.0, error="timeout", truth=["cat"]),
              _event("p1", "prior:tag-prior", 100.0, ["cat", "pet"], ["cat", "pet"])]
    view = per_tag(events, top=2)
    assert view["tags"] == [{"tag": "cat", "photos": 3}, {"tag": "pet", "photos": 1}]
    assert view["recall"]["knn:jec"]["cat"] == {"recall": 50.0, "found": 1, "photos": 2}  # the timeout is not an answer
    assert view["recall"]["knn:jec"]["pet"] == {"recall": 0.0, "found": 0, "photos": 1}
    assert view["recall"]["prior:tag-prior"]["cat"]["recall"] == 100.0
    assert view["over_predicted"] == {"knn:jec": [{"tag": "sky", "predicted": 3, "right": 0}], "prior:tag-prior": []}


def test_lenient_rule_finds_plurals_synonyms_and_parents_the_exact_rule_misses():
    vocab = Vocabulary.from_dict({"synonyms": {"motorcycle": ["motorbike"]}, "parents": {"kitten": "cat", "cat": "animal"},
                                  "stop_tags": ["photo"]})
    score = score_photo(["cats", "motorcycle", "animal", "leave"], ["kitten", "Motorbikes", "photo", "leaves"], vocab)
    assert score["recall"] == 0.0 and score["precision"] == 0.0
    assert score["recall_lenient"] == pytest.approx(75.0)  # cat and animal (from kitten), motorcycle; not leave
    assert score["precision_lenient"] == pytest.approx(200 / 3)  # kitten, motorcycle right; leaf wrong; photo not counted
    assert score["f1_lenient"] == pytest.approx(2 * 75 * (200 / 3) / (75 + 200 / 3))


def test_a_vaguer_prediction_is_right_but_does_not_find_the_specific_truth():
    score = score_photo(["cat"], ["animal"], Vocabulary.from_dict({"parents": {"cat": "animal"}}))
    assert score["recall_lenient"] == 0.0 and score["precision_lenient"] == 100.0


def test_ground_truth_of_stop_tags_only_has_no_lenient_score():
    score = score_photo(["photo", "Image"], ["photo"], Vocabulary.from_dict({"stop_tags": ["photo", "image"]}))
    assert score["recall"] == 50.0 and score["recall_lenient"] is None


def test_summary_reports_the_lenient_averages_beside_the_exact_ones():
    lenient = {"recall_lenient": 100.0, "precision_lenient": 50.0, "f1_lenient": 2 * 100 * 50 / 150}
    results = [{**_result(50.0), **lenient}, {**_result(0.0, error="timeout"), "recall_lenient": 0.0},
               {**_result(20.0), "recall_lenient": None, "precision_lenient": None, "f1_lenient": None}]
    s = summarise(results)
    assert (s["avg_recall"], s["avg_recall_lenient"]) == (35.0, 100.0)
    assert (s["avg_recall_all"], s["avg_recall_all_lenient"]) == (pytest.approx(70 / 3), 50.0)  # unrounded: the card rounds
    assert s["avg_precision_lenient"] == 50.0


def test_rescore_puts_stored_results_under_a_new_vocabulary_errors_still_zero():
    events = [{"ground_truth_tags": ["motorcycle"], "tags": ["motorbike"], "recall": 0.0, "recall_lenient": 0.0},
              {"ground_truth_tags": ["motorcycle"], "tags": ["motorbike"], "recall": 0.0, "error": "timeout"},
              {"ground_truth_tags": [], "tags": ["cat"], "recall": None}]
    out = rescore(events, Vocabulary.from_dict({"synonyms": {"motorcycle": ["motorbike"]}}))
    assert [e.get("recall_lenient") for e in out] == [100.0, 0.0, None]
    assert events[0]["recall_lenient"] == 0.0  # the stored records are not changed in place


def test_score_results_scores_the_lenient_rule_with_the_given_vocabulary():
    photos = [{"id": "p1", "ground_truth_tags": ["motorcycle"]}]
    results = [{"photo_id": "p1", "tags": ["motorbikes"], "error": None}]
    vocab = Vocabulary.from_dict({"synonyms": {"motorcycle": ["motorbike"]}})
    (scored,) = score_results(photos, results, vocab)
    assert (scored["recall"], scored["recall_lenient"]) == (0.0, 100.0)
    assert score_results(photos, results)[0]["recall_lenient"] == 0.0  # without one, only inflections fold
