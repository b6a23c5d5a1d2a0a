"""prompt_photos and the error budget, on a scripted stand-in prompter (the real one is in test_faults.py)."""
from __future__ import annotations

import json
import threading
import time

import pytest

from phototagger.errors import UserError
from phototagger.prompting.batch import PromptSettings, prompt_photos
from phototagger.prompting.budget import ErrorBudget, ErrorBudgetExceeded, raise_if_broken
from phototagger.prompting.cache import LocalCacheBackend, ResponseCache
from phototagger.prompting.configs import ModelSkipped, make_prompter, prompt_config, select_models
from phototagger.prompting.cost import load_prices, price_results
from phototagger.prompting.summary import run_summary_lines
from phototagger.scoring.metrics import score_results
from phototagger.scoring.table import summarise

PRICES = {"fake:tagger": {"input_per_1m": 1.0, "output_per_1m": 2.0}}


class ScriptedPrompter:
    """Answers from a dict photo_id -> tags or error class, after `delay_s`; records calls and peak concurrency."""

    provider, model = "fake", "tagger"

    def __init__(self, script=None, delay_s=0.0, batching=False):
        self.script = script or {}
        self.delay_s = delay_s
        self.supports_batching = batching
        self.limiter = None
        self.calls: list[str] = []
        self.batches: list[list[str]] = []
        self.in_flight = self.peak = 0
        self._lock = threading.Lock()

    def settings(self):
        return {"provider": self.provider, "model": self.model, "temperature": 0.0}

    def _answer(self, photo_id):
        outcome = self.script.get(photo_id, ["photo"])
        if outcome == "crash":
            raise RuntimeError("bug with sk-secret-in-message")
        if isinstance(outcome, str):
            return {"provider": self.provider, "model": self.model, "tags": [], "raw": outcome, "valid": False,
                    "error": outcome, "latency_ms": 5.0, "prompt_tokens": None, "completion_tokens": None}
        return {"provider": self.provider, "model": self.model, "tags": list(outcome), "raw": json.dumps({"tags": list(outcome)}), "valid": True,
                "error": None, "latency_ms": 5.0, "prompt_tokens": 1000, "completion_tokens": 100}

    def prompt(self, prompt_text, image, photo_id=None):
        with self._lock:
            self.calls.append(photo_id)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        if self.limiter is not None:
            self.limiter.acquire()
        try:
            time.sleep(self.delay_s)
            return self._answer(photo_id)
        finally:
            if self.limiter is not None:
                self.limiter.release()
            with self._lock:
                self.in_flight -= 1

    def prompt_batch(self, prompt_text, images, photo_ids):
        self.batches.append(list(photo_ids))
        time.sleep(self.delay_s)
        return [self._answer(pid) for pid in photo_ids]


def photos(n, truth=("cat", "pet")):
    return [{"id": f"p{i}", "image_url": f"https://img.example/{i}.jpg", "ground_truth_tags": list(truth)} for i in range(n)]


def run(prompter, items, cache=None, prices=None, **settings):
    """prompt_photos, then scored and priced as the prompt flows do."""
    settings.setdefault("progress", False)
    results = prompt_photos(prompter, items, "tag it", PromptSettings(**settings), cache=cache)
    return price_results(score_results(items, results), load_prices(prices))


def test_every_photo_gets_one_record_in_input_order_even_when_calls_finish_out_of_order():
    prompter = ScriptedPrompter({"p0": "timeout", "p3": ["cat"]}, delay_s=0.01)
    results = run(prompter, photos(12), concurrency=4)
    assert [r["photo_id"] for r in results] == [f"p{i}" for i in range(12)]
    assert results[0]["error"] == "timeout" and results[3]["tags"] == ["cat"]


def test_errored_photo_with_ground_truth_scores_zero_and_keeps_its_error_class():
    results = run(ScriptedPrompter({"p0": "rate_limited", "p1": ["cat", "dog"]}), photos(2))
    assert results[0]["recall"] == 0.0 and results[0]["error"] == "rate_limited"
    assert results[1]["recall"] == 50.0 and results[1]["precision"] == 50.0
    assert summarise(results)["avg_recall"] == 50.0 and summarise(results)["avg_recall_all"] == 25.0


def test_photo_without_ground_truth_is_not_scored():
    (result,) = run(ScriptedPrompter(), photos(1, truth=()))
    assert result["recall"] is None and result["error"] is None


def test_concurrency_is_bounded_and_used():
    prompter = ScriptedPrompter(delay_s=0.05)
    run(prompter, photos(16), concurrency=4)
    assert prompter.peak == 4
    assert prompter.limiter is None  # the run's own limiter is taken off again


