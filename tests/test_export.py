"""Tags out: a model's results become sidecars, CSV and JSONL; errors are reported, never written."""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

import export_tags
from phototagger.errors import UserError
from phototagger.output import export
from phototagger.scoring.evals import RowKey
from phototagger.scoring.metrics import Interval
from phototagger.scoring.ranking import Ranking, RankingRow

NS = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "dc": "http://purl.org/dc/elements/1.1/"}
MODEL = "knn:jec"


def subjects(path: Path) -> list[str]:
    return [li.text for li in ET.parse(path).getroot().findall("rdf:RDF/rdf:Description/dc:subject/rdf:Bag/rdf:li", NS)]


def make_image(path: Path, colour=(200, 120, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


def models_eval_for(photos: dict[str, str], results: dict[str, list[tuple[str, list[str], str | None]]]) -> dict:
    """A models_eval artifact: photo id -> image (a URL, or a file of the folder source), and
    model -> (photo id, tags, error) triples."""
    return {
        "batch_id": "1712345678",
        "batch_date": "2026-05-01",
        "photos": {pid: {"id": pid, "image_url": image, "ground_truth_tags": [], "source": "unsplash" if "://" in image else "folder"}
                   for pid, image in photos.items()},
        "results": {
            model: [{"photo_id": pid, "provider": model.split(":")[0], "model": model.split(":", 1)[1], "tags": tags, "error": error}
                    for pid, tags, error in rows]
            for model, rows in results.items()
        },
    }


@pytest.fixture
def batch(tmp_path):
    """Two local photos (one the model failed on) and one URL photo."""
    beach = make_image(tmp_path / "photos" / "beach.jpg")
    cat = make_image(tmp_path / "photos" / "cat.jpg")
    models_eval = models_eval_for(
        {"p-beach": str(beach), "p-cat": str(cat), "u-1": "https://images.example.com/photo-1?w=800"},
        {
            MODEL: [("p-beach", ["sea", "sand"], None), ("p-cat", [], "timeout"), ("u-1", ["city", "night"], None)],
            "prior:tag-prior": [("p-beach", ["sky"], None), ("p-cat", ["sky"], None), ("u-1", ["sky"], None)],
        },
    )
    return models_eval, tmp_path


def test_export_writes_sidecars_next_to_local_images_and_by_id_for_urls(batch):
    models_eval, tmp_path = batch
    tagset = export.tags_from_models_eval(models_eval, MODEL, "PromptModels/1712345678")
    report = export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out"))
    assert subjects(tmp_path / "photos" / "beach.jpg.xmp") == ["sea", "sand"]
    assert subjects(tmp_path / "out" / "u-1.xmp") == ["city", "night"]
    assert [c.path.name for c in report.sidecars] == ["beach.jpg.xmp", "u-1.xmp"]


def test_an_errored_photo_is_reported_and_never_written_as_empty_tags(batch):
    models_eval, tmp_path = batch
    tagset = export.tags_from_models_eval(models_eval, MODEL, "PromptModels/1712345678")
    report = export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out"))
    assert not (tmp_path / "photos" / "cat.jpg.xmp").exists()
    assert [(s.photo_id, s.reason) for s in tagset.skipped] == [("p-cat", "model error: timeout")]
    assert "p-cat" not in (tmp_path / "out" / "tags.csv").read_text(encoding="utf-8")
    assert "p-cat" not in (tmp_path / "out" / "tags.jsonl").read_text(encoding="utf-8")
    assert any("skipped p-cat" in line and "timeout" in line for line in export.report_lines(tagset, report))


def test_csv_and_jsonl_hold_one_row_per_tagged_photo(batch):
    models_eval, tmp_path = batch
    tagset = export.tags_from_models_eval(models_eval, MODEL, "PromptModels/1712345678")
    export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out", csv_path=tmp_path / "t.csv", jsonl_path=tmp_path / "t.jsonl"))
    with (tmp_path / "t.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["photo", "image", "tags", "model", "photo_id"],
        ["p-beach", str(tmp_path / "photos" / "beach.jpg"), "sea;sand", MODEL, "p-beach"],
        ["u-1", "https://images.example.com/photo-1?w=800", "city;night", MODEL, "u-1"],
    ]
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[0] == {"photo": "p-beach", "photo_id": "p-beach", "image": str(tmp_path / "photos" / "beach.jpg"), "tags": ["sea", "sand"],
                          "model": MODEL, "source": "PromptModels/1712345678"}
    assert [r["photo_id"] for r in records] == ["p-beach", "u-1"]


def test_export_merges_into_an_existing_sidecar_keeping_its_rating(batch):
    models_eval, tmp_path = batch
    sidecar = tmp_path / "photos" / "beach.xmp"
    sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/></rdf:RDF></x:xmpmeta>',
        encoding="utf-8",
    )
    tagset = export.tags_from_models_eval(models_eval, MODEL, "PromptModels/1712345678")
    export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out", xmp_naming="basename"))
    description = ET.parse(sidecar).getroot().find("rdf:RDF/rdf:Description", NS)
    assert description.get("{http://ns.adobe.com/xap/1.0/}Rating") == "4"
    assert subjects(sidecar) == ["sea", "sand"]


def test_two_images_sharing_a_basename_sidecar_are_not_merged_into_one(tmp_path):
    jpg, png = make_image(tmp_path / "a.jpg"), make_image(tmp_path / "a.png")
    models_eval = models_eval_for({"j": str(jpg), "p": str(png)}, {MODEL: [("j", ["red"], None), ("p", ["blue"], None)]})
    tagset = export.tags_from_models_eval(models_eval, MODEL, "run")
    report = export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out", xmp_naming="basename"))
    assert subjects(tmp_path / "a.xmp") == ["red"]
    assert [(f.photo_id, "--xmp-naming fullname" in f.reason) for f in report.sidecar_failures] == [("p", True)]


def test_a_dry_run_writes_no_file(batch):
    models_eval, tmp_path = batch
    tagset = export.tags_from_models_eval(models_eval, MODEL, "run")
    report = export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out", dry_run=True))
    assert not (tmp_path / "out").exists() and not (tmp_path / "photos" / "beach.jpg.xmp").exists()
    assert "2 would be created" in "\n".join(export.report_lines(tagset, report))


def test_a_model_missing_from_the_run_names_the_models_it_holds(batch):
    models_eval, _ = batch
    with pytest.raises(export.ExportError, match=r"holds no results of openai:gpt-4o.*knn:jec, prior:tag-prior"):
        export.tags_from_models_eval(models_eval, "openai:gpt-4o", "PromptModels/1")


RANKING = Ranking(
    rows=[RankingRow(RowKey("knn:jec"), {"recall": Interval(41.5, None, None, 8)}, {"12345678": Interval(40.0, None, None, 8)}),
          RankingRow(RowKey("prior:tag-prior"), {"recall": Interval(20.0, None, None, 8)},
                     {"12345678": Interval(20.0, None, None, 8)})],
    batches=[{"batch_id": "12345678", "batch_date": "2026-05-01", "label": "345678 (05-01)", "batches": 1}],
)


def test_the_best_model_is_the_first_row_of_the_dashboard():
    evals = RANKING
    assert export.choose_model(None, evals, "user.me") == "knn:jec"
    assert export.choose_model("prior:tag-prior", evals, "user.me") == "prior:tag-prior"
    assert export.dashboard_models(evals) == ["knn:jec", "prior:tag-prior"]


OLD_EVALS = {  # the `evals` table of an EvaluationFlow run stored before the recalls named their matching rule
    "headers": ["Model", "Avg Latency (ms)", "Avg Recall", "Recall (all photos)", "Error %", "Cost (USD)", "345678 (05-01)"],
    "rows": [["knn:jec", 12.0, 41.5, 40.0, 0.0, 0.0, "41.5 (8)"], ["prior:tag-prior", 1.0, 20.0, 20.0, 0.0, 0.0, "20.0 (8)"]],
}


@pytest.mark.parametrize("artifacts", [{"ranking": RANKING.to_dict(), "evals": RANKING.table()}, {"evals": OLD_EVALS}],
                         ids=["this-version", "older-headers"])
def test_the_dashboard_ranking_is_read_from_the_evals_table_of_this_version_or_an_older_one(monkeypatch, artifacts):
    run = FakeRun("EvaluationFlow/3", 0, None, **artifacts)
    monkeypatch.setattr(export.mfclient, "latest_successful_run", lambda flow, branch: run)
    ranking = export.dashboard_ranking("user.me")
    assert export.choose_model(None, ranking, "user.me") == "knn:jec"
    assert export.dashboard_models(ranking) == ["knn:jec", "prior:tag-prior"]
    assert [row.mean("recall") for row in ranking.rows] == [41.5, 20.0]


def test_without_a_dashboard_the_error_says_how_to_get_one():
    with pytest.raises(export.ExportError, match=r"No EvaluationFlow run on branch user.me.*evalsflow.py run.*--model"):
        export.choose_model(None, None, "user.me")
    with pytest.raises(export.ExportError, match="provider:model"):
        export.choose_model("gpt-4o", None, "user.me")


class FakeData(dict):
    """What a Metaflow client Run's `.data` offers here: `in` and attribute access."""

    __getattr__ = dict.__getitem__


class FakeRun:
    def __init__(self, pathspec: str, minutes: int, models_eval: dict | None, **artifacts):
        self.pathspec = pathspec
        self.created_at = datetime(2026, 5, 1) + timedelta(minutes=minutes)
        self.data = FakeData(models_eval=models_eval, **artifacts) if models_eval is not None else FakeData(**artifacts)


def test_tags_come_from_the_newest_run_holding_the_model():
    runs = [
        FakeRun("PromptCustomModels/9", 30, models_eval_for({}, {"finetuned:qwen": []})),
        FakeRun("PromptModels/8", 20, None),
        FakeRun("PromptModels/7", 10, models_eval_for({}, {MODEL: [], "prior:tag-prior": []})),
        FakeRun("PromptModels/6", 0, models_eval_for({}, {MODEL: []})),
    ]
    run, _ = export.latest_run_with_model(runs, MODEL)
    assert run.pathspec == "PromptModels/7"
    missing, seen = export.latest_run_with_model(runs, "openai:gpt-4o")
    assert missing is None and seen == {"finetuned:qwen", MODEL, "prior:tag-prior"}


def test_folder_export_prompts_the_model_on_each_image(tmp_path):
    folder = tmp_path / "trip"
    make_image(folder / "one.png", (250, 10, 10))
    make_image(folder / "sub" / "two.png", (10, 10, 250))
    history = [{"id": f"h{i}", "image_url": str(make_image(tmp_path / "h" / f"{i}.png")), "ground_truth_tags": ["sunset", "sky"]}
               for i in range(3)]
    tagset = export.tags_from_folder(str(folder), "prior:tag-prior", "Tag this photo.", history=history, use_cache=False, progress=False)
    export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out"))
    assert tagset.source == f"folder:{folder}" and not tagset.skipped
    assert sorted(subjects(folder / "one.png.xmp")) == ["sky", "sunset"]
    assert sorted(subjects(folder / "sub" / "two.png.xmp")) == ["sky", "sunset"]


def test_cli_reports_every_failed_photo_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    from tests.fakes.openai_server import FakeOpenAIServer

    monkeypatch.chdir(tmp_path)
    make_image(tmp_path / "trip" / "one.png")
    with FakeOpenAIServer() as server:
        server.fault_by_image = {"data:image": "bad_image"}
        monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", server.base_url)
        code = export_tags.main(
            ["--folder", str(tmp_path / "trip"), "--model", "openai-compatible:local-vlm", "--branch", "test.nothing", "--no-cache"]
        )
    out, err = capsys.readouterr()
    assert code == 1
    assert "model error: bad_image" in out and "no photo has a result to export" in err
    assert not (tmp_path / "trip" / "one.png.xmp").exists()


def test_cli_says_why_a_baseline_without_history_cannot_tag_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_image(tmp_path / "trip" / "one.png")
    code = export_tags.main(["--folder", str(tmp_path / "trip"), "--model", "prior:tag-prior", "--branch", "test.nothing", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 1
    assert "prior:tag-prior cannot tag" in err and "no earlier batch to learn from" in err


def test_a_finetuned_model_is_sent_to_promptcustommodels_for_a_folder(tmp_path):
    with pytest.raises(export.ExportError, match="promptcustommodels.py run"):
        export.tags_from_folder(str(tmp_path), "finetuned:qwen2.5-vl-3b-lora", "Tag this photo.")


def test_cli_names_the_fix_for_a_missing_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = export_tags.main(["--folder", str(tmp_path / "nowhere"), "--model", MODEL, "--branch", "test.nothing"])
    assert code == 1
    assert "Photo folder not found" in capsys.readouterr().err


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        export_tags.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--run", "--folder", "--out", "--xmp-naming", "--csv", "--jsonl", "--no-xmp", "--dry-run", "--tag-prefix"):
        assert option in text


def test_only_the_users_own_files_get_sidecars_beside_them(tmp_path):
    image = make_image(tmp_path / "x.jpg")
    options = export.ExportOptions(out_dir=tmp_path / "o", xmp_naming="basename")
    own = export.TaggedPhoto("id/1", str(image), ["a"], source="folder")
    assert export.sidecar_for(own, options) == tmp_path / "x.xmp"
    packaged = export.TaggedPhoto("demo-chelsea", str(image), ["a"], source="demo")
    assert export.sidecar_for(packaged, options) == tmp_path / "o" / "demo-chelsea.xmp"
    gone = export.TaggedPhoto("id/1", str(tmp_path / "gone.jpg"), ["a"], source="folder")
    assert export.sidecar_for(gone, options) == tmp_path / "o" / "id_1.xmp"


def test_folder_models_config_whose_models_are_not_a_list_names_the_problem():
    with pytest.raises(UserError, match='models.json: "models" must be a list of objects'):
        export.model_entry("openai:gpt-4o-mini", {"models": {"gpt": {"provider": "openai", "model": "gpt-4o-mini"}}})


def test_export_with_the_vocabulary_folds_synonyms_drops_stop_tags_and_files_tags_under_parents(tmp_path):
    from phototagger.output import xmp
    from phototagger.scoring.vocabulary import Vocabulary

    image = make_image(tmp_path / "photos" / "bike.jpg")
    models_eval = models_eval_for({"p-1": str(image)}, {MODEL: [("p-1", ["Motorbikes", "HD wallpapers", "garage"], None)]})
    vocab = Vocabulary.from_dict({"synonyms": {"motorcycle": ["motorbike"]}, "stop_tags": ["hd wallpapers"],
                                  "parents": {"motorcycle": "vehicle"}})
    tagset = export.with_vocabulary(export.tags_from_models_eval(models_eval, MODEL, "PromptModels/1"), vocab)
    export.export(tagset, export.ExportOptions(out_dir=tmp_path / "out", vocabulary=vocab))
    assert xmp.read_keywords(tmp_path / "photos" / "bike.jpg.xmp") == {
        "dc:subject": ["vehicle", "motorcycle", "garage"],
        "digiKam:TagsList": ["AI/vehicle/motorcycle", "AI/garage"],
        "lr:hierarchicalSubject": ["AI|vehicle|motorcycle", "AI|garage"],
    }
    rows = list(csv.DictReader((tmp_path / "out" / "tags.csv").open()))
    assert rows[0]["tags"] == "motorcycle;garage"


def test_cli_exports_with_the_shipped_vocabulary_and_refuses_a_broken_one(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "vocab.json"
    bad.write_text('{"parents": {"cat": "cat"}}')
    code = export_tags.main(["--vocabulary", str(bad), "--model", MODEL, "--branch", "test.nothing"])
    assert code == 1 and "go round in a circle" in capsys.readouterr().err
    args = export_tags.build_parser().parse_args([])
    assert export_tags.load_vocabulary(args).canonical("motorbikes") == "motorcycle"
    assert export_tags.load_vocabulary(export_tags.build_parser().parse_args(["--no-vocabulary"])) is None


def test_a_bare_model_key_names_its_one_row_or_its_default_prompt_row_and_a_row_key_itself():
    one = {"knn:jec | default@3f2a1c": []}
    several = {"knn:jec | default@3f2a1c": [], "knn:jec | short@1a2db5": [], "prior:tag-prior | short@1a2db5": []}
    assert export.result_key(one, "knn:jec") == "knn:jec | default@3f2a1c"
    assert export.result_key(several, "knn:jec") == "knn:jec | default@3f2a1c"
    assert export.result_key(several, "knn:jec | short@1a2db5") == "knn:jec | short@1a2db5"
    assert export.result_key(several, "prior:tag-prior") == "prior:tag-prior | short@1a2db5"
    assert export.result_key(several, "openai:gpt-4o-mini") is None
    assert export.result_key({"knn:jec": []}, "knn:jec") == "knn:jec", "results stored before prompt variants"


def test_every_exported_tag_is_marked_as_the_model_s_with_its_run(batch):
    from phototagger.output import xmp

    models_eval, tmp_path = batch
    export.export(export.tags_from_models_eval(models_eval, MODEL, "PromptModels/1712345678"), export.ExportOptions(out_dir=tmp_path / "out"))
    packet = xmp.read_packet((tmp_path / "photos" / "beach.jpg.xmp").read_bytes(), "beach")
    assert packet.suggestions == [xmp.Suggestion("sea", MODEL, "PromptModels/1712345678"), xmp.Suggestion("sand", MODEL, "PromptModels/1712345678")]
    assert packet.hierarchy == "AI"
    assert packet.fields["lr:hierarchicalSubject"] == ["AI|sea", "AI|sand"]
    flat = export.export(export.tags_from_models_eval(models_eval, MODEL, "PromptModels/1"), export.ExportOptions(out_dir=tmp_path / "flat", tag_prefix=""))
    assert [c.path.name for c in flat.sidecars if c.changed] == ["u-1.xmp"]  # beach.jpg's suggestions are there already


def test_a_rejected_suggestion_or_a_keyword_the_photo_has_is_not_suggested_again(batch):
    from phototagger.output import xmp

    models_eval, tmp_path = batch
    models_eval["photos"]["p-beach"]["rejected_tags"] = ["sand"]
    image = tmp_path / "photos" / "beach.jpg"
    Image.new("RGB", (16, 16)).save(image, xmp=xmp.merge_keywords(None, ["Sea"])[0].replace(b"Photo Tagger", b"Adobe XMP"))
    export.export(export.tags_from_models_eval(models_eval, MODEL, "PromptModels/2"), export.ExportOptions(out_dir=tmp_path / "out"))
    assert not (tmp_path / "photos" / "beach.jpg.xmp").exists()
