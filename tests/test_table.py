"""The scoring tables: figures equal to an independent recomputation over all events, however they were folded."""
import pickle
import random
import statistics

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from phototagger.blobs import MemoryBlobStore
from phototagger.mfclient import GIVE_UP_S, SETTLE_S, FoldedRuns
from phototagger.output.dashboard import render_dashboard
from phototagger.scoring import evals, metrics
from phototagger.scoring.ranking import rank, rank_events
from phototagger.scoring.table import DRILLDOWN_BATCHES, ScoreState, photo_frame, photo_results, read_parquet, to_parquet
from phototagger.scoring.vocabulary import Vocabulary
from tests.test_evals import event

MODELS = ("prior:tag-prior", "knn:jec")
TAGS = ("cat", "pet", "dog", "tree", "sky", "car")


def batch(b: int, photos: int = 30, seed: int = 0, run: str = "7", models=MODELS) -> list[evals.EvalEvent]:
    """One hourly batch: every model on every photo, some errors, some photos without ground truth."""
    rng = random.Random(b * 1000 + seed)
    out = []
    for i in range(photos):
        truth = tuple(rng.sample(TAGS, rng.randint(0, 3)))
        for model in models:
            out.append(event(model=model, photo=f"b{b}-p{i}", batch=str(1000 + b), date=f"2024-{1 + b // 28:02d}-{1 + b % 28:02d}",
                             truth=truth, tags=tuple(rng.sample(TAGS, rng.randint(0, 4))),
                             error="timeout" if rng.random() < 0.1 else None, latency=rng.random() * 300,
                             cost=rng.random() / 1000, run=run))
    return out


def fold_batches(n: int, store=None) -> tuple[ScoreState, list[evals.EvalEvent], MemoryBlobStore]:
    """The state after `n` hourly runs, each folding one batch, and every event folded."""
    store, state, everything = store or MemoryBlobStore(), ScoreState(), []
    for b in range(n):
        state = state.fold(batch(b), store)
        everything += batch(b)
    return state, everything, store


def ranked(state: ScoreState, store: MemoryBlobStore, **options):
    return rank(state, state.recent_events(store), **options)


def independent(values: list[float]) -> tuple:
    """Mean and Student-t 95% interval of `values`, computed apart from the package (scipy's t quantile)."""
    if not values:
        return None, None, None
    mean = statistics.mean(values)
    if len(values) < metrics.MIN_INTERVAL_N:
        return mean, None, None
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def same(figure: metrics.Interval, expected: tuple) -> bool:
    """Equal to 1e-9 and as the card shows it (one decimal)."""
    got = (figure.mean, figure.low, figure.high)
    return all((a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9 * max(1, abs(b))
                                             and f"{a:.1f}" == f"{b:.1f}") for a, b in zip(got, expected))


def test_figures_equal_an_independent_recomputation_overall_and_in_every_rollup_column():
    state, everything, store = fold_batches(70)
    ranking = ranked(state, store)
    month = {c["batch_id"]: c for c in ranking.batches}["month:2024-01"]
    assert month["batches"] == 28 and month["label"] == "month 2024-01"
    for row in ranking.rows:
        mine = [e for e in everything if e["model_key"] == str(row.key)]
        truth = [e for e in mine if e["recall"] is not None]
        valid = [e for e in truth if not e["error"]]
        assert same(row.figures["recall"], independent([e["recall"] for e in valid]))
        assert same(row.figures["recall_all"], independent([e["recall"] for e in truth]))
        assert same(row.figures["precision_all"], independent([e["precision"] or 0.0 for e in truth]))
        assert same(row.figures["f1"], independent([e["f1"] for e in valid]))
        assert same(row.figures["latency_ms"], independent([e["latency_ms"] for e in mine]))
        assert row.error_pct == 100 * sum(1 for e in mine if e["error"]) / len(mine)
        assert row.cost_usd == pytest.approx(sum(e["cost_usd"] for e in mine), rel=1e-12)
        january = [e["recall"] for e in truth if e["batch_date"].startswith("2024-01")]
        assert same(row.batches["month:2024-01"], independent(january))
        newest = str(1000 + 69)
        assert same(row.batches[newest], independent([e["recall"] for e in truth if e["batch_id"] == newest]))
        timed = sorted(e["latency_ms"] for e in mine)
        assert row.p50_latency_ms == pytest.approx(timed[int(np.ceil(0.5 * len(timed))) - 1], rel=0.03)
    assert (ranking.photos, ranking.calls) == (70 * 30, 70 * 30 * len(MODELS))
    assert ranking.errored_calls == sum(1 for e in everything if e["error"])


