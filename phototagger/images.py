"""The one image loader: training, inference, the knn features and card thumbnails read pixels here.

Bytes come through `http.fetch_image_bytes` (fetch policy, byte bound, timeout). Every way decoding
can fail, a decompression bomb included, is an `ImageFetchError` of class `bad_image`. EXIF
orientation is applied, so a phone photo is upright for our models as it is for vendors and browsers.
"""
from __future__ import annotations

import importlib.util
import io
import struct
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps

from phototagger.http import DEFAULT_TIMEOUT_S, MAX_IMAGE_BYTES, ImageFetchError, LocalImage, fetch_image_bytes, is_url
from phototagger.records import Photo

LOCAL_SOURCES = ("folder", "demo")  # the sources whose photos are files on this machine

# What PIL raises on bytes that are not a good image: UnidentifiedImageError and truncation are
# OSErrors, some plugins raise SyntaxError, EOFError or struct.error, a bomb raises its own class.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def photo_image(photo: Photo) -> str:
    """The location to read a photo's image from: its URL, or its file as a `LocalImage` when its source is one
    whose photos are files (the folder source: inside the folder; the demo: inside the installed package).
    Any other local path stays a plain str, which `fetch_image_bytes` refuses."""
    location = photo.get("image_url") or ""
    if not location or is_url(location):
        return location
    root = _local_root(photo, location)
    return LocalImage(location, root) if root else location


def _local_root(photo: Photo, location: str) -> str:
    if photo.get("source") == "folder" and photo.get("name") and location.endswith("/" + photo["name"]):
        return location[: -len(photo["name"]) - 1] or "/"
    if photo.get("source") == "demo":
        return str(demo_image_dir() or "")
    return ""


def demo_image_dir() -> Optional[Path]:
    """The installed scikit-image's sample-data folder, where the demo photos are (found without importing
    scikit-image); None when it is not installed."""
    spec = importlib.util.find_spec("skimage")
    return Path(spec.origin).parent / "data" if spec is not None and spec.origin is not None else None


def load_image(
    location: str,
    max_side: Optional[int] = None,
    *,
    draft: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Image.Image:
    """An upright RGB image from an http(s) URL or local path, shrunk to fit `max_side` if given.

    `draft` lets a JPEG decode at a reduced scale (no less than twice `max_side`): much faster for
    thumbnails and global features, and left off where pixels must match training exactly.
    """
    data = fetch_image_bytes(location, max_bytes, timeout_s)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if draft and max_side:
                opened.draft("RGB", (2 * max_side, 2 * max_side))
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except DECODE_ERRORS as exc:
        raise ImageFetchError(f"image could not be decoded ({type(exc).__name__}): {location}") from None
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    return image
