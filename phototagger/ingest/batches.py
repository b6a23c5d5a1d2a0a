"""The logic of UpdatePhotos without Metaflow: what earlier runs delivered, and what is new.

A run of UpdatePhotos stores its own new photos (`unseen`) and the state of everything delivered
before them (state.py: ids in chunks written once, tag counts, a bounded sample for the baselines).
The next run folds the batch into that state, so each run reads only the previous successful run,
stores what grows with its batch plus a small constant, and a photo is delivered once per branch.
`--reset-existing` starts from an empty state and rebuilds it from the claims. Runs started together
share a previous run, so each photo is also claimed (claims.py) and only the run that wins it delivers it.
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any, Collection, Iterable, NamedTuple, Optional

from phototagger.claims import Claim, Claims
from phototagger.ingest import state
from phototagger.ingest.sources.base import Source
from phototagger.mfclient import UPDATE_FLOW
from phototagger.records import Photo

NOTES_SHOWN = 5  # notes printed in full at the end of a run; the card and the `notes` artifact hold them all


class Batch(NamedTuple):
    unseen: dict[str, Photo]  # new photos, by id, in the source's order
    delivered_before: int  # photos delivered before this batch


class Previous(NamedTuple):
    """What this run reads of the previous one: its state (of the photos before its batch), its batch
    and its claim epoch."""

    state: state.IngestState
    unseen: dict[str, Photo]
    batch_id: str
    legacy_history: Optional[dict[str, Photo]] = None  # a run from before state.py stored all of `history`
    claim_epoch: Optional[str] = None  # None: a run from before claims, in the first epoch


class Claimed(NamedTuple):
    batch: Batch  # the photos this run won; `delivered_before` counts those other runs delivered too
    elsewhere: dict[str, Photo]  # fetched photos a successful run of this branch delivered: they join `delivered`
    notes: list[str]


def previous_state(run: Any) -> Optional[Previous]:
    """The state, batch and claim epoch of an earlier UpdatePhotos run (a Metaflow client Run), None without one."""
    if run is None:
        return None
    data = run.data
    unseen, batch_id = dict(data.unseen or {}), str(data.batch_id)
    epoch = data.claim_epoch if "claim_epoch" in data else None
    if "delivered" not in data:
        return Previous(state.empty_state(), unseen, batch_id, legacy_history=dict(data.history or {}), claim_epoch=epoch)
    ingest_state = state.IngestState(delivered=data.delivered, tag_stats=data.tag_stats, reference=data.reference)
    return Previous(ingest_state, unseen, batch_id, claim_epoch=epoch)


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


def fetch_claimed(source: Source, delivered: Collection[str], limit: int, claims: Claims, now: Optional[float] = None) -> Claimed:
    """Fetch up to `limit` photos not among the `delivered` ids and keep those this run wins the claim
    of, fetching again while other runs held some. Photos a successful run delivered come back as
    `elsewhere`, for the flow to fold into `delivered`, so later runs skip them; photos of a run still
    alive do not, so they come back to a later run if that run stops without finishing."""
    unseen: dict[str, Photo] = {}
    elsewhere: dict[str, Photo] = {}
    pending: dict[str, list[Claim]] = {}
    taken: dict[str, list[Claim]] = {}
    notes: list[str] = []
    tried = set(delivered)  # grows with the photos this run has claimed or lost
    lost = True
    while lost and len(unseen) < limit:
        lost = False
        fetched = plan_batch(tried, source.fetch(tried, limit - len(unseen))).unseen
        notes += [note for note in source.notes if note not in notes]
        for photo_id, photo in fetched.items():
            tried.add(photo_id)
            claim = claims.claim(photo_id)
            if claim.state == "won":
                unseen[photo_id] = photo
                if claim.taken_from:
                    taken.setdefault(claim.taken_from, []).append(claim)
            else:
                lost = True
                if claim.state == "delivered":
                    elsewhere[photo_id] = photo
                else:
                    pending.setdefault(claim.holder, []).append(claim)
    if elsewhere:
        notes.append(f"Skipped {len(elsewhere)} photos another run of this branch delivered; they join the history.")
    notes += [takeover_note(run_id, held) for run_id, held in sorted(taken.items())]
    notes += [pending_note(run_id, held, time.time() if now is None else now) for run_id, held in sorted(pending.items())]
    return Claimed(Batch(unseen=unseen, delivered_before=len(delivered) + len(elsewhere)), elsewhere, notes)


def takeover_note(run_id: str, claims: list[Claim]) -> str:
    why = claims[0].seen.why if claims[0].seen else "it stopped"
    return f"Took over {len(claims)} photos claimed by {UPDATE_FLOW}/{run_id}, which will not deliver them ({why})."


def pending_note(run_id: str, claims: list[Claim], now: float) -> str:
    """Whose photos were skipped, and when they come back if their run never finishes."""
    seen = [claim.seen for claim in claims if claim.seen]
    back = now + max((s.expires_in for s in seen), default=0.0)
    lease = max((s.lease_s for s in seen), default=0.0)
    at = datetime.fromtimestamp(math.ceil(back), timezone.utc).strftime("%H:%M:%S UTC")
    return (f"Skipped {len(claims)} photos claimed by {UPDATE_FLOW}/{run_id}, which is still running: if it stops "
            f"without finishing (killed, evicted), the first run after {at} takes them over ({lease:.0f} s lease).")


def confirm_batch(unseen: dict[str, Photo], claims: Claims) -> tuple[dict[str, Photo], list[str]]:
    """The photos of `unseen` this run may still deliver, checked against the claims just before it does
    (a run taken over while it was stopped, or a resume reusing its origin's `fetch`), and a note on the others."""
    lost = claims.confirm(unseen)
    kept = {photo_id: photo for photo_id, photo in unseen.items() if photo_id not in lost}
    holders = ", ".join(f"{UPDATE_FLOW}/{run_id}" for run_id in sorted(set(lost.values())))
    notes = [f"Dropped {len(lost)} photos from this batch: their claims were taken over by {holders}, which delivers them."] if lost else []
    return kept, notes


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
