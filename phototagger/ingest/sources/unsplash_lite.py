"""Photos from the Unsplash Lite dataset (https://unsplash.com/data, docs: github.com/unsplash/datasets).

The unzipped dataset folder holds tab-separated files, each with a header row, possibly split
in parts: `photos.tsv000`, `photos.tsv001`, ... and `keywords.tsv000`, .... A photo row gives
`photo_id`, `photo_url`, `photo_image_url`, `photo_submitted_at`, `photo_width`, `photo_height`,
`photo_description`, `ai_description`, `photographer_username`, `photographer_first_name`,
`photographer_last_name`; a keyword row gives `photo_id`, `keyword`, `ai_service_1_confidence`,
`ai_service_2_confidence`, `suggested_by_user` (t/f).

Each tag keeps where it came from: `"user"` when a person suggested it, else `"ai:<the higher of
the two confidences>"`. Spec options (`unsplash-lite:PATH?min_confidence=50&user_only=1`):
`min_confidence` drops AI keywords below that confidence (0-100, default 0 keeps all);
`user_only=1` keeps only the keywords people suggested. A photo left with no tags is still a
photo (empty ground truth, counted apart by the metrics).

The files are streamed, never loaded whole: photos first (the next `limit` unseen ones in file
order), then one pass over the keywords for just those photos. Nothing is lost quietly: a line that
is not UTF-8, or a row whose field count is not the header's (an unclosed quote swallows the rows
after it), stops the fetch naming the file and line; a part without its header row is read with
the previous part's header, and rows without a `photo_id` are skipped, each with a note.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import BinaryIO, Iterator, Optional
from urllib.parse import parse_qsl

from phototagger.records import Photo
from phototagger.ingest.sources.base import SourceError, collect_tags, make_photo, provenance_rank, to_int, utc_iso
from phototagger.ingest.sources.unsplash import unsplash_attribution, unsplash_photo_id

OPTIONS = ("min_confidence", "user_only")
HEADER_COLUMNS = {"photos": ("photo_id", "photo_image_url"), "keywords": ("photo_id", "keyword")}
_TRUE = frozenset({"t", "true", "1", "yes"})


def keyword_provenance(row: dict[str, str]) -> str:
    """'user' for a person's keyword, else 'ai:<max confidence>' ('ai' when no confidence is given)."""
    if (row.get("suggested_by_user") or "").strip().lower() in _TRUE:
        return "user"
    confidences = []
    for column in ("ai_service_1_confidence", "ai_service_2_confidence"):
        try:
            confidences.append(float(row.get(column) or ""))
        except ValueError:
            continue
    return f"ai:{max(confidences):.1f}" if confidences else "ai"


