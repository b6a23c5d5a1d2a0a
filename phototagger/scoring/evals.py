"""The evals event log and the model ranking table.

Prompt flows store one result per photo and model in their `models_eval` artifact; EvaluationFlow
reads that artifact of each prompt run it has not folded before through the Metaflow client, turns
the results into events, folds them into the events it has gathered before, and ranks the models
(`rank_models`: a typed Ranking, whose `table()` is the `evals` payload EvaluationFlow stores). Artifacts
are the one channel: task logs are truncated past Metaflow's --max-log-size and would lose events silently. Reading only the new runs keeps the dashboard's cost
growing with the new runs, not with all history.
"""
from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Protocol, TypedDict

from phototagger.scoring.compare import paired_order
from phototagger.scoring.metrics import (SORT_METRICS, Interval, PerTag, ScoredPhoto, Summary, Totals, all_photo_scores,
                                         per_tag, photo_figures, recall_interval)
from phototagger.scoring.tags import normalise_tags
from phototagger.http import LocalImage
from phototagger.images import photo_image
from phototagger.records import ModelResult, Photo, photo_name

@dataclass(frozen=True)
class Column:
    """One figure of a ranking row: the `evals` payload gets its header (and its interval's and n's), and the card's
    ranking table shows it as `show` says ("" keeps it out of the card). A new column is one entry in COLUMNS."""

    header: str
    field: str  # the RankingRow attribute ("key": its row key)
    show: str = ""  # "model", "rating", "recall" (shaded by decile), "mean", "latency", "cost", "percent", "versus"
    interval: str = ""  # the prefix of its `<prefix>_low`/`_high` fields, for "± half its 95% interval"
    n: str = ""  # the field holding its n
    title: str = ""  # what the card's header says on hover

    def headers(self) -> list[tuple[str, str]]:
        """(header, field) of this column in the `evals` payload: the mean, then its interval and n where it has them."""
        out = [(self.header, self.field)]
        if self.interval:
            out += [(f"{self.header} 95% low", f"{self.interval}_low"), (f"{self.header} 95% high", f"{self.interval}_high")]
        if self.n:
            out.append((f"{self.header} n", self.n))
        return out


COLUMNS = (
    Column("Model", "key", "model"),
    Column("Paired score", "rating", "rating",
           title="the order: each row's score fitted to its paired differences from the other rows on the photos both "
                 "answered; the row's own mean when every row answered the same photos"),
    Column("Recall (all photos, exact)", "avg_recall_all", "recall", "avg_recall_all", "n_with_truth",
           "ground-truth tags found, over every photo with ground truth, a failed call as 0"),
    Column("Precision (all photos)", "avg_precision_all", "mean", "avg_precision_all", "n_with_truth",
           "predicted tags in the ground truth, a failed call as 0"),
    Column("F1 (all photos)", "avg_f1_all", "mean", "avg_f1_all", "n_with_truth",
           "harmonic mean of recall and precision per photo, a failed call as 0"),
    Column("vs best", "vs_best", "versus", "vs_best", "n_paired",
           "paired difference from the best row in the sort metric, on the photos both answered"),
    Column("Error %", "error_pct", "percent", title="calls that failed after retries"),
    Column("Avg Latency (ms)", "avg_latency_ms", "latency", title="per answer, as measured when it was made (a rerun served from the cache keeps it)"),
    Column("Cost (USD)", "cost_usd", "cost"),
    Column("Avg Recall (exact)", "avg_recall", "", "avg_recall", "n_scored"),
    Column("Precision", "avg_precision", "", "avg_precision"),
    Column("F1", "avg_f1", "", "avg_f1"),
    Column("Avg Recall (lenient)", "avg_recall_lenient", "", "avg_recall_lenient", "n_scored_lenient"),
    Column("Recall (all photos, lenient)", "avg_recall_all_lenient", "", "avg_recall_all_lenient", "n_with_truth_lenient"),
    Column("Tags/photo", "tags_per_photo"),
    Column("Valid %", "valid_pct"),
    Column("p50 Latency (ms)", "p50_latency_ms"),
    Column("p95 Latency (ms)", "p95_latency_ms"),
    Column("Tied with best", "tied_with_best"),
    Column("Behind best", "behind_best"),
)
"""The ranking's figures before the per-batch ones, in order. The headline is over every photo with ground truth, a
failed call counting 0 (a model that fails on hard photos cannot look better for it); Avg Recall/Precision/F1 are
over valid answers only (scikit-learn's average='samples'); each recall names its matching rule (vocabulary.RULES).
Intervals are Student-t 95% over photos, none below metrics.MIN_INTERVAL_N photos (docs/metrics.md)."""
PAYLOAD_COLUMNS = [pair for column in COLUMNS for pair in column.headers()]
FIXED_HEADERS = [header for header, _ in PAYLOAD_COLUMNS]
_OLD_HEADERS = {"Avg Recall": "avg_recall", "Recall (all photos)": "avg_recall_all", "Recall vs best": "vs_best"}
"""Headers older `evals` tables hold: the recalls before they named their matching rule, the old comparison."""

