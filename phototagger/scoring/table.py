"""EvaluationFlow's scores as tables: per-photo answers in, small per-(row, batch) sums out.

A row is a (model, prompt) pair (evals.RowKey). Each batch's answers, every row's, are one Parquet part in the
flow's blob store; from a part come the batch's rows of five small pandas tables (`Tables`):
- `cells`: per row and measure (MEASURES) the n, sum and sum of squares, and the calls, errors, tokens and cost;
- `pairs`: per pair of rows, on the photos both answered, n, sum and sum of squares of their difference in each
  sort metric (what the paired order and Holm's comparisons need);
- `errors`: failed calls per error class with the batch's latest message; `latency`: answers per latency bucket;
- `batches`: the batch's date, its photos and its part.
Sums add up over any span of batches, so the overall figures, the roll-up columns, every t-interval and paired
comparison are groupby-sums of these tables (scoring/ranking.py). A rerun of a batch merges into its part and
rebuilds that batch's rows, so a photo counts once, with its latest answer.
The state stays bounded by about a month of batches: batches in a closed column (a month's, for good: evals.columns)
are summed into one row per month (`ScoreState.closed`), and the month's batch rows go to one blob, read back only to
mend a rerun of one of its batches. pandas, not DuckDB: the tables are thousands of rows, and pandas is already in
every image.
"""
from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping, Optional, TypedDict

import numpy as np
import pandas as pd

from phototagger.blobs import BlobStore
from phototagger.scoring.metrics import Interval, interval_of_sums
from phototagger.scoring.evals import (EvalEvent, RowKey, columns, is_closed_column, ordered_batches,
                                       rollup_key)

KEYS = ["row_model", "row_variant"]  # a RowKey, in the tables
PAIR_KEYS = [*KEYS, "other_model", "other_variant"]
SORT_METRICS = ("recall", "f1")
"""What the ranking can be sorted by: its mean over every photo with ground truth, a failed call as 0 (`<metric>_all`)."""
DRILLDOWN_BATCHES = 3
"""Newest batches whose answers the dashboard shows photo by photo (and reads the per-tag view from)."""
LATENCY_BUCKETS_PER_DOUBLING = 16
"""Latency percentiles come from a histogram: a bucket spans 2^(1/16), so a percentile is within 2.2% of the exact one."""
PHOTO_COLUMNS = ("batch_id", "batch_date", "photo_id", "model_key", "provider", "model", "prompt_variant", "tags",
                 "ground_truth_tags", "valid", "error", "recall", "precision", "f1", "recall_lenient",
                 "precision_lenient", "f1_lenient", "latency_ms", "cached", "prompt_tokens",
                 "completion_tokens", "cost_usd", "image_url", "raw", "source_flow", "source_run")
"""The `photo_results` columns first in a frame; fields an event has beyond them follow."""
EXAMPLE_CHARS = 240
STATE_VERSION = 3
"""Bumped when what the state holds changes meaning (3: tables of sums). A state of another version is not upgraded in
place: EvaluationFlow refolds all history once (as --rebuild does), so no figure mixes two definitions."""


def failed(photos: pd.DataFrame) -> pd.Series:
    return photos["error"].fillna("").astype(str).ne("")


def measures(photos: pd.DataFrame) -> dict[str, pd.Series]:
    """Each measure's per-photo values, NaN where the photo does not count for it. `_all`: over every photo with
    ground truth, a failed call as 0 (the headline); without: over valid answers only (scikit-learn's
    average='samples'); `_lenient`: the lenient matching rule, over the photos it has truth for."""
    truth = photos["recall"].notna()
    valid = truth & ~failed(photos)
    lenient = truth & photos["recall_lenient"].notna()
    return {
        "recall_all": photos["recall"].where(truth),
        "precision_all": photos["precision"].fillna(0.0).where(truth),
        "f1_all": photos["f1"].fillna(0.0).where(truth),
        "recall": photos["recall"].where(valid),
        "precision": photos["precision"].where(valid),
        "f1": photos["f1"].where(valid),
        "recall_all_lenient": photos["recall_lenient"].where(lenient),
        "recall_lenient": photos["recall_lenient"].where(lenient & valid),
        "precision_lenient": photos["precision_lenient"].fillna(0.0).where(lenient & valid),
        "f1_lenient": photos["f1_lenient"].fillna(0.0).where(lenient & valid),
        "latency_ms": photos["latency_ms"],  # a cached answer keeps the latency measured when it was made
    }


