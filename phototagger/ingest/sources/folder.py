"""Photos from a folder of images, with tags from a tags file or per-image sidecars.

Where the tags of `trip/beach.jpg` are looked for, first match wins:
1. a sidecar next to the image: `beach.jpg.json` / `beach.json` (a list, or `{"tags": [...],
   "description": "..."}`), or `beach.jpg.txt` / `beach.txt` (tags separated by `,` `;` or new lines);
2. `tags.json` at the folder root: `{"trip/beach.jpg": ["sea", "sand"], ...}` (a bare file name works too);
3. `tags.csv` at the folder root: rows `filename,tags` with the tags separated by `;` or `,`.
4. the keywords already in the photo (XMP sidecar `beach.jpg.xmp` / `beach.xmp`, else the XMP or IPTC
   Keywords inside the image, as Lightroom, digiKam and darktable write them: see `keywords.py`),
   each tag with its origin in `tag_origin` ("xmp-sidecar:lr:hierarchicalSubject"). A model's suggestion
   (export_tags.py) is ground truth only once the photographer confirmed it; the ones they deleted are
   the photo's `rejected_tags` (see provenance.py).
A photo is named by its path inside the folder (`name`, "trip/rocket.jpg"), its id is a hash of it.
An image without tags is still a photo: its ground truth is empty and metrics count it apart.
A file that is no readable image, an image too large to decode safely (PIL's decompression-bomb
limit), a link to a file outside the folder (its bytes would go to a vendor) and a tags entry that
is not a list of tags are each skipped with a note, never a failed run or a silent loss.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Optional

from PIL import Image, UnidentifiedImageError

from phototagger.output import xmp
from phototagger.scoring.provenance import review_key
from phototagger.records import Photo
from phototagger.ingest.sources.base import SourceError, collect_tags, listing_note, make_photo, utc_iso
from phototagger.ingest.sources.keywords import PLACE_NAMES, read_photo_keywords

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"})
_SEPARATORS = re.compile(r"[,;\n]")


def folder_photo_id(relative_path: str) -> str:
    """A stable id from the path inside the folder, so moving the folder keeps the ids."""
    return "folder-" + hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:16]


def split_tags(text: str) -> list[str]:
    return [t for t in _SEPARATORS.split(text) if t.strip()]


class FolderSource:
    """Images under `path` (recursively, hidden folders skipped), in sorted path order."""

    source = "folder"
    default_batch_size = 100

    def __init__(self, path: str):
        self.root = Path(path).expanduser().resolve()
        if not self.root.is_dir():
            raise SourceError(f"Photo folder not found: {path}; pass --source folder:/path/to/images")
        self.name = f"folder:{self.root}"
        self.notes: list[str] = []

    def fetch(self, exclude_ids: set[str], limit: int) -> list[Photo]:
        return self._photos(lambda photo_id, path: photo_id not in exclude_ids, limit)

    def corrections(self, delivered: Collection[str], reviews: Mapping[str, str]) -> list[Photo]:
        """Delivered photos whose suggestions were reviewed (confirmed or deleted) since they were last delivered:
        their ground truth changed. Only photos with an XMP sidecar are read again (that is where suggestions live)."""
        def has_sidecar(photo_id: str, path: Path) -> bool:
            return photo_id in delivered and any(xmp.sidecar_path(path, naming).is_file() for naming in xmp.NAMINGS)

        notes = self.notes
        photos = self._photos(has_sidecar, sys.maxsize)
        self.notes = notes + [note for note in self.notes if note not in notes and note.startswith(("Skipped", "Refused"))]
        return [photo for photo in photos if review_key(photo.get("confirmed_tags", ()), photo.get("rejected_tags", ())) != reviews.get(photo["id"], "")]

    def _photos(self, wanted: Callable[[str, Path], bool], limit: int) -> list[Photo]:
        """The photos `wanted(id, path)` picks, up to `limit`, each read with its tags."""
        self.notes = []
        table = self._tags_table()
        photos: list[Photo] = []
        unreadable: list[str] = []
        too_large: list[str] = []
        outside: list[str] = []
        places: Counter[str] = Counter()  # where photos without a tags file took their keywords from
        ours: list[str] = []
        reviewed = 0
        with_own = 0
        for path in self._images():
            if len(photos) >= limit:
                break
            relative = path.relative_to(self.root).as_posix()
            photo_id = folder_photo_id(relative)
            if not wanted(photo_id, path):
                continue
            if not path.resolve().is_relative_to(self.root):
                outside.append(relative)
                continue
            try:
                with Image.open(path) as image:
                    width, height = image.size
                    sidecar = _read_sidecar(path)
                    name = relative if relative in table else path.name
                    if sidecar is None and name in table:
                        sidecar = table[name], None, f"its tags.json entry {name!r}"
                    own = read_photo_keywords(path, image) if sidecar is None else None
            except Image.DecompressionBombError:
                too_large.append(relative)
                continue
            except (UnidentifiedImageError, OSError):
                unreadable.append(relative)
                continue
            origins = None
            description = None
            review = None
            if own is not None:
                self.notes.extend(f"{relative}: {note}" for note in own.notes)
                places.update(own.places)
                with_own += bool(own.places)
                if own.ours:
                    ours.append(relative)
                origins = collect_tags(own.keywords)  # all origins rank alike: the first field a tag is in
                tags = {tag: "user" for tag in origins}
                review = own if own.confirmed or own.rejected or own.pending else None
                reviewed += bool(own.confirmed or own.rejected)
            else:
                raw_tags, description, where = sidecar
                tag_list = _as_tag_list(raw_tags)
                if tag_list is None:
                    self.notes.append(
                        f"{relative} has no ground truth: {where} is {_json_kind(raw_tags)}, not a list of tags "
                        '(write ["tag", ...] or "tag; tag").'
                    )
                    tag_list = []
                tags = collect_tags((t, "user") for t in tag_list)
            photos.append(
                make_photo(
                    photo_id,
                    str(path),
                    self.source,
                    tags,
                    utc_iso(path.stat().st_mtime),
                    description=description,
                    width=width,
                    height=height,
                    tag_origin=origins,
                    name=relative,
                )
            )
            if review is not None:
                photos[-1].update(confirmed_tags=review.confirmed, rejected_tags=review.rejected, suggested_tags=review.pending)
        if places:
            counts = ", ".join(f"{places[place]} from {label}" for place, label in PLACE_NAMES.items() if places[place])
            self.notes.append(f"{with_own} photos took their ground truth from their own keywords: {counts}.")
        if reviewed:
            self.notes.append(f"{reviewed} photos have reviewed suggestions: confirmed ones are ground truth, deleted ones rejections.")
        if ours:
            self.notes.append(listing_note(
                "{n} photos have XMP sidecars that an older export_tags.py wrote and no photo tool has changed since: "
                "their keywords are a model's, not yours, and were left out of the ground truth", ours))
        if unreadable:
            self.notes.append(listing_note("Skipped {n} files that are not readable images", unreadable))
        if too_large:
            self.notes.append(listing_note(
                f"Skipped {{n}} images too large to decode safely (over {Image.MAX_IMAGE_PIXELS * 2} pixels, "
                "PIL's decompression-bomb limit)", too_large))
        if outside:
            self.notes.append(listing_note(
                f"Refused {{n}} links to files outside {self.root} (their bytes would be sent to the models)", outside,
                "; copy the files into the folder instead"))
        return photos

    def _images(self) -> Iterator[Path]:
        for path in sorted(self.root.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(self.root).parts)
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not hidden:
                yield path

    def _tags_table(self) -> dict[str, Any]:
        """File name (relative path or bare name) -> raw tags as written, from tags.json, else tags.csv."""
        json_path, csv_path = self.root / "tags.json", self.root / "tags.csv"
        if json_path.is_file():
            try:
                data = json.loads(json_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise SourceError(f'{json_path} is not valid JSON ({exc}); expected {{"file.jpg": ["tag", ...]}}') from None
            if not isinstance(data, dict):
                raise SourceError(f"{json_path} must map file names to tag lists, e.g. {{\"file.jpg\": [\"tag\"]}}")
            return {str(name): tags for name, tags in data.items()}
        if csv_path.is_file():
            table: dict[str, list[str]] = {}
            with csv_path.open(newline="", encoding="utf-8") as handle:
                for row in csv.reader(handle):
                    if not row or row[0].strip().lower() in ("filename", "file", "image"):
                        continue
                    table[row[0].strip()] = [t for cell in row[1:] for t in split_tags(cell)]
            return table
        return {}


def _as_tag_list(value: Any) -> Optional[list[str]]:
    """Raw tags from a list of tags or one string of separated tags; None for any other shape."""
    if isinstance(value, str):
        return split_tags(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    return None


def _json_kind(value: Any) -> str:
    """What a JSON value is, in the words of JSON, for a note that tells the user what they wrote."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list holding non-text items"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def _read_sidecar(image: Path) -> Optional[tuple[Any, Optional[str], str]]:
    """(raw tags, description, where they were read) from the image's sidecar, None when it has none."""
    for candidate in (image.with_name(image.name + ".json"), image.with_suffix(".json")):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise SourceError(f"Sidecar {candidate} is not valid JSON ({exc})") from None
            if isinstance(data, dict):
                return data.get("tags", []), data.get("description"), f'"tags" in its sidecar {candidate.name}'
            return data, None, f"its sidecar {candidate.name}"
    for candidate in (image.with_name(image.name + ".txt"), image.with_suffix(".txt")):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8"), None, f"its sidecar {candidate.name}"
    return None
