import pytest

from phototagger.scoring import evals
from phototagger.scoring.metrics import Interval, score_photo
from phototagger.scoring.ranking import Ranking, rank_events

FIXED_HEADERS = rank_events([]).table()["headers"]


def event(model="prior:tag-prior", photo="p1", batch="101", date="2024-05-06", truth=("cat", "pet"), tags=("cat",),
          error=None, latency=10.0, cost=None, run="7", variant=None):
    provider, name = model.split(":", 1)
    scores = score_photo(truth, [] if error else tags)
    result = {"photo_id": photo, "provider": provider, "model": name, "tags": [] if error else list(tags),
              "raw": "", "valid": not error, "error": error, "latency_ms": latency, "cost_usd": cost, **scores}
    if variant:
        result["prompt_variant"] = variant
    photo_rec = {"id": photo, "ground_truth_tags": list(truth), "image_url": f"/photos/{photo}.jpg"}
    return evals.make_event(result, photo_rec, batch_id=batch, batch_date=date, source_flow="PromptModels",
                            source_run=run)


def test_table_headers_and_cells():
    events = [
        event(photo="p1", tags=("cat", "pet"), latency=10.0, cost=0.001),
        event(photo="p2", tags=("dog",), latency=30.0, cost=0.002),
    ]
    table = rank_events(events).table()
    assert table["headers"][:6] == ["Model", "Paired score", "Recall (all photos, exact)", "Recall (all photos, exact) 95% low",
                                    "Recall (all photos, exact) 95% high", "Recall (all photos, exact) n"]
    assert table["headers"] == [*FIXED_HEADERS, "101 (05-06)"]
    (row,) = table["rows"]
    cells = dict(zip(table["headers"], row))
    assert {h: cells[h] for h in ("Model", "Paired score", "Recall (all photos, exact)", "Precision (all photos)",
                                  "F1 (all photos)", "Error %", "Avg Latency (ms)", "Tags/photo", "Valid %",
                                  "p50 Latency (ms)", "p95 Latency (ms)", "vs best", "Tied with best")} == {
        "Model": "prior:tag-prior", "Paired score": 50.0, "Recall (all photos, exact)": 50.0,
        "Precision (all photos)": 50.0, "F1 (all photos)": 50.0, "Error %": 0.0, "Avg Latency (ms)": 20.0,
        "Tags/photo": 1.5, "Valid %": 100.0, "p50 Latency (ms)": pytest.approx(10.0, rel=0.022),
        "p95 Latency (ms)": pytest.approx(30.0, rel=0.022), "vs best": None, "Tied with best": False}
    assert cells["Cost (USD)"] == pytest.approx(0.003)
    assert cells["Recall (all photos, exact) 95% low"] is None and cells["Recall (all photos, exact) n"] == 2  # n < 30
    assert row[-1] == "50.0 (2)"


def test_batch_labels_use_short_id_and_month_day_ordered_by_date_then_id():
    events = [
        event(batch="argo-photo-tagger-abcdef123456", date="2024-06-01T10:00:00Z"),
        event(batch="12", date="2024-05-06"),
        event(batch="9", date="2024-05-06"),
    ]
    headers = rank_events(events).table()["headers"]
    assert headers[len(FIXED_HEADERS):] == ["9 (05-06)", "12 (05-06)", "123456 (06-01)"]


def test_rows_are_sorted_by_avg_recall_best_first_and_models_without_batch_get_empty_cell():
    events = [
        event(model="prior:tag-prior", tags=("cat",)),
        event(model="knn:jec", tags=("cat", "pet")),
        event(model="openai:gpt-4o-mini", tags=("car",)),
        event(model="knn:jec", photo="p2", batch="202", date="2024-05-07", tags=("cat",)),
    ]
    table = rank_events(events).table()
    assert [r[0] for r in table["rows"]] == ["knn:jec", "prior:tag-prior", "openai:gpt-4o-mini"]
    assert table["rows"][0][-2:] == ["100.0 (1)", "50.0 (1)"]
    assert table["rows"][1][-2:] == ["50.0 (1)", ""]


def test_rerun_of_the_same_batch_keeps_the_latest_answer():
    first = event(photo="p1", tags=("dog",), run="7")
    rerun = event(photo="p1", tags=("cat", "pet"), run="8")
    table = rank_events([first, event(photo="p2", tags=("cat",)), rerun]).table()
    assert dict(zip(table["headers"], table["rows"][0]))["Recall (all photos, exact)"] == 75.0
    assert table["rows"][0][-1] == "75.0 (2)"


