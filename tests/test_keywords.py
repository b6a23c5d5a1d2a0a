"""A photographer's own keywords (XMP sidecars, embedded XMP, IPTC) as the folder source's ground truth."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from phototagger.output import xmp
from phototagger.ingest.sources.folder import FolderSource

needs_exiftool = pytest.mark.skipif(
    shutil.which("exiftool") is None,
    reason="exiftool not installed: these tests read what a third-party writer wrote (run_tests.sh installs it; "
    "or apt-get install libimage-exiftool-perl)",
)


def make_image(path: Path, fmt: str | None = None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), (40, 90, 160)).save(path, fmt, **save)
    return path


def exiftool(*args: str) -> None:
    subprocess.run(["exiftool", "-q", "-overwrite_original", *args], check=True, capture_output=True)


def fetch(folder: Path) -> tuple[dict[str, dict], list[str]]:
    source = FolderSource(str(folder))
    photos = source.fetch(set(), 100)
    return {Path(p["image_url"]).name: p for p in photos}, source.notes


@needs_exiftool
def test_exiftool_sidecars_of_both_namings_give_ground_truth_with_the_field_of_each_tag(tmp_path):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b.jpg")
    exiftool(
        "-o", str(tmp_path / "a.jpg.xmp"),
        "-XMP-dc:Subject=Cat", "-XMP-dc:Subject=Black cat",
        "-XMP-lr:HierarchicalSubject=animal|cat", "-XMP-lr:HierarchicalSubject=places|home|sofa",
        "-XMP-lr:HierarchicalSubject=darktable|format|jpg",
        "-XMP-digiKam:TagsList=pets/kitten",
    )  # fmt: skip
    exiftool("-o", str(tmp_path / "b.xmp"), "-XMP-dc:Subject=beach", "-XMP-lr:HierarchicalSubject=nature|sea")

    photos, notes = fetch(tmp_path)

    assert photos["a.jpg"]["ground_truth_tags"] == ["cat", "black cat", "kitten", "sofa"]
    assert photos["a.jpg"]["tag_origin"] == {
        "cat": "xmp-sidecar:dc:subject",
        "black cat": "xmp-sidecar:dc:subject",
        "kitten": "xmp-sidecar:digiKam:TagsList",
        "sofa": "xmp-sidecar:lr:hierarchicalSubject",
    }
    assert photos["a.jpg"]["tag_provenance"] == dict.fromkeys(["cat", "black cat", "kitten", "sofa"], "user")
    assert photos["b.jpg"]["ground_truth_tags"] == ["beach", "sea"]
    assert "2 photos took their ground truth from their own keywords: 2 from XMP sidecars." in notes


@needs_exiftool
def test_iptc_keywords_in_a_jpeg_become_ground_truth_in_either_charset(tmp_path):
    make_image(tmp_path / "latin.jpg")
    make_image(tmp_path / "utf8.jpg")
    exiftool("-Keywords=Café", "-Keywords=street market", str(tmp_path / "latin.jpg"))  # exiftool's default: cp1252
    utf8 = ("-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8")
    exiftool(*utf8, "-Keywords=Straße", "-Keywords=東京", str(tmp_path / "utf8.jpg"))

    photos, notes = fetch(tmp_path)

    assert photos["latin.jpg"]["ground_truth_tags"] == ["café", "street market"]
    assert photos["utf8.jpg"]["ground_truth_tags"] == ["strasse", "東京"]  # casefold: "Straße" and "STRASSE" are one tag
    assert set(photos["utf8.jpg"]["tag_origin"].values()) == {"iptc:keywords"}
    assert "2 photos took their ground truth from their own keywords: 2 from IPTC Keywords in the image." in notes


@needs_exiftool
@pytest.mark.parametrize("name", ["a.jpg", "a.png", "a.tif", "a.webp"])
def test_xmp_embedded_by_exiftool_becomes_ground_truth(tmp_path, name):
    image = make_image(tmp_path / name)
    exiftool("-XMP-dc:Subject=mountain", "-XMP-lr:HierarchicalSubject=nature|lake", str(image))

    photos, _ = fetch(tmp_path)

    assert photos[name]["tag_origin"] == {"mountain": "xmp-embedded:dc:subject", "lake": "xmp-embedded:lr:hierarchicalSubject"}


@needs_exiftool
def test_a_sidecar_wins_over_embedded_xmp_which_wins_over_iptc(tmp_path):
    for name in ("sidecar.jpg", "embedded.jpg", "iptc.jpg"):
        exiftool("-Keywords=from iptc", str(make_image(tmp_path / name)))
    exiftool("-XMP-dc:Subject=from xmp", str(tmp_path / "sidecar.jpg"), str(tmp_path / "embedded.jpg"))
    exiftool("-o", str(tmp_path / "sidecar.jpg.xmp"), "-XMP-dc:Subject=from sidecar")

    photos, notes = fetch(tmp_path)

    assert {name: p["ground_truth_tags"] for name, p in photos.items()} == {
        "embedded.jpg": ["from xmp"],
        "iptc.jpg": ["from iptc"],
        "sidecar.jpg": ["from sidecar"],
    }
    assert (
        "3 photos took their ground truth from their own keywords: "
        "1 from XMP sidecars, 1 from XMP embedded in the image, 1 from IPTC Keywords in the image."
    ) in notes


@needs_exiftool
def test_our_export_sidecar_is_read_back_and_flagged_until_a_photo_tool_rewrites_it(tmp_path):
    image = make_image(tmp_path / "a.jpg")
    xmp.write_sidecar(xmp.sidecar_path(image), ["Cat", "sea"], prefix="Photo Tagger")

    photos, notes = fetch(tmp_path)
    assert photos["a.jpg"]["ground_truth_tags"] == ["cat", "sea"]
    assert any("export_tags.py wrote" in note and "a.jpg" in note for note in notes)

    exiftool("-XMP-dc:Subject+=dog", str(xmp.sidecar_path(image)))  # the user keywords it further in a photo tool
    photos, notes = fetch(tmp_path)
    assert photos["a.jpg"]["ground_truth_tags"] == ["cat", "sea", "dog"]
    assert not any("export_tags.py wrote" in note for note in notes)


def test_xmp_packet_written_into_a_jpeg_by_our_writer_becomes_ground_truth(tmp_path):
    packet, _ = xmp.merge_keywords(None, ["harbour", "boat"], prefix="Trips/Norway")
    make_image(tmp_path / "a.jpg", xmp=packet)

    photos, _ = fetch(tmp_path)

    assert photos["a.jpg"]["ground_truth_tags"] == ["harbour", "boat"]
    assert photos["a.jpg"]["tag_origin"]["boat"] == "xmp-embedded:dc:subject"


def test_a_tags_file_entry_wins_and_photos_it_does_not_list_read_their_own_keywords(tmp_path):
    for name in ("listed.jpg", "unlisted.jpg"):
        image = make_image(tmp_path / name)
        xmp.write_sidecar(xmp.sidecar_path(image), ["from sidecar"])
    (tmp_path / "tags.json").write_text(json.dumps({"listed.jpg": ["from tags file"]}))

    photos, _ = fetch(tmp_path)

    assert photos["listed.jpg"]["ground_truth_tags"] == ["from tags file"] and "tag_origin" not in photos["listed.jpg"]
    assert photos["unlisted.jpg"]["ground_truth_tags"] == ["from sidecar"]


def test_a_broken_sidecar_is_noted_and_the_keywords_inside_the_image_are_read(tmp_path):
    packet, _ = xmp.merge_keywords(None, ["forest"])
    make_image(tmp_path / "a.jpg", xmp=packet)
    (tmp_path / "a.jpg.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF")
    doctype = tmp_path / "b.jpg.xmp"
    make_image(tmp_path / "b.jpg")
    doctype.write_text(
        '<!DOCTYPE x [<!ENTITY k "secret">]><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        "<rdf:Description><dc:subject><rdf:Bag><rdf:li>&k;</rdf:li></rdf:Bag></dc:subject></rdf:Description>"
        "</rdf:RDF></x:xmpmeta>"
    )

    photos, notes = fetch(tmp_path)

    assert photos["a.jpg"]["ground_truth_tags"] == ["forest"]
    assert any(note.startswith("a.jpg: a.jpg.xmp is not well-formed XML") for note in notes)
    assert photos["b.jpg"]["ground_truth_tags"] == []
    assert any(note.startswith("b.jpg: b.jpg.xmp declares a DOCTYPE") for note in notes)