MEASURES = tuple(measures(pd.DataFrame(columns=list(PHOTO_COLUMNS), dtype="float64")))


def photo_frame(events: Iterable[EvalEvent]) -> pd.DataFrame:
    """One row per event, PHOTO_COLUMNS first, then the row's key (`model_key` is its text, kept for readers of
    `photo_results`): the `photo_results` artifact's table and a batch's part."""
    frame = pd.DataFrame.from_records(list(events))
    extra = [c for c in frame.columns if c not in PHOTO_COLUMNS]
    frame = frame.reindex(columns=[*PHOTO_COLUMNS, *extra])
    for column in ("recall", "precision", "f1", "recall_lenient", "precision_lenient", "f1_lenient", "latency_ms",
                   "cost_usd", "prompt_tokens", "completion_tokens"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame[["batch_id", "photo_id"]] = frame[["batch_id", "photo_id"]].fillna("").astype(str)
    return frame


def row_keys(photos: pd.DataFrame) -> pd.DataFrame:
    """The (model, variant) of each answer, from its provider, model and prompt variant (evals.RowKey.of)."""
    keys = [RowKey.of(r) for r in photos[["provider", "model", "prompt_variant"]].fillna("").to_dict("records")]
    return pd.DataFrame({"row_model": [k.model for k in keys], "row_variant": [k.variant for k in keys]}, index=photos.index)


def _sums(values: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Groupby-sums in one order (by the keys), so the same answers give the same sums however they were folded."""
    return values.sort_values(by, kind="stable").groupby(by, as_index=False, sort=True).sum()


def _cells(photos: pd.DataFrame, keys: pd.DataFrame, values: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Per (row, batch): calls, errors, tokens, cost, and each measure's n, sum and sum of squares (`values`: measures)."""
    fails = failed(photos)
    data = {**keys, "batch_id": photos["batch_id"], "calls": 1, "errors": fails.astype(int),
            "valid": photos["valid"].fillna(False).astype(bool).astype(int),
            "no_truth": (~fails & photos["recall"].isna()).astype(int),
            "tags": [0 if bad or not isinstance(t, (list, np.ndarray)) else len(t) for t, bad in zip(photos["tags"], fails)],
            "prompt_tokens": photos["prompt_tokens"].fillna(0), "completion_tokens": photos["completion_tokens"].fillna(0),
            "cost_usd": photos["cost_usd"].fillna(0.0)}
    for name, value in values.items():
        data.update({f"{name}_n": value.notna().astype(int), f"{name}_sum": value.fillna(0.0),
                     f"{name}_sq": value.fillna(0.0) ** 2})
    return _sums(pd.DataFrame(data), [*KEYS, "batch_id"])


def _pairs(photos: pd.DataFrame, keys: pd.DataFrame, values: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Per pair of rows (the first before the second in RowKey order), their shared photos with ground truth and
    the sums of their differences there, in each sort metric (`values`: measures)."""
    frame = pd.concat([keys, photos[["photo_id"]]], axis=1)
    wide = {m: frame.assign(v=values[f"{m}_all"]).pivot(index="photo_id", columns=KEYS, values="v").sort_index(axis=1)
            for m in SORT_METRICS}
    rows = list(wide[SORT_METRICS[0]].columns)
    out = []
    for metric in SORT_METRICS:
        matrix = wide[metric].to_numpy(dtype=float)
        present = ~np.isnan(matrix)
        filled = np.nan_to_num(matrix)
        shared = present.T.astype(float) @ present
        sums = filled.T @ present - present.T @ filled  # sum over shared photos of (row i - row j)
        squares = (filled ** 2).T @ present + present.T @ (filled ** 2) - 2 * filled.T @ filled
        out.append((shared, sums, squares))
    records = [{"row_model": a[0], "row_variant": a[1], "other_model": b[0], "other_variant": b[1],
                "batch_id": photos["batch_id"].iloc[0], "n": int(out[0][0][i, j]),
                **{f"{m}_{part}": float(out[k][p][i, j]) for k, m in enumerate(SORT_METRICS)
                   for p, part in ((1, "sum"), (2, "sq"))}}
               for i, a in enumerate(rows) for j, b in enumerate(rows) if i < j and out[0][0][i, j] > 0]
    sums = [f"{m}_{p}" for m in SORT_METRICS for p in ("sum", "sq")]
    return pd.DataFrame(records, columns=[*PAIR_KEYS, "batch_id", "n", *sums]).astype({"n": "int64", **dict.fromkeys(sums, "float64")})


def latency_bucket(latency_ms: pd.Series) -> pd.Series:
    return np.floor(LATENCY_BUCKETS_PER_DOUBLING * np.log2(latency_ms.clip(lower=1e-3))).astype(int)


def bucket_value(bucket: float) -> float:
    """A latency bucket's geometric middle, in ms."""
    return 2 ** ((bucket + 0.5) / LATENCY_BUCKETS_PER_DOUBLING)


@dataclass(frozen=True)
class Tables:
    """The per-(row, batch) sums of some batches (one row per batch), or of roll-up columns (one per column)."""

    cells: pd.DataFrame
    pairs: pd.DataFrame
    errors: pd.DataFrame
    latency: pd.DataFrame
    batches: pd.DataFrame  # batch_id, batch_date (a roll-up's oldest), newest_date, photos (the most any row answered),
    # batches (1, more rolled up), part

    @classmethod
    def empty(cls) -> Tables:
        return _EMPTY

    @classmethod
    def of_batch(cls, photos: pd.DataFrame, part: str) -> Tables:
        """The tables of one batch's answers (its part; `part` is its blob key)."""
        keys, values = row_keys(photos), measures(photos)
        timed = photos["latency_ms"].notna()
        latency = pd.concat([keys[timed], photos.loc[timed, ["batch_id"]]], axis=1).assign(
            bucket=latency_bucket(photos.loc[timed, "latency_ms"]), answers=1)
        errors = pd.concat([keys, photos[["batch_id", "error", "raw"]]], axis=1)[failed(photos)].assign(count=1)
        errors["example"] = errors["raw"].fillna("").astype(str).str[:EXAMPLE_CHARS]
        cells = _cells(photos, keys, values)
        date = photos["batch_date"].iloc[:1].fillna("")
        batches = pd.DataFrame({"batch_id": photos["batch_id"].iloc[:1], "batch_date": date, "newest_date": date,
                                "photos": [int(cells["calls"].max())] if len(cells) else [], "batches": 1, "part": part})
        return cls(cells=cells, pairs=_pairs(photos, keys, values),
                   errors=errors[[*KEYS, "batch_id", "error", "count", "example"]],
                   latency=_sums(latency[[*KEYS, "batch_id", "bucket", "answers"]], [*KEYS, "batch_id", "bucket"]),
                   batches=batches)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getstate__(self) -> dict[str, bytes]:
        """Stored (the `state` artifact, a month's blob) as Parquet: a sixth of a pickled frame's bytes, the
        latency histogram's a thirtieth."""
        return {name: to_parquet(frame) for name, frame in self.frames().items()}

    def __setstate__(self, stored: dict[str, bytes]) -> None:
        for name, data in stored.items():
            object.__setattr__(self, name, read_parquet(data))

    def concat(self, *others: Tables) -> Tables:
        return Tables(**{name: pd.concat([frame, *(o.frames()[name] for o in others)], ignore_index=True)
                         for name, frame in self.frames().items()})

    def without(self, batch_ids: Iterable[str]) -> Tables:
        gone = set(batch_ids)
        return Tables(**{name: frame[~frame["batch_id"].isin(gone)].reset_index(drop=True)
                         for name, frame in self.frames().items()})

    def rollup(self, column_of: Mapping[str, str]) -> Tables:
        """These tables with each batch summed into its column (`column_of`: batch id -> column key; a batch it
        does not name stays its own column). The errors keep the newest batch's example of each class."""
        def by_column(frame: pd.DataFrame) -> pd.DataFrame:
            """Sorted by batch first: a column's sums then add its batches in one order, however they were folded."""
            frame = frame.sort_values("batch_id", kind="stable")
            return frame.assign(batch_id=frame["batch_id"].map(lambda b: column_of.get(b, b)))

        dates = dict(zip(self.batches["batch_id"], self.batches["batch_date"]))
        newest_first = [batch_id for batch_id, _ in reversed(ordered_batches(dates))]
        errors = self.errors.assign(age=self.errors["batch_id"].map({b: i for i, b in enumerate(newest_first)}))
        errors = by_column(errors).sort_values("age", kind="stable").groupby([*KEYS, "batch_id", "error"], as_index=False) \
            .agg(count=("count", "sum"), example=("example", lambda s: next((e for e in s if e), "")))
        batches = by_column(self.batches).groupby("batch_id", as_index=False).agg(
            batch_date=("batch_date", "min"), newest_date=("newest_date", "max"), photos=("photos", "sum"),
            batches=("batches", "sum"), part=("part", "last"))
        return Tables(cells=_sums(by_column(self.cells), [*KEYS, "batch_id"]),
                      pairs=_sums(by_column(self.pairs), [*PAIR_KEYS, "batch_id"]), errors=errors,
                      latency=_sums(by_column(self.latency), [*KEYS, "batch_id", "bucket"]), batches=batches)


_EMPTY = Tables.of_batch(photo_frame([]), "")  # shared: no function here changes a frame in place


def to_parquet(frame: pd.DataFrame) -> bytes:
    """A frame as Parquet bytes (an artifact any pandas reads without this package)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def read_parquet(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data))


def events_of(photos: pd.DataFrame) -> list[EvalEvent]:
    """A part's rows back as events: lists for Parquet's arrays, None for its missing values."""
    records = photos.astype(object).where(photos.notna(), None).to_dict("records")
    return [{k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in records]  # type: ignore[misc]


def _save_part(store: BlobStore, photos: pd.DataFrame) -> str:
    return store.save([to_parquet(photos)])[0]


def _load_part(store: BlobStore, key: str) -> pd.DataFrame:
    return read_parquet(store.load([key])[0])


def _save_month(store: BlobStore, tables: Tables) -> str:
    """A closed month's batch rows, as one blob (read back only by this package)."""
    return store.save([pickle.dumps(tables)])[0]


def _load_month(store: BlobStore, key: str) -> Tables:
    return pickle.loads(store.load([key])[0])


@dataclass(frozen=True)
class ScoreState:
    """What EvaluationFlow carries from run to run: the tables of the batches on their own (`open`) and one row per
    closed month (`closed`, its `part` the blob of the month's batch rows)."""

    open: Tables = field(default_factory=Tables.empty)
    closed: Tables = field(default_factory=Tables.empty)
    version: int = STATE_VERSION

    def tables(self) -> Tables:
        return self.open.concat(self.closed)

    def dates(self) -> dict[str, str]:
        """batch_id -> batch_date of the batches on their own."""
        return dict(zip(self.open.batches["batch_id"], self.open.batches["batch_date"]))

    def fold(self, new: Iterable[EvalEvent], store: BlobStore) -> ScoreState:
        """This state with the `new` (scored) events folded in, each batch's latest answer per (row, photo) winning."""
        photos = photo_frame(new)
        if not len(photos):
            return self
        parts = dict(zip(self.open.batches["batch_id"], self.open.batches["part"]))
        closed = dict(zip(self.closed.batches["batch_id"], self.closed.batches["part"]))
        newest = dict(zip(self.closed.batches["batch_id"], self.closed.batches["newest_date"]))
        fresh, months = [], {}
        for batch_id, answers in photos.groupby("batch_id", sort=False):
            date = answers["batch_date"].fillna("").iloc[0]
            month = rollup_key(date)
            # A batch not on its own is a closed month's when that month holds batches as new as it: a rerun of one.
            month = month if batch_id not in parts and month in closed and date <= newest[month] else None
            if month and month not in months:
                months[month] = _load_month(store, closed[month])
            old_parts = dict(zip(months[month].batches["batch_id"], months[month].batches["part"])) if month else parts
            part = old_parts.get(batch_id)
            merged = pd.concat([_load_part(store, part), answers], ignore_index=True) if part else answers
            merged = merged.drop_duplicates(["photo_id", "model_key"], keep="last")
            merged = merged.sort_values(["photo_id", "model_key"], kind="stable").reset_index(drop=True)
            batch = Tables.of_batch(merged, _save_part(store, merged))
            if month:
                months[month] = months[month].without([batch_id]).concat(batch)
            else:
                fresh.append(batch)
        opened = self.open.without(b.batches["batch_id"].iloc[0] for b in fresh).concat(*fresh)
        return replace(self, open=opened).archive(store, months)

    def archive(self, store: BlobStore, mended: Optional[dict[str, Tables]] = None) -> ScoreState:
        """This state with every batch whose column is closed moved into its month's row and blob, and the months
        in `mended` (month -> its batch rows after a rerun) summed again."""
        _, column_of = columns(self.dates())
        leaving = {b: c for b, c in column_of.items() if is_closed_column(c)}
        months = dict(mended or {})
        for month in set(leaving.values()):
            moving = self.open.without(set(column_of) - {b for b, c in leaving.items() if c == month})
            before = months.get(month)
            if before is None and month in set(self.closed.batches["batch_id"]):
                before = _load_month(store, self.closed.batches.set_index("batch_id")["part"][month])
            months[month] = before.concat(moving) if before is not None else moving
        if not months:
            return self
        summed = [t.rollup({b: m for b in t.batches["batch_id"]}) for m, t in months.items()]
        summed = [replace(s, batches=s.batches.assign(part=_save_month(store, months[m]))) for m, s in zip(months, summed)]
        return replace(self, open=self.open.without(leaving), closed=self.closed.without(months).concat(*summed))

    def recent_events(self, store: BlobStore, batches: int = DRILLDOWN_BATCHES) -> list[EvalEvent]:
        """The answers of the newest `batches` batches, every row's: the drill-down and the per-tag view."""
        newest = [b for b, _ in ordered_batches(self.dates())[-batches:]] if batches else []
        parts = self.open.batches.set_index("batch_id")["part"]
        return [e for b in newest for e in events_of(_load_part(store, parts[b]))]


class Summary(TypedDict):
    """A prompt run's figures of one row (its `summaries` artifact), from the same sums as the dashboard's."""

    photos: int
    scored: int  # answers with ground truth and no error
    with_truth: int  # photos with ground truth, failed or not: the n of the all-photos means
    no_ground_truth: int
    errors: int
    error_pct: float
    valid_pct: float
    avg_recall: Optional[float]  # over valid answers
    avg_recall_all: Optional[float]  # over every photo with ground truth, a failed call as 0
    avg_precision: Optional[float]
    avg_f1: Optional[float]
    avg_precision_all: Optional[float]
    avg_f1_all: Optional[float]
    avg_recall_lenient: Optional[float]
    avg_recall_all_lenient: Optional[float]
    avg_precision_lenient: Optional[float]
    avg_f1_lenient: Optional[float]
    avg_latency_ms: Optional[float]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def figures(sums: Mapping[str, Any]) -> dict[str, Interval]:
    """Each measure's mean, 95% t-interval and n, from the sums of any span of batches (one `cells` row summed)."""
    return {m: interval_of_sums(int(sums[f"{m}_n"]), float(sums[f"{m}_sum"]), float(sums[f"{m}_sq"])) for m in MEASURES}


def summarise(results: Iterable[Mapping[str, Any]]) -> Summary:
    """The figures of one row's results (any number of batches)."""
    photos = photo_frame(results)
    photos["batch_id"] = ""
    sums = _cells(photos, row_keys(photos).assign(row_model="", row_variant=""), measures(photos)).sum(numeric_only=True) \
        if len(photos) else pd.Series(0, index=Tables.empty().cells.columns)
    calls = int(sums["calls"])
    return Summary(
        photos=calls, scored=int(sums["recall_n"]), with_truth=int(sums["recall_all_n"]),
        no_ground_truth=int(sums["no_truth"]), errors=int(sums["errors"]),
        error_pct=100.0 * sums["errors"] / calls if calls else 0.0, valid_pct=100.0 * sums["valid"] / calls if calls else 0.0,
        **{f"avg_{m}": figure.mean for m, figure in figures(sums).items()},  # type: ignore[typeddict-item]
        prompt_tokens=int(sums["prompt_tokens"]), completion_tokens=int(sums["completion_tokens"]),
        cost_usd=float(sums["cost_usd"]))


def photo_results(runs: Iterable[Any]) -> pd.DataFrame:
    """Every photo result of the EvaluationFlow `runs` (e.g. mfclient.runs_of("EvaluationFlow", branch)), in one
    frame, a rerun's answer replacing the earlier one; runs stored before the `photo_results` artifact are skipped."""
    frames = [read_parquet(run.data.photo_results) for run in runs if "photo_results" in run.data]
    if not frames:
        return photo_frame([])
    frames.reverse()  # runs_of lists newest first; the latest answer must win
    both = pd.concat(frames, ignore_index=True)
    return both.drop_duplicates(["model_key", "photo_id", "batch_id"], keep="last").reset_index(drop=True)


def percentile(latency: pd.DataFrame, q: float) -> Optional[float]:
    """The q-th percentile (0-100) of a row's latency histogram (bucket, answers), as its bucket's middle."""
    total = latency["answers"].sum()
    if not total:
        return None
    ordered = latency.sort_values("bucket")
    position = np.searchsorted(ordered["answers"].cumsum().to_numpy(), math.ceil(q / 100 * total - 1e-9) or 1)
    return bucket_value(float(ordered["bucket"].iloc[min(position, len(ordered) - 1)]))
