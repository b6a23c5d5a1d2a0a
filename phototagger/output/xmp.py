"""XMP sidecars: read the keywords a sidecar holds and merge ours in without losing anything else.

Photo tools read keywords from three XMP properties, so we write all three:
- `dc:subject` (rdf:Bag): flat keywords, read by every tool (Lightroom, darktable, digiKam, exiftool).
- `digiKam:TagsList` (rdf:Seq): digiKam's tag paths, levels separated by "/".
- `lr:hierarchicalSubject` (rdf:Bag): Lightroom's keyword paths, levels separated by "|"
  (darktable reads and writes it too).

Tags are flat by default: "cat" lands as "cat" in all three. With a `prefix` ("Photo Tagger", or
"AI/Photo Tagger" for two levels) the path fields file them under it ("Photo Tagger/cat",
"Photo Tagger|cat") so a user's own keyword tree stays apart, while `dc:subject` keeps the plain
"cat" (a prefix describes where a tag came from, not the photo). A tag given with its parents
(["animal", "cat"], from the vocabulary) is a path of its own: "animal|cat", "animal/cat", and both
"animal" and "cat" in `dc:subject`, as Lightroom exports a keyword with its containing keywords. A separator inside a tag ("in/out")
becomes "-" in the path fields, so it does not invent a level.

Merging never drops what a sidecar holds: other namespaces, other properties, attribute-form
properties (`xmp:Rating="3"`), comments and namespace prefixes are kept. Our three properties end
up in their standard element form (Bag/Seq of rdf:li) at the place they had: existing items stay
first, in their order and with their attributes (an `xml:lang` on an item of a wrongly used Alt,
a value written in attribute form), and a new tag is appended only when no item already has the
same normalised value (tags.normalise_tag, per path level), so rewriting is idempotent.

Provenance (see phototagger/scoring/provenance.py): `write_sidecar(..., suggested_by=...)` also lists each tag
in the Photo Tagger namespace, `phototagger:Suggestions` (rdf:Bag of structures with `phototagger:Tag`,
`phototagger:Model`, `phototagger:Run`), and records the hierarchy it filed them under in
`phototagger:Hierarchy`. A tag listed once keeps its first model and run.

Sidecar names: "fullname" is `photo.jpg.xmp` (digiKam's and darktable's default), "basename" is
`photo.xmp` (Lightroom's; two images that differ only by extension then share one sidecar).
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from phototagger import __version__
from phototagger.scoring.tags import normalise_tag, xml_safe

NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "crs": "http://ns.adobe.com/camera-raw-settings/1.0/",
    "darktable": "http://darktable.sf.net/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "MicrosoftPhoto": "http://ns.microsoft.com/photo/1.0/",
    "phototagger": "http://ns.phototagger.org/xmp/1.0/",
}
_PREFIXES: dict[str, str] = {}  # uri -> prefix, what this module has told ElementTree to write


def _register(prefix: str, uri: str) -> None:
    ET.register_namespace(prefix, uri)
    _PREFIXES[uri] = prefix


for _prefix, _uri in NAMESPACES.items():
    _register(_prefix, _uri)

_X = "{%s}" % NAMESPACES["x"]
_RDF = "{%s}" % NAMESPACES["rdf"]
XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
XPACKET_END = '<?xpacket end="w"?>'
NAMINGS = ("fullname", "basename")
# What XML 1.0 forbids, as UTF-8 bytes (C0 controls but tab/LF/CR, U+FFFE/FFFF, lone surrogates)
# and as character references: an older writer could put them into a keyword.
_FORBIDDEN_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]|\xef\xbf[\xbe\xbf]|\xed[\xa0-\xbf][\x80-\xbf]")
_CHAR_REF = re.compile(rb"&#(?:x([0-9a-fA-F]+)|([0-9]+));")
TOOLKIT = "Photo Tagger"  # the x:xmptk of a sidecar we created; a photo tool that rewrites it puts its own


@dataclass(frozen=True)
class KeywordField:
    """One keyword property: its qualified name, its array type, and its path separator (None: flat)."""

    name: str  # "dc:subject"
    container: str  # "Bag" or "Seq"
    separator: Optional[str]

    @property
    def tag(self) -> str:
        prefix, local = self.name.split(":")
        return "{%s}%s" % (NAMESPACES[prefix], local)


FIELDS = (
    KeywordField("dc:subject", "Bag", None),
    KeywordField("digiKam:TagsList", "Seq", "/"),
    KeywordField("lr:hierarchicalSubject", "Bag", "|"),
)


_PT = "{%s}" % NAMESPACES["phototagger"]
SUGGESTIONS = "phototagger:Suggestions"


@dataclass(frozen=True)
class Suggestion:
    """One tag a model suggested for a photo, as the Photo Tagger namespace records it."""

    tag: str
    model: str = ""  # "openai:gpt-4o-mini"
    run: str = ""  # "PromptModels/1712345678", or "folder:/path" for export_tags.py --folder


@dataclass
class Packet:
    """What an XMP packet says about keywords: the three fields, its toolkit, and our provenance record."""

    fields: dict[str, list[str]]
    toolkit: str  # `x:xmptk`, e.g. "Image::ExifTool 12.57"; "" when it names none
    suggestions: list[Suggestion] = field(default_factory=list)
    hierarchy: Optional[str] = None  # the root suggestions were filed under ("AI"; "" flat); None: no record


class XmpError(Exception):
    """A sidecar that cannot be read or merged into; it is left untouched."""


@dataclass
class SidecarChange:
    """What merging tags into one sidecar did (or would do, in a dry run)."""

    path: Path
    created: bool  # no sidecar existed before
    added: dict[str, list[str]] = field(default_factory=dict)  # field name -> values appended
    repaired: bool = False  # it was ill-formed only by characters XML forbids, which were dropped

    @property
    def changed(self) -> bool:
        return self.repaired or any(self.added.values())


def sidecar_path(image: Path | str, naming: str = "fullname") -> Path:
    """`photo.jpg.xmp` ("fullname") or `photo.xmp` ("basename") next to `image`."""
    image = Path(image)
    if naming == "fullname":
        return image.with_name(image.name + ".xmp")
    if naming == "basename":
        return image.with_suffix(".xmp")
    raise ValueError(f"unknown sidecar naming {naming!r}: use one of {', '.join(NAMINGS)}")


def field_values(tags: Iterable[str | Sequence[str]], prefix: str = "") -> dict[str, list[str]]:
    """The values each keyword field gets for `tags`, flat or under `prefix` ("/" between its levels).

    A tag given as a sequence of levels, root first (["animal", "cat"]: the vocabulary's parents), is a
    keyword path: each level goes into dc:subject, the whole path into the path fields ("animal|cat").
    """
    levels = [level.strip() for level in xml_safe(prefix).split("/") if level.strip()]
    paths = [[level for level in (xml_safe(t).strip() for t in ([tag] if isinstance(tag, str) else tag) if t) if level]
             for tag in tags if tag]
    paths = [path for path in paths if path]
    values = {}
    for kf in FIELDS:
        if kf.separator is None:
            values[kf.name] = list(dict.fromkeys(level for path in paths for level in path))
        else:
            values[kf.name] = [kf.separator.join([*levels, *(level.replace(kf.separator, "-") for level in path)]) for path in paths]
    return values


def read_keywords(path: Path | str) -> dict[str, list[str]]:
    """The values of dc:subject, digiKam:TagsList and lr:hierarchicalSubject in a sidecar, in order."""
    return read_packet(Path(path).read_bytes(), str(path)).fields


def read_packet(data: bytes, source: str) -> Packet:
    """The keyword fields, toolkit and Photo Tagger record of an XMP packet (a sidecar's bytes or one
    embedded in an image)."""
    root = _parse(data, source)[0]
    rdf = _rdf_of(root)
    found = {}
    for kf in FIELDS:
        items = [item for _, _, items in _occurrences(rdf, kf.tag) for item in items]
        found[kf.name] = [_item_value(item) for item in items]
    suggestions = [s for _, _, items in _occurrences(rdf, _PT + "Suggestions") for s in map(_suggestion_of, items) if s.tag]
    return Packet(found, root.get(_X + "xmptk", ""), suggestions, _hierarchy_of(rdf))


def merge_keywords(existing: Optional[bytes], tags: Iterable[str | Sequence[str]], prefix: str = "", source: str = "sidecar",
                   suggested_by: Optional[Suggestion] = None) -> tuple[bytes, dict[str, list[str]]]:
    """The sidecar bytes with `tags` merged in (a new packet when `existing` is None), and what was added.

    With `suggested_by` (its model and run; its tag is ignored) each tag is also listed as a suggestion."""
    data, added, _ = _merge(existing, tags, prefix, source, suggested_by)
    return data, added


def _merge(existing: Optional[bytes], tags: Iterable[str | Sequence[str]], prefix: str, source: str,
           suggested_by: Optional[Suggestion] = None) -> tuple[bytes, dict[str, list[str]], bool]:
    """`merge_keywords`, and whether `existing` had to be repaired to be read."""
    repaired = False
    if existing is None:
        root = _new_root()
    else:
        root, repaired = _parse(existing, source)
        if root.tag == _RDF + "RDF":
            wrapper = ET.Element(_X + "xmpmeta")
            wrapper.append(root)
            root = wrapper
    rdf = _rdf_of(root)
    tags = [tag for tag in tags if tag]
    values = field_values(tags, prefix)
    added = {kf.name: _merge_field(rdf, kf, values[kf.name]) for kf in FIELDS}
    if suggested_by is not None:
        leaves = [xml_safe(tag if isinstance(tag, str) else tag[-1]).strip() for tag in tags]
        added[SUGGESTIONS] = _merge_suggestions(rdf, [Suggestion(leaf, suggested_by.model, suggested_by.run) for leaf in leaves if leaf],
                                                "/".join(level.strip() for level in xml_safe(prefix).split("/") if level.strip()))
    root.tail = None
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return f"{XPACKET_BEGIN}\n{body}\n{XPACKET_END}\n".encode("utf-8"), added, repaired


def write_sidecar(path: Path | str, tags: Iterable[str | Sequence[str]], prefix: str = "", dry_run: bool = False,
                  suggested_by: Optional[Suggestion] = None) -> SidecarChange:
    """Merge `tags` into the sidecar at `path` (created if missing), written atomically; with `suggested_by`,
    listed as that model's suggestions too.

    An unchanged sidecar is not rewritten, so its modification time stays as it was: photo tools
    take a newer sidecar as a metadata change to import. One made ill-formed by characters XML
    forbids is rewritten without them (see `_parse`).
    """
    path = Path(path)
    existing = path.read_bytes() if path.exists() else None
    data, added, repaired = _merge(existing, tags, prefix, str(path), suggested_by)
    change = SidecarChange(path=path, created=existing is None, added=added, repaired=repaired)
    if change.changed and not dry_run:
        _atomic_write(path, data)
    return change


# -- parsing --------------------------------------------------------------------------------------


class _PrefixRecorder(ET.TreeBuilder):
    """A tree builder that also notes the namespace prefixes a file declares."""

    def __init__(self) -> None:
        super().__init__(insert_comments=True, insert_pis=True)
        self.prefixes: dict[str, str] = {}

    def start_ns(self, prefix: str, uri: str) -> None:
        self.prefixes.setdefault(uri, prefix)

    def doctype(self, name: str, pubid: Optional[str], system: Optional[str]) -> None:
        raise _DoctypeRefused


class _DoctypeRefused(Exception):
    """XMP never declares a DOCTYPE; one that does may define entities to expand, so it is not read."""


def _parse(data: bytes, source: str) -> tuple[ET.Element, bool]:
    """The packet's root, and whether it was read only after dropping characters XML forbids.

    A keyword holding such a character (written raw or as `&#27;`) makes the whole file
    ill-formed; dropping those characters, and nothing else, recovers every other keyword. A file
    that parses as it is is never altered.
    """
    try:
        try:
            builder, root = _parse_xml(data)
            repaired = False
        except ET.ParseError as exc:
            try:
                builder, root = _parse_xml(_without_forbidden(data))
            except ET.ParseError:
                raise XmpError(f"{source} is not well-formed XML ({exc}); fix it or move it away, it was left as it is") from exc
            repaired = True
    except _DoctypeRefused:
        raise XmpError(f"{source} declares a DOCTYPE, which XMP never has; it was not read and left as it is") from None
    if root.tag not in (_X + "xmpmeta", _X + "xapmeta", _RDF + "RDF"):
        raise XmpError(f"{source} is not an XMP packet (root element {root.tag}); it was left as it is")
    _keep_prefixes(builder.prefixes)
    return root, repaired


def _parse_xml(data: bytes) -> tuple[_PrefixRecorder, ET.Element]:
    builder = _PrefixRecorder()
    parser = ET.XMLParser(target=builder)
    parser.feed(data)
    return builder, parser.close()


def _without_forbidden(data: bytes) -> bytes:
    def keep_allowed(ref: re.Match[bytes]) -> bytes:
        code = int(ref.group(1), 16) if ref.group(1) else int(ref.group(2))
        return ref.group(0) if code <= 0x10FFFF and xml_safe(chr(code)) else b""

    return _CHAR_REF.sub(keep_allowed, _FORBIDDEN_BYTES.sub(b"", data))


def _keep_prefixes(prefixes: dict[str, str]) -> None:
    """Make ElementTree write a file's own prefixes back (its prefix registry is process-wide).

    A prefix is only taken when neither it nor its URI is registered already, so one odd file
    cannot rename `dc` for every later sidecar.
    """
    for uri, prefix in prefixes.items():
        if not prefix or uri in _PREFIXES or prefix in _PREFIXES.values():
            continue
        try:
            _register(prefix, uri)
        except ValueError:  # "ns0"-style prefixes are ElementTree's own; it names those itself
            continue


def _new_root() -> ET.Element:
    root = ET.Element(_X + "xmpmeta", {_X + "xmptk": f"{TOOLKIT} {__version__}"})
    rdf = ET.SubElement(root, _RDF + "RDF")
    ET.SubElement(rdf, _RDF + "Description", {_RDF + "about": ""})
    return root


def _rdf_of(root: ET.Element) -> ET.Element:
    rdf = root if root.tag == _RDF + "RDF" else root.find(_RDF + "RDF")
    if rdf is None:
        rdf = ET.SubElement(root, _RDF + "RDF")
    return rdf


# -- merging --------------------------------------------------------------------------------------


def _occurrences(rdf: ET.Element, tag: str) -> list[tuple[ET.Element, Optional[ET.Element], list[ET.Element]]]:
    """Every place `tag` is set, in document order: (description, property element or None for the
    attribute form, its items as rdf:li elements)."""
    found = []
    for desc in rdf.findall(_RDF + "Description"):
        if tag in desc.attrib:
            found.append((desc, None, [_li(desc.attrib[tag])]))
        for prop in desc.findall(tag):
            containers = [c for c in prop if c.tag in (_RDF + "Bag", _RDF + "Seq", _RDF + "Alt")]
            if containers:
                items = [li for c in containers for li in c.findall(_RDF + "li")]
            else:
                items = [_li(prop.text or "")] if (prop.text or "").strip() else []
            found.append((desc, prop, items))
    return found


def _li(text: str) -> ET.Element:
    item = ET.Element(_RDF + "li")
    item.text = text
    return item


def _item_value(item: ET.Element) -> str:
    """An item's text; for an item with qualifiers (rdf:parseType="Resource"), its rdf:value."""
    value = item.find(_RDF + "value")
    return (value.text if value is not None else item.text) or ""


def _key(value: str, separator: Optional[str]) -> tuple[str, ...]:
    levels = value.split(separator) if separator else [value]
    return tuple(normalise_tag(level) for level in levels)


def _merge_field(rdf: ET.Element, kf: KeywordField, values: list[str]) -> list[str]:
    """Gather every occurrence of the field into one element-form array, append the new values."""
    occurrences = _occurrences(rdf, kf.tag)
    descriptions = rdf.findall(_RDF + "Description")
    if not values and not occurrences:
        return []
    if occurrences:
        target = occurrences[0][0]
        in_target = [prop for desc, prop, _ in occurrences if desc is target and prop is not None]
        position = list(target).index(in_target[0]) if in_target else len(target)
    else:
        target = descriptions[0] if descriptions else ET.SubElement(rdf, _RDF + "Description", {_RDF + "about": ""})
        position = len(target)
    items = [item for _, _, items in occurrences for item in items]
    for desc, prop, _ in occurrences:
        if prop is None:
            del desc.attrib[kf.tag]
        else:
            desc.remove(prop)
    seen = {_key(_item_value(item), kf.separator) for item in items}
    added = []
    for value in values:
        key = _key(value, kf.separator)
        if key not in seen:
            seen.add(key)
            items.append(_li(value))
            added.append(value)
    prop = ET.Element(kf.tag)
    ET.SubElement(prop, _RDF + kf.container).extend(items)
    target.insert(position, prop)
    return added


def _suggestion_of(item: ET.Element) -> Suggestion:
    """A suggestion from an rdf:li structure, in any of the forms RDF allows (parseType="Resource",
    a nested rdf:Description, or properties as attributes), as we or a photo tool wrote it."""
    holders = [item, *item.findall(_RDF + "Description")]

    def value(name: str) -> str:
        for holder in holders:
            if _PT + name in holder.attrib:
                return holder.attrib[_PT + name].strip()
            child = holder.find(_PT + name)
            if child is not None:
                return (child.text or "").strip()
        return ""

    return Suggestion(value("Tag"), value("Model"), value("Run"))


def _hierarchy_of(rdf: ET.Element) -> Optional[str]:
    for desc in rdf.findall(_RDF + "Description"):
        if _PT + "Hierarchy" in desc.attrib:
            return desc.attrib[_PT + "Hierarchy"].strip()
        prop = desc.find(_PT + "Hierarchy")
        if prop is not None:
            return (prop.text or "").strip()
    return None


def _merge_suggestions(rdf: ET.Element, suggestions: list[Suggestion], hierarchy: str) -> list[str]:
    """Append the suggestions not listed yet to phototagger:Suggestions and record the hierarchy; the tags added."""
    occurrences = _occurrences(rdf, _PT + "Suggestions")
    descriptions = rdf.findall(_RDF + "Description")
    target = occurrences[0][0] if occurrences else (descriptions[0] if descriptions else ET.SubElement(rdf, _RDF + "Description", {_RDF + "about": ""}))
    items = [item for _, _, items in occurrences for item in items]
    for desc, prop, _ in occurrences:
        if prop is None:
            del desc.attrib[_PT + "Suggestions"]
        else:
            desc.remove(prop)
    seen = {normalise_tag(_suggestion_of(item).tag) for item in items}
    added = []
    for suggestion in suggestions:
        key = normalise_tag(suggestion.tag)
        if key and key not in seen:
            seen.add(key)
            item = ET.Element(_RDF + "li", {_RDF + "parseType": "Resource"})
            for name, text in (("Tag", suggestion.tag), ("Model", suggestion.model), ("Run", suggestion.run)):
                ET.SubElement(item, _PT + name).text = xml_safe(text)
            items.append(item)
            added.append(suggestion.tag)
    prop = ET.SubElement(target, _PT + "Suggestions")
    ET.SubElement(prop, _RDF + "Bag").extend(items)
    for desc in descriptions:
        desc.attrib.pop(_PT + "Hierarchy", None)
        for old in desc.findall(_PT + "Hierarchy"):
            desc.remove(old)
    ET.SubElement(target, _PT + "Hierarchy").text = hierarchy
    return added


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, so a crash never leaves half a sidecar.

    A rewritten sidecar keeps its permissions; a new one gets the usual ones (0666 less the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if path.exists():
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
