"""A run's own card: its summary lines, its notes and one small table, as a self-contained page with no script.

Metaflow's `blank` card embeds its JavaScript bundle (about 1.1 MB) in every card, which an hourly flow
writes 8,760 times a year; this page is a few kilobytes. The template autoescapes, so a photo id, a
tag or a note from a source cannot break it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from phototagger.ingest.batches import Batch, summary_lines
from phototagger.output.templating import TEMPLATES
from phototagger.training import curate


@dataclass
class CardTable:
    """Rows to show under the summary; `more` counts the rows left out to keep the card small."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    more: int = 0


def render_run_card(title: str, lines: Sequence[str], notes: Sequence[str] = (), table: CardTable | None = None) -> str:
    """The card's HTML: `title`, the summary `lines`, every note, then `table` if there is one."""
    return TEMPLATES.get_template("run_card.html.j2").render(title=title, lines=list(lines), notes=list(notes), table=table)


def updatephotos_card(source_name: str, batch: Batch, notes: Sequence[str], max_rows: int = 100) -> str:
    """UpdatePhotos' card: what was delivered, every note (the printed summary shows only a few), and a
    row per new photo with its ground truth, the first `max_rows`."""
    photos = list(batch.unseen.items())
    rows = [[photo_id, ", ".join(photo.get("ground_truth_tags") or []) or "(none)"] for photo_id, photo in photos[:max_rows]]
    table = CardTable(["Photo", "Ground-truth tags"], rows, max(0, len(photos) - max_rows)) if photos else None
    return render_run_card("UpdatePhotos", summary_lines(source_name, batch, notes)[:2], notes, table)


def dataset_card(dataset: curate.Dataset, n_held_out: int, max_rows: int = 500) -> str:
    """PrepareVLMData's card: the split sizes, what was left out, then every dropped photo and why (the
    first `max_rows`; all of them are in the run's `dropped` artifact)."""
    lines = curate.summary_lines(dataset, n_held_out)
    rows = [[d["photo_id"], d["reason"]] for d in dataset.dropped[:max_rows]]
    table = CardTable(["Dropped photo", "Reason"], rows, max(0, len(dataset.dropped) - max_rows)) if dataset.dropped else None
    return render_run_card("PrepareVLMData", lines[:2], lines[2:], table)
