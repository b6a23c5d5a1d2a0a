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
from typing import Any, Iterable, Iterator, Mapping, Optional, Protocol, TypedDict

from phototagger.scoring.metrics import Summary, Totals
from phototagger.records import ModelResult, Photo

COLUMNS = (
    ("Model", "key"),
    ("Avg Latency (ms)", "avg_latency_ms"),
    ("Avg Recall (exact)", "avg_recall"),
    ("Recall (all photos, exact)", "avg_recall_all"),
    ("Error %", "error_pct"),
    ("Cost (USD)", "cost_usd"),
    ("Avg Recall (lenient)", "avg_recall_lenient"),
    ("Recall (all photos, lenient)", "avg_recall_all_lenient"),
)
"""The `evals` payload's columns before the per-batch ones, as (header, RankingRow field; "key" is the row's
row_key, its model and prompt variant). Avg Recall
is over valid answers; Recall (all photos) counts an errored photo as 0 (metrics.py). Each recall names
its matching rule (vocabulary.RULES): exact is the default, ranks the rows and fills the batch cells."""
FIXED_HEADERS = [header for header, _ in COLUMNS]
_OLD_HEADERS = {"Avg Recall": "avg_recall", "Recall (all photos)": "avg_recall_all"}
"""The two recall headers before they named their matching rule, as older `evals` tables hold them."""

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
        model_key=row_key(model_key(result.get("provider", ""), result.get("model", "")), result.get("prompt_variant")),
        batch_id=str(batch_id),
        batch_date=batch_date,
        ground_truth_tags=list(photo.get("ground_truth_tags") or []),
        image_url=photo.get("image_url", ""),
        source_flow=source_flow,
        source_run=str(source_run),
    )
    event.setdefault("photo_id", photo.get("id", ""))
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
    """One model on one batch: mean recall over its valid answers, and how many valid answers (n) there were."""

    avg_recall: Optional[float]
    n: int

    @classmethod
    def of(cls, summary: Summary) -> BatchSummary:
        return cls(avg_recall=summary["avg_recall"], n=summary["scored"])

    @property
    def cell(self) -> str:
        """The `avg-recall (n)` cell of the `evals` payload."""
        return f"{self.avg_recall:.1f} ({self.n})" if self.avg_recall is not None else f"n/a ({self.n})"


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
                   avg_recall_all_lenient=summary["avg_recall_all_lenient"])

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

    @property
    def best(self) -> Optional[RankingRow]:
        """The top row, or None when no model has a valid answer yet."""
        return self.rows[0] if self.rows and self.rows[0].avg_recall is not None else None

    def table(self) -> dict[str, list]:
        """The `evals` payload of DESIGN.md: {"headers", "rows"}, row cells following `headers`: the COLUMNS,
        then one `avg-recall (n)` string per batch ("" where the model did not see that batch)."""
        rows = [[getattr(row, name) for _, name in COLUMNS]
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
                   **{k: data[k] for k in ("photos", "calls", "errored_calls") if k in data})

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Ranking:
        """The COLUMNS of an `evals` payload, read by header, for an EvaluationFlow run stored before the
        `ranking` artifact existed (recall headers then named no rule); its per-batch cells are not read back."""
        names = {**dict(COLUMNS), **_OLD_HEADERS}
        headers = table.get("headers") or []
        return cls(rows=[RankingRow.from_cells({names[h]: v for h, v in zip(headers, row) if h in names})
                         for row in table.get("rows") or []])


def _rank_key(item: tuple[str, Summary]) -> tuple:
    key, s = item
    return (
        s["avg_recall"] is None,
        -(s["avg_recall"] or 0.0),
        -(s["avg_recall_all"] or 0.0),
        s["avg_latency_ms"] if s["avg_latency_ms"] is not None else float("inf"),
        key,
    )


def batch_dates(events: Iterable[EvalEvent]) -> dict[str, str]:
    """batch_id -> batch_date of the batches in `events`."""
    dates: dict[str, str] = {}
    for event in events:
        dates.setdefault(str(event.get("batch_id", "")), event.get("batch_date") or "")
    return dates


def batch_totals(events: Iterable[EvalEvent]) -> dict[tuple[str, str], Totals]:
    """metrics.Totals per (row key, batch id) of the deduplicated events: what EvaluationFlow keeps of old batches."""
    grouped: dict[tuple[str, str], list[EvalEvent]] = defaultdict(list)
    for event in fold_events([], events):
        grouped[(event["model_key"], str(event.get("batch_id", "")))].append(event)
    return {key: Totals.of(group) for key, group in grouped.items()}