_ISO_DATE = re.compile(r"^\d{4}-(\d{2})-(\d{2})")
NEWEST_BATCHES = 12
"""Batch columns of the ranking shown one per batch, newest first; older batches are rolled up."""
WEEKLY_ROLLUPS = 4
"""ISO weeks before the newest batches shown one column per week; older batches get one column per month."""


class EvalEvent(ModelResult, total=False):
    """One model's result on one photo, with what the dashboard needs to show it on its own."""

    model_key: str  # the row: "provider:model | variant@hash" (row_key), "provider:model" for results without a variant
    batch_id: str  # UpdatePhotos run id that delivered the photo
    batch_date: str  # ISO date of that batch
    ground_truth_tags: list[str]
    image_url: str
    photo_name: str  # what the user calls the photo: its path inside the folder, else its id
    source_flow: str  # the flow that prompted the model, e.g. "PromptModels"
    source_run: str  # that flow's run id


def model_key(provider: str, model: str) -> str:
    return f"{provider}:{model}"


ROW_SEP = " | "


def row_key(model: str, prompt_variant: Optional[str]) -> str:
    """A ranking row, one per (model, prompt): `openai:gpt-4o-mini | default@3f2a1c`; the model key alone without a variant."""
    return f"{model}{ROW_SEP}{prompt_variant}" if prompt_variant else model


def split_row_key(key: str) -> tuple[str, str]:
    """(model key, prompt variant or "") of a row key."""
    model, _, variant = key.partition(ROW_SEP)
    return model, variant


def result_row_key(result: ModelResult) -> str:
    """The ranking row of a result: its model and prompt variant, or its model alone when the result has no variant
    (the prompt fan-out labels none for a model that reads no prompt, such as the offline baselines)."""
    return row_key(model_key(result.get("provider", ""), result.get("model", "")), result.get("prompt_variant"))


def make_event(
    result: ModelResult,
    photo: Photo,
    *,
    batch_id: str,
    batch_date: str,
    source_flow: str,
    source_run: str,
) -> EvalEvent:
    """The event for `result` on `photo`, with the batch and the prompt run it came from."""
    event = EvalEvent(**result)  # type: ignore[typeddict-item]
    event.update(
        model_key=result_row_key(result),
        batch_id=str(batch_id),
        batch_date=batch_date,
        ground_truth_tags=list(photo.get("ground_truth_tags") or []),
        image_url=photo.get("image_url", ""),
        photo_name=photo_name(photo) or str(result.get("photo_id", "")),
        source_flow=source_flow,
        source_run=str(source_run),
    )
    event.setdefault("photo_id", photo.get("id", ""))
    image = photo_image(photo)
    if isinstance(image, LocalImage):
        event["image_root"] = image.root  # the folder the dashboard may read its thumbnail from
    return event


def _event_key(event: Mapping[str, Any]) -> tuple[str, str, str]:
    return (event["model_key"], str(event["photo_id"]), str(event.get("batch_id", "")))


def fold_events(accumulated: Iterable[EvalEvent], new: Iterable[EvalEvent]) -> list[EvalEvent]:
    """`accumulated` followed by `new`, keeping only the latest event per (model, photo, batch).

    A rerun of a prompt flow over the same batch replaces the earlier answers instead of counting
    the photos twice. Order is kept: events are in the order they were logged, oldest first.
    """
    latest: dict[tuple[str, str, str], EvalEvent] = {}
    for event in [*accumulated, *new]:
        key = _event_key(event)
        latest.pop(key, None)
        latest[key] = event
    return list(latest.values())


def _batch_sort_key(batch_id: str, batch_date: str) -> tuple:
    return (batch_date, (0, int(batch_id), "") if batch_id.isdigit() else (1, 0, batch_id))


def ordered_batches(dates: Mapping[str, str]) -> list[tuple[str, str]]:
    """(batch_id, batch_date) pairs of `dates`, oldest first: by date, then by id (numerically where it is a number)."""
    return sorted(dates.items(), key=lambda item: _batch_sort_key(*item))


