import pytest

from phototagger.scoring.metrics import rescore, score_photo, score_results, summarise
from phototagger.scoring.vocabulary import Vocabulary


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


def test_summary_latency_ignores_cached_answers():
    s = summarise([_result(10.0, latency=300.0), _result(10.0, latency=1.0, cached=True)])
    assert s["avg_latency_ms"] == 300.0


def test_summary_of_nothing_is_empty_not_a_crash():
    s = summarise([])
    assert s["photos"] == 0 and s["avg_recall"] is None and s["error_pct"] == 0.0


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
    assert (s["avg_recall_all"], s["avg_recall_all_lenient"]) == (pytest.approx(23.33), 50.0)
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
