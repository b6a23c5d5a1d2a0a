"""The lenient rule's vocabulary: inflections folded by a measured table, synonyms, stop-tags, parents."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from phototagger.scoring.vocabulary import Vocabulary, VocabularyError, change_note, fingerprint, fold_inflection, parse_file

ROOT = Path(__file__).resolve().parents[1]
TABLE = [line.rstrip("\n").split("\t") for line in (Path(__file__).parent / "data" / "inflections.tsv").read_text().splitlines()
         if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("tag, folded", TABLE, ids=[t for t, _ in TABLE])
def test_inflection_table_of_photo_tags_folds_each_tag_to_its_lenient_form(tag, folded):
    assert fold_inflection(tag) == folded


def test_photo_senses_are_kept_apart_where_a_lemmatiser_merges_them():
    forms = {t: fold_inflection(t) for t in ("leaves", "leave", "glasses", "glass", "shorts", "short", "news", "new")}
    assert forms["leaves"] == "leaf" != forms["leave"]
    assert forms["glasses"] != forms["glass"] and forms["shorts"] != forms["short"] and forms["news"] != forms["new"]
    assert fold_inflection("café") == "café"  # a word outside plain ASCII is left as it is


def test_synonyms_fold_variants_and_their_plurals_into_the_canonical_tag():
    vocab = Vocabulary.from_dict({"synonyms": {"motorcycle": ["motorbike"], "cat": ["kitty"]}})
    assert vocab.canonical_tags(["Motorbikes", "motorcycles", "kitties", "Cat"]) == ["motorcycle", "cat"]


def test_stop_tags_are_left_out_in_any_inflection_or_case():
    vocab = Vocabulary.from_dict({"stop_tags": ["photo", "hd wallpapers"]})
    assert vocab.canonical_tags(["Photos", "HD wallpaper", "hd wallpapers", "sea"]) == ["sea"]
    assert vocab.canonical("photo") is None


def test_parents_give_paths_root_first_and_ancestors_nearest_first():
    vocab = Vocabulary.from_dict({"synonyms": {"cat": ["kitty"]}, "parents": {"kitten": "kitty", "cats": "animal"}})
    assert vocab.ancestors("kitten") == ["cat", "animal"]
    assert vocab.path("kitten") == ["animal", "cat", "kitten"]
    assert vocab.closure(["kitten", "sea"]) == {"kitten", "cat", "animal", "sea"}


def test_keep_apart_leaves_a_users_tag_unfolded():
    assert Vocabulary.from_dict({"keep_apart": ["Arms"]}).canonical("arms") == "arms"
    assert Vocabulary().canonical("arms") == "arm"


@pytest.mark.parametrize("data, message", [
    ({"parents": {"cat": "animal", "animal": "cat"}}, "go round in a circle"),
    ({"synonyms": {"stone": ["rock"], "music": ["rock"]}}, '"rock" is a synonym of both'),
    ({"synonym": {}}, "unknown key.*synonym.*use synonyms"),
    ({"stop_tags": "photo"}, '"stop_tags" must be a list of tags'),
    ({"synonyms": {"cat": "kitty"}}, 'synonyms of "cat" must be a list'),
])
def test_a_bad_vocabulary_is_refused_with_the_problem_and_the_fix(data, message):
    with pytest.raises(VocabularyError, match=message):
        parse_file(json.dumps(data), "my.json")


def test_a_vocabulary_file_that_is_not_json_names_the_config_to_fix():
    with pytest.raises(VocabularyError, match=r"my.json is not valid JSON.*--config vocabulary FILE"):
        parse_file("{synonyms", "my.json")


def test_the_shipped_vocabulary_loads_and_folds_what_photo_sites_write():
    vocab = Vocabulary.from_file(ROOT / "vocabulary.json")
    assert vocab.canonical_tags(["Motorbikes", "HD Wallpapers", "stock photo", "Autumn Leaves", "B&W"]) == [
        "motorcycle", "autumn leaf", "black and white"]
    assert vocab.path("motorcycle") == ["vehicle", "motorcycle"]


def test_a_changed_vocabulary_is_noticed_with_the_command_that_rescores_everything():
    shipped = json.loads((ROOT / "vocabulary.json").read_text())
    edited = {**shipped, "stop_tags": [*shipped.get("stop_tags", []), "wallpaper 4k"]}

    assert fingerprint(shipped) == fingerprint(json.loads(json.dumps(shipped)))
    assert change_note(None, fingerprint(shipped)) is None  # a first run has nothing to compare with
    assert change_note(fingerprint(shipped), fingerprint(shipped)) is None
    assert "--rebuild" in change_note(fingerprint(shipped), fingerprint(edited))
