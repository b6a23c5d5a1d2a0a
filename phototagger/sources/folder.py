"""Photos from a folder of images, with tags from a tags file or per-image sidecars.

Where the tags of `trip/beach.jpg` are looked for, first match wins:
1. a sidecar next to the image: `beach.jpg.json` / `beach.json` (a list, or `{"tags": [...],
   "description": "..."}`), or `beach.jpg.txt` / `beach.txt` (tags separated by `,` `;` or new lines);
2. `tags.json` at the folder root: `{"trip/beach.jpg": ["sea", "sand"], ...}` (a bare file name works too);
3. `tags.csv` at the folder root: rows `filename,tags` with the tags separated by `;` or `,`.
An image without tags is still a photo: its ground truth is empty and metrics count it apart.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from PIL import Image, UnidentifiedImageError

from ..records import Photo
from .base import SourceError, collect_tags, make_photo, utc_iso

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
        self.notes = []
        table = self._tags_table()
        photos: list[Photo] = []
        unreadable: list[str] = []
        for path in self._images():
            if len(photos) >= limit:
                break
            relative = path.relative_to(self.root).as_posix()
            photo_id = folder_photo_id(relative)
            if photo_id in exclude_ids:
                continue
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except (UnidentifiedImageError, OSError):
                unreadable.append(relative)
                continue
            sidecar = _read_sidecar(path)
            tags, description = sidecar if sidecar is not None else (table.get(relative, table.get(path.name, [])), None)
            photos.append(
                make_photo(
                    photo_id,
                    str(path),
                    self.source,
                    collect_tags((t, "user") for t in tags),
                    utc_iso(path.stat().st_mtime),
                    description=description,
                    width=width,
                    height=height,
                )
            )
        if unreadable:
            self.notes.append(f"Skipped {len(unreadable)} files that are not readable images: {', '.join(unreadable[:5])}")
        return photos

    def _images(self) -> Iterator[Path]:
        for path in sorted(self.root.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(self.root).parts)
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not hidden:
                yield path

    def _tags_table(self) -> dict[str, list[str]]:
        """File name (relative path or bare name) -> raw tags, from tags.json, else tags.csv."""
        json_path, csv_path = self.root / "tags.json", self.root / "tags.csv"
        if json_path.is_file():
            try:
                data = json.loads(json_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise SourceError(f'{json_path} is not valid JSON ({exc}); expected {{"file.jpg": ["tag", ...]}}') from None
            if not isinstance(data, dict):
                raise SourceError(f"{json_path} must map file names to tag lists, e.g. {{\"file.jpg\": [\"tag\"]}}")
            return {str(name): _as_tag_list(tags) for name, tags in data.items()}
        if csv_path.is_file():
            table: dict[str, list[str]] = {}
            with csv_path.open(newline="", encoding="utf-8") as handle:
                for row in csv.reader(handle):
                    if not row or row[0].strip().lower() in ("filename", "file", "image"):
                        continue
                    table[row[0].strip()] = [t for cell in row[1:] for t in split_tags(cell)]
            return table
        return {}


def _as_tag_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return split_tags(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _read_sidecar(image: Path) -> Optional[tuple[list[str], Optional[str]]]:
    """(tags, description) from the image's sidecar, None when it has none."""
    for candidate in (image.with_name(image.name + ".json"), image.with_suffix(".json")):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise SourceError(f"Sidecar {candidate} is not valid JSON ({exc})") from None
            if isinstance(data, dict):
                return _as_tag_list(data.get("tags")), data.get("description")
            return _as_tag_list(data), None
    for candidate in (image.with_name(image.name + ".txt"), image.with_suffix(".txt")):
        if candidate.is_file():
            return split_tags(candidate.read_text(encoding="utf-8")), None
    return None
