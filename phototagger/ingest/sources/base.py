"""What every photo source shares: the Source protocol, its error, and building Photo records.

A source turns some outside collection (the Unsplash API, a folder, the Unsplash Lite dataset,
the built-in demo set) into Photo records whose tags went through `tags.normalise_tags` once,
with one provenance per tag, so downstream code never asks where a photo came from.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Protocol, Sequence, runtime_checkable

from phototagger.errors import UserError
from phototagger.records import Photo
from phototagger.scoring.tags import normalise_tags


class SourceError(UserError):
    """A source cannot deliver: a missing key, a missing file, a service that said no.

    The message names the problem and the fix; it never holds a secret.
    """


@runtime_checkable
class Source(Protocol):
    name: str  # the spec that chose it, e.g. "unsplash:search:cats" or "folder:/data/photos"
    default_batch_size: int  # photos per UpdatePhotos run when --batch-size is 0
    notes: list[str]  # user-facing messages from the last fetch (e.g. "stopped at the rate limit")

    def fetch(self, exclude_ids: set[str], limit: int) -> list[Photo]:
        """Up to `limit` photos whose id is not in `exclude_ids`, in the source's stable order."""
        ...


NAMES_IN_A_NOTE = 5


def listing_note(what: str, names: Sequence[str], then: str = "") -> str:
    """'<what> (<count>): a, b, c, d, e<then>': a note that counts every item and names the first few,
    so a folder of 10,000 broken files gives one readable line."""
    return f"{what.format(n=len(names))}: {', '.join(names[:NAMES_IN_A_NOTE])}{then}"


def provenance_rank(provenance: str) -> float:
    """A human's tag beats an AI's; between AI tags the higher confidence wins."""
    if provenance == "user":
        return float("inf")
    if provenance.startswith("ai:"):
        try:
            return float(provenance[3:])
        except ValueError:
            return 0.0
    return 0.0


def collect_tags(pairs: Iterable[tuple[Any, str]]) -> dict[str, str]:
    """Normalised tag -> provenance, in first-seen order.

    Two raw tags that normalise alike ("Cat", "cat ") become one, keeping the stronger provenance.
    """
    collected: dict[str, str] = {}
    for raw, provenance in pairs:
        for tag in normalise_tags([raw]):
            if tag not in collected or provenance_rank(provenance) > provenance_rank(collected[tag]):
                collected[tag] = provenance
    return collected


def make_photo(
    photo_id: str,
    image_url: str,
    source: str,
    tags: dict[str, str],
    created_at: str,
    *,
    description: Optional[str] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
    photographer: Optional[str] = None,
    attribution: Optional[str] = None,
    tag_origin: Optional[dict[str, str]] = None,
    name: Optional[str] = None,
) -> Photo:
    """One Photo record; `tags` is what `collect_tags` returns."""
    photo = Photo(
        id=photo_id,
        image_url=image_url,
        ground_truth_tags=list(tags),
        tag_provenance=dict(tags),
        source=source,
        created_at=created_at,
        description=description or None,
        width=width,
        height=height,
        photographer=photographer or None,
        attribution=attribution,
    )
    if tag_origin is not None:
        photo["tag_origin"] = dict(tag_origin)
    if name:
        photo["name"] = name
    return photo


def utc_iso(value: Any) -> str:
    """An ISO 8601 UTC timestamp from a datetime, a POSIX time or an ISO string (naive means UTC).

    Text that is no timestamp is returned as it is rather than dropped.
    """
    if isinstance(value, (int, float)):
        moment = datetime.fromtimestamp(value, tz=timezone.utc)
    elif isinstance(value, datetime):
        moment = value
    else:
        text = str(value or "").strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def to_int(value: Any) -> Optional[int]:
    """An int from an API or TSV field, None when absent or not a number."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None
