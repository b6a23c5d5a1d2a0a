"""The built-in offline demo set: photographs that ship inside scikit-image, with hand-written tags.

The tags, descriptions and credits live in `demo_photos.json` next to this module; the images are
read from the installed `skimage/data/` folder, so the demo needs no network. The set comes in a
stable order and the default batch is half of it, so two UpdatePhotos runs deliver two batches
and the second is scored with the first as history.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from phototagger.images import demo_image_dir
from phototagger.records import Photo
from phototagger.ingest.sources.base import SourceError, collect_tags, make_photo, utc_iso

CATALOGUE = Path(__file__).with_name("demo_photos.json")


def skimage_data_dir() -> Path:
    """The installed scikit-image's sample-data folder (images.demo_image_dir, which the image loader reads inside)."""
    found = demo_image_dir()
    if found is None:
        raise SourceError("The demo photos ship with scikit-image: pip install scikit-image==0.26.0 (see requirements.txt)")
    return found


class DemoSource:
    name = "demo"
    source = "demo"

    def __init__(self) -> None:
        self.catalogue = json.loads(CATALOGUE.read_text(encoding="utf-8"))["photos"]
        self.default_batch_size = (len(self.catalogue) + 1) // 2
        self.notes: list[str] = []

    def fetch(self, exclude_ids: set[str], limit: int) -> list[Photo]:
        self.notes = []
        data_dir = skimage_data_dir()
        photos: list[Photo] = []
        for entry in self.catalogue:
            if len(photos) >= limit:
                break
            if entry["id"] in exclude_ids:
                continue
            path = data_dir / entry["file"]
            if not path.is_file():
                raise SourceError(
                    f"Demo image {path} is missing: reinstall scikit-image==0.26.0, whose wheel ships it"
                )
            with Image.open(path) as image:
                width, height = image.size
            photos.append(
                make_photo(
                    entry["id"],
                    str(path),
                    self.source,
                    collect_tags((t, "user") for t in entry["tags"]),
                    utc_iso(path.stat().st_mtime),
                    description=entry["description"],
                    width=width,
                    height=height,
                    attribution=entry["attribution"],
                )
            )
        return photos