def test_folding_run_by_run_equals_folding_at_once():
    state, everything, store = fold_batches(120)
    at_once = rank_events(everything)
    assert ranked(state, store).to_dict() == at_once.to_dict()
    assert ranked(state, store).table() == at_once.table()
    stored = pickle.loads(pickle.dumps(state))  # as Metaflow stores the `state` artifact
    assert ranked(stored, store).to_dict() == at_once.to_dict()
    assert ranked(stored.fold(batch(120), store), store).to_dict() == rank_events(everything + batch(120)).to_dict()


def test_a_rerun_replaces_a_batch_on_its_own_or_in_a_closed_month_and_keeps_the_answers_it_did_not_redo():
    state, _, store = fold_batches(120)
    assert "month:2024-01" in set(state.closed.batches["batch_id"])
    redone = [e for e in batch(0, seed=1, run="8") + batch(119, seed=1, run="8") if e["model_key"] == "knn:jec"]
    again = state.fold(redone, store)
    expected = [e for b in range(120) for e in batch(b) if not (b in (0, 119) and e["model_key"] == "knn:jec")] + redone
    assert ranked(again, store).to_dict() == rank_events(expected).to_dict()
    assert str(1000) not in again.dates() and len(again.closed.batches) == len(state.closed.batches)


def test_a_row_that_answers_a_batch_in_a_later_run_is_paired_with_the_rows_before_it():
    store, state = MemoryBlobStore(), ScoreState()
    early = [e for e in batch(0, photos=60) if e["model_key"] == "prior:tag-prior"]
    late = [e for e in batch(0, photos=60) if e["model_key"] == "knn:jec"]
    state = state.fold(early, store).fold(late, store)  # PromptModels, then PromptCustomModels on the same batch
    ranking = ranked(state, store)
    shared = sum(1 for e in early if e["recall"] is not None)
    assert ranking.rows[1].vs_best.n == shared and ranking.comparisons == 1
    assert ranking.to_dict() == rank_events(early + late).to_dict()


def test_the_state_keeps_about_a_month_of_batches_and_one_row_per_closed_month():
    state, _, store = fold_batches(100)
    at_100 = len(pickle.dumps(state.open))
    for b in range(100, 300):
        state = state.fold(batch(b), store)
    assert len(pickle.dumps(state.open)) < 1.3 * at_100
    assert len(pickle.dumps(state.closed)) / len(state.closed.batches) < 20_000, "a closed month is a few rows"
    assert len(state.open.batches) <= evals.NEWEST_BATCHES + 7 * evals.WEEKLY_ROLLUPS
    months = state.closed.batches
    assert list(months["batch_id"]) == sorted(months["batch_id"]) and months["batches"].sum() + len(state.open.batches) == 300
    assert len(state.closed.cells) == len(months) * len(MODELS)
    assert len(state.open.cells) == len(state.open.batches) * len(MODELS)


HOUR = 3600.0


def hourly_runs(hours: int) -> dict[str, float]:
    return {f"PromptModels/{h}": h * HOUR for h in range(hours)}


def test_folded_runs_keep_only_the_runs_since_the_horizon_an_hour_back():
    folded, listed = FoldedRuns(), {}
    for hour in range(200):
        listed = {p: t for p, t in hourly_runs(hour + 1).items() if t >= folded.horizon}
        new = [p for p in listed if p not in folded]
        assert new == [f"PromptModels/{hour}"], "each run is read once"
        folded, given_up = folded.advance(listed, new, [], now=hour * HOUR + 60)
        assert not given_up
    assert folded.horizon == 199 * HOUR + 60 - SETTLE_S
    assert sorted(folded.runs) == ["PromptModels/199"]
    assert len(listed) <= 2, "a collect lists about an hour of runs, not all of them"


