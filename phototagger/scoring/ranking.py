"""The model ranking, from the sums in scoring/table.py: the one ranking function (`rank`) tests and the flow use.

Rows rarely answer the same photos: a fine-tuned model joins late, a model is skipped for some batches, a failed
run leaves a batch out. A mean over each row's own photos then compares easy batches with hard ones, so every
claim here is paired:
- the order is by a paired rating: the least-squares fit of row effects to every pair's mean difference on its
  shared photos (a Massey rating, weighted by the shared photos), anchored so that it equals the row's own mean
  when all rows answered the same photos;
- each row is compared with the best on the photos both answered (a paired t-interval), and is "behind beyond
  noise" only when Holm's procedure over every pairwise comparison rejects that comparison, so that picking the
  best from the same data does not turn noise into a claim.
Figures are unrounded: the card and the printed lines round once, as they show them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import pandas as pd

from phototagger.blobs import BlobStore, MemoryBlobStore
from phototagger.scoring.evals import (NEWEST_BATCHES, WEEKLY_ROLLUPS, BatchInfo, EvalEvent, RowKey, SkippedModel,
                                       batch_label, batch_sort_key, columns, rollup_label)
from phototagger.scoring.metrics import MIN_INTERVAL_N, Interval, PerTag, holm, interval_of_sums, per_tag
from phototagger.scoring.table import KEYS, MEASURES, PAIR_KEYS, SORT_METRICS, ScoreState, figures, percentile

@dataclass(frozen=True)
class Column:
    """One figure of the ranking: the `evals` payload and the card's table both iterate COLUMNS, so a new column is
    one entry here. `field` is a measure of table.MEASURES (an Interval: the payload gets its mean, 95% low and high
    and n) or a RankingRow attribute. `show` is how the card shows it ("" keeps it to the payload): "model",
    "rating", "recall" (shaded by decile), "mean", "versus", "percent", "latency", "cost"."""

    header: str
    field: str
    show: str = ""
    title: str = ""  # what the card's header says on hover


COLUMNS = (
    Column("Model", "key", "model"),
    Column("Paired score", "rating", "rating",
           "the order: each row's score fitted to its paired differences from the other rows on the photos both "
           "answered; the row's own mean when every row answered the same photos"),
    Column("Recall (all photos, exact)", "recall_all", "recall",
           "ground-truth tags found, over every photo with ground truth, a failed call as 0"),
    Column("Precision (all photos)", "precision_all", "mean", "predicted tags in the ground truth, a failed call as 0"),
    Column("F1 (all photos)", "f1_all", "mean", "harmonic mean of recall and precision per photo, a failed call as 0"),
    Column("vs best", "vs_best", "versus",
           "paired difference from the best row in the sort metric, on the photos both answered"),
    Column("Error %", "error_pct", "percent", "calls that failed after retries"),
    Column("Avg Latency (ms)", "latency_ms", "latency",
           "per answer, as measured when it was made (a rerun served from the cache keeps it)"),
    Column("Cost (USD)", "cost_usd", "cost"),
    Column("Avg Recall (exact)", "recall"),
    Column("Precision", "precision"),
    Column("F1", "f1"),
    Column("Avg Recall (lenient)", "recall_lenient"),
    Column("Recall (all photos, lenient)", "recall_all_lenient"),
    Column("Tags/photo", "tags_per_photo"),
    Column("Valid %", "valid_pct"),
    Column("p50 Latency (ms)", "p50_latency_ms"),
    Column("p95 Latency (ms)", "p95_latency_ms"),
    Column("Tied with best", "tied_with_best"),
    Column("Behind best", "behind_best"),
)
"""The headline is over every photo with ground truth, a failed call counting 0 (a model that fails on hard photos
cannot look better for it); Avg Recall/Precision/F1 are over valid answers only; each recall names its matching rule.
Intervals are Student-t 95% over photos, none below metrics.MIN_INTERVAL_N photos (docs/metrics.md)."""
_OLD_HEADERS = {"Avg Recall": "recall", "Recall (all photos)": "recall_all", "Recall vs best": "vs_best"}
"""Headers older `evals` tables hold: the recalls before they named their matching rule, the old comparison."""


@dataclass
class RankingRow:
    """One (model, prompt) row over all batches: a measure's mean as an Interval in `figures`, and its summary
    (recall over all photos) on each batch column."""

    key: RowKey
    figures: dict[str, Interval] = field(default_factory=dict)  # table.MEASURES -> mean, 95% interval, n
    batches: dict[str, Interval] = field(default_factory=dict)  # batch column key -> recall_all there
    rating: Optional[float] = None  # the paired rating the rows are ordered by, in the sort metric's units
    vs_best: Optional[Interval] = None  # this row minus the best on the photos both answered (None for the best)
    tied_with_best: bool = False  # compared with the best, and Holm's procedure finds no difference
    behind_best: bool = False  # behind the best beyond noise (Holm over every pairwise comparison)
    error_pct: float = 0.0
    valid_pct: float = 0.0
    cost_usd: float = 0.0
    tags_per_photo: Optional[float] = None  # tags per valid answer
    p50_latency_ms: Optional[float] = None  # from the latency histogram: within 2.2% of the exact percentile
    p95_latency_ms: Optional[float] = None
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # error class -> {"count", "example"}

    def value(self, name: str) -> Union[Interval, Any]:
        """A column's `field`: a measure's Interval (None where the row has none), else the attribute."""
        return self.figures.get(name) if name in MEASURES else getattr(self, name)

    def mean(self, name: str) -> Optional[float]:
        figure = self.value(name)
        return figure.mean if isinstance(figure, Interval) else figure


@dataclass
class Ranking:
    """The rows best first, and the batch columns they were scored on, oldest first."""

    rows: list[RankingRow] = field(default_factory=list)
    batches: list[BatchInfo] = field(default_factory=list)  # the newest batches and roll-ups
    photos: int = 0  # photos scored, over all batches
    calls: int = 0  # model calls (results), over all batches and models
    errored_calls: int = 0
    per_tag: Optional[PerTag] = None  # recall on the frequent tags, over-predicted tags (newest batches)
    sort_by: str = "recall"  # SORT_METRICS: the rows are ordered by their paired rating of it
    comparisons: int = 0  # pairwise comparisons made (Holm's family): every pair with enough shared photos
    skipped: dict[str, SkippedModel] = field(default_factory=dict)  # model -> why its latest run skipped it

    @property
    def best(self) -> Optional[RankingRow]:
        """The top row, or None when no model has a valid answer yet."""
        return self.rows[0] if self.rows and self.rows[0].mean("recall") is not None else None

    @property
    def tied_with_best(self) -> list[RankingRow]:
        return [row for row in self.rows[1:] if row.tied_with_best]

    @property
    def behind_best(self) -> list[RankingRow]:
        return [row for row in self.rows[1:] if row.behind_best]

    def table(self) -> dict[str, list]:
        """The `evals` payload of DESIGN.md: {"headers", "rows"}: COLUMNS (an Interval as mean, low, high, n), then
        one `avg-recall (n)` cell per batch column ("" where the row did not see it)."""
        headers, rows = [], [[] for _ in self.rows]
        for column in COLUMNS:
            values = [row.value(column.field) for row in self.rows]
            interval = column.field in MEASURES or column.field == "vs_best"
            headers += [column.header] + ([f"{column.header} 95% low", f"{column.header} 95% high", f"{column.header} n"]
                                          if interval else [])
            for cells, value in zip(rows, values):
                if not interval:
                    cells.append(str(value) if isinstance(value, RowKey) else value)
                else:
                    value = value or Interval(None, None, None, 0)
                    cells += [value.mean, value.low, value.high, value.n]
        for cells, row in zip(rows, self.rows):
            cells += [_batch_cell(row.batches.get(b["batch_id"])) for b in self.batches]
        return {"headers": headers + [b["label"] for b in self.batches], "rows": rows}

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, for an artifact any Metaflow client reads without this package."""
        data = asdict(self)
        for row in data["rows"]:
            row["key"] = str(RowKey(**row["key"]))
        return data

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Ranking:
        """The rows of an `evals` payload, read by header (older payloads' headers too): what export_tags reads."""
        names = {**{c.header: c.field for c in COLUMNS}, **_OLD_HEADERS}
        headers = table.get("headers") or []
        rows = []
        for cells in table.get("rows") or []:
            by_field = {names[h]: v for h, v in zip(headers, cells) if h in names}
            rows.append(RankingRow(key=RowKey.parse(str(by_field.get("key", ""))),
                                   figures={m: Interval(by_field.get(m), None, None, 0) for m in MEASURES}))
        return cls(rows=rows)


