"""The evals event log and the model ranking table.

Prompt flows store one result per photo and model in their `models_eval` artifact; EvaluationFlow
reads that artifact of each prompt run it has not folded before through the Metaflow client, turns
the results into events, folds them into the events it has gathered before, and builds the table
the dashboard shows. Artifacts are the one channel: task logs are truncated past Metaflow's
--max-log-size and would lose events silently. Reading only the new runs keeps the dashboard's cost
growing with the new runs, not with all history.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable, Iterator, Mapping, Optional, Protocol

from phototagger.scoring.metrics import Summary, summarise
from phototagger.records import ModelResult, Photo

FIXED_HEADERS = ["Model", "Avg Latency (ms)", "Avg Recall (exact)", "Recall (all photos, exact)", "Error %", "Cost (USD)",
                 "Avg Recall (lenient)", "Recall (all photos, lenient)"]
"""The columns before the per-batch ones. Avg Recall is over valid answers; Recall (all photos)
counts an errored photo as 0 (metrics.py). Each recall names its matching rule (vocabulary.RULES):
exact is the default, ranks the rows and fills the batch cells."""

_ISO_DATE = re.compile(r"^\d{4}-(\d{2})-(\d{2})")


class EvalEvent(ModelResult, total=False):
    """One model's result on one photo, with what the dashboard needs to show it on its own."""

    model_key: str  # "provider:model"
    batch_id: str  # UpdatePhotos run id that delivered the photo
    batch_date: str  # ISO date of that batch
    ground_truth_tags: list[str]
    image_url: str
    source_flow: str  # the flow that prompted the model, e.g. "PromptModels"
    source_run: str  # that flow's run id


def model_key(provider: str, model: str) -> str:
    return f"{provider}:{model}"


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
        model_key=model_key(result.get("provider", ""), result.get("model", "")),
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


def batch_label(batch_id: str, batch_date: str) -> str:
    """`<short batch id> (<MM-DD>)`: the last 6 characters of the id and the batch's day."""
    short = str(batch_id)[-6:] or "?"
    match = _ISO_DATE.match(batch_date or "")
    return f"{short} ({match.group(1)}-{match.group(2)})" if match else short


def batches_of(events: Iterable[EvalEvent]) -> list[dict[str, str]]:
    """The batches in `events` as {"batch_id", "batch_date", "label"}, ordered by date then id."""
    dates: dict[str, str] = {}
    for event in events:
        dates.setdefault(str(event.get("batch_id", "")), event.get("batch_date") or "")
    ordered = sorted(dates.items(), key=lambda item: _batch_sort_key(*item))
    return [{"batch_id": b, "batch_date": d, "label": batch_label(b, d)} for b, d in ordered]


def batch_cell(summary: Summary) -> str:
    """`avg-recall (n)`: mean recall over the batch's valid answers and how many there were."""
    recall = summary["avg_recall"]
    return f"{recall:.1f} ({summary['scored']})" if recall is not None else f"n/a ({summary['scored']})"


def cell_recall(cell: Any) -> Optional[float]:
    """The recall a table cell shows: a number, or the `avg-recall` part of a batch cell."""
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return float(cell)
    return split_batch_cell(cell)[0]


def split_batch_cell(cell: Any) -> tuple[Optional[float], str]:
    """A `batch_cell` read back: (recall or None, the "(n)" part or "")."""
    recall, _, count = str(cell or "").partition(" ")
    try:
        return float(recall), count
    except ValueError:
        return None, count


def _rank_key(item: tuple[str, Summary]) -> tuple:
    key, s = item
    return (
        s["avg_recall"] is None,
        -(s["avg_recall"] or 0.0),
        -(s["avg_recall_all"] or 0.0),
        s["avg_latency_ms"] if s["avg_latency_ms"] is not None else float("inf"),
        key,
    )


def summaries_by_model(events: Iterable[EvalEvent]) -> dict[str, Summary]:
    """metrics.summarise per model over all batches, best model first (deduplicated events)."""
    by_model: dict[str, list[EvalEvent]] = defaultdict(list)
    for event in fold_events([], events):
        by_model[event["model_key"]].append(event)
    ranked = sorted(((k, summarise(v)) for k, v in by_model.items()), key=_rank_key)
    return dict(ranked)


def build_evals(events: Iterable[EvalEvent]) -> dict[str, list]:
    """The ranking table {"headers", "rows"}: one row per model, best Avg Recall first.

    Row cells follow `headers`: model key, avg latency (ms), avg recall over valid answers, recall
    over all photos with ground truth (errors as 0), error %, cost in USD, the two recalls under the
    lenient rule, then one exact `avg-recall (n)` string per batch ("" where the model did not see that batch).
    """
    events = fold_events([], events)
    batches = batches_of(events)
    per_cell: dict[tuple[str, str], list[EvalEvent]] = defaultdict(list)
    for event in events:
        per_cell[(event["model_key"], str(event.get("batch_id", "")))].append(event)
    rows = []
    for key, s in summaries_by_model(events).items():
        row: list[Any] = [key, s["avg_latency_ms"], s["avg_recall"], s["avg_recall_all"], s["error_pct"], s["cost_usd"],
                          s["avg_recall_lenient"], s["avg_recall_all_lenient"]]
        for batch in batches:
            cell = per_cell.get((key, batch["batch_id"]))
            row.append(batch_cell(summarise(cell)) if cell else "")
        rows.append(row)
    return {"headers": FIXED_HEADERS + [b["label"] for b in batches], "rows": rows}


def best_model(evals: Mapping[str, list]) -> Optional[str]:
    """The model key of the top row, or None for an empty table."""
    rows = evals.get("rows") or []
    return rows[0][0] if rows and rows[0][2] is not None else None


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
