"""The keywords a photographer already gave a photo in Lightroom, digiKam or darktable, as ground truth.

Photo tools keep keywords in three XMP properties (`xmp.FIELDS`), either in a sidecar or inside the
image, and JPEG/TIFF files may also carry IPTC-IIM Keywords (2:25). The first place that holds any
keyword wins, in this order:
1. the sidecar `photo.jpg.xmp` (digiKam, darktable), then `photo.xmp` (Lightroom): a sidecar is what
   the photo tool wrote last;
2. the XMP packet inside the image (JPEG, PNG, TIFF, WebP);
3. the image's IPTC Keywords (the Metadata Working Group's guidance prefers XMP over IPTC-IIM).
Within that place the three XMP fields are merged; a path keyword gives its leaf ("animal|cat" in
`lr:hierarchicalSubject`, "pets/cat" in `digiKam:TagsList` give "cat"), and darktable's own
bookkeeping paths (`darktable|format|jpg`, `darktable|changed`) are not keywords and are left out.
Each keyword keeps its origin, the place and field it was read from ("xmp-sidecar:dc:subject").
An unreadable sidecar or metadata block is noted and the next place is read; nothing is rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image, IptcImagePlugin

from phototagger.output import xmp

SIDECAR = "xmp-sidecar"
EMBEDDED = "xmp-embedded"
IPTC = "iptc"
PLACE_NAMES = {SIDECAR: "XMP sidecars", EMBEDDED: "XMP embedded in the image", IPTC: "IPTC Keywords in the image"}
IPTC_KEYWORDS = (2, 25)
IPTC_CHARSET = (1, 90)
IPTC_UTF8 = b"\x1b%G"  # ISO 2022 escape for UTF-8 in the IPTC envelope's CodedCharacterSet
TOOL_PATHS = ("darktable",)  # roots of the paths a tool files its own state under


@dataclass
class PhotoKeywords:
    """What one photo's own metadata says about it."""

    place: str = ""  # SIDECAR, EMBEDDED, IPTC; "" when the photo holds no keywords
    keywords: list[tuple[str, str]] = field(default_factory=list)  # (keyword as written, origin)
    ours: bool = False  # the sidecar was created by our export and no photo tool has rewritten it since
    notes: list[str] = field(default_factory=list)  # metadata that could not be read, per place


def read_photo_keywords(path: Path, image: Image.Image) -> PhotoKeywords:
    """The keywords of the image at `path` (`image` is it, opened), from the first place that has any."""
    found = PhotoKeywords()
    for sidecar in (xmp.sidecar_path(path, "fullname"), xmp.sidecar_path(path, "basename")):
        if sidecar.is_file():
            try:
                data = sidecar.read_bytes()
            except OSError as exc:
                found.notes.append(f"{sidecar.name} cannot be read ({exc.strerror})")
                continue
            keywords, toolkit = _from_packet(data, SIDECAR, sidecar.name, found.notes)
            if keywords:
                found.place, found.keywords = SIDECAR, keywords
                found.ours = toolkit.startswith(xmp.TOOLKIT)
                return found
    packet = image.info.get("xmp")
    if packet:
        data = packet.encode("utf-8") if isinstance(packet, str) else bytes(packet)
        keywords, _ = _from_packet(data.rstrip(b"\x00 \r\n"), EMBEDDED, f"the XMP packet in {path.name}", found.notes)
        if keywords:
            found.place, found.keywords = EMBEDDED, keywords
            return found
    keywords = _from_iptc(image, path.name, found.notes)
    if keywords:
        found.place, found.keywords = IPTC, keywords
    return found


def _from_packet(data: bytes, place: str, where: str, notes: list[str]) -> tuple[list[tuple[str, str]], str]:
    try:
        fields, toolkit = xmp.read_packet(data, where)
    except xmp.XmpError as exc:
        notes.append(str(exc))
        return [], ""
    keywords = []
    for kf in xmp.FIELDS:
        for value in fields[kf.name]:
            leaf = _leaf(value, kf.separator)
            if leaf:
                keywords.append((leaf, f"{place}:{kf.name}"))
    return keywords, toolkit


def _leaf(value: str, separator: Optional[str]) -> str:
    """The keyword a path stands for: its last level; "" for a tool's bookkeeping path."""
    if separator is None:
        return value
    levels = [level.strip() for level in value.split(separator) if level.strip()]
    if not levels or (len(levels) > 1 and levels[0] in TOOL_PATHS):
        return ""
    return levels[-1]


def _from_iptc(image: Image.Image, name: str, notes: list[str]) -> list[tuple[str, str]]:
    try:
        info = IptcImagePlugin.getiptcinfo(image) or {}
    except (SyntaxError, OSError, ValueError) as exc:
        notes.append(f"the IPTC block in {name} is unreadable ({exc})")
        return []
    values = info.get(IPTC_KEYWORDS, [])
    values = values if isinstance(values, list) else [values]
    utf8 = info.get(IPTC_CHARSET) == IPTC_UTF8
    return [(_decode(value, utf8), f"{IPTC}:keywords") for value in values]


def _decode(value: bytes, utf8: bool) -> str:
    """IPTC text is UTF-8 when the envelope says so; otherwise most writers (exiftool included) use
    Latin-1/cp1252, though some write UTF-8 without saying it, so valid UTF-8 is taken as such."""
    if utf8:
        return value.decode("utf-8", errors="replace")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("cp1252", errors="replace")
