import pickle
import random
import statistics

import re

import pandas as pd
import pytest

from phototagger.blobs import MemoryBlobStore
from phototagger.output.dashboard import render_dashboard
from phototagger.scoring import evals, metrics
from phototagger.scoring.evalstate import (DRILLDOWN_BATCHES, GIVE_UP_S, NO_THRESHOLD, SETTLE_S, EvalState, FoldedRuns,
                                           MonthPart, SampleParts, bottom_k, photo_frame, photo_hash, photo_results,
                                           read_parquet, sample_rows, to_parquet)
from phototagger.scoring.vocabulary import Vocabulary
from phototagger.scoring.evalstate import STATE_VERSION
from phototagger.scoring.metrics import MIN_INTERVAL_N
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


def fold_batches(n: int, **kwargs) -> tuple[EvalState, list[evals.EvalEvent]]:
    state, everything = EvalState(), []
    for b in range(n):
        state = state.fold(batch(b), **kwargs)
        everything += batch(b)
    return state, everything


def test_stored_state_stays_bounded_as_batches_accumulate():
    ten, _ = fold_batches(10, sample_size=100)
    hundred, _ = fold_batches(100, sample_size=100)
    assert len(pickle.dumps(hundred)) < 2 * len(pickle.dumps(ten))
    assert {e["batch_id"] for e in hundred.events} == {"1097", "1098", "1099"} == set(list(hundred.dates)[-DRILLDOWN_BATCHES:])
    assert len(hundred.events) == DRILLDOWN_BATCHES * 30 * len(MODELS)
    assert len(hundred.totals) == len(hundred.dates) * len(MODELS) < 100 * len(MODELS)


def mean_or_none(values):
    return statistics.mean(values) if values else None  # exact to the last bit, as Totals: the card rounds once


def test_overall_and_rollup_figures_from_totals_equal_those_of_all_events():
    state, everything = fold_batches(70)
    ranking = state.totals_ranking()
    month = {c["batch_id"]: c for c in ranking.batches}["month:2024-01"]
    assert month["batches"] == 28
    for row in ranking.rows:
        mine = [e for e in everything if e["model_key"] == row.model]
        valid = [e for e in mine if not e["error"] and e["recall"] is not None]
        assert row.avg_recall == mean_or_none([e["recall"] for e in valid])
        assert row.avg_recall_all == mean_or_none([e["recall"] for e in mine if e["recall"] is not None])
        assert row.avg_latency_ms == mean_or_none([e["latency_ms"] for e in mine])
        assert row.error_pct == 100 * sum(1 for e in mine if e["error"]) / len(mine)
        assert row.cost_usd == pytest.approx(sum(e["cost_usd"] for e in mine), rel=1e-12)
        january = [e for e in mine if e["batch_date"].startswith("2024-01") and e["recall"] is not None]
        assert row.batches["month:2024-01"] == evals.BatchSummary(mean_or_none([e["recall"] for e in january]), len(january))
    assert ranking == evals.rank_totals(evals.batch_totals(everything), evals.batch_dates(everything))
    assert (ranking.photos, ranking.calls) == (70 * 30, 70 * 30 * len(MODELS))


def test_a_rerun_replaces_the_batch_figures_whether_its_events_are_kept_or_not():
    state, _ = fold_batches(10)
    old, newest = 0, 9  # batch 0's events are no longer kept; batch 9's are
    rerun = [e for e in batch(old, seed=1, run="8") + batch(newest, seed=1, run="8")]
    again = state.fold(rerun)
    expected = [e for b in range(1, 9) for e in batch(b)] + rerun
    assert again.totals_ranking() == evals.rank_totals(evals.batch_totals(expected),
                                                                             evals.batch_dates(expected))
    assert again.intervals == {key: i for key, i in evals.batch_intervals(expected).items() if key in again.intervals}
    assert {e["source_run"] for e in again.events if e["batch_id"] == str(1000 + newest)} == {"8"}


def closed_keys(ranking: evals.Ranking) -> set[str]:
    return {c["batch_id"] for c in ranking.batches if evals.is_closed_column(c["batch_id"])}


def test_closed_months_move_to_the_store_and_the_ranking_stays_that_of_all_events():
    archived, everything = fold_batches(120)
    reference = evals.rank_totals(evals.batch_totals(everything), evals.batch_dates(everything))
    assert archived.totals_ranking() == reference
    assert set(archived.closed) == closed_keys(reference) == {"month:2024-01", "month:2024-02", "month:2024-03"}
    assert not closed_keys(evals.rank_totals(archived.totals, archived.dates, closed=())), "no closed batch left in the totals"
    assert len(archived.dates) <= evals.NEWEST_BATCHES + 7 * evals.WEEKLY_ROLLUPS
    assert len(archived.totals) == len(archived.dates) * len(MODELS)
    assert [_photo_figures(r) for r in archived.ranking().rows] == [_photo_figures(r) for r in evals.rank_models(everything).rows]


