import pytest

from phototagger.scoring.metrics import score_photo, summarise


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