def test_errors_count_in_error_pct_and_as_zero_in_recall_over_all_photos():
    events = [
        event(photo="p1", tags=("cat", "pet")),
        event(photo="p2", tags=("cat",)),
        event(photo="p3", error="rate_limited"),
        event(photo="p4", error="timeout"),
    ]
    (row,) = rank_events(events).rows
    assert row.mean("recall") == 75.0  # over the two valid answers
    assert row.mean("recall_all") == 37.5  # (100 + 50 + 0 + 0) / 4: the headline
    assert row.error_pct == 50.0
    assert (row.batches["101"].mean, row.batches["101"].n) == (37.5, 4)  # batch cells count failed calls too


def test_model_with_only_errors_ranks_last_with_no_recall():
    events = [event(model="openai:gpt-4o", error="auth"), event(model="prior:tag-prior", tags=("cat",))]
    ranking = rank_events(events)
    rows = ranking.table()["rows"]
    assert [r[0] for r in rows] == ["prior:tag-prior", "openai:gpt-4o"]
    assert ranking.rows[1].mean("recall") is None and rows[1][-1] == "0.0 (1)"
    assert ranking.best.key.model == "prior:tag-prior"


def test_empty_events_give_an_empty_table():
    ranking = rank_events([])
    assert ranking.table() == {"headers": FIXED_HEADERS, "rows": []}
    assert ranking.best is None


def test_fold_replaces_rerun_events_and_keeps_others():
    old = [event(photo="p1", tags=("dog",)), event(photo="p2")]
    new = [event(photo="p1", tags=("cat",), run="9"), event(photo="p3")]
    folded = evals.fold_events(old, new)
    assert [(e["photo_id"], e["source_run"]) for e in folded] == [("p2", "7"), ("p1", "9"), ("p3", "7")]


def test_ranking_rows_hold_named_figures_and_a_number_summary_per_batch():
    events = [event(photo="p1", tags=("cat", "pet"), latency=10.0), event(photo="p2", tags=("dog",), latency=30.0),
              event(photo="p3", batch="202", date="2024-05-07", error="timeout", latency=50.0)]
    (row,) = rank_events(events).rows
    assert (row.key.model, row.mean("latency_ms"), row.mean("recall")) == ("prior:tag-prior", 30.0, 50.0)
    assert row.mean("recall_all") == pytest.approx(100 / 3) and row.error_pct == pytest.approx(100 / 3)  # unrounded
    assert row.batches == {"101": Interval(mean=50.0, low=None, high=None, n=2),
                           "202": Interval(mean=0.0, low=None, high=None, n=1)}


def test_the_stored_ranking_is_plain_data_and_its_evals_table_reads_back_by_header():
    ranking = rank_events([event(), event(model="knn:jec", batch="202", date="2024-05-07", tags=("cat", "pet"))])
    stored = ranking.to_dict()
    assert [row["key"] for row in stored["rows"]] == ["knn:jec", "prior:tag-prior"]
    assert stored["rows"][1]["batches"]["101"] == {"mean": 50.0, "low": None, "high": None, "n": 1, "p": None}
    read = Ranking.from_table(ranking.table())
    assert [str(row.key) for row in read.rows] == ["knn:jec", "prior:tag-prior"] and read.best.mean("recall_all") == 100.0
    old = {"headers": ["Model", "Avg Latency (ms)", "Avg Recall"], "rows": [["openai:gpt-4o | default@1", 5.0, 40.0]]}
    assert Ranking.from_table(old).best.key == evals.RowKey("openai:gpt-4o", "default@1")  # a table of older headers


def test_models_eval_artifact_becomes_one_event_per_result_with_photo_and_batch():
    models_eval = {
        "batch_id": "101",
        "batch_date": "2024-05-06",
        "photos": {"p1": {"id": "p1", "ground_truth_tags": ["cat"], "image_url": "u1"}},
        "results": {"finetuned:qwen": [{"photo_id": "p1", "provider": "finetuned", "model": "qwen", "tags": ["cat"],
                                        "recall": 100.0, "precision": 100.0, "f1": 100.0, "error": None}]},
    }
    (rebuilt,) = evals.events_from_models_eval(models_eval, "PromptCustomModels", "55")
    assert rebuilt["model_key"] == "finetuned:qwen"
    assert rebuilt["ground_truth_tags"] == ["cat"] and rebuilt["image_url"] == "u1"
    assert rebuilt["batch_id"] == "101" and rebuilt["batch_date"] == "2024-05-06"
    assert (rebuilt["source_flow"], rebuilt["source_run"]) == ("PromptCustomModels", "55")


