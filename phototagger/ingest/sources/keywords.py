"""The keywords a photographer already gave a photo in Lightroom, digiKam or darktable, as ground truth.

Photo tools keep keywords in three XMP properties (`xmp.FIELDS`), in a sidecar (`photo.jpg.xmp`:
digiKam, darktable; `photo.xmp`: Lightroom) or inside the image (JPEG, PNG, TIFF, WebP), and JPEG/TIFF
files may also carry IPTC-IIM Keywords (2:25). Every place is read and merged: the sidecar our export
wrote beside an image never hides the keywords inside it. A path keyword gives its leaf ("animal|cat"
in `lr:hierarchicalSubject`, "pets/cat" in `digiKam:TagsList` give "cat"); darktable's bookkeeping
paths (`darktable|format|jpg`) are not keywords.

What a model suggested is set apart (provenance.py): a keyword under the `AI` hierarchy or listed in
the Photo Tagger namespace and not confirmed is the model's, never ground truth, wherever it appears;
a suggestion the photo no longer carries is a rejection. A sidecar our export created before it
recorded provenance (our toolkit, no record) holds nothing but a model's tags, so all of it is held back.
Each keyword keeps its origin, the place and field it was read from ("xmp-sidecar:dc:subject").
An unreadable sidecar or metadata block is noted and the other places are read; nothing is rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image, IptcImagePlugin

from phototagger.scoring import provenance
from phototagger.output import xmp

SIDECAR = "xmp-sidecar"
EMBEDDED = "xmp-embedded"
IPTC = "iptc"
PLACE_NAMES = {SIDECAR: "XMP sidecars", EMBEDDED: "XMP embedded in the image", IPTC: "IPTC Keywords in the image"}
IPTC_KEYWORDS = (2, 25)
IPTC_CHARSET = (1, 90)
IPTC_UTF8 = b"\x1b%G"  # ISO 2022 escape for UTF-8 in the IPTC envelope's CodedCharacterSet


@dataclass
class PhotoKeywords:
    """What one photo's own metadata says about it."""

    places: list[str] = field(default_factory=list)  # SIDECAR, EMBEDDED, IPTC that gave ground truth, in that order
    keywords: list[tuple[str, str]] = field(default_factory=list)  # (keyword as written, origin): the photographer's
    confirmed: list[str] = field(default_factory=list)  # model suggestions the photographer confirmed (normalised)
    pending: list[str] = field(default_factory=list)  # model suggestions not reviewed yet: held back
    rejected: list[str] = field(default_factory=list)  # model suggestions the photographer deleted
    ours: bool = False  # a sidecar our export created before provenance was recorded: all of it held back
    notes: list[str] = field(default_factory=list)  # metadata that could not be read, per place


def read_photo_keywords(path: Path, image: Optional[Image.Image] = None) -> PhotoKeywords:
    """The keywords of the image at `path` (`image` is it, opened; opened here when not given), every place merged."""
    if image is None:
        with Image.open(path) as opened:
            return read_photo_keywords(path, opened)
    found = PhotoKeywords()
    values: list[provenance.KeywordValue] = []
    suggested: list[str] = []
    roots = {provenance.AI_ROOT}
    held_back: list[str] = []  # every keyword of a legacy sidecar of ours
    for sidecar in dict.fromkeys((xmp.sidecar_path(path, "fullname"), xmp.sidecar_path(path, "basename"))):
        if sidecar.is_file():
            try:
                data = sidecar.read_bytes()
            except OSError as exc:
                found.notes.append(f"{sidecar.name} cannot be read ({exc.strerror})")
                continue
            packet = _packet(data, sidecar.name, found.notes)
            if packet is None:
                continue
            if packet.toolkit.startswith(xmp.TOOLKIT) and packet.hierarchy is None:
                legacy = _values(packet, SIDECAR)
                found.ours = found.ours or bool(legacy)
                held_back += [kv.value.split(kv.separator)[-1] if kv.separator else kv.value for kv in legacy]
                continue
            values += _values(packet, SIDECAR)
            suggested += [s.tag for s in packet.suggestions]
            roots.add(packet.hierarchy or provenance.AI_ROOT)
    embedded = image.info.get("xmp")
    if embedded:
        data = embedded.encode("utf-8") if isinstance(embedded, str) else bytes(embedded)
        packet = _packet(data.rstrip(b"\x00 \r\n"), f"the XMP packet in {path.name}", found.notes)
        if packet is not None:
            values += _values(packet, EMBEDDED)
            suggested += [s.tag for s in packet.suggestions]
            roots.add(packet.hierarchy or provenance.AI_ROOT)
    values += [provenance.KeywordValue(value, None, f"{IPTC}:keywords") for value in _from_iptc(image, path.name, found.notes)]
    review = provenance.classify(values, [*suggested, *held_back], sorted(roots))
    found.keywords, found.confirmed, found.pending, found.rejected = review.own, review.confirmed, review.pending, review.rejected
    found.places = [place for place in PLACE_NAMES if any(origin.startswith(place + ":") for _, origin in review.own)]
    return found


def _packet(data: bytes, where: str, notes: list[str]) -> Optional[xmp.Packet]:
    try:
        return xmp.read_packet(data, where)
    except xmp.XmpError as exc:
        notes.append(str(exc))
        return None


def _values(packet: xmp.Packet, place: str) -> list[provenance.KeywordValue]:
    return [provenance.KeywordValue(value, kf.separator, f"{place}:{kf.name}") for kf in xmp.FIELDS for value in packet.fields[kf.name]]


def _from_iptc(image: Image.Image, name: str, notes: list[str]) -> list[str]:
    try:
        info = IptcImagePlugin.getiptcinfo(image) or {}
    except (SyntaxError, OSError, ValueError) as exc:
        notes.append(f"the IPTC block in {name} is unreadable ({exc})")
        return []
    values = info.get(IPTC_KEYWORDS, [])
    values = values if isinstance(values, list) else [values]
    utf8 = info.get(IPTC_CHARSET) == IPTC_UTF8
    return [_decode(value, utf8) for value in values]


def _decode(value: bytes, utf8: bool) -> str:
    """IPTC text is UTF-8 when the envelope says so; otherwise most writers (exiftool included) use
    Latin-1/cp1252, though some write UTF-8 without saying it, so valid UTF-8 is taken as such."""
    if utf8:
        return value.decode("utf-8", errors="replace")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("cp1252", errors="replace")