def test_a_bug_in_one_call_becomes_an_internal_error_record_without_its_message():
    results = run(ScriptedPrompter({"p1": "crash"}), photos(3))
    assert [r["error"] for r in results] == [None, "internal", None]
    assert "sk-secret" not in results[1]["raw"] and "RuntimeError" in results[1]["raw"]


def test_photo_without_image_is_a_bad_image_record():
    items = photos(2)
    del items[1]["image_url"]
    results = run(ScriptedPrompter(), items, cache=None)
    assert results[1]["error"] == "bad_image" and results[1]["photo_id"] == "p1"


def test_cost_comes_from_usage_and_the_price_table():
    (result,) = run(ScriptedPrompter(), photos(1), prices=PRICES)
    assert result["cost_usd"] == pytest.approx(1000 * 1.0 / 1e6 + 100 * 2.0 / 1e6)


def test_second_run_is_served_from_cache_and_errors_are_called_again(tmp_path):
    cache = ResponseCache(LocalCacheBackend(tmp_path))
    first = ScriptedPrompter({"p2": "server_error"})
    run(first, photos(4), cache=cache)
    again = ScriptedPrompter()
    results = run(again, photos(4), cache=cache, prices=PRICES)
    assert again.calls == ["p2"]
    assert [r["cached"] for r in results] == [True, True, False, True]
    assert all(r["error"] is None and r["recall"] == 0.0 for r in results)
    assert results[0]["cost_usd"] == pytest.approx(0.0012)  # list price of the answer, though not paid again


def test_cache_key_includes_the_prompt(tmp_path):
    cache = ResponseCache(LocalCacheBackend(tmp_path))
    run(ScriptedPrompter(), photos(2), cache=cache)
    other_prompt = ScriptedPrompter()
    prompt_photos(other_prompt, photos(2), "another prompt", PromptSettings(progress=False), cache=cache)
    assert len(other_prompt.calls) == 2


def test_batching_prompter_gets_chunks_one_at_a_time_and_cache_hits_skip_them(tmp_path):
    cache = ResponseCache(LocalCacheBackend(tmp_path))
    run(ScriptedPrompter(batching=True), photos(3), cache=cache)
    prompter = ScriptedPrompter({"p5": "bad_image"}, batching=True)
    results = run(prompter, photos(10), cache=cache, batch_size=4)
    assert prompter.batches == [["p3", "p4", "p5", "p6"], ["p7", "p8", "p9"]]
    assert prompter.calls == []
    assert [r["photo_id"] for r in results] == [f"p{i}" for i in range(10)]
    assert results[5]["error"] == "bad_image" and results[0]["cached"]


def test_batched_photos_left_at_the_model_deadline_are_recorded_as_deadline_without_a_call():
    prompter = ScriptedPrompter(batching=True, delay_s=2.0)  # the first chunk alone outlasts the deadline
    results = run(prompter, photos(6), batch_size=2, deadline_s=1.0)
    assert prompter.batches == [["p0", "p1"]]
    assert [r["error"] for r in results] == [None, None] + ["deadline"] * 4
    assert "deadline of 1s" in results[2]["raw"]


def test_a_model_deadline_that_is_not_positive_is_refused_before_any_call():
    prompter = ScriptedPrompter()
    with pytest.raises(ValueError, match="--model-deadline-s"):
        run(prompter, photos(2), deadline_s=0)
    assert prompter.calls == []


def test_a_failing_batch_call_gives_internal_errors_for_its_chunk_only():
    prompter = ScriptedPrompter({"p1": "crash"}, batching=True)
    results = run(prompter, photos(4), batch_size=2)
    assert [r["error"] for r in results] == ["internal", "internal", None, None]


def test_empty_batch_gives_no_records_and_no_calls():
    prompter = ScriptedPrompter()
    assert run(prompter, [], concurrency=4) == []
    assert prompter.calls == []


