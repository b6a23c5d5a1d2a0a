"""The logic of UpdatePhotos without Metaflow: what earlier runs delivered, and what is new.

A run of UpdatePhotos stores its own new photos (`unseen`) and the state of everything delivered
before them (state.py: ids in chunks written once, tag counts, a bounded sample for the baselines).
The next run folds the batch into that state, so each run reads only the previous successful run,
stores what grows with its batch plus a small constant, and a photo is delivered once per branch.
`--reset-existing` starts from an empty state.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Collection, Iterable, Mapping, NamedTuple, Optional

from phototagger.ingest import state
from phototagger.records import Photo

UPDATE_FLOW = "UpdatePhotos"
NOTES_SHOWN = 5  # notes printed in full at the end of a run; the card and the `notes` artifact hold them all


class Batch(NamedTuple):
    unseen: dict[str, Photo]  # new photos, by id, in the source's order
    delivered_before: int  # photos delivered before this batch


class Previous(NamedTuple):
    """What this run reads of the previous one: its state (of the photos before its batch) and its batch."""

    state: state.IngestState
    unseen: dict[str, Photo]
    batch_id: str
    legacy_history: Optional[dict[str, Photo]] = None  # a run from before state.py stored all of `history`


def previous_state(run: Any) -> Optional[Previous]:
    """The state and batch of an earlier UpdatePhotos run (a Metaflow client Run), None without one."""
    if run is None:
        return None
    data = run.data
    unseen, batch_id = dict(data.unseen or {}), str(data.batch_id)
    if "delivered" not in data:
        return Previous(state.empty_state(), unseen, batch_id, legacy_history=dict(data.history or {}))
    ingest_state = state.IngestState(delivered=data.delivered, tag_stats=data.tag_stats, reference=data.reference)
    return Previous(ingest_state, unseen, batch_id)


def delivered_before(store: state.BlobStore, previous: Optional[Previous], reset: bool = False) -> state.IngestState:
    """The state of every photo earlier runs delivered: the previous run's, with its batch folded in (empty on reset)."""
    if reset or previous is None:
        return state.empty_state()
    if previous.legacy_history:
        previous = previous._replace(state=state.fold_batch(store, previous.state, previous.legacy_history, seed="history"))
    return state.fold_batch(store, previous.state, previous.unseen, seed=previous.batch_id)


def plan_batch(delivered: Collection[str], photos: Iterable[Photo]) -> Batch:
    """Keep the fetched photos no earlier run delivered, once each, in the order they came."""
    unseen: dict[str, Photo] = {}
    for photo in photos:
        if photo["id"] not in delivered:
            unseen.setdefault(photo["id"], photo)
    return Batch(unseen=unseen, delivered_before=len(delivered))


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
        f"{batch.delivered_before + len(batch.unseen)} photos seen in total on this branch ({batch.delivered_before} before this run).",
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