def _batch_cell(cell: Optional[Interval]) -> str:
    if cell is None:
        return ""
    return f"{cell.mean:.1f} ({cell.n})" if cell.mean is not None else f"n/a ({cell.n})"


def _batch_columns(rolled: pd.DataFrame, column_of: Mapping[str, str]) -> list[BatchInfo]:
    """The batch columns of the rolled-up `batches` table, oldest first: a batch with a column of its own is labelled
    by its id and day, a roll-up (a week, a month, a closed month merged with a live one) by its key."""
    infos = [BatchInfo(batch_id=key, batch_date=date, batches=int(n),
                       label=batch_label(key, date) if column_of.get(key) == key else rollup_label(key))
             for key, date, n in zip(rolled["batch_id"], rolled["batch_date"], rolled["batches"])]
    return sorted(infos, key=lambda b: batch_sort_key(b["batch_id"], b["batch_date"]))


def rank(state: ScoreState, recent: Iterable[EvalEvent] = (), *, skipped: Optional[Mapping[str, SkippedModel]] = None,
         sort_by: str = "recall", newest: int = NEWEST_BATCHES, weeks: int = WEEKLY_ROLLUPS) -> Ranking:
    """One row per (model, prompt) over every batch folded into `state`, in the paired order of `sort_by`, with its
    figures and intervals, its recall on each batch column, its error classes, the paired comparison with the best
    row, and the per-tag view of the `recent` events (ScoreState.recent_events)."""
    if sort_by not in SORT_METRICS:
        raise ValueError(f"unknown sort metric {sort_by!r}; choose one of {', '.join(SORT_METRICS)}")
    tables = state.tables()
    _, column_of = columns(state.dates(), newest, weeks)
    by_column = tables.rollup(column_of)
    infos = _batch_columns(by_column.batches, column_of)
    overall = tables.cells.sort_values("batch_id", kind="stable").drop(columns="batch_id").groupby(KEYS).sum()
    rows = []
    for (model, variant), sums in overall.iterrows():
        key = RowKey(model, variant)
        cells = _of_row(by_column.cells, key)
        latency = _of_row(tables.latency, key).groupby("bucket", as_index=False)["answers"].sum()
        errors = _of_row(by_column.errors, key)
        errors = errors.assign(order=errors["batch_id"].map({b["batch_id"]: i for i, b in enumerate(infos)}))
        calls, answered = int(sums["calls"]), int(sums["calls"] - sums["errors"])
        rows.append(RankingRow(
            key=key, figures=figures(sums),
            batches={c["batch_id"]: figures(c)["recall_all"] for _, c in cells.iterrows()},
            error_pct=100.0 * sums["errors"] / calls if calls else 0.0,
            valid_pct=100.0 * sums["valid"] / calls if calls else 0.0, cost_usd=float(sums["cost_usd"]),
            tags_per_photo=float(sums["tags"]) / answered if answered else None,
            p50_latency_ms=percentile(latency, 50), p95_latency_ms=percentile(latency, 95),
            errors={error: {"count": int(group["count"].sum()),
                            "example": next((e for e in group.sort_values("order", ascending=False)["example"] if e), "")}
                    for error, group in errors.groupby("error")}))
    ranking = Ranking(rows=rows, batches=infos, photos=int(tables.batches["photos"].sum()), calls=int(overall["calls"].sum()),
                      errored_calls=int(overall["errors"].sum()), sort_by=sort_by, skipped=dict(skipped or {}),
                      per_tag=per_tag(recent))
    return _paired_order(ranking, tables.pairs)