def batch_label(batch_id: str, batch_date: str) -> str:
    """`<short batch id> (<MM-DD>)`: the last 6 characters of the id and the batch's day."""
    short = str(batch_id)[-6:] or "?"
    match = _ISO_DATE.match(batch_date or "")
    return f"{short} ({match.group(1)}-{match.group(2)})" if match else short


class _BatchInfo(TypedDict):
    batch_id: str  # a batch's id, or a roll-up's key: "week:2024-W19", "month:2024-05", "undated"
    batch_date: str  # the (first) batch's date
    label: str  # the column header: batch_label(batch_id, batch_date), or "week 2024-W19" for a roll-up


class BatchInfo(_BatchInfo, total=False):
    batches: int  # batches in the column: 1, or more for a roll-up (a ranking stored before roll-ups lacks it)


def batches_of(events: Iterable[EvalEvent]) -> list[BatchInfo]:
    """The batches in `events` as {"batch_id", "batch_date", "label"}, ordered by date then id."""
    dates: dict[str, str] = {}
    for event in events:
        dates.setdefault(str(event.get("batch_id", "")), event.get("batch_date") or "")
    ordered = sorted(dates.items(), key=lambda item: _batch_sort_key(*item))
    return [BatchInfo(batch_id=b, batch_date=d, label=batch_label(b, d)) for b, d in ordered]


@dataclass(frozen=True)
class BatchSummary:
    """One model on one batch: its recall over the batch's photos with ground truth (a failed call as 0), how many
    such photos (n) there were, and the 95% interval of that mean (none below metrics.MIN_INTERVAL_N photos)."""

    avg_recall: Optional[float]
    n: int
    low: Optional[float] = None
    high: Optional[float] = None

    @classmethod
    def of(cls, summary: Summary, interval: Optional[Interval] = None) -> BatchSummary:
        """From metrics.summarise and metrics.recall_interval of the batch's results (a roll-up has no interval)."""
        return cls(avg_recall=summary["avg_recall_all"], n=summary["with_truth"],
                   low=interval.low if interval else None, high=interval.high if interval else None)

    @property
    def cell(self) -> str:
        """The `avg-recall (n)` cell of the `evals` payload."""
        return f"{self.avg_recall:.1f} ({self.n})" if self.avg_recall is not None else f"n/a ({self.n})"


class ErrorClass(TypedDict):
    count: int
    example: str  # one of its messages (the result's `raw`, secrets already scrubbed), cut to EXAMPLE_CHARS


EXAMPLE_CHARS = 240


class SkippedModel(TypedDict):
    """A configured model that its latest prompt run skipped (no key, no history yet) or that broke its error budget."""

    reason: str
    run: str  # pathspec of that prompt run