def test_the_stored_state_stays_bounded_by_a_month_of_batches():
    store = MemoryBlobStore()
    state = EvalState(store=store)
    for b in range(300):
        state = state.fold(batch(b))
        if b == 99:
            at_100 = len(pickle.dumps(state))
    assert at_100 < 150_000, "the sample of 3,000 photos (about 500 KB) is in the store, not in the state"
    assert len(pickle.dumps(state)) < 1.3 * at_100
    assert len(state.dates) <= evals.NEWEST_BATCHES + 7 * evals.WEEKLY_ROLLUPS
    month_parts = [part for part in (pickle.loads(blob) for blob in store.blobs.values()) if isinstance(part, MonthPart)]
    assert max(len(part.dates) for part in month_parts) <= 7, "a closed month gets a part when a week joins it"
    assert sum(len(month["parts"]) for month in state.closed.values()) == len(month_parts), "each written once"


def test_sample_parts_are_the_bottom_k_of_every_fold_and_a_fold_writes_a_little_of_it():
    store, parts, folded, written = MemoryBlobStore(), SampleParts(size=200), [], []
    for b in range(150):
        rows = sample_rows(batch(b) + (batch(b // 2, seed=1, run="8") if b % 10 == 9 else []))  # now and then a rerun
        before = store.bytes_written
        parts = parts.add(store, rows)
        folded.append(rows)
        written.append(store.bytes_written - before)
    expected = bottom_k(folded, 200)
    key = ["hash", "batch_id", "photo_id", "model_key"]
    got = parts.frame(store)
    assert got.sort_values(key).reset_index(drop=True).astype(str).equals(expected.sort_values(key).reset_index(drop=True).astype(str))
    assert len(got) == 200 * len(MODELS) and len(parts.parts) <= 9, "O(log n) parts"
    assert parts.threshold < NO_THRESHOLD
    whole = len(pickle.dumps(expected))
    assert sum(written) / len(written) < 0.5 * whole, "not the whole sample each fold, as one artifact would"


def test_a_stored_state_needs_its_store_and_one_stored_before_versions_reads_as_version_1():
    state, _ = fold_batches(5)
    stored = pickle.loads(pickle.dumps(state))
    with pytest.raises(RuntimeError, match="attach"):
        stored.sample
    assert stored.attach(state.store).sample.equals(state.sample) and stored.version == STATE_VERSION
    legacy = dict(vars(state))
    legacy.pop("version")
    old = EvalState.__new__(EvalState)
    old.__setstate__(legacy)
    assert old.version == 1  # EvaluationFlow refolds all history rather than mix two definitions


def test_a_rerun_of_a_batch_in_a_closed_month_mends_its_part():
    archived, _ = fold_batches(120)
    rerun = batch(0, seed=1, run="8") + batch(119, seed=1, run="8")
    again = archived.fold(rerun)
    expected = [e for b in range(1, 119) for e in batch(b)] + rerun
    assert again.totals_ranking() == evals.rank_totals(
        evals.batch_totals(expected), evals.batch_dates(expected))
    assert [_photo_figures(r) for r in again.ranking().rows] == [_photo_figures(r) for r in evals.rank_models(expected).rows]
    assert "1000" not in again.dates and again.closed["month:2024-01"] != archived.closed["month:2024-01"]


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


def test_score_sample_is_the_bottom_k_of_all_photos_paired_across_models():
    state, everything = fold_batches(40, sample_size=200)
    photos = {(e["batch_id"], e["photo_id"]) for e in everything}
    smallest = set(sorted(photos, key=lambda p: (photo_hash(p[1]), p))[:200])
    assert set(zip(state.sample["batch_id"], state.sample["photo_id"])) == smallest
    assert len(state.sample) == 200 * len(MODELS)
    paired = state.paired("recall", valid_only=False)
    assert list(paired.columns) == sorted(MODELS) and len(paired) == 200
    no_truth = {(e["batch_id"], e["photo_id"]) for e in everything if e["recall"] is None}
    assert set(paired[paired.isna().any(axis=1)].index) == no_truth & smallest
    at_once = EvalState().fold(everything, sample_size=200).sample
    assert at_once.sort_values(["hash", "model_key"]).reset_index(drop=True).equals(
        state.sample.sort_values(["hash", "model_key"]).reset_index(drop=True))


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


def test_a_state_rebuilt_from_a_pre_evalstate_run_events_equals_the_folded_one():
    state, everything = fold_batches(6)
    rebuilt = EvalState.from_events(everything, MemoryBlobStore())
    assert rebuilt.totals == state.totals and rebuilt.events == state.events and rebuilt.dates == state.dates


def test_lenient_figures_from_totals_of_rescored_events_equal_those_of_all_events():
    vocabulary = Vocabulary.from_dict({"parents": {"cat": "pet", "dog": "pet"}, "stop_tags": ["sky"]})
    state, everything = EvalState(), []
    for b in range(40):
        new = metrics.rescore(batch(b), vocabulary)  # as EvaluationFlow's collect scores each new run
        state, everything = state.fold(new), everything + new
    ranking = state.totals_ranking()
    for row in ranking.rows:
        mine = [e for e in everything if e["model_key"] == row.key]
        lenient = [e for e in mine if e["recall_lenient"] is not None]
        assert row.avg_recall_lenient == mean_or_none([e["recall_lenient"] for e in lenient if not e["error"]])
        assert row.avg_recall_all_lenient == mean_or_none([e["recall_lenient"] for e in lenient])
        assert row.avg_recall_lenient != row.avg_recall, "the vocabulary's parents find more than the exact rule"
    assert ranking == evals.rank_totals(evals.batch_totals(everything), evals.batch_dates(everything))


def with_variant(e: evals.EvalEvent, variant: str) -> evals.EvalEvent:
    """The event `e` as the answer of its model to the prompt `variant`."""
    photo = {"id": e["photo_id"], "ground_truth_tags": e["ground_truth_tags"], "image_url": e["image_url"]}
    return evals.make_event({**e, "prompt_variant": variant}, photo, batch_id=e["batch_id"], batch_date=e["batch_date"],
                            source_flow=e["source_flow"], source_run=e["source_run"])


def test_prompt_variants_keep_their_own_totals_rows_and_sample_columns_through_rollups_and_the_drilldown():
    variants, models = ("default@aaa111", "short@bbb222"), ("openai:gpt-4o-mini", "together:llama")  # models that read prompts
    state, everything = EvalState(), []
    for b in range(20):
        new = [with_variant(e, v) for e in batch(b, models=models) for v in variants]
        state, everything = state.fold(new, sample_size=50), everything + new
    keys = sorted(evals.row_key(m, v) for m in models for v in variants)
    assert sorted({key for key, _ in state.totals}) == keys and len(state.totals) == 20 * len(keys)
    assert len(state.events) == DRILLDOWN_BATCHES * 30 * len(keys), "no variant's answer replaces another's"
    ranking = state.totals_ranking()
    assert sorted((row.model, row.prompt_variant) for row in ranking.rows) == sorted(evals.split_row_key(k) for k in keys)
    assert ranking == evals.rank_totals(evals.batch_totals(everything), evals.batch_dates(everything))
    assert (ranking.photos, ranking.calls) == (20 * 30, 20 * 30 * len(keys))
    assert ranking.batches[0]["batch_id"].startswith("week:") and len(ranking.batches) < 20
    for score in ("recall", "recall_lenient"):
        paired = state.paired(score, valid_only=False)
        assert sorted(paired.columns) == keys and len(paired) == 50
    page = render_dashboard(ranking, state.events, drilldown_photos=5)
    assert sorted(set(re.findall(r'<tr data-model="([^"]+)"', page))) == keys, "every (model, prompt) row on the card"
    assert page.count("showing 5 of 30 photos") == DRILLDOWN_BATCHES


def _photo_figures(row: evals.RankingRow) -> tuple:
    return (row.avg_recall_low, row.avg_recall_high, row.n_scored, row.avg_precision_low, row.avg_f1_high,
            row.p50_latency_ms, row.p95_latency_ms, row.vs_best, row.vs_best_low, row.n_paired,
            row.tied_with_best, row.behind_best, row.rating, row.tags_per_photo, {c: e["count"] for c, e in row.errors.items()})


def test_state_ranking_takes_intervals_and_pairs_from_the_sample_equal_to_all_events_when_it_holds_them_all():
    state, everything = fold_batches(20)
    ranked, reference = state.ranking(), evals.rank_models(everything)
    assert [_photo_figures(row) for row in ranked.rows] == [_photo_figures(row) for row in reference.rows]
    assert ranked.rows[0].n_scored > 0 and ranked.rows[1].n_paired > 0
    newest = str(1000 + 19)
    assert ranked.rows[0].batches[newest].n < MIN_INTERVAL_N and ranked.rows[0].batches[newest].low is None  # 30 photos, some without truth
    assert ranked.rows[0].batches[newest] == reference.rows[0].batches[newest]


def test_state_ranking_on_a_small_sample_reads_the_sample_not_all_photos():
    state, _ = fold_batches(20, sample_size=50)
    sampled = state.ranking()
    assert all(row.n_with_truth <= 50 for row in sampled.rows)
    assert all(row.n_paired <= 50 for row in sampled.rows[1:])
    assert sampled.per_tag["tags"]  # from the newest batches' events, which keep the tags
