import pytest

from phototagger.scoring.tags import normalise_tag, normalise_tags, parse_tags


def test_normaliser_folds_case_space_and_punctuation():
    assert normalise_tag("  Golden_Retriever. ") == "golden retriever"
    assert normalise_tag("Ｃａｔ") == "cat"  # full-width folds to ASCII
    assert normalise_tag('"sky"') == "sky"


def test_normaliser_drops_characters_xml_forbids():
    assert normalise_tag("esc\u001bape") == "escape"
    assert normalise_tag("nul\x00 \ufffe\uffffbyte\ud800") == "nul byte"
    assert normalise_tag("tab\tand\nline") == "tab and line"  # allowed in XML: white space, as before
    assert parse_tags('{"tags": ["esc\\u001bape", "\\u0007"]}').tags == ["escape"]


def test_normalise_tags_dedupes_in_first_seen_order_and_drops_empties():
    assert normalise_tags(["Cat", "cat ", "", "  ", "Dog", "CAT"]) == ["cat", "dog"]


@pytest.mark.parametrize(
    "answer, tags, valid",
    [
        ('{"tags": ["Cat", "pet", "indoor"]}', ["cat", "pet", "indoor"], True),
        ('```json\n{"tags": ["cat", "pet"]}\n```', ["cat", "pet"], True),
        ('Sure! Here are the tags:\n{"tags": ["beach", "sea"]}\nHope this helps.', ["beach", "sea"], False),
        ('["mountain", "snow", "sky"]', ["mountain", "snow", "sky"], False),
        ('{"keywords": ["car", "road"]}', ["car", "road"], False),
        ("Tags: cat, kitten, whiskers", ["cat", "kitten", "whiskers"], False),
        ("- coffee\n- cup\n- saucer", ["coffee", "cup", "saucer"], False),
        ('{"tags": []}', [], True),
    ],
)
def test_parser_accepts_what_models_really_return(answer, tags, valid):
    parsed = parse_tags(answer)
    assert parsed.tags == tags
    assert parsed.valid is valid
    assert parsed.error is None


@pytest.mark.parametrize(
    "answer",
    [
        "",
        None,
        '{"description": "a cat on a sofa"}',
        "I'd rather describe this lovely picture in a few sentences instead.",
    ],
)
def test_parser_marks_answers_without_a_tag_list_unparseable(answer):
    parsed = parse_tags(answer)
    assert parsed.tags == [] and parsed.valid is False and parsed.error == "unparseable"


@pytest.mark.parametrize(
    "answer",
    [
        "Sorry, I can't.",
        "I am sorry, but I cannot help with identifying the contents of this image right now.",
        "I’m unable to tag this image, cat.",
        "I can't, sorry",
    ],
)
def test_parser_marks_a_prose_refusal_refused_not_a_tag_list(answer):
    assert parse_tags(answer) == ([], False, "refused")


@pytest.mark.parametrize("answer", ['{"tags": ["red", "squ', '```json\n{"tags": ["red", "square"', 'Tags: ["a", "b\\"', '["sky", "sea",'])
def test_parser_marks_json_that_never_closes_truncated_not_a_tag_list(answer):
    assert parse_tags(answer) == ([], False, "truncated")


def test_parser_normalises_and_dedupes_model_tags():
    assert parse_tags('{"tags": ["Sky", "sky", " Blue Sky "]}').tags == ["sky", "blue sky"]


def test_normaliser_casefolds_and_strips_invisible_characters_and_quote_marks():
    assert normalise_tag("Straße") == normalise_tag("STRASSE") == "strasse"
    assert normalise_tag("sun\u200bset\ufeff") == "sunset"
    assert normalise_tag("«plage»") == normalise_tag("“beach”".replace("beach", "plage")) == "plage"
    assert normalise_tag("„Hund“") == "hund"


def test_a_tag_over_the_length_limit_is_shortened_at_a_word_not_dropped():
    long = "a very long description of a sunset over the mountains seen from a small wooden cabin"
    [tag] = normalise_tags([long])
    assert len(tag) <= 64 and long.startswith(tag) and not tag.endswith(" ")
    assert tag == "a very long description of a sunset over the mountains seen from"
    assert normalise_tags(["x" * 80]) == ["x" * 64]