@dataclass
class RankingRow:
    """One (model, prompt variant) line of the ranking, over all batches, and its summary per batch.

    A new figure is a field here with a default (rankings stored before it then still load) and,
    to show it in the `evals` payload, an entry in COLUMNS.
    """

    model: str  # "provider:model"
    avg_latency_ms: Optional[float] = None
    avg_recall: Optional[float] = None
    avg_recall_all: Optional[float] = None
    error_pct: float = 0.0
    cost_usd: float = 0.0
    batches: dict[str, BatchSummary] = field(default_factory=dict)  # batch_id -> summary; only the batches it saw
    avg_recall_lenient: Optional[float] = None  # the two recalls above under the lenient matching rule
    avg_recall_all_lenient: Optional[float] = None
    prompt_variant: str = ""  # "default@3f2a1c"; "" for results stored before prompt variants
    avg_recall_low: Optional[float] = None
    avg_recall_high: Optional[float] = None
    n_scored: int = 0  # valid answers on photos with ground truth: the n of Avg Recall, Precision and F1
    avg_recall_all_low: Optional[float] = None
    avg_recall_all_high: Optional[float] = None
    n_with_truth: int = 0  # photos with ground truth: the n of Recall (all photos)
    avg_precision: Optional[float] = None
    avg_precision_low: Optional[float] = None
    avg_precision_high: Optional[float] = None
    avg_f1: Optional[float] = None
    avg_f1_low: Optional[float] = None
    avg_f1_high: Optional[float] = None
    tags_per_photo: Optional[float] = None
    valid_pct: float = 0.0
    p50_latency_ms: Optional[float] = None
    p95_latency_ms: Optional[float] = None
    rating: Optional[float] = None  # the paired rating the rows are ordered by (compare.paired_order), in the sort metric's units
    vs_best: Optional[float] = None  # mean of (this row - best row) in the sort metric on the photos both answered
    vs_best_low: Optional[float] = None  # its paired 95% t-interval (none below metrics.MIN_INTERVAL_N shared photos)
    vs_best_high: Optional[float] = None
    n_paired: int = 0
    tied_with_best: bool = False  # compared with the best, and Holm's procedure finds no difference
    behind_best: bool = False  # compared with the best, and behind it beyond noise (Holm over every pair compared)
    avg_precision_all: Optional[float] = None  # precision and F1 over photos with ground truth, a failed call as 0
    avg_precision_all_low: Optional[float] = None
    avg_precision_all_high: Optional[float] = None
    avg_f1_all: Optional[float] = None
    avg_f1_all_low: Optional[float] = None
    avg_f1_all_high: Optional[float] = None
    errors: dict[str, ErrorClass] = field(default_factory=dict)  # error class -> count and one example
    avg_recall_lenient_low: Optional[float] = None  # the lenient recalls' intervals, as the exact ones'
    avg_recall_lenient_high: Optional[float] = None
    n_scored_lenient: int = 0
    avg_recall_all_lenient_low: Optional[float] = None
    avg_recall_all_lenient_high: Optional[float] = None
    n_with_truth_lenient: int = 0

    @property
    def key(self) -> str:
        """The row's row_key: `provider:model | variant@hash`, the model key alone without a variant."""
        return row_key(self.model, self.prompt_variant)

    @classmethod
    def of(cls, key: str, summary: Summary, batches: dict[str, BatchSummary]) -> RankingRow:
        """The row of `key` (a row_key) from its metrics.summarise over all batches."""
        model, variant = split_row_key(key)
        return cls(model=model, prompt_variant=variant, avg_latency_ms=summary["avg_latency_ms"], avg_recall=summary["avg_recall"],
                   avg_recall_all=summary["avg_recall_all"], error_pct=summary["error_pct"], cost_usd=summary["cost_usd"],
                   batches=batches, avg_recall_lenient=summary["avg_recall_lenient"],
                   avg_recall_all_lenient=summary["avg_recall_all_lenient"], avg_precision=summary["avg_precision"],
                   avg_f1=summary["avg_f1"], valid_pct=summary["valid_pct"],
                   avg_precision_all=summary["avg_precision_all"], avg_f1_all=summary["avg_f1_all"])

    def add_photo_figures(self, photos: Mapping[str, ScoredPhoto]) -> None:
        """The intervals and latency percentiles of this row, from its answers photo by photo."""
        figures = photo_figures(photos)
        self.avg_recall_low, self.avg_recall_high = figures.recall.low, figures.recall.high
        self.n_scored = figures.recall.n
        self.avg_recall_all_low, self.avg_recall_all_high = figures.recall_all.low, figures.recall_all.high
        self.n_with_truth = figures.recall_all.n
        self.avg_precision_low, self.avg_precision_high = figures.precision.low, figures.precision.high
        self.avg_f1_low, self.avg_f1_high = figures.f1.low, figures.f1.high
        self.avg_precision_all_low, self.avg_precision_all_high = figures.precision_all.low, figures.precision_all.high
        self.avg_f1_all_low, self.avg_f1_all_high = figures.f1_all.low, figures.f1_all.high
        lenient, lenient_all = figures.recall_lenient, figures.recall_all_lenient
        self.avg_recall_lenient_low, self.avg_recall_lenient_high, self.n_scored_lenient = lenient.low, lenient.high, lenient.n
        self.avg_recall_all_lenient_low, self.avg_recall_all_lenient_high = lenient_all.low, lenient_all.high
        self.n_with_truth_lenient = lenient_all.n
        self.p50_latency_ms, self.p95_latency_ms = figures.p50_latency_ms, figures.p95_latency_ms

    def compare_with_best(self, difference: Interval, behind: bool) -> None:
        """Store the paired difference from the best row and Holm's verdict on it (`behind`)."""
        self.vs_best = difference.mean
        self.vs_best_low, self.vs_best_high, self.n_paired = difference.low, difference.high, difference.n
        self.behind_best = behind
        self.tied_with_best = difference.p is not None and not behind

    def own_mean(self, sort_by: str) -> Optional[float]:
        """The row's mean of `sort_by` (metrics.SORT_METRICS) over all its photos with ground truth, a failed call as 0."""
        return self.avg_f1_all if sort_by == "f1" else self.avg_recall_all

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankingRow:
        """A row of `Ranking.to_dict`; fields it does not know are left out, fields it lacks get their defaults."""
        known = {f.name for f in fields(cls)}
        row = cls(**{k: v for k, v in data.items() if k in known})
        row.batches = {b: BatchSummary(**s) for b, s in row.batches.items()}
        return row

    @classmethod
    def from_cells(cls, cells: Mapping[str, Any]) -> RankingRow:
        """A row from COLUMNS' fields, its "key" split into model and prompt variant."""
        cells = dict(cells)
        model, variant = split_row_key(str(cells.pop("key", "")))
        return cls(model=model, prompt_variant=variant, **cells)


