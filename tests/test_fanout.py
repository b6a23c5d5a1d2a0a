"""The prompt flows' fan-out, without Metaflow: prompt variants, (model, prompt, shard) items, the join in photo order."""
import json
import re

import pytest

from phototagger.output.dashboard import render_dashboard, short_name
from phototagger.prompting.summary import run_summary_lines
from phototagger.prompting import fanout
from phototagger.prompting.variants import make_variant, prompt_variants, trained_variants, variants_config
from phototagger.scoring import evals
from phototagger.scoring.ranking import Ranking, rank_events
from phototagger.scoring.metrics import score_photo
from phototagger.scoring.table import summarise

DEFAULT = make_variant("default", "Tag this photo. Answer {\"tags\": [...]}")
SHORT = make_variant("short", "Tags as JSON.")
PRIOR = {"provider": "prior", "model": "tag-prior"}
OPENAI = {"provider": "openai", "model": "gpt-4o-mini", "concurrency": 8}


def photos(n):
    return {f"p{i}": {"id": f"p{i}", "image_url": f"/img/p{i}.jpg", "ground_truth_tags": ["cat"]} for i in range(n)}


def answered(item, batch, tags=("cat",), error=None):
    """What a task stores: one result per photo of its shard (as batch.prompt_photos returns them)."""
    return [{"photo_id": p["id"], "provider": item["entry"]["provider"], "model": item["entry"]["model"],
             "tags": list(tags), "error": error, "valid": True, "latency_ms": 1.0, **score_photo(p["ground_truth_tags"], tags)}
            for p in fanout.shard_photos(batch, item)]


def test_a_changed_prompt_text_is_a_new_variant_and_the_same_text_the_same_one():
    edited = make_variant("default", DEFAULT["text"] + " Use at most 10 tags.")
    assert DEFAULT["id"].startswith("default@") and len(DEFAULT["id"]) == len("default@") + 6
    assert edited["id"] != DEFAULT["id"] and edited["name"] == DEFAULT["name"]
    assert make_variant("default", "  " + DEFAULT["text"] + "\n")["id"] == DEFAULT["id"]


def test_without_a_prompts_config_prompt_txt_is_the_one_default_variant():
    assert prompt_variants("Tag it.", variants_config('{"variants": []}')) == [make_variant("default", "Tag it.")]


def test_the_prompts_config_reads_each_variants_file_or_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("My prompt.\n")
    config = variants_config(json.dumps({"variants": [{"name": "mine", "file": "mine.txt"}, {"name": "inline", "text": "Inline."},
                                                      {"name": "default", "file": "prompt.txt"}]}))
    variants = prompt_variants("ignored", config)
    assert [v["name"] for v in variants] == ["mine", "inline", "default"]
    assert variants[0]["text"] == "My prompt." and variants[1]["text"] == "Inline."
    assert variants[2]["text"].startswith("You are tagging a photo"), "the project's prompt.txt, found from any directory"


@pytest.mark.parametrize("config, problem", [
    ({"prompts": ["prompt.txt"]}, "write {"),
    ({"variants": ["prompt.txt"]}, "write {"),
    ({"variants": [{"name": "a", "text": "x"}, {"name": "a", "text": "y"}]}, "must be unique"),
    ({"variants": [{"name": "a b", "text": "x"}]}, "must be unique"),
    ({"variants": [{"name": "a", "file": "no-such-prompt.txt"}]}, "no file no-such-prompt.txt"),
    ({"variants": [{"name": "a", "text": "  "}]}, "empty prompt"),
])
def test_a_bad_prompts_config_is_answered_with_the_problem(config, problem):
    with pytest.raises(ValueError, match="--config prompts") as failed:
        variants_config(json.dumps(config))
    assert problem in str(failed.value)


def test_the_finetuned_model_gets_its_trained_prompt_named_like_the_configured_one_and_the_others_if_asked():
    assert trained_variants(DEFAULT["text"], [DEFAULT, SHORT], all_prompts=False) == [DEFAULT]
    assert trained_variants(DEFAULT["text"], [DEFAULT, SHORT], all_prompts=True) == [DEFAULT, SHORT]
    (own,) = trained_variants("The prompt of an older dataset.", [DEFAULT], all_prompts=False)
    assert own["name"] == "trained" and own["text"] == "The prompt of an older dataset."


