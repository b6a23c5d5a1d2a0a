"""The evals event log: one event per model answer on one photo, read from the prompt flows' artifacts.

Prompt flows store one result per photo and row in their `models_eval` artifact; EvaluationFlow reads that
artifact of each prompt run it has not folded before through the Metaflow client and turns the results into events
(scoring/table.py sums them, scoring/ranking.py ranks). Artifacts are the one channel: task logs are truncated past
Metaflow's --max-log-size and would lose events silently. This module also names the rows (RowKey) and the
batch columns of the ranking (`columns`).
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Protocol, TypedDict

from phototagger.http import LocalImage
from phototagger.images import photo_image
from phototagger.records import ModelResult, Photo, photo_name

_ISO_DATE = re.compile(r"^\d{4}-(\d{2})-(\d{2})")
NEWEST_BATCHES = 12
"""Batch columns of the ranking shown one per batch, newest first; older batches are rolled up."""
WEEKLY_ROLLUPS = 4
"""ISO weeks before the newest batches shown one column per week; older batches get one column per month."""

class EvalEvent(ModelResult, total=False):
    """One model's result on one photo, with what the dashboard needs to show it on its own."""

    model_key: str  # the text of its RowKey: "provider:model | variant@hash", "provider:model" without a variant
    batch_id: str  # UpdatePhotos run id that delivered the photo
    batch_date: str  # ISO date of that batch
    ground_truth_tags: list[str]
    image_url: str
    photo_name: str  # what the user calls the photo: its path inside the folder, else its id
    source_flow: str  # the flow that prompted the model, e.g. "PromptModels"
    source_run: str  # that flow's run id



def model_key(provider: str, model: str) -> str:
    return f"{provider}:{model}"


@dataclass(frozen=True, order=True)
class RowKey:
    """A ranking row: a model and the prompt variant it answered, "" for a model that reads no prompt (the offline
    baselines). Its text, `openai:gpt-4o-mini | default@3f2a1c`, is how artifacts and the card name it."""

    model: str  # "provider:model"
    variant: str = ""  # "default@3f2a1c"

    SEPARATOR = " | "

    def __str__(self) -> str:
        return f"{self.model}{self.SEPARATOR}{self.variant}" if self.variant else self.model

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> RowKey:
        """The row of a result: its model and prompt variant (the fan-out labels none for a model that reads no prompt)."""
        return cls(model_key(result.get("provider") or "", result.get("model") or ""), result.get("prompt_variant") or "")

    @classmethod
    def parse(cls, text: str) -> RowKey:
        """The row a stored text names (a `models_eval` results key, an `evals` Model cell)."""
        model, _, variant = text.partition(cls.SEPARATOR)
        return cls(model, variant)


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
        model_key=str(RowKey.of(result)),
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


def batch_sort_key(batch_id: str, batch_date: str) -> tuple:
    """Oldest first: by date, then by id (numerically where it is a number)."""
    return (batch_date, (0, int(batch_id), "") if batch_id.isdigit() else (1, 0, batch_id))


def ordered_batches(dates: Mapping[str, str]) -> list[tuple[str, str]]:
    """(batch_id, batch_date) pairs of `dates`, oldest first: by date, then by id (numerically where it is a number)."""
    return sorted(dates.items(), key=lambda item: batch_sort_key(*item))


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
    return [BatchInfo(batch_id=b, batch_date=d, label=batch_label(b, d)) for b, d in ordered_batches(dates)]


class SkippedModel(TypedDict):
    """A configured model that its latest prompt run skipped (no key, no history yet) or that broke its error budget."""

    reason: str
    run: str  # pathspec of that prompt run


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


def rollup_label(column_key: str) -> str:
    """A roll-up column's header: "week 2024-W19", "month 2024-05", "undated"."""
    return column_key.replace(":", " ", 1)


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
        col = cols.setdefault(key, BatchInfo(batch_id=key, batch_date=batch_date, label=rollup_label(key), batches=0))
        col["batches"] += 1
        column_of[batch_id] = key
    for batch_id, batch_date in recent:
        cols[batch_id] = BatchInfo(batch_id=batch_id, batch_date=batch_date, label=batch_label(batch_id, batch_date),
                                   batches=1)
        column_of[batch_id] = batch_id
    return list(cols.values()), column_of



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
        reasons = {RowKey.parse(key).model: f"broke the error budget: {problem['message']}" for key, problem in problems.items()}
        yield PromptRun(run.pathspec, [], reasons)


def fold_skipped(skipped: Mapping[str, SkippedModel], run: PromptRun) -> dict[str, SkippedModel]:
    """`skipped` after `run` (runs folded oldest first): a model it skipped gets the run's reason, a model it
    prompted is no longer skipped, so each model keeps the word of its latest run."""
    prompted = {RowKey.of(event).model for event in run.events}
    out = {model: entry for model, entry in skipped.items() if model not in prompted}
    out.update({model: SkippedModel(reason=reason, run=run.pathspec) for model, reason in run.skipped.items()})
    return out