def test_progress_on_a_non_terminal_is_whole_lines_with_done_and_errors(capsys):
    run(ScriptedPrompter({"p0": "rate_limited"}), photos(3), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines and "\r" not in "".join(lines)
    assert "3/3" in lines[-1] and "errors=1" in lines[-1]


def test_progress_off_prints_nothing(capsys):
    run(ScriptedPrompter(), photos(3), progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def results_with(errors):
    return [{"provider": "fake", "model": "tagger", "error": e} for e in errors]


def test_error_budget_passes_at_the_limit_and_fails_above_it_with_counts():
    raise_if_broken(ErrorBudget(0.2).check({"fake:tagger": results_with(["timeout", None, None, None, None])}))
    raise_if_broken(ErrorBudget(0.2).check({"fake:tagger": []}))
    with pytest.raises(ErrorBudgetExceeded) as failed:
        raise_if_broken(ErrorBudget(0.2).check({"fake:tagger": results_with(["timeout", "rate_limited", "timeout", None, None])}))
    assert failed.value.counts == {"timeout": 2, "rate_limited": 1}
    assert "fake:tagger: 3 of 5 calls failed (60.0% > 20% allowed): timeout=2, rate_limited=1" in str(failed.value)
    assert "--max-error-share" in str(failed.value)


def test_budget_problems_names_only_the_models_over_budget():
    problems = ErrorBudget(0.5).check({"a:ok": results_with([None, None]), "b:bad": results_with(["auth", "auth"])})
    assert list(problems) == ["b:bad"] and problems["b:bad"]["counts"] == {"auth": 2}


def test_error_budget_fails_once_naming_every_model_over_it_with_the_counts_summed():
    over = {"a:ok": results_with([None, None]), "b:bad": results_with(["auth", "auth"]),
            "c:bad": results_with(["auth", "timeout"])}
    with pytest.raises(ErrorBudgetExceeded) as failed:
        raise_if_broken(ErrorBudget(0.5).check(over))
    assert str(failed.value).splitlines()[0].startswith("b:bad: 2 of 2 calls failed")
    assert str(failed.value).splitlines()[1].startswith("c:bad: 2 of 2 calls failed")
    assert failed.value.counts == {"auth": 3, "timeout": 1} and list(failed.value.problems) == ["b:bad", "c:bad"]


def test_model_filter_by_key_or_provider_and_unknown_names_fail_with_the_known_ones():
    config = {"models": [{"provider": "openai", "model": "gpt-4o-mini"}, {"provider": "knn", "model": "jec"},
                         {"provider": "prior", "model": "tag-prior"}]}
    assert len(select_models(config)) == 3
    assert [m["provider"] for m in select_models(config, "knn, openai:gpt-4o-mini")] == ["openai", "knn"]
    with pytest.raises(UserError, match="nope.*known: openai:gpt-4o-mini, knn:jec, prior:tag-prior"):
        select_models(config, "knn,nope")


@pytest.mark.parametrize("models", [{"gpt": {"provider": "openai", "model": "gpt-4o-mini"}}, ["openai:gpt-4o-mini"]])
def test_models_json_whose_models_are_not_a_list_of_objects_names_the_problem(models):
    with pytest.raises(UserError, match=r'(?s)models.json: "models" must be a list of objects.*write \{"models": \['):
        select_models({"models": models})


def test_prompt_config_reads_plain_text():
    assert prompt_config('Tag it.\nAnswer {"tags": []}\n\n') == {"text": 'Tag it.\nAnswer {"tags": []}'}


def test_summary_is_three_lines_and_says_when_there_was_nothing_to_do():
    results = run(ScriptedPrompter({"p1": "timeout"}), photos(2), prices=PRICES)
    models_eval = {"batch_id": "17", "batch_date": "2025-03-04", "photos": {p["id"]: p for p in photos(2)},
                   "results": {"fake:tagger": results}}
    lines = run_summary_lines(models_eval, {"fake:tagger": summarise(results)}, {"openai:gpt-4o-mini": "key missing"})
    assert len(lines) == 3
    assert lines[0].startswith("Prompted 1 of 2 models on 2 photos of batch 17 (2025-03-04); skipped openai:gpt-4o-mini")
    assert "fake:tagger 0.0% exact, 0.0% lenient (0.0% exact over all photos, 50% errors)" in lines[1]
    empty = run_summary_lines({"batch_id": "18", "batch_date": "2025-03-05", "photos": {}, "results": {}}, {}, {})
    assert len(empty) == 3 and "no new photos" in empty[0]


def test_offline_baseline_without_history_is_skipped_not_failed():
    with pytest.raises(ModelSkipped, match="no earlier batch"):
        make_prompter({"provider": "knn", "model": "jec"}, history=[])
    prompter = make_prompter({"provider": "prior", "model": "tag-prior"}, history=photos(2))
    assert prompter.model_key == "prior:tag-prior"


def test_unknown_option_in_models_json_names_the_entry():
    with pytest.raises(UserError, match="models.json entry prior:tag-prior: unknown option"):
        make_prompter({"provider": "prior", "model": "tag-prior", "temprature": 0}, history=photos(2))


def test_batching_path_records_a_photo_without_image_without_sending_it():
    items = photos(3)
    del items[0]["image_url"]
    prompter = ScriptedPrompter(batching=True)
    results = run(prompter, items)
    assert [r["error"] for r in results] == ["bad_image", None, None] and prompter.batches == [["p1", "p2"]]