def _of_row(frame: pd.DataFrame, key: RowKey) -> pd.DataFrame:
    return frame[(frame["row_model"] == key.model) & (frame["row_variant"] == key.variant)]


def _paired_order(ranking: Ranking, pairs: pd.DataFrame, min_n: int = MIN_INTERVAL_N) -> Ranking:
    """`ranking` in the paired order of its sort metric, each row compared with the best (Holm over every pair)."""
    metric = ranking.sort_by
    keys = sorted(row.key for row in ranking.rows)
    index = {key: i for i, key in enumerate(keys)}
    shared, sums, squares = (np.zeros((len(keys), len(keys))) for _ in range(3))
    totals = pairs.sort_values("batch_id", kind="stable").drop(columns="batch_id").groupby(PAIR_KEYS).sum()
    for (model, variant, other_model, other_variant), s in totals.iterrows():
        i, j = index[RowKey(model, variant)], index[RowKey(other_model, other_variant)]
        shared[i, j] = shared[j, i] = s["n"]
        sums[i, j], sums[j, i] = s[f"{metric}_sum"], -s[f"{metric}_sum"]
        squares[i, j] = squares[j, i] = s[f"{metric}_sq"]
    by_key = {row.key: row for row in ranking.rows}
    own = {key: by_key[key].mean(f"{metric}_all") for key in keys}
    rating = _massey(keys, shared, sums, own)
    order = sorted(keys, key=lambda k: (rating[k] is None, -round(rating[k], 9) if rating[k] is not None else 0.0, k))
    compared = {(a, b): interval_of_sums(int(shared[index[a], index[b]]), float(sums[index[a], index[b]]),
                                         float(squares[index[a], index[b]]), min_n) for a, b in combinations(keys, 2)}
    rejected = holm({pair: d.p for pair, d in compared.items() if d.p is not None})
    ranking.rows = [by_key[key] for key in order]
    ranking.comparisons = sum(1 for d in compared.values() if d.p is not None)
    for row in ranking.rows:
        row.rating = rating[row.key]
    best = order[0] if order else None
    for row in ranking.rows[1:]:
        pair = (row.key, best) if (row.key, best) in compared else (best, row.key)
        d = compared[pair]
        if pair[0] != row.key:
            d = Interval(mean=None if d.mean is None else -d.mean, low=None if d.high is None else -d.high,
                         high=None if d.low is None else -d.low, n=d.n, p=d.p)
        row.vs_best = d if d.n else None
        row.behind_best = pair in rejected and d.mean is not None and d.mean < 0
        row.tied_with_best = d.p is not None and not row.behind_best
    return ranking


