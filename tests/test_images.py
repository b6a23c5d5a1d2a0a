"""The one image loader: every consumer sees a phone photo upright, and every bad image is `bad_image`."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phototagger.http import LocalImage
from phototagger.output import thumbnails
from phototagger.training import curate, vlm
from phototagger.http import ImageFetchError
from phototagger.images import load_image
from phototagger.prompting.providers import make_provider

ORIENTATION = 0x0112
ROTATE_CW = 6  # EXIF: the camera was turned; show the stored pixels turned 90 degrees clockwise


def stripes(width: int, height: int, vertical: bool, seed: int) -> Image.Image:
    """Grey noise with dark stripes every 6 pixels, vertical or horizontal."""
    pixels = np.random.default_rng(seed).normal(170, 10, (height, width, 3))
    if vertical:
        pixels[:, ::6] *= 0.2
    else:
        pixels[::6, :] *= 0.2
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def phone_photo(path: Path, stored: Image.Image) -> Path:
    """A JPEG whose pixels are stored sideways with EXIF orientation 6, as phones write them."""
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_CW
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


@pytest.fixture
def sideways(tmp_path: Path) -> tuple[str, Image.Image]:
    """A 96 x 64 stored JPEG (orientation 6) and the upright 64 x 96 picture a viewer shows."""
    path = phone_photo(tmp_path / "phone.jpg", stripes(96, 64, vertical=True, seed=1))
    with Image.open(path) as stored:
        upright = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    return LocalImage(path, path.parent), upright


def test_the_loader_turns_a_phone_photo_upright(sideways):
    location, upright = sideways
    image = load_image(location)
    assert image.size == (64, 96)
    assert np.array_equal(np.asarray(image), np.asarray(upright))


def test_training_curation_and_thumbnails_see_a_phone_photo_upright(sideways):
    from phototagger.training.train import PhotoChats

    location, _ = sideways
    example = {"photo_id": "phone", "messages": [vlm.user_message("Tag this photo.", location)], "ground_truth_tags": ["x"]}
    assert PhotoChats([example], vlm.DEFAULT_MAX_PIXELS)[0]["image"].size == (64, 96)

    check = curate.validate_photo({"id": "phone", "image_url": location, "ground_truth_tags": ["a", "b", "c"]}, min_tags=1, min_side=80)
    assert check.reason.startswith("too_small: 64x96 px")

    uri = thumbnails.thumbnail_data_uri(location, size=48)
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.size == (32, 48)


def test_knn_describes_a_phone_photo_as_it_is_shown(tmp_path):
    """Stored with vertical stripes and orientation 6, the photo shows horizontal stripes."""
    history = []
    for i, vertical in enumerate((False, False, True, True)):
        path = tmp_path / f"h{i}.png"
        stripes(64, 64, vertical, seed=10 + i).save(path)
        history.append({"id": f"h{i}", "image_url": LocalImage(path, tmp_path), "ground_truth_tags": ["vertical" if vertical else "horizontal"]})
    query = phone_photo(tmp_path / "query.jpg", stripes(64, 64, vertical=True, seed=99))

    answer = make_provider("knn", "jec", history=history, neighbours=1).complete("ignored", LocalImage(query, tmp_path), photo_id="new")
    assert json.loads(answer.text)["tags"] == ["horizontal"]


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A PNG that declares side x side pixels in a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_a_bad_image_for_every_consumer(tmp_path):
    bomb = LocalImage(bomb_png(tmp_path / "bomb.png"), tmp_path)
    with pytest.raises(ImageFetchError, match="DecompressionBombError") as caught:
        load_image(bomb)
    assert caught.value.error_class == "bad_image"

    assert thumbnails.thumbnail_data_uri(bomb) is None
    good = tmp_path / "good.png"
    stripes(32, 32, vertical=True, seed=3).save(good)
    history = [{"id": "bomb", "image_url": bomb, "ground_truth_tags": ["boom"]}, {"id": "good", "image_url": LocalImage(good, tmp_path), "ground_truth_tags": ["fine"]}]
    answer = make_provider("knn", "jec", history=history, neighbours=1).complete("ignored", LocalImage(good, tmp_path), photo_id="new")
    assert json.loads(answer.text)["tags"] == ["fine"]