class UnsplashLiteSource:
    source = "unsplash-lite"
    default_batch_size = 100

    def __init__(self, path: str, *, min_confidence: float = 0.0, user_only: bool = False):
        self.root = Path(path).expanduser().resolve()
        self.min_confidence = float(min_confidence)
        self.user_only = bool(user_only)
        for table in ("photos", "keywords"):
            if not self._parts(table):
                raise SourceError(
                    f"No {table}.tsv* files in {path}: unzip the Unsplash Lite dataset "
                    "(https://unsplash.com/data) there and pass --source unsplash-lite:/path/to/that/folder"
                )
        options = []
        if self.min_confidence:
            options.append(f"min_confidence={self.min_confidence:g}")
        if self.user_only:
            options.append("user_only=1")
        self.name = f"unsplash-lite:{self.root}" + (f"?{'&'.join(options)}" if options else "")
        self.notes: list[str] = []

    def fetch(self, exclude_ids: set[str], limit: int) -> list[Photo]:
        self.notes = []
        chosen: dict[str, dict[str, str]] = {}
        without_id: list[str] = []
        for where, row in self._rows("photos"):
            if len(chosen) >= limit:
                break
            raw_id = (row.get("photo_id") or "").strip()
            if not raw_id:
                without_id.append(where)
            elif unsplash_photo_id(raw_id) not in exclude_ids:
                chosen.setdefault(raw_id, row)
        keywords: dict[str, list[tuple[str, str]]] = {raw_id: [] for raw_id in chosen}
        dropped = 0
        for where, row in self._rows("keywords"):
            raw_id = (row.get("photo_id") or "").strip()
            if not raw_id:
                without_id.append(where)
            found = keywords.get(raw_id)
            if found is None:
                continue
            provenance = keyword_provenance(row)
            if self._keeps(provenance):
                found.append((row.get("keyword") or "", provenance))
            else:
                dropped += 1
        if dropped:
            self.notes.append(
                f"Dropped {dropped} AI keywords by the filter (min_confidence={self.min_confidence:g}, "
                f"user_only={int(self.user_only)})."
            )
        if without_id:
            self.notes.append(f"Skipped {len(without_id)} rows with an empty photo_id: {', '.join(without_id[:5])}.")
        return [self._photo(row, keywords[raw_id]) for raw_id, row in chosen.items()]

    def _keeps(self, provenance: str) -> bool:
        if provenance == "user":
            return True
        return not self.user_only and provenance_rank(provenance) >= self.min_confidence

    def _photo(self, row: dict[str, str], keywords: list[tuple[str, str]]) -> Photo:
        names = (row.get(c) or "" for c in ("photographer_first_name", "photographer_last_name"))
        name = " ".join(n.strip() for n in names if n.strip()) or (row.get("photographer_username") or "").strip() or None
        return make_photo(
            unsplash_photo_id(row["photo_id"].strip()),
            (row.get("photo_image_url") or "").strip(),
            self.source,
            collect_tags(keywords),
            utc_iso(row.get("photo_submitted_at")),
            description=(row.get("photo_description") or "").strip() or (row.get("ai_description") or "").strip(),
            width=to_int(row.get("photo_width")),
            height=to_int(row.get("photo_height")),
            photographer=name,
            attribution=unsplash_attribution(name, row.get("photo_url")),
        )

    def _parts(self, table: str) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{table}.tsv*") if p.is_file())

    def _rows(self, table: str) -> Iterator[tuple[str, dict[str, str]]]:
        """("<file> line <n>", row) for every row of every part of `table`, in part order."""
        header: Optional[list[str]] = None
        for part in self._parts(table):
            for number, (start, end, fields) in enumerate(_records(part)):
                if number == 0 and all(column in fields for column in HEADER_COLUMNS[table]):
                    header = fields
                    continue
                if number == 0 and (header is None or len(fields) != len(header)):
                    raise SourceError(
                        f"{part} line 1 is not a header row (it has no {' and '.join(HEADER_COLUMNS[table])} columns): "
                        f"each {table}.tsv part starts with its header; copy it from the dataset's first part"
                    )
                if number == 0:
                    self.notes.append(f"{part.name} has no header row: read with the header of the part before it.")
                if fields and len(fields) != len(header):
                    raise SourceError(_shape_error(part, start, end, len(fields), len(header)))
                if fields:
                    yield f"{part.name} line {start}", dict(zip(header, fields))


def _records(part: Path) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each TAB-separated record of `part`; a quoted field may span lines."""
    with part.open("rb") as handle:
        reader = csv.reader(_utf8_lines(handle, part), delimiter="\t")
        start = 1
        for fields in reader:
            yield start, reader.line_num, fields
            start = reader.line_num + 1


def _utf8_lines(handle: BinaryIO, part: Path) -> Iterator[str]:
    """The file's lines as text, decoded one by one so that a byte that is not UTF-8 is named by its line."""
    for number, raw in enumerate(handle, 1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"{part} line {number} is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}): "
                "the Unsplash Lite files are UTF-8; unzip them again from the download or fix that line"
            ) from None


def _shape_error(part: Path, start: int, end: int, found: int, expected: int) -> str:
    if end > start:
        return (
            f"{part} lines {start}-{end} read as one row of {found} fields (the header has {expected}): "
            f'a quote (") in that row is never closed, so the lines after it became one field; close or remove it'
        )
    return f"{part} line {start} has {found} fields, the header has {expected}: fix that row (fields are separated by TABs)"


def parse_options(query: str) -> dict[str, object]:
    """`min_confidence=50&user_only=1` -> keyword arguments of UnsplashLiteSource."""
    options: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "min_confidence":
            try:
                options[key] = float(value)
            except ValueError:
                raise SourceError(f"min_confidence must be a number from 0 to 100, got {value!r}") from None
        elif key == "user_only":
            options[key] = value.strip().lower() in _TRUE
        else:
            raise SourceError(f"unknown unsplash-lite option {key!r}", f"use one of: {', '.join(OPTIONS)}")
    return options
