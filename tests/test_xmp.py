"""XMP sidecars: what we write is read back by an XML parser, and a merge keeps what was there."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from phototagger.output import xmp

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "crs": "http://ns.adobe.com/camera-raw-settings/1.0/",
    "foo": "http://example.com/foo/1.0/",
}
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# Shaped like a Lightroom Classic sidecar: attribute-form simple properties, Seq/Alt/Bag arrays,
# a foreign namespace with its own element and attribute.
LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:foo="http://example.com/foo/1.0/"
   xmp:Rating="3"
   crs:Exposure2012="+0.35"
   foo:flag="on">
   <dc:creator><rdf:Seq><rdf:li>Jane Photographer</rdf:li></rdf:Seq></dc:creator>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Été à Goa</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Bag><rdf:li>Sunset</rdf:li><rdf:li>Cat</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|India|Goa</rdf:li></rdf:Bag></lr:hierarchicalSubject>
   <foo:notes><rdf:Bag><rdf:li foo:score="0.9">keep me</rdf:li></rdf:Bag></foo:notes>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def parse(path) -> ET.Element:
    return ET.parse(path).getroot()


def items(root: ET.Element, prop: str, container: str) -> list[str]:
    found = root.findall(f"rdf:RDF/rdf:Description/{prop}/rdf:{container}/rdf:li", NS)
    return [li.text for li in found]


def description(root: ET.Element) -> ET.Element:
    return root.find("rdf:RDF/rdf:Description", NS)


def test_new_sidecar_holds_the_tags_in_all_three_fields(tmp_path):
    path = tmp_path / "beach.jpg.xmp"
    change = xmp.write_sidecar(path, ["sea", "sand", "sky"])
    root = parse(path)
    assert change.created and change.changed
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    assert items(root, "dc:subject", "Bag") == ["sea", "sand", "sky"]
    assert items(root, "digiKam:TagsList", "Seq") == ["sea", "sand", "sky"]
    assert items(root, "lr:hierarchicalSubject", "Bag") == ["sea", "sand", "sky"]


def test_sidecar_is_a_valid_xpacket_in_utf8(tmp_path):
    path = tmp_path / "beach.xmp"
    xmp.write_sidecar(path, ["sea"])
    text = path.read_bytes().decode("utf-8")
    assert text.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta ')
    assert text.rstrip().endswith('<?xpacket end="w"?>')


def test_prefix_files_tags_under_it_in_the_path_fields_only(tmp_path):
    path = tmp_path / "cat.jpg.xmp"
    xmp.write_sidecar(path, ["cat", "fur"], prefix="AI/Photo Tagger")
    root = parse(path)
    assert items(root, "dc:subject", "Bag") == ["cat", "fur"]
    assert items(root, "digiKam:TagsList", "Seq") == ["AI/Photo Tagger/cat", "AI/Photo Tagger/fur"]
    assert items(root, "lr:hierarchicalSubject", "Bag") == ["AI|Photo Tagger|cat", "AI|Photo Tagger|fur"]


def test_a_separator_inside_a_tag_does_not_invent_a_level():
    values = xmp.field_values(["indoor/outdoor", "a|b"])
    assert values["dc:subject"] == ["indoor/outdoor", "a|b"]
    assert values["digiKam:TagsList"] == ["indoor-outdoor", "a|b"]
    assert values["lr:hierarchicalSubject"] == ["indoor/outdoor", "a-b"]


def test_merge_keeps_foreign_fields_attributes_and_prefixes(tmp_path):
    path = tmp_path / "goa.xmp"
    path.write_text(LIGHTROOM, encoding="utf-8")
    change = xmp.write_sidecar(path, ["cat", "beach"])
    root = parse(path)
    desc = description(root)
    assert not change.created
    assert desc.get(f"{{{NS['xmp']}}}Rating") == "3"
    assert desc.get(f"{{{NS['crs']}}}Exposure2012") == "+0.35"
    assert desc.get(f"{{{NS['foo']}}}flag") == "on"
    assert root.get("{adobe:ns:meta/}xmptk") == "Adobe XMP Core 7.0-c000"
    assert items(root, "dc:creator", "Seq") == ["Jane Photographer"]
    title = root.find("rdf:RDF/rdf:Description/dc:title/rdf:Alt/rdf:li", NS)
    assert (title.text, title.get(XML_LANG)) == ("Été à Goa", "x-default")
    note = root.find("rdf:RDF/rdf:Description/foo:notes/rdf:Bag/rdf:li", NS)
    assert (note.text, note.get(f"{{{NS['foo']}}}score")) == ("keep me", "0.9")
    text = path.read_text(encoding="utf-8")
    assert 'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"' in text
    assert 'xmlns:foo="http://example.com/foo/1.0/"' in text


def test_merge_appends_new_tags_after_existing_ones_without_duplicates(tmp_path):
    path = tmp_path / "goa.xmp"
    path.write_text(LIGHTROOM, encoding="utf-8")
    change = xmp.write_sidecar(path, ["cat", "beach", "sunset", "beach"])
    root = parse(path)
    assert items(root, "dc:subject", "Bag") == ["Sunset", "Cat", "beach"]
    assert items(root, "lr:hierarchicalSubject", "Bag") == ["Places|India|Goa", "cat", "beach", "sunset"]
    assert items(root, "digiKam:TagsList", "Seq") == ["cat", "beach", "sunset"]
    assert change.added["dc:subject"] == ["beach"]


def test_rewriting_the_same_tags_changes_nothing(tmp_path):
    path = tmp_path / "goa.xmp"
    path.write_text(LIGHTROOM, encoding="utf-8")
    xmp.write_sidecar(path, ["cat", "beach"], prefix="Photo Tagger")
    first = path.read_bytes()
    os.utime(path, (1_000_000, 1_000_000))
    change = xmp.write_sidecar(path, ["cat", "beach"], prefix="Photo Tagger")
    assert not change.changed
    assert path.read_bytes() == first
    assert path.stat().st_mtime == 1_000_000
    assert xmp.merge_keywords(first, ["cat", "beach"], prefix="Photo Tagger")[0] == first


def test_tags_in_attribute_form_become_an_array_that_keeps_the_value(tmp_path):
    path = tmp_path / "old.xmp"
    path.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' dc:subject="harbour" xmp:Rating="5"/></rdf:RDF></x:xmpmeta>',
        encoding="utf-8",
    )
    xmp.write_sidecar(path, ["boat"])
    root = parse(path)
    desc = description(root)
    assert f"{{{NS['dc']}}}subject" not in desc.attrib
    assert desc.get(f"{{{NS['xmp']}}}Rating") == "5"
    assert items(root, "dc:subject", "Bag") == ["harbour", "boat"]


def test_tags_in_an_alt_are_kept_with_their_language_in_a_bag(tmp_path):
    path = tmp_path / "alt.xmp"
    path.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Alt>'
        '<rdf:li xml:lang="fr">chat</rdf:li></rdf:Alt></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>',
        encoding="utf-8",
    )
    xmp.write_sidecar(path, ["cat"])
    root = parse(path)
    assert root.find("rdf:RDF/rdf:Description/dc:subject/rdf:Alt", NS) is None
    kept = root.findall("rdf:RDF/rdf:Description/dc:subject/rdf:Bag/rdf:li", NS)
    assert [(li.text, li.get(XML_LANG)) for li in kept] == [("chat", "fr"), ("cat", None)]


def test_tags_spread_over_several_descriptions_are_merged_in_place(tmp_path):
    path = tmp_path / "exiftool.xmp"
    path.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"><xmp:Rating>4</xmp:Rating></rdf:Description>'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>dog</rdf:li>'
        "</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>",
        encoding="utf-8",
    )
    xmp.write_sidecar(path, ["dog", "grass"])
    descriptions = parse(path).findall("rdf:RDF/rdf:Description", NS)
    assert descriptions[0].findtext("xmp:Rating", namespaces=NS) == "4"
    assert [li.text for li in descriptions[1].findall("dc:subject/rdf:Bag/rdf:li", NS)] == ["dog", "grass"]
    assert len(parse(path).findall("rdf:RDF/rdf:Description/dc:subject", NS)) == 1


def test_unicode_tags_round_trip(tmp_path):
    path = tmp_path / "tokyo.jpg.xmp"
    tags = ["café", "東京", "straße", "ümlaut & <angle>"]
    xmp.write_sidecar(path, tags, prefix="Fotos")
    assert xmp.read_keywords(path) == {
        "dc:subject": tags,
        "digiKam:TagsList": [f"Fotos/{t}" for t in tags],
        "lr:hierarchicalSubject": [f"Fotos|{t}" for t in tags],
    }


def test_a_bare_rdf_sidecar_is_wrapped_in_xmpmeta(tmp_path):
    path = tmp_path / "bare.xmp"
    path.write_text(
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Label="Red"/></rdf:RDF>',
        encoding="utf-8",
    )
    xmp.write_sidecar(path, ["rose"])
    root = parse(path)
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    assert description(root).get(f"{{{NS['xmp']}}}Label") == "Red"
    assert items(root, "dc:subject", "Bag") == ["rose"]


def test_a_broken_sidecar_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "broken.xmp"
    path.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF", encoding="utf-8")
    with pytest.raises(xmp.XmpError, match="not well-formed"):
        xmp.write_sidecar(path, ["cat"])
    assert path.read_text(encoding="utf-8") == "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF"


def test_a_tag_with_a_character_xml_forbids_leaves_a_well_formed_sidecar(tmp_path):
    path = tmp_path / "esc.jpg.xmp"
    xmp.write_sidecar(path, ["esc\u001bape", "sky\ufffe", "\x00"], prefix="AI\x07")
    root = parse(path)
    assert items(root, "dc:subject", "Bag") == ["escape", "sky"]
    assert items(root, "digiKam:TagsList", "Seq") == ["AI/escape", "AI/sky"]


def test_a_sidecar_broken_by_forbidden_characters_is_repaired_keeping_the_users_keywords(tmp_path):
    path = tmp_path / "goa.xmp"
    broken = LIGHTROOM.replace("<rdf:li>Sunset</rdf:li>", "<rdf:li>Sun\x1bset</rdf:li><rdf:li>esc&#27;ape&#xFFFE;</rdf:li>")
    path.write_bytes(broken.encode("utf-8"))  # what an older writer left: ill-formed, refused by every parser
    with pytest.raises(ET.ParseError):
        parse(path)
    assert xmp.read_keywords(path)["dc:subject"] == ["Sunset", "escape", "Cat"]
    change = xmp.write_sidecar(path, ["escape", "boat"])
    assert change.repaired and change.changed and change.added["dc:subject"] == ["boat"]
    root = parse(path)
    assert items(root, "dc:subject", "Bag") == ["Sunset", "escape", "Cat", "boat"]
    assert items(root, "lr:hierarchicalSubject", "Bag") == ["Places|India|Goa", "escape", "boat"]
    assert description(root).get(f"{{{NS['xmp']}}}Rating") == "3"
    assert items(root, "dc:creator", "Seq") == ["Jane Photographer"]
    assert not xmp.write_sidecar(path, ["escape", "boat"]).changed  # repaired once, then left alone


def test_a_sidecar_declaring_entities_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "entities.xmp"
    text = '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&a;</x:xmpmeta>'
    path.write_text(text, encoding="utf-8")
    with pytest.raises(xmp.XmpError, match="declares a DOCTYPE"):
        xmp.write_sidecar(path, ["cat"])
    assert path.read_text(encoding="utf-8") == text


def test_a_dry_run_writes_nothing(tmp_path):
    path = tmp_path / "a.jpg.xmp"
    change = xmp.write_sidecar(path, ["cat"], dry_run=True)
    assert change.created and change.added["dc:subject"] == ["cat"]
    assert not path.exists()


def test_both_naming_schemes(tmp_path):
    image = tmp_path / "IMG_0001.JPG"
    assert xmp.sidecar_path(image, "fullname") == tmp_path / "IMG_0001.JPG.xmp"
    assert xmp.sidecar_path(image, "basename") == tmp_path / "IMG_0001.xmp"
    with pytest.raises(ValueError, match="fullname, basename"):
        xmp.sidecar_path(image, "sidecar")


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (apt-get install libimage-exiftool-perl)")
def test_exiftool_reads_the_three_fields_of_a_merged_sidecar(tmp_path):
    path = tmp_path / "goa.xmp"
    path.write_text(LIGHTROOM, encoding="utf-8")
    xmp.write_sidecar(path, ["cat", "東京"], prefix="Photo Tagger")
    validate = subprocess.run(["exiftool", "-validate", "-warning", "-a", "-s3", str(path)], capture_output=True, text=True, check=True)
    assert validate.stdout.splitlines()[0] == "OK"
    out = subprocess.run(["exiftool", "-j", "-G1", "-struct", str(path)], capture_output=True, text=True, check=True)
    tags = json.loads(out.stdout)[0]
    assert tags["XMP-dc:Subject"] == ["Sunset", "Cat", "東京"]
    assert tags["XMP-digiKam:TagsList"] == ["Photo Tagger/cat", "Photo Tagger/東京"]
    assert tags["XMP-lr:HierarchicalSubject"] == ["Places|India|Goa", "Photo Tagger|cat", "Photo Tagger|東京"]
    assert tags["XMP-xmp:Rating"] == 3


def test_a_tag_given_with_its_parents_is_a_keyword_path_and_each_level_a_subject(tmp_path):
    path = tmp_path / "a.jpg.xmp"
    xmp.write_sidecar(path, [["vehicle", "motorcycle"], ["vehicle", "car"], "sea"], prefix="Photo Tagger")
    assert xmp.read_keywords(path) == {
        "dc:subject": ["vehicle", "motorcycle", "car", "sea"],
        "digiKam:TagsList": ["Photo Tagger/vehicle/motorcycle", "Photo Tagger/vehicle/car", "Photo Tagger/sea"],
        "lr:hierarchicalSubject": ["Photo Tagger|vehicle|motorcycle", "Photo Tagger|vehicle|car", "Photo Tagger|sea"],
    }