@dataclass
class Ranking:
    """The (model, prompt variant) rows best first, and the batches they were scored on, oldest first."""

    rows: list[RankingRow] = field(default_factory=list)
    batches: list[BatchInfo] = field(default_factory=list)  # the batch columns: the newest batches and roll-ups
    photos: int = 0  # photos scored, over all batches
    calls: int = 0  # model calls (results), over all batches and models
    errored_calls: int = 0
    per_tag: Optional[PerTag] = None  # metrics.per_tag: recall on the frequent tags, over-predicted tags
    sort_by: str = "recall"  # metrics.SORT_METRICS: the rows are ordered by their paired rating of it
    comparisons: int = 0  # pairwise comparisons made (Holm's family): every pair of rows with enough shared photos
    skipped: dict[str, SkippedModel] = field(default_factory=dict)  # model key -> why its latest run skipped it

    @property
    def best(self) -> Optional[RankingRow]:
        """The top row, or None when no model has a valid answer yet."""
        return self.rows[0] if self.rows and self.rows[0].avg_recall is not None else None

    @property
    def tied_with_best(self) -> list[RankingRow]:
        """The rows whose paired difference from the best one is not distinguishable from 0."""
        return [row for row in self.rows[1:] if row.tied_with_best]

    @property
    def behind_best(self) -> list[RankingRow]:
        """The rows behind the best beyond noise (Holm-corrected)."""
        return [row for row in self.rows[1:] if row.behind_best]

    def table(self) -> dict[str, list]:
        """The `evals` payload of DESIGN.md: {"headers", "rows"}, row cells following `headers`: the COLUMNS,
        then one `avg-recall (n)` string per batch ("" where the model did not see that batch)."""
        rows = [[getattr(row, name) for _, name in PAYLOAD_COLUMNS]
                + [row.batches[b["batch_id"]].cell if b["batch_id"] in row.batches else "" for b in self.batches]
                for row in self.rows]
        return {"headers": FIXED_HEADERS + [b["label"] for b in self.batches], "rows": rows}

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, for an artifact any Metaflow client reads without this package."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ranking:
        return cls(rows=[RankingRow.from_dict(row) for row in data.get("rows") or []],
                   batches=[BatchInfo(**b) for b in data.get("batches") or []],
                   per_tag=data.get("per_tag"), skipped=dict(data.get("skipped") or {}),
                   **{k: data[k] for k in ("photos", "calls", "errored_calls") if k in data})

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Ranking:
        """The COLUMNS of an `evals` payload, read by header, for an EvaluationFlow run stored before the
        `ranking` artifact existed (recall headers then named no rule); its per-batch cells are not read back."""
        names = {**dict(PAYLOAD_COLUMNS), **_OLD_HEADERS}
        headers = table.get("headers") or []
        return cls(rows=[RankingRow.from_cells({names[h]: v for h, v in zip(headers, row) if h in names})
                         for row in table.get("rows") or []])


def _rank_key(item: tuple[str, Summary]) -> tuple:
    """Before the paired order (add_photo_figures): recall over all photos, then the row key, so ties never flip."""
    key, s = item
    return (s["avg_recall_all"] is None, -round(s["avg_recall_all"] or 0.0, 9), key)


def batch_dates(events: Iterable[EvalEvent]) -> dict[str, str]:
    """batch_id -> batch_date of the batches in `events`."""
    dates: dict[str, str] = {}
    for event in events:
        dates.setdefault(str(event.get("batch_id", "")), event.get("batch_date") or "")
    return dates


def _by_row_and_batch(events: Iterable[EvalEvent]) -> dict[tuple[str, str], list[EvalEvent]]:
    grouped: dict[tuple[str, str], list[EvalEvent]] = defaultdict(list)
    for event in fold_events([], events):
        grouped[(event["model_key"], str(event.get("batch_id", "")))].append(event)
    return grouped


def batch_totals(events: Iterable[EvalEvent]) -> dict[tuple[str, str], Totals]:
    """metrics.Totals per (row key, batch id) of the deduplicated events: what EvaluationFlow keeps of old batches."""
    return {key: Totals.of(group) for key, group in _by_row_and_batch(events).items()}


def batch_intervals(events: Iterable[EvalEvent]) -> dict[tuple[str, str], Interval]:
    """The Avg Recall interval per (row key, batch id), computed with the batch's Totals while its events are
    at hand (intervals do not add up, so the state keeps them beside the Totals)."""
    return {key: recall_interval(group) for key, group in _by_row_and_batch(events).items()}