def test_a_run_still_going_holds_the_horizon_back_until_it_is_given_up():
    listed = hourly_runs(3)
    folded, _ = FoldedRuns().advance(listed, ["PromptModels/0", "PromptModels/2"], ["PromptModels/1"], now=3 * HOUR)
    assert folded.horizon == 1 * HOUR and "PromptModels/1" not in folded and "PromptModels/2" in folded
    later = {**listed, "PromptModels/9": 9 * HOUR}
    folded, _ = folded.advance(later, ["PromptModels/1", "PromptModels/9"], [], now=10 * HOUR)
    assert folded.horizon == 9 * HOUR and sorted(folded.runs) == ["PromptModels/9"]
    stuck, given_up = FoldedRuns().advance(listed, ["PromptModels/0"], ["PromptModels/1"], now=HOUR + GIVE_UP_S + 1)
    assert given_up == ["PromptModels/1"] and stuck.horizon == 1 + HOUR


def test_batch_columns_are_the_newest_batches_then_weekly_then_monthly_rollups():
    dates = {f"h{h}": f"2024-{1 + h // (24 * 28) % 12:02d}-{1 + h // 24 % 28:02d}T{h % 24:02d}:00:00Z"
             for h in range(24 * 28 * 12)}  # a year of hourly batches
    cols, column_of = evals.columns(dates, newest=12, weeks=4)
    labels = [c["label"] for c in cols]
    assert len(cols) < 40 and len(column_of) == len(dates)
    assert labels[:2] == ["month 2024-01", "month 2024-02"]
    assert [label.split()[0] for label in labels[-16:-12]] == ["week"] * 4
    assert labels[-12:] == [evals.batch_label(b, dates[b]) for b in list(dates)[-12:]]
    assert sum(c["batches"] for c in cols) == len(dates)


class StoredRun:
    """A client Run with the artifacts it stored (an EvaluationFlow run from before photo_results has none)."""

    def __init__(self, **artifacts):
        self.data = type("Data", (dict,), {"__getattr__": dict.__getitem__})(artifacts)


def test_photo_results_round_trip_through_parquet_and_read_back_latest_answer_first():
    first = batch(0, photos=3)
    rerun = [e for e in batch(0, photos=3, seed=1, run="8") if e["photo_id"] == "b0-p1"]
    frame = read_parquet(to_parquet(photo_frame(first)))
    assert len(frame) == 6 and frame.columns[:4].tolist() == ["batch_id", "batch_date", "photo_id", "model_key"]
    assert frame["ground_truth_tags"].map(list).tolist() == [list(e["ground_truth_tags"]) for e in first]
    runs = [StoredRun(photo_results=to_parquet(photo_frame(rerun))), StoredRun(photo_results=to_parquet(photo_frame(first))),
            StoredRun(events=[])]  # newest first, as mfclient.runs_of lists them
    everything = photo_results(runs)
    assert len(everything) == 6
    assert everything.set_index(["photo_id", "model_key"])["source_run"].to_dict() == {
        (e["photo_id"], e["model_key"]): "8" if e["photo_id"] == "b0-p1" else "7" for e in first}
    assert isinstance(photo_results([]), pd.DataFrame)


def test_lenient_figures_of_rescored_events_equal_those_of_all_events():
    vocabulary = Vocabulary.from_dict({"parents": {"cat": "pet", "dog": "pet"}, "stop_tags": ["sky"]})
    store, state, everything = MemoryBlobStore(), ScoreState(), []
    for b in range(40):
        new = metrics.rescore(batch(b), vocabulary)  # as EvaluationFlow's collect scores each new run
        state, everything = state.fold(new, store), everything + new
    for row in ranked(state, store).rows:
        lenient = [e for e in everything if e["model_key"] == str(row.key) and e["recall_lenient"] is not None]
        assert same(row.figures["recall_lenient"], independent([e["recall_lenient"] for e in lenient if not e["error"]]))
        assert same(row.figures["recall_all_lenient"], independent([e["recall_lenient"] for e in lenient]))
        assert row.mean("recall_lenient") != row.mean("recall"), "the vocabulary's parents find more than the exact rule"