def test_a_small_batch_is_one_task_per_model_and_prompt():
    items = fanout.plan([PRIOR, OPENAI], [DEFAULT, SHORT], n_photos=12, shard_size=500, concurrency=4)
    assert [(fanout.item_row(i), i["shard"], i["start"], i["stop"]) for i in items] == [
        ("prior:tag-prior", 0, 0, 12),  # a baseline reads no prompt: one task and one row, not one per prompt
        (f"openai:gpt-4o-mini | {DEFAULT['id']}", 0, 0, 12), (f"openai:gpt-4o-mini | {SHORT['id']}", 0, 0, 12),
    ]


def test_a_big_batch_is_cut_into_shards_that_cover_every_photo_once_in_order():
    items = fanout.plan([PRIOR], [DEFAULT], n_photos=1201, shard_size=500)
    assert [(i["shard"], i["shards"], i["start"], i["stop"]) for i in items] == [(0, 3, 0, 500), (1, 3, 500, 1000), (2, 3, 1000, 1201)]
    assert fanout.plan([PRIOR], [DEFAULT], n_photos=0)[0]["stop"] == 0, "an empty batch still has its (empty) task"
    with pytest.raises(ValueError, match="--shard-size"):
        fanout.plan([PRIOR], [DEFAULT], n_photos=10, shard_size=0)


def test_a_models_concurrency_is_shared_by_its_prompts_and_shards():
    items = fanout.plan([PRIOR, OPENAI], [DEFAULT, SHORT], n_photos=4, shard_size=2, concurrency=4)
    by_model = {fanout.item_model(i): i["concurrency"] for i in items}
    assert by_model == {"prior:tag-prior": 2, "openai:gpt-4o-mini": 2}  # 4 // (1 prompt x 2 shards); openai's own 8 // (2 x 2)
    assert fanout.plan([OPENAI], [DEFAULT], n_photos=4, shard_size=500)[0]["concurrency"] == 8, "one task keeps it all"


def test_the_join_puts_every_photo_once_in_photo_order_per_model_and_prompt_whatever_order_tasks_end():
    batch = photos(5)
    items = fanout.plan([PRIOR, OPENAI], [DEFAULT, SHORT], n_photos=5, shard_size=2)
    outputs = [{"item": i, "results": answered(i, batch), "skip_reason": None} for i in reversed(items)]
    results, skipped = fanout.join(outputs, list(batch))
    assert skipped == {}
    assert sorted(results) == sorted(["prior:tag-prior", f"openai:gpt-4o-mini | {DEFAULT['id']}", f"openai:gpt-4o-mini | {SHORT['id']}"])
    for row, records in results.items():
        assert [r["photo_id"] for r in records] == ["p0", "p1", "p2", "p3", "p4"]
        assert {r["prompt_variant"] for r in records} == {evals.RowKey.parse(row).variant or None}
    assert {str(evals.RowKey.of(r)) for records in results.values() for r in records} == set(results), "scoring reads the same rows"


def test_a_skipped_model_is_listed_once_and_has_no_rows():
    batch = photos(3)
    items = fanout.plan([PRIOR, OPENAI], [DEFAULT], n_photos=3, shard_size=2)
    no_key = {"item": None, "results": [], "skip_reason": "openai_api is not set"}
    outputs = [dict(no_key, item=i) if fanout.item_model(i) == "openai:gpt-4o-mini"
               else {"item": i, "results": answered(i, batch), "skip_reason": None} for i in items]
    results, skipped = fanout.join(outputs, list(batch))
    assert skipped == {"openai:gpt-4o-mini": "openai_api is not set"}
    assert list(results) == ["prior:tag-prior"]


def test_a_missing_or_repeated_shard_fails_the_join_instead_of_storing_a_gap():
    batch = photos(4)
    items = fanout.plan([PRIOR], [DEFAULT], n_photos=4, shard_size=2)
    outputs = [{"item": i, "results": answered(i, batch), "skip_reason": None} for i in items]
    with pytest.raises(RuntimeError, match="joined shards"):
        fanout.join(outputs[:1], list(batch))
    with pytest.raises(RuntimeError, match="joined twice"):
        fanout.join(outputs + outputs[:1], list(batch))
    short = [dict(outputs[0], results=outputs[0]["results"][:1]), outputs[1]]
    with pytest.raises(RuntimeError, match="not the batch's 4 photos"):
        fanout.join(short, list(batch))