def _rollup(batch_date: str, weekly: bool) -> tuple[str, str]:
    """(key, label) of the week or month column a batch of `batch_date` rolls up into."""
    match = _ISO_DATE.match(batch_date or "")
    if not match:
        return "undated", "undated"
    day = dt.date.fromisoformat(batch_date[:10])
    if weekly:
        year, week, _ = day.isocalendar()
        return f"week:{year}-W{week:02d}", f"week {year}-W{week:02d}"
    return f"month:{day:%Y-%m}", f"month {day:%Y-%m}"


def columns(dates: Mapping[str, str], newest: int = NEWEST_BATCHES,
            weeks: int = WEEKLY_ROLLUPS) -> tuple[list[BatchInfo], dict[str, str]]:
    """The ranking's batch columns, oldest first, and the column key of every batch.

    The `newest` batches get a column each; of the older ones, those in the `weeks` newest ISO weeks
    get a column per week and the rest a column per month, so a year of hourly batches is about
    thirty columns, not 8,760.
    """
    ordered = ordered_batches(dates)
    older, recent = ordered[:max(0, len(ordered) - newest)], ordered[max(0, len(ordered) - newest):]
    weekly = {_rollup(d, True)[0] for _, d in older}
    weekly = set(sorted(weekly - {"undated"})[-weeks:]) if weeks else set()
    cols: dict[str, BatchInfo] = {}
    column_of: dict[str, str] = {}
    for batch_id, batch_date in older:
        key, label = _rollup(batch_date, True)
        if key not in weekly:
            key, label = _rollup(batch_date, False)
        col = cols.setdefault(key, BatchInfo(batch_id=key, batch_date=batch_date, label=label, batches=0))
        col["batches"] += 1
        column_of[batch_id] = key
    for batch_id, batch_date in recent:
        cols[batch_id] = BatchInfo(batch_id=batch_id, batch_date=batch_date, label=batch_label(batch_id, batch_date),
                                   batches=1)
        column_of[batch_id] = batch_id
    return list(cols.values()), column_of


def rank_totals(totals: Mapping[tuple[str, str], Totals], dates: Mapping[str, str], *,
                newest: int = NEWEST_BATCHES, weeks: int = WEEKLY_ROLLUPS) -> Ranking:
    """One row per (model, prompt variant) over all batches, best Avg Recall (exact) first, from the Totals
    per (row key, batch):
    the overall figures and each column's (a batch or a roll-up) are sums of those Totals, so they are
    exactly the figures of all the events behind them."""
    cols, column_of = columns(dates, newest, weeks)
    overall: dict[str, Totals] = defaultdict(Totals)
    per_column: dict[str, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    photos_per_batch: dict[str, int] = defaultdict(int)
    for (key, batch_id), t in totals.items():
        overall[key] += t
        per_column[key][column_of[batch_id]] += t
        photos_per_batch[batch_id] = max(photos_per_batch[batch_id], t.photos)
    ranked = sorted(((key, t.summary()) for key, t in overall.items()), key=_rank_key)
    rows = [RankingRow.of(key, summary, {c["batch_id"]: BatchSummary.of(per_column[key][c["batch_id"]].summary())
                                         for c in cols if c["batch_id"] in per_column[key]})
            for key, summary in ranked]
    return Ranking(rows=rows, batches=cols, photos=sum(photos_per_batch.values()),
                   calls=sum(t.photos for t in overall.values()), errored_calls=sum(t.errors for t in overall.values()))


def rank_models(events: Iterable[EvalEvent], **limits: int) -> Ranking:
    """One row per (model, prompt variant) over all batches, best Avg Recall (exact) first, with its summary on
    each batch column (rank_totals of the events' batch_totals; `limits` are its `newest` and `weeks`)."""
    events = fold_events([], events)
    return rank_totals(batch_totals(events), batch_dates(events), **limits)


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


def read_runs(runs: Iterable[_Run]) -> Iterator[tuple[str, list[EvalEvent]]]:
    """(pathspec, events) for each prompt run, rebuilt from its `models_eval` artifact (one artifact read per run)."""
    for run in runs:
        flow_name = run.pathspec.split("/", 1)[0]
        yield run.pathspec, events_from_models_eval(run.data.models_eval, flow_name, run.id)