class TruncatedLogRun(list):
    """A client Run whose task log was cut at Metaflow's --max-log-size: only the marker is left."""

    def __init__(self, pathspec, artifacts):
        task = type("Task", (), {"loglines": lambda self, stream: [(None, "[TRUNCATED - MAXIMUM LOG FILE SIZE REACHED]")]})()
        super().__init__([[task]])
        self.pathspec, self.id = pathspec, pathspec.split("/")[1]
        self.data = type("Data", (dict,), {"__getattr__": dict.__getitem__})(artifacts)


def test_read_runs_takes_every_result_from_the_artifact_whatever_the_log_kept():
    n = 3000
    photos = {f"p{i}": {"id": f"p{i}", "ground_truth_tags": ["cat"]} for i in range(n)}
    results = {key: [{"photo_id": p, "provider": key.split(":")[0], "model": key.split(":")[1], "tags": ["cat"],
                      "raw": "", "valid": True, "error": None, "latency_ms": 5.0, "cost_usd": None,
                      **score_photo(["cat"], ["cat"])} for p in photos] for key in ("openai:gpt-4o-mini", "knn:jec")}
    runs = [TruncatedLogRun("PromptModels/5", {"models_eval": {"batch_id": "9", "batch_date": "2024-05-06",
                                                               "photos": photos, "results": results}}),
            TruncatedLogRun("PromptCustomModels/6", {"models_eval": {"batch_id": "9", "batch_date": "2024-05-06",
                                                                     "photos": {}, "results": {}}})]
    read = {run.pathspec: run.events for run in evals.read_runs(runs)}
    assert len(read["PromptModels/5"]) == 2 * n and read["PromptCustomModels/6"] == []
    assert {e["source_run"] for e in read["PromptModels/5"]} == {"5"}
    evals_table = rank_events(read["PromptModels/5"]).table()
    assert {row[0]: row[-1] for row in evals_table["rows"]} == {"openai:gpt-4o-mini": f"100.0 ({n})", "knn:jec": f"100.0 ({n})"}


def test_rows_within_noise_of_the_best_are_marked_tied_and_a_clear_gap_is_not():
    photos = [f"p{i}" for i in range(40)]
    events = ([event(model="knn:jec", photo=p, tags=("cat", "pet")) for p in photos]
              + [event(model="prior:tag-prior", photo=p, tags=("cat", "pet") if i else ("dog",)) for i, p in enumerate(photos)]
              + [event(model="openai:gpt-4o-mini", photo=p, tags=("cat",) if i % 4 else ("cat", "pet")) for i, p in enumerate(photos)])
    ranking = rank_events(events)
    best, close, worse = ranking.rows
    assert best.key.model == "knn:jec" and not best.tied_with_best and best.vs_best is None
    assert (close.key.model, close.vs_best.n, close.tied_with_best, close.behind_best) == ("prior:tag-prior", 40, True, False)
    assert close.vs_best.low < 0 < close.vs_best.high  # one photo of 40 differs
    assert worse.vs_best.mean == pytest.approx(-37.5) and worse.vs_best.high < 0
    assert worse.behind_best and not worse.tied_with_best
    assert [row.key.model for row in ranking.tied_with_best] == ["prior:tag-prior"]
    assert ranking.comparisons == 3  # Holm's family: every pair of rows


def test_prompt_variants_of_one_model_are_compared_tied_and_viewed_per_tag_as_their_own_rows():
    photos = [f"p{i}" for i in range(40)]
    events = ([event(model="openai:gpt-4o", photo=p, tags=("cat", "pet"), variant="default@aaa") for p in photos]
              + [event(model="openai:gpt-4o", photo=p, tags=("cat", "pet") if i else ("dog",), variant="short@bbb")
                 for i, p in enumerate(photos)]
              + [event(model="openai:gpt-4o", photo="p40", error="timeout", variant="short@bbb")]
              + [event(model="prior:tag-prior", photo=p, tags=("cat",)) for p in photos])
    ranking = rank_events(events)
    best, close, worse = ranking.rows
    assert [str(row.key) for row in ranking.rows] == ["openai:gpt-4o | default@aaa", "openai:gpt-4o | short@bbb",
                                                      "prior:tag-prior"]
    assert best.figures["recall"].n == close.figures["recall"].n == 40  # each row its own photos
    assert close.figures["recall"].low is not None
    assert (close.vs_best.n, close.tied_with_best) == (40, True) and [row.key for row in ranking.tied_with_best] == [close.key]
    assert worse.vs_best.mean == -50.0 and worse.behind_best
    assert set(ranking.per_tag["recall"]) == {str(row.key) for row in ranking.rows}
    assert ranking.per_tag["recall"]["openai:gpt-4o | short@bbb"]["cat"]["found"] == 39
    assert close.errors == {"timeout": {"count": 1, "example": ""}} and best.errors == {}