def rollup_key(batch_date: str, weekly: bool = False) -> str:
    """The key of the week's or the month's column a batch of `batch_date` rolls up into: "week:2024-W19",
    "month:2024-05", or "undated"."""
    match = _ISO_DATE.match(batch_date or "")
    if not match:
        return "undated"
    day = dt.date.fromisoformat(batch_date[:10])
    if weekly:
        year, week, _ = day.isocalendar()
        return f"week:{year}-W{week:02d}"
    return f"month:{day:%Y-%m}"


def is_closed_column(column_key: str) -> bool:
    """Whether a batch in this column stays in it for good: a month's or the undated column (a batch only
    moves on, from its own column to a week's to a month's, as newer batches come)."""
    return column_key.startswith("month:") or column_key == "undated"


def _rollup_label(column_key: str) -> str:
    """A roll-up column's header: "week 2024-W19", "month 2024-05", "undated"."""
    return column_key.replace(":", " ", 1)


@dataclass
class ClosedColumn:
    """A closed column (is_closed_column) summed up: what EvaluationFlow keeps of a month in its state once it no
    longer keeps the month's batches one by one (evalstate archives them)."""

    key: str  # "month:2024-05" or "undated"
    first_date: str  # the date of its oldest batch
    batches: int
    photos: int  # photos over its batches (each batch's most any row answered, as rank_totals counts)
    totals: dict[str, Totals]  # row key -> the Totals of all its batches

    def __add__(self, other: ClosedColumn) -> ClosedColumn:
        """The column of both sets of batches (disjoint, of the same key)."""
        totals = defaultdict(Totals, self.totals)
        for row, t in other.totals.items():
            totals[row] += t
        return ClosedColumn(key=self.key, first_date=min(filter(None, (self.first_date, other.first_date)), default=""),
                            batches=self.batches + other.batches, photos=self.photos + other.photos, totals=dict(totals))


def closed_column(key: str, totals: Mapping[tuple[str, str], Totals], dates: Mapping[str, str]) -> ClosedColumn:
    """The ClosedColumn `key` of these Totals per (row key, batch id) and their batches' `dates`."""
    by_row: dict[str, Totals] = defaultdict(Totals)
    photos: dict[str, int] = defaultdict(int)
    for (row, batch_id), t in totals.items():
        by_row[row] += t
        photos[batch_id] = max(photos[batch_id], t.photos)
    ordered = ordered_batches(dates)
    return ClosedColumn(key=key, first_date=ordered[0][1] if ordered else "", batches=len(ordered),
                        photos=sum(photos.values()), totals=dict(by_row))


def columns(dates: Mapping[str, str], newest: int = NEWEST_BATCHES,
            weeks: int = WEEKLY_ROLLUPS) -> tuple[list[BatchInfo], dict[str, str]]:
    """The ranking's batch columns, oldest first, and the column key of every batch.

    The `newest` batches get a column each; of the older ones, those in the `weeks` newest ISO weeks
    get a column per week and the rest a column per month, so a year of hourly batches is about
    thirty columns, not 8,760.
    """
    ordered = ordered_batches(dates)
    older, recent = ordered[:max(0, len(ordered) - newest)], ordered[max(0, len(ordered) - newest):]
    weekly = {rollup_key(d, weekly=True) for _, d in older}
    weekly = set(sorted(weekly - {"undated"})[-weeks:]) if weeks else set()
    cols: dict[str, BatchInfo] = {}
    column_of: dict[str, str] = {}
    for batch_id, batch_date in older:
        key = rollup_key(batch_date, weekly=True)
        if key not in weekly:
            key = rollup_key(batch_date)
        col = cols.setdefault(key, BatchInfo(batch_id=key, batch_date=batch_date, label=_rollup_label(key), batches=0))
        col["batches"] += 1
        column_of[batch_id] = key
    for batch_id, batch_date in recent:
        cols[batch_id] = BatchInfo(batch_id=batch_id, batch_date=batch_date, label=batch_label(batch_id, batch_date),
                                   batches=1)
        column_of[batch_id] = batch_id
    return list(cols.values()), column_of


def photo_ref(batch_id: Any, photo_id: Any) -> str:
    """`batch/photo`: one answer's photo, as fold_events tells answers apart, for pairing rows photo by photo."""
    return f"{batch_id}/{photo_id}"


