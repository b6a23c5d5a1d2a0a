"""The logic of UpdatePhotos without Metaflow: what earlier runs delivered, and what is new.

A run of UpdatePhotos stores `history` (photos delivered by earlier runs of its project branch)
and `unseen` (its own new photos). The next run's history is the two together, so each run
reads only the previous successful run, never all of them, and a photo is delivered once per
branch. `--reset-existing` starts from an empty history.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, NamedTuple, Optional

from phototagger.records import Photo

NOTES_SHOWN = 5  # notes printed in full at the end of a run; the card and the `notes` artifact hold them all


class Batch(NamedTuple):
    unseen: dict[str, Photo]  # new photos, by id, in the source's order
    history: dict[str, Photo]  # everything delivered before this batch
    seen_ids: list[str]  # history ids, then unseen ids


def previous_state(run: Any) -> Optional[dict[str, dict[str, Photo]]]:
    """`{"history", "unseen"}` of an earlier UpdatePhotos run (a Metaflow client Run), None without one."""
    if run is None:
        return None
    data = run.data
    return {"history": dict(getattr(data, "history", {}) or {}), "unseen": dict(getattr(data, "unseen", {}) or {})}


def delivered_before(previous: Optional[Mapping[str, Mapping[str, Photo]]], reset: bool = False) -> dict[str, Photo]:
    """Every photo earlier runs delivered: the previous run's history plus its batch (empty on reset)."""
    if reset or not previous:
        return {}
    return {**previous.get("history", {}), **previous.get("unseen", {})}


def plan_batch(history: Mapping[str, Photo], photos: Iterable[Photo]) -> Batch:
    """Keep the fetched photos no earlier run delivered, once each, in the order they came."""
    unseen: dict[str, Photo] = {}
    for photo in photos:
        if photo["id"] not in history:
            unseen.setdefault(photo["id"], photo)
    return Batch(unseen=unseen, history=dict(history), seen_ids=[*history, *unseen])


def batch_date(now: Optional[datetime] = None) -> str:
    """Today's date in UTC, ISO (YYYY-MM-DD): the label batches carry on the dashboard."""
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date().isoformat()


def summary_lines(source_name: str, batch: Batch, notes: Iterable[str]) -> list[str]:
    """The three lines a flow user reads at the end of a run: new photos, seen total, notes."""
    notes = list(notes)
    if batch.unseen:
        with_tags = sum(1 for p in batch.unseen.values() if p.get("ground_truth_tags"))
        new = f"{len(batch.unseen)} new photos from {source_name} ({with_tags} with ground-truth tags)."
    else:
        new = f"No new photos from {source_name}: an empty batch, downstream flows have nothing to do."
    return [
        new,
        f"{len(batch.seen_ids)} photos seen in total on this branch ({len(batch.history)} before this run).",
        "Notes: " + (" ".join(notes[:NOTES_SHOWN]) if notes else "none.") + _more_notes(len(notes)),
    ]


def _more_notes(count: int) -> str:
    hidden = count - NOTES_SHOWN
    return f" ... and {hidden} more notes, all listed on the run's card." if hidden > 0 else ""


def summary_markdown(source_name: str, batch: Batch, notes: Iterable[str], max_rows: int = 100) -> str:
    """The run's card: the summary lines with every note, then a row per new photo (the first `max_rows`) with its ground truth."""
    notes = list(notes)
    lines = ["# UpdatePhotos", "", *(f"- {line}" for line in summary_lines(source_name, batch, notes)[:2])]
    lines += ["- Notes:" + ("" if notes else " none."), *(f"  - {note}" for note in notes)]
    if batch.unseen:
        lines += ["", "| Photo | Ground-truth tags |", "|---|---|"]
        for photo_id, photo in list(batch.unseen.items())[:max_rows]:
            tags = ", ".join(photo.get("ground_truth_tags") or []).replace("|", "\\|") or "(none)"
            lines.append(f"| {photo_id} | {tags} |")
        if len(batch.unseen) > max_rows:
            lines.append(f"| ... and {len(batch.unseen) - max_rows} more | |")
    return "\n".join(lines)