def _massey(rows: list[RowKey], shared: np.ndarray, sums: np.ndarray,
            own_means: Mapping[RowKey, Optional[float]]) -> dict[RowKey, Optional[float]]:
    """Row effects a minimising sum over pairs of shared(i, j) * (mean difference(i, j) - (a_i - a_j))^2, one
    connected group of rows (linked by shared photos) at a time, each group shifted so its ratings average its
    rows' own means. A row that shares no photo is its own group: its rating is its own mean."""
    rating = dict(own_means)
    seen: set[int] = set()
    for start in range(len(rows)):
        if start in seen or own_means[rows[start]] is None:
            continue
        group, frontier = {start}, [start]
        while frontier:
            i = frontier.pop()
            for j in np.flatnonzero(shared[i] > 0):
                if j not in group and own_means[rows[j]] is not None:
                    group.add(int(j))
                    frontier.append(int(j))
        seen |= group
        members = sorted(group)
        if len(members) < 2:
            continue
        weights = shared[np.ix_(members, members)].copy()
        np.fill_diagonal(weights, 0.0)
        laplacian = np.diag(weights.sum(axis=1)) - weights
        effects = np.linalg.lstsq(laplacian, sums[np.ix_(members, members)].sum(axis=1), rcond=None)[0]
        effects -= effects.mean()
        anchor = float(np.mean([own_means[rows[i]] for i in members]))
        for i, effect in zip(members, effects):
            rating[rows[i]] = anchor + float(effect)
    return rating


def rank_events(events: Iterable[EvalEvent], store: Optional[BlobStore] = None, **options: Any) -> Ranking:
    """`rank` of a state holding just `events` (tests, benchmarks and one-off reports); `options` are rank's."""
    store = store or MemoryBlobStore()
    state = ScoreState().fold(events, store)
    return rank(state, state.recent_events(store), **options)