def photo_scores(events: Iterable[EvalEvent]) -> dict[str, dict[str, ScoredPhoto]]:
    """row key -> photo_ref -> ScoredPhoto: each (model, prompt) row's answers photo by photo, which the
    intervals, the paired comparison and the per-tag view read (the latest event wins for a photo answered twice)."""
    scores: dict[str, dict[str, ScoredPhoto]] = defaultdict(dict)
    for event in events:
        scores[event["model_key"]][photo_ref(event.get("batch_id", ""), event["photo_id"])] = ScoredPhoto(
            recall=event.get("recall"), recall_lenient=event.get("recall_lenient"), precision=event.get("precision"),
            f1=event.get("f1"), error=event.get("error"),
            latency_ms=event.get("latency_ms"),
            tags=[] if event.get("error") else normalise_tags(event.get("tags") or []),
            truth=normalise_tags(event.get("ground_truth_tags") or []))
    return dict(scores)


def error_examples(events: Iterable[EvalEvent]) -> dict[str, dict[str, str]]:
    """row key -> error class -> the latest message of that class in `events` (the result's `raw`, cut)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for event in events:
        if event.get("error") and event.get("raw"):
            out[event["model_key"]][event["error"]] = event["raw"][:EXAMPLE_CHARS]
    return dict(out)


def add_photo_figures(ranking: Ranking, scores: Mapping[str, Mapping[str, ScoredPhoto]],
                      tag_scores: Optional[Mapping[str, Mapping[str, ScoredPhoto]]] = None,
                      sort_by: str = "recall") -> Ranking:
    """`ranking` with what needs answers photo by photo (`scores` by row key: all of them, or EvalState's uniform
    sample of photos): intervals, latency percentiles, the paired order by `sort_by` (compare.paired_order), each
    row's paired comparison with the best row and Holm's verdict, and the per-tag view per row, from `tag_scores`
    where `scores` hold no tags."""
    if sort_by not in SORT_METRICS:
        raise ValueError(f"unknown sort metric {sort_by!r}; choose one of {', '.join(SORT_METRICS)}")
    for row in ranking.rows:
        row.add_photo_figures(scores.get(row.key, {}))
    by_key = {row.key: row for row in ranking.rows}
    paired = paired_order({key: all_photo_scores(photos, sort_by) for key, photos in scores.items() if key in by_key},
                          {key: row.own_mean(sort_by) for key, row in by_key.items()})
    ranking.rows = [by_key[key] for key in paired.order]
    for row in ranking.rows:
        row.rating = paired.rating[row.key]
        if row.key in paired.versus_best:
            row.compare_with_best(paired.versus_best[row.key], row.key in paired.behind)
    ranking.sort_by, ranking.comparisons = sort_by, paired.comparisons
    ranking.per_tag = per_tag(scores if tag_scores is None else tag_scores)
    return ranking


def rank_totals(totals: Mapping[tuple[str, str], Totals], dates: Mapping[str, str], *,
                intervals: Optional[Mapping[tuple[str, str], Interval]] = None,
                examples: Optional[Mapping[str, Mapping[str, str]]] = None,
                skipped: Optional[Mapping[str, SkippedModel]] = None,
                closed: Iterable[ClosedColumn] = (),
                newest: int = NEWEST_BATCHES, weeks: int = WEEKLY_ROLLUPS) -> Ranking:
    """One row per (model, prompt variant) over all batches, best recall over all photos first, from the Totals
    per (row key, batch):
    the overall figures and each column's (a batch or a roll-up) are sums of those Totals, so they are
    exactly the figures of all the events behind them. A single batch's cell shows its interval from
    `intervals` (batch_intervals; a roll-up has none), each row's error classes carry their example
    message from `examples` (error_examples), and `skipped` lists the configured models (by model key)
    not run. The `closed` columns (months whose batches the state keeps summed up) come first, merged with a
    live column of the same key. What needs answers photo by photo comes after, from add_photo_figures."""
    live, column_of = columns(dates, newest, weeks)
    overall: dict[str, Totals] = defaultdict(Totals)
    per_column: dict[str, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    photos_per_batch: dict[str, int] = defaultdict(int)
    for (key, batch_id), t in totals.items():
        overall[key] += t
        per_column[key][column_of[batch_id]] += t
        photos_per_batch[batch_id] = max(photos_per_batch[batch_id], t.photos)
    closed = sorted(closed, key=lambda c: (c.first_date, c.key))
    merged: dict[str, BatchInfo] = {}
    for column in closed:
        merged[column.key] = BatchInfo(batch_id=column.key, batch_date=column.first_date,
                                       label=_rollup_label(column.key), batches=column.batches)
        for key, t in column.totals.items():
            overall[key] += t
            per_column[key][column.key] += t
    for col in live:
        if col["batch_id"] in merged:
            first = merged[col["batch_id"]]
            merged[col["batch_id"]] = BatchInfo(batch_id=first["batch_id"], batch_date=min(first["batch_date"], col["batch_date"]),
                                                label=first["label"], batches=first["batches"] + col["batches"])
        else:
            merged[col["batch_id"]] = col
    cols = list(merged.values())
    ranked = sorted(((key, t.summary()) for key, t in overall.items()), key=_rank_key)
    intervals, examples = intervals or {}, examples or {}
    rows = []
    for key, summary in ranked:
        row = RankingRow.of(key, summary, {c["batch_id"]: BatchSummary.of(per_column[key][c["batch_id"]].summary(),
                                                                          intervals.get((key, c["batch_id"])))
                                           for c in cols if c["batch_id"] in per_column[key]})
        row.tags_per_photo = overall[key].tags_per_photo
        row.errors = {error: ErrorClass(count=count, example=examples.get(key, {}).get(error, ""))
                      for error, count in sorted(overall[key].error_classes.items())}
        rows.append(row)
    return Ranking(rows=rows, batches=cols, photos=sum(photos_per_batch.values()) + sum(c.photos for c in closed),
                   calls=sum(t.photos for t in overall.values()), errored_calls=sum(t.errors for t in overall.values()),
                   skipped=dict(skipped or {}))


def rank_models(events: Iterable[EvalEvent], skipped: Optional[Mapping[str, SkippedModel]] = None,
                sort_by: str = "recall", **limits: int) -> Ranking:
    """One row per (model, prompt variant) over all batches in the paired order of `sort_by`, with its summary on
    each batch column, the intervals of its means, the paired comparison with the best row and the per-tag
    view (rank_totals and add_photo_figures of all `events`; `limits` are rank_totals' `newest` and `weeks`)."""
    events = fold_events([], events)
    ranking = rank_totals(batch_totals(events), batch_dates(events), intervals=batch_intervals(events),
                          examples=error_examples(events), skipped=skipped, **limits)
    return add_photo_figures(ranking, photo_scores(events), sort_by=sort_by)


def events_from_models_eval(models_eval: Mapping[str, Any], source_flow: str, source_run: str) -> list[EvalEvent]:
    """The events of a prompt flow's `models_eval` artifact: one per stored result, in stored order."""
    photos = models_eval.get("photos") or {}
    events = []
    for results in (models_eval.get("results") or {}).values():
        for result in results:
            photo = photos.get(result.get("photo_id"), {"id": result.get("photo_id", "")})
            events.append(
                make_event(
                    result,
                    photo,
                    batch_id=models_eval.get("batch_id", ""),
                    batch_date=models_eval.get("batch_date", ""),
                    source_flow=source_flow,
                    source_run=source_run,
                )
            )
    return events


class _Run(Protocol):
    pathspec: str
    id: str
    data: Any


class PromptRun(NamedTuple):
    pathspec: str
    events: list[EvalEvent]
    skipped: dict[str, str]  # model key -> reason, the run's `skipped_models` ({} for runs stored before it)


def read_runs(runs: Iterable[_Run]) -> Iterator[PromptRun]:
    """Each prompt run's events, rebuilt from its `models_eval` artifact, and the models it skipped."""
    for run in runs:
        flow_name = run.pathspec.split("/", 1)[0]
        skipped = dict(run.data.skipped_models) if "skipped_models" in run.data else {}
        yield PromptRun(run.pathspec, events_from_models_eval(run.data.models_eval, flow_name, run.id), skipped)


def budget_failures(runs: Iterable[Any]) -> Iterator[PromptRun]:
    """Prompt runs that stored their results and then failed the error budget: their answers are not ranked
    (the run failed), and each model over the budget is listed as skipped with the budget's own words.
    A run that failed before its `join` stored `budget_errors` lists nothing."""
    for run in runs:
        try:
            problems = dict(run["join"].task.data.budget_errors)
        except (KeyError, AttributeError):
            problems = {}
        reasons = {split_row_key(key)[0]: f"broke the error budget: {problem['message']}" for key, problem in problems.items()}
        yield PromptRun(run.pathspec, [], reasons)


def fold_skipped(skipped: Mapping[str, SkippedModel], run: PromptRun) -> dict[str, SkippedModel]:
    """`skipped` after `run` (runs folded oldest first): a model it skipped gets the run's reason, a model it
    prompted is no longer skipped, so each model keeps the word of its latest run."""
    prompted = {split_row_key(event["model_key"])[0] for event in run.events}
    out = {model: entry for model, entry in skipped.items() if model not in prompted}
    out.update({model: SkippedModel(reason=reason, run=run.pathspec) for model, reason in run.skipped.items()})
    return out