def test_a_model_prompted_under_a_variant_is_no_longer_skipped():
    first = evals.PromptRun("PromptModels/1", [], {"knn:jec": "no earlier batch"})
    second = evals.PromptRun("PromptModels/2", [event(model="knn:jec", variant="default@aaa")], {})
    assert evals.fold_skipped(evals.fold_skipped({}, first), second) == {}


def test_models_that_answered_no_common_photo_are_not_called_tied():
    events = [event(model="knn:jec", photo="p1", tags=("cat", "pet")), event(model="prior:tag-prior", photo="p2")]
    (_, other) = rank_events(events).rows
    assert other.vs_best is None and not other.tied_with_best and not other.behind_best


def test_each_error_class_is_counted_with_one_example_message():
    events = [event(photo="p1", error="auth"), event(photo="p2", error="auth"), event(photo="p3", error="timeout")]
    events[1]["raw"] = "openai rejected the key (HTTP 401): check openai_api"
    events[2]["raw"] = "no answer within 30 s"
    (row,) = rank_events(events).rows
    assert row.errors == {"auth": {"count": 2, "example": "openai rejected the key (HTTP 401): check openai_api"},
                          "timeout": {"count": 1, "example": "no answer within 30 s"}}


def test_skipped_models_keep_the_reason_of_their_latest_run():
    first = evals.PromptRun("PromptModels/1", [], {"knn:jec": "no earlier batch", "openai:gpt-4o-mini": "no key"})
    second = evals.PromptRun("PromptModels/2", [event(model="knn:jec")], {"openai:gpt-4o-mini": "key missing: export openai_api"})
    skipped = evals.fold_skipped(evals.fold_skipped({}, first), second)
    assert skipped == {"openai:gpt-4o-mini": {"reason": "key missing: export openai_api", "run": "PromptModels/2"}}
    ranking = rank_events(second.events, skipped=skipped)
    assert ranking.skipped == skipped and ranking.to_dict()["skipped"] == skipped


def test_read_runs_reads_the_skipped_models_and_tolerates_runs_stored_before_them():
    models_eval = {"batch_id": "9", "batch_date": "2024-05-06", "photos": {}, "results": {}}
    runs = [TruncatedLogRun("PromptModels/5", {"models_eval": models_eval, "skipped_models": {"openai:gpt-4o": "no key"}}),
            TruncatedLogRun("PromptCustomModels/6", {"models_eval": models_eval})]
    assert [run.skipped for run in evals.read_runs(runs)] == [{"openai:gpt-4o": "no key"}, {}]


class FailedRun:
    """A client Run that failed in `end`: its `join` task stored `budget_errors` (or, with None, never ran)."""

    def __init__(self, pathspec, budget_errors):
        self.pathspec, self.id = pathspec, pathspec.split("/")[1]
        self._steps = {} if budget_errors is None else {"join": type("Step", (), {"task": type("Task", (), {
            "data": type("Data", (), {"budget_errors": budget_errors})()})()})()}

    def __getitem__(self, step):
        return self._steps[step]


def test_a_model_that_broke_the_error_budget_is_listed_as_skipped_with_the_budgets_words_until_it_runs_again():
    message = "openai:gpt-4o-mini | default@57024e: 4 of 4 calls failed (100.0% > 20% allowed): auth=4. First auth error: ..."
    failed = list(evals.budget_failures([FailedRun("PromptModels/7", {"openai:gpt-4o-mini | default@57024e": {"message": message}}),
                                        FailedRun("PromptModels/8", None)]))

    assert [run.events for run in failed] == [[], []]  # a failed run's answers are not ranked
    assert failed[0].skipped == {"openai:gpt-4o-mini": f"broke the error budget: {message}"} and failed[1].skipped == {}
    skipped = evals.fold_skipped({}, failed[0])
    assert skipped["openai:gpt-4o-mini"]["run"] == "PromptModels/7"
    later = evals.PromptRun("PromptModels/9", [event(model="openai:gpt-4o-mini")], {})
    assert evals.fold_skipped(skipped, later) == {}
