"""The logic of UpdatePhotos without Metaflow: what earlier runs delivered, and what is new.

A run of UpdatePhotos stores `history` (photos delivered by earlier runs of its project branch)
and `unseen` (its own new photos). The next run's history is the two together, so each run
reads only the previous successful run, never all of them, and a photo is delivered once per
branch. `--reset-existing` starts from an empty history. Runs started together share a previous
run, so each photo is also claimed (claims.py) and only the run that wins it delivers it.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, NamedTuple, Optional

from phototagger.claims import Claims
from phototagger.ingest.sources.base import Source
from phototagger.records import Photo

UPDATE_FLOW = "UpdatePhotos"
NOTES_SHOWN = 5  # notes printed in full at the end of a run; the card and the `notes` artifact hold them all


class Batch(NamedTuple):
    unseen: dict[str, Photo]  # new photos, by id, in the source's order
    history: dict[str, Photo]  # everything delivered before this batch
    seen_ids: list[str]  # history ids, then unseen ids


def previous_state(run: Any) -> Optional[dict[str, Any]]:
    """`{"history", "unseen", "claim_epoch"}` of an earlier UpdatePhotos run (a Metaflow client Run), None without one."""
    if run is None:
        return None
    data = run.data
    return {
        "history": dict(getattr(data, "history", {}) or {}),
        "unseen": dict(getattr(data, "unseen", {}) or {}),
        "claim_epoch": getattr(data, "claim_epoch", None),
    }


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


def fetch_claimed(source: Source, history: Mapping[str, Photo], limit: int, claims: Claims) -> tuple[Batch, list[str]]:
    """Fetch up to `limit` new photos and keep those this run wins the claim of, fetching again while
    other runs held some. Photos a successful run delivered join `history`, so later runs skip them;
    photos of a run still going do not, so they come back to a later run if that run fails."""
    unseen: dict[str, Photo] = {}
    delivered: dict[str, Photo] = {}
    pending: dict[str, str] = {}
    notes: list[str] = []
    tried = set(history)
    lost = True
    while lost and len(unseen) < limit:
        lost = False
        fetched = plan_batch({}, [p for p in source.fetch(set(tried), limit - len(unseen)) if p["id"] not in tried]).unseen
        notes += [note for note in source.notes if note not in notes]
        for photo_id, photo in fetched.items():
            tried.add(photo_id)
            claim = claims.claim(photo_id)
            if claim.state == "won":
                unseen[photo_id] = photo
            else:
                lost = True
                if claim.state == "delivered":
                    delivered[photo_id] = photo
                else:
                    pending[photo_id] = claim.holder
    if delivered:
        notes.append(f"Skipped {len(delivered)} photos another run of this branch delivered; they join the history.")
    if pending:
        runs = ", ".join(f"{UPDATE_FLOW}/{run_id}" for run_id in sorted(set(pending.values())))
        notes.append(f"Skipped {len(pending)} photos claimed by runs still in progress ({runs}).")
    history = {**history, **delivered}
    return Batch(unseen=unseen, history=history, seen_ids=[*history, *unseen]), notes


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