def test_evaluation_keeps_the_prompts_of_a_model_apart_as_rows():
    batch = photos(2)
    items = fanout.plan([OPENAI], [DEFAULT, SHORT], n_photos=2)
    tags = {DEFAULT["id"]: ("cat",), SHORT["id"]: ("dog",)}
    results, _ = fanout.join([{"item": i, "results": answered(i, batch, tags[i["variant"]["id"]]), "skip_reason": None}
                              for i in items], list(batch))
    events = evals.events_from_models_eval({"batch_id": "1", "batch_date": "2024-05-06", "photos": batch, "results": results},
                                           "PromptModels", "3")
    assert len(evals.fold_events([], events)) == 4, "two photos x two prompts: none replaces another"
    assert [(str(row.key), row.mean("recall")) for row in rank_events(events).rows] == [
        (f"openai:gpt-4o-mini | {DEFAULT['id']}", 100.0), (f"openai:gpt-4o-mini | {SHORT['id']}", 0.0)]


def test_a_model_that_ignores_the_prompt_is_one_row_whatever_the_prompts():
    batch = photos(2)
    items = fanout.plan([PRIOR], [DEFAULT, SHORT], n_photos=2)
    results, _ = fanout.join([{"item": i, "results": answered(i, batch), "skip_reason": None} for i in items], list(batch))
    events = evals.events_from_models_eval({"batch_id": "1", "batch_date": "2024-05-06", "photos": batch, "results": results},
                                           "PromptModels", "3")
    assert [(str(row.key), row.figures["recall_all"].n) for row in rank_events(events).rows] == [("prior:tag-prior", 2)]


def test_a_ranking_row_names_its_model_and_prompt_and_the_dashboard_shows_the_rows_in_rank_order():
    batch = photos(2)
    together = {"provider": "together", "model": "llama"}
    items = fanout.plan([OPENAI, together], [DEFAULT, SHORT], n_photos=2)
    recall = {("openai:gpt-4o-mini", DEFAULT["id"]): 2, ("together:llama", DEFAULT["id"]): 1}  # photos answered "cat"
    outputs = []
    for item in items:
        hits = recall.get((fanout.item_model(item), item["variant"]["id"]), 0)
        rows = [answered(item, {pid: photo}, ("cat",) if n < hits else ("dog",))[0] for n, (pid, photo) in enumerate(batch.items())]
        outputs.append({"item": item, "results": rows, "skip_reason": None})
    results, _ = fanout.join(outputs, list(batch))
    events = evals.events_from_models_eval({"batch_id": "1", "batch_date": "2024-05-06", "photos": batch, "results": results},
                                           "PromptModels", "3")
    ranking = rank_events(events)
    assert [(row.key.model, row.key.variant, row.mean("recall")) for row in ranking.rows[:2]] == [
        ("openai:gpt-4o-mini", DEFAULT["id"], 100.0), ("together:llama", DEFAULT["id"], 50.0)]
    assert str(ranking.best.key) == f"openai:gpt-4o-mini | {DEFAULT['id']}"
    assert [row.key for row in Ranking.from_table(ranking.table()).rows] == [row.key for row in ranking.rows]
    shown = re.findall(r'<tr data-model="([^"]+)"', render_dashboard(ranking, events))
    ranked = [f"openai:gpt-4o-mini | {DEFAULT['id']}", f"together:llama | {DEFAULT['id']}",
              f"openai:gpt-4o-mini | {SHORT['id']}", f"together:llama | {SHORT['id']}"]  # equal rows by name
    assert shown == ranked * 2, "the ranking in rank order, then the same rows by batch"


def test_the_dashboards_short_name_keeps_the_prompt_variant():
    key = evals.RowKey("together:meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8", SHORT["id"])
    assert short_name(key) == f"together:Llama-4-Maverick-17B-1\u2026 | {SHORT['id']}"
    assert short_name("prior:tag-prior") == "prior:tag-prior"


def test_the_run_summary_counts_models_not_rows_and_says_how_many_prompts():
    batch = photos(2)
    items = fanout.plan([{"provider": "together", "model": "qwen-vl"}], [DEFAULT, SHORT], n_photos=2)
    results, _ = fanout.join([{"item": i, "results": answered(i, batch), "skip_reason": None} for i in items], list(batch))
    models_eval = {"batch_id": "17", "batch_date": "2025-03-04", "photos": batch, "results": results}
    lines = run_summary_lines(models_eval, {k: summarise(v) for k, v in results.items()}, {"openai:gpt-4o-mini": "key missing"})
    assert lines[0].startswith("Prompted 1 of 2 models with 2 prompts on 2 photos of batch 17")