def with_variant(e: evals.EvalEvent, variant: str) -> evals.EvalEvent:
    """The event `e` as the answer of its model to the prompt `variant`."""
    photo = {"id": e["photo_id"], "ground_truth_tags": e["ground_truth_tags"], "image_url": e["image_url"]}
    return evals.make_event({**e, "prompt_variant": variant}, photo, batch_id=e["batch_id"], batch_date=e["batch_date"],
                            source_flow=e["source_flow"], source_run=e["source_run"])


def test_prompt_variants_keep_their_own_rows_through_rollups_and_the_drilldown():
    variants, models = ("default@aaa111", "short@bbb222"), ("openai:gpt-4o-mini", "together:llama")  # models that read prompts
    store, state, everything = MemoryBlobStore(), ScoreState(), []
    for b in range(20):
        new = [with_variant(e, v) for e in batch(b, models=models) for v in variants]
        state, everything = state.fold(new, store), everything + new
    keys = sorted(str(evals.RowKey(m, v)) for m in models for v in variants)
    recent = state.recent_events(store)
    assert len(recent) == DRILLDOWN_BATCHES * 30 * len(keys), "no variant's answer replaces another's"
    ranking = rank(state, recent)
    assert sorted(str(row.key) for row in ranking.rows) == keys
    assert ranking.to_dict() == rank_events(everything).to_dict()
    assert (ranking.photos, ranking.calls) == (20 * 30, 20 * 30 * len(keys))
    assert ranking.batches[0]["batch_id"].startswith("week:") and len(ranking.batches) < 20
    page = render_dashboard(ranking, recent, drilldown_photos=5)
    assert sorted(set(re.findall(r'<tr data-model="([^"]+)"', page))) == keys, "every (model, prompt) row on the card"
    assert page.count("showing 5 of 30 photos") == DRILLDOWN_BATCHES


def test_a_new_batch_of_a_month_already_partly_closed_stays_on_its_own_and_a_one_batch_month_is_a_month():
    dates = ["2024-01-02", "2024-01-08", "2024-01-15", "2024-01-22", "2024-01-29"]  # five ISO weeks
    dates += [f"2024-{1 + d // 31:02d}-{1 + d % 31:02d}T09:00:00" for d in range(29, 41)]  # the newest 12, to 02-10
    store, state = MemoryBlobStore(), ScoreState()
    for b, date in enumerate(dates):
        state = state.fold([event(photo=f"b{b}-p{i}", batch=str(100 + b), date=date) for i in range(3)], store)
    assert list(state.closed.batches["batch_id"]) == ["month:2024-01"] and state.closed.batches["batches"].tolist() == [1]
    written = store.bytes_written
    late = [event(photo=f"late-p{i}", batch="200", date="2024-01-31T12:00:00") for i in range(3)]
    state = state.fold(late, store)
    assert "200" in state.dates(), "a batch newer than its month's closed part is not a rerun of one of them"
    assert store.bytes_written - written < 20_000, "the month's blob is not read and written again"
    columns = {c["batch_id"]: c for c in ranked(state, store).batches}
    assert columns["month:2024-01"]["label"] == "month 2024-01" and columns["month:2024-01"]["batches"] == 1
    assert sum(c["batches"] for c in columns.values()) == len(dates) + 1


def test_a_rolled_up_column_starts_at_its_oldest_batch_whatever_its_batch_ids_sort_as():
    store = MemoryBlobStore()
    state = ScoreState().fold([event(photo="p1", batch="1000", date="2024-01-05"),
                               event(photo="p2", batch="999", date="2024-01-02")], store)
    [month] = state.open.rollup({"999": "month:2024-01", "1000": "month:2024-01"}).batches.to_dict("records")
    assert (month["batch_date"], month["newest_date"], month["batches"]) == ("2024-01-02", "2024-01-05", 2)
