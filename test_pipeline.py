"""End-to-end: the flows run through Metaflow's Runner, as a user runs them, in a temporary datastore.

1) The quick baseline loop offline on the demo photos (what ./run_demo.sh does).
2) The same loop against local servers that speak the Unsplash and OpenAI/Together wire formats,
   with fake keys exported as a user would, and a scan that the keys landed nowhere.
3) The full loop: PrepareVLMData -> FineTuneVLM on a tiny Qwen2.5-VL built from config ->
   PromptCustomModels -> EvaluationFlow, with the fine-tuned row on the dashboard.
4) A train task killed after its first checkpoint resumes on @retry from the datastore, its local disk gone;
   a resume of a failed resume continues from the newest checkpoint of either.
5) A photographer's folder: ingest, a fake VLM, export, a review with exiftool, ingest again, scores against the review.
The full loop runs on a base model cached once in the datastore, with no hub and no local copy.
The fine-tune tests start from one set of UpdatePhotos and PrepareVLMData runs, made once and copied into each test's datastore.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from metaflow import Runner

from phototagger import mfclient
from phototagger.scoring import evals
from phototagger.scoring.evals import RowKey
from phototagger.scoring.table import read_parquet
from tests import flowrun
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.unsplash_server import FakeUnsplashServer, sample_photos

ROOT = Path(__file__).resolve().parent
KEYS = ("client_id", "openai_api", "togetherai_api")


def private_env(root: Path) -> dict:
    """A private datastore and response cache under `root`; no vendor key unless a test sets one."""
    return {
        "METAFLOW_USER": "ci",
        "USER": "ci",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root),
        "PHOTOTAGGER_CACHE_DIR": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PHOTOTAGGER_ALLOW_PRIVATE_URLS": "1",  # the fake Unsplash serves its photos from 127.0.0.1
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # as tests/conftest.py: torch's threads stall on a shared CPU
        **{key: "" for key in KEYS},
    }


@pytest.fixture
def flow_env(tmp_path, monkeypatch):
    """A private datastore and response cache in the test's folder."""
    monkeypatch.setenv("USER", "ci")  # the client in this process needs a user name, even as root
    return private_env(tmp_path)


def run_flow(flow_file: str, env: dict, **params):
    """Run one flow to completion; return (Run, stdout). A failed run fails the test with the failing step's log."""
    return flowrun.run_flow(ROOT / flow_file, env, ROOT, **params)


def dashboard(run) -> tuple[dict, str]:
    return run.data.evals, run.data.html


def by_model(rows: dict) -> dict:
    """Rows keyed "provider:model | variant@hash" by their model alone (each model ran on one prompt)."""
    keyed = {RowKey.parse(key).model: value for key, value in rows.items()}
    assert len(keyed) == len(rows), f"a model ran on several prompts: {sorted(rows)}"
    return keyed


def rows_by_model(evals: dict) -> dict[str, dict]:
    return by_model({row[0]: dict(zip(evals["headers"], row)) for row in evals["rows"]})


def test_baseline_loop_offline_on_demo_photos(flow_env):
    first, _ = run_flow("updatephotos.py", flow_env, source="demo", batch_size=6)
    first_prompted, first_out = run_flow("promptmodels.py", flow_env, skip_unavailable=True)
    assert "skipping openai:gpt-4o-mini" in first_out.lower()  # no key here
    assert "leave-one-out" in first_out  # no earlier batch: the baselines learn from this one, each photo left out
    assert {len(rows) for rows in first_prompted.data.models_eval["results"].values()} == {len(first.data.unseen)}
    second, _ = run_flow("updatephotos.py", flow_env, source="demo", batch_size=6)
    scored, _ = run_flow("promptmodels.py", flow_env, skip_unavailable=True)
    third, _ = run_flow("updatephotos.py", flow_env, source="demo", batch_size=6)
    run_flow("promptmodels.py", flow_env, skip_unavailable=True)
    evals_run, out = run_flow("evalsflow.py", flow_env)

    assert not set(second.data.unseen) & set(third.data.unseen), "a second UpdatePhotos run repeats no photo"
    results = by_model(scored.data.models_eval["results"])
    assert set(results) == {"prior:tag-prior", "knn:jec"}
    assert all(len(r) == len(second.data.unseen) for r in results.values()), "every photo gets a record"
    assert set(scored.data.skipped_models) >= {"openai:gpt-4o-mini"}
    tasks = [task.data.model_key for task in scored["prompt_model"]]
    assert sorted(tasks) == ["knn:jec", "prior:tag-prior"], "a model skipped for lack of a key gets no task"

    evals, html = dashboard(evals_run)
    rows = rows_by_model(evals)
    assert set(rows) == {"prior:tag-prior", "knn:jec"}
    batch_cols = [h for h in evals["headers"] if h.endswith(")") and "(" in h and h[-6:-1].count("-") == 1]
    assert len(batch_cols) == 3, evals["headers"]
    assert [row[0] for row in evals["rows"]] == sorted(rows, key=lambda m: (-rows[m]["Paired score"], m))  # one row each
    for row in evals["rows"]:
        assert f'data-model="{row[0]}"' in html
    for model in rows:
        assert rows[model]["Recall (all photos, exact) n"] == 18  # the three batches of 6 photos (the first leave-one-out), every prompt one row
        assert rows[model]["Recall (all photos, exact) 95% low"] is None  # fewer than 30 photos: no interval
    configured = {f"{m['provider']}:{m['model']}" for m in json.loads((ROOT / "models.json").read_text())["models"]}
    assert set(evals_run.data.ranking["skipped"]) == configured - set(rows)  # no keys here: listed, with the reason
    assert f'<div class="v ">{len(configured)}</div><div class="note">2 ranked \u00b7 3 skipped</div>' in html
    assert evals_run.data.per_tag["tags"] and "What each model misses" in html
    assert "card get" in out

    again, _ = run_flow("evalsflow.py", flow_env)
    assert again.data.folded_runs.runs == evals_run.data.folded_runs.runs, "nothing new to fold"
    assert again.data.state.open.cells.equals(evals_run.data.state.open.cells) and again.data.evals == evals
    assert read_parquet(again.data.photo_results).empty, "photo_results holds only the rows new in a run"


def test_a_batch_in_shards_of_two_reaches_models_eval_whole_in_photo_order_for_every_model_and_prompt(flow_env):
    run_flow("updatephotos.py", flow_env, source="demo", batch_size=6)
    batch, _ = run_flow("updatephotos.py", flow_env, source="demo", batch_size=6)
    prompted, out = flowrun.run_flow(
        ROOT / "promptmodels.py", flow_env, ROOT, runner_options={"config": [("prompts", str(ROOT / "prompts" / "demo.json"))]},
        models="prior,knn", shard_size=2, max_workers=2,
    )
    evals_run, _ = run_flow("evalsflow.py", flow_env)

    models_eval = prompted.data.models_eval
    variants = sorted(models_eval["prompts"])
    assert [v.split("@")[0] for v in variants] == ["default", "short"]
    assert len(list(prompted["prompt_model"])) == 2 * 1 * 3, "2 models x 1 prompt (the baselines read none) x 3 shards of 2 photos"
    assert "in 6 tasks" in out
    results = models_eval["results"]
    assert sorted(results) == ["knn:jec", "prior:tag-prior"], "a model that reads no prompt is one row, not one per prompt"
    for key, rows in results.items():
        assert [r["photo_id"] for r in rows] == list(batch.data.unseen), f"{key}: every photo once, in photo order"
        assert {r["prompt_variant"] for r in rows} == {None}
    assert sorted(row[0] for row in evals_run.data.evals["rows"]) == sorted(results), "one dashboard row per model and prompt"
    assert len(read_parquet(evals_run.data.photo_results)) == 2 * len(batch.data.unseen)


def test_baseline_loop_against_unsplash_and_openai_wire_formats(flow_env):
    keys = {"client_id": "unsplash-key-5ecret", "openai_api": "sk-openai-5ecret", "togetherai_api": "tg-together-5ecret"}
    photos = sample_photos(8)
    with FakeUnsplashServer(photos, key=keys["client_id"]) as unsplash, FakeOpenAIServer() as llm:
        truth = {f"/images/{p['id']}": [t.strip().lower() for t in p["tags"]] for p in photos}

        def answer(request: dict) -> str:
            url = next(
                part["image_url"]["url"]
                for msg in request["messages"] if isinstance(msg["content"], list)
                for part in msg["content"] if part.get("type") == "image_url"
            )
            tags = next((t for needle, t in truth.items() if needle in url), [])
            # The OpenAI model finds every tag, the Together models only the first one.
            return json.dumps({"tags": tags if request["model"].startswith("gpt") else tags[:1]})

        llm.answer_fn = answer
        env = {
            **flow_env,
            **keys,
            "UNSPLASH_API_URL": unsplash.base_url,
            "OPENAI_BASE_URL": llm.base_url,
            "TOGETHER_BASE_URL": llm.root_url,
        }
        update, _ = run_flow("updatephotos.py", env, source="unsplash", batch_size=8)
        prompted, prompt_out = run_flow("promptmodels.py", env)
        evals_run, _ = run_flow("evalsflow.py", env)

    assert len(update.data.unseen) == 8 and update.data.source_name == "unsplash"
    results = by_model(prompted.data.models_eval["results"])
    vendor = [k for k in results if k.split(":")[0] in ("openai", "together")]
    assert len(vendor) == 3 and all(len(results[k]) == 8 for k in vendor)
    assert all(r["recall"] == 100.0 and r["valid"] for r in results["openai:gpt-4o-mini"])
    evals, html = dashboard(evals_run)
    assert RowKey.parse(evals["rows"][0][0]).model == "openai:gpt-4o-mini", "best model first"
    assert len(results["prior:tag-prior"]) == 8  # first batch: the baselines learn from it, leave-one-out

    leaked = [
        where
        for where, text in (("promptmodels stdout", prompt_out), ("card", html), ("artifacts", repr(prompted.data.models_eval)))
        for key in keys.values()
        if key in text
    ]
    assert not leaked, f"a key leaked into: {leaked}"


def card_photo_count(html: str) -> int:
    """The "Photos" tile of the dashboard card."""
    match = re.search(r'<div class="k">Photos</div><div class="v[^"]*">([\d,]+)</div>', html)
    assert match, "no Photos tile on the card"
    return int(match.group(1).replace(",", ""))


def test_every_prompted_photo_reaches_the_dashboard_past_the_log_cap(flow_env):
    # --max-log-size 0 keeps nothing of the tasks' logs: the results must arrive through the artifacts.
    n = 20
    photos = sample_photos(n)
    with FakeUnsplashServer(photos, key="unsplash-key") as unsplash, FakeOpenAIServer() as llm:
        env = {**flow_env, "client_id": "unsplash-key", "openai_api": "sk-test", "UNSPLASH_API_URL": unsplash.base_url,
               "OPENAI_BASE_URL": llm.base_url}
        run_flow("updatephotos.py", env, source="unsplash", batch_size=n)
        prompted, prompt_out = run_flow("promptmodels.py", env, models="openai", max_log_size=0)
        evals_run, _ = run_flow("evalsflow.py", env)

    (stored,) = prompted.data.models_eval["results"].values()
    assert len(stored) == n
    evals, html = dashboard(evals_run)
    assert len(read_parquet(evals_run.data.photo_results)) == n
    assert rows_by_model(evals)["openai:gpt-4o-mini"]["Error %"] == 0.0
    assert card_photo_count(html) == n
    assert not [p["id"] for p in photos if p["id"] in prompt_out], "no line per photo in the terminal"


@pytest.mark.timeout(900)  # trains, then loads the tiny model once per shard, on a CPU
def test_full_loop_puts_the_finetuned_model_on_the_dashboard_from_a_base_model_cached_in_the_datastore(flow_env, tmp_path, tiny_base_and_dataset):
    base, runs = tiny_base_and_dataset
    # Cached once in the datastore, as the README says for clusters whose pods cannot reach the hub; then gone from disk.
    subprocess.run([sys.executable, "-m", "phototagger.training.base_models", "cache", str(base), "--name", "tiny-org/tiny-qwen"],
                   cwd=tmp_path, env={**os.environ, **flow_env, "PYTHONPATH": str(ROOT)}, check=True)
    shutil.rmtree(base)
    trained, _ = run_flow(
        "finetune_vlm.py", flow_env, base_model="tiny-org/tiny-qwen", max_steps=2, batch_size=2, grad_accum=1, epochs=1,
        output_dir=str(tmp_path / "checkpoints"),
    )
    # A random tiny model answers gibberish, cut at max-new-tokens: every answer fails, which the error budget would stop.
    custom, _ = run_flow("promptcustommodels.py", flow_env, max_error_share=1.0, shard_size=3)
    evals_run, _ = run_flow("evalsflow.py", flow_env)

    assert runs.trained_on and runs.trained_on <= set(runs.first), "only the earlier batch trains"
    assert not runs.trained_on & set(runs.newest), "the newest batch is held out for evaluation"
    assert trained.data.finetune_meta["dataset_run"] == runs.dataset_run
    assert trained.data.adapter_files and trained.data.finetune_meta["base_model"] == "tiny-org/tiny-qwen"
    assert len(trained.data.finetune_meta["train_loss"]) >= 1

    assert len(list(custom["evaluate"])) == 2, "6 photos in shards of 3: two evaluate tasks"
    (key,) = custom.data.models_eval["results"]
    assert key.startswith("finetuned:") and RowKey.parse(key).variant.startswith("default@"), "trained on prompt.txt"
    assert [r["photo_id"] for r in custom.data.models_eval["results"][key]] == runs.newest, "2 shards, joined in order"
    evals, html = dashboard(evals_run)
    assert key in [row[0] for row in evals["rows"]]
    assert f'data-model="{key}"' in html


def train_task_pids(datastore_root: Path) -> list[int]:
    """The FineTuneVLM train task processes this test's runs started (they carry its private datastore root)."""
    marker = f"METAFLOW_DATASTORE_SYSROOT_LOCAL={datastore_root}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args, environ = (proc / "cmdline").read_bytes().split(b"\0"), (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"finetune_vlm.py" in b" ".join(args) and b"step" in args and b"train" in args and marker in environ:
            pids.append(int(proc.name))
    return pids


def newest_stored_step(datastore_root: Path) -> int:
    manifests = [json.loads(p.read_text()) for p in datastore_root.glob("**/checkpoints/*/train/slot-*/MANIFEST.json")]
    return max([m["step"] for m in manifests if m["step"]] or [0])


class PodKiller(threading.Thread):
    """What a lost pod does: SIGKILL the train task once a newer checkpoint than it started from is complete in the
    datastore, and its disk is gone; `kills` times (a task and its retry), then it leaves the training alone."""

    def __init__(self, datastore_root: Path, cache_dir: Path, kills: int = 1):
        super().__init__(daemon=True)
        self.root, self.cache_dir, self.kills = datastore_root, cache_dir, kills
        self.killed_at: list[int] = []  # the newest stored step at each kill
        self.done = threading.Event()

    def run(self) -> None:
        seen = newest_stored_step(self.root)
        while len(self.killed_at) < self.kills and not self.done.wait(0.05):
            newest = newest_stored_step(self.root)
            pids = train_task_pids(self.root) if newest > seen else []
            if pids:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                shutil.rmtree(self.cache_dir, ignore_errors=True)
                self.killed_at.append(newest)
                seen = newest


@dataclass(frozen=True)
class DatasetRuns:
    """What a datastore copy holds: the photo ids of its two UpdatePhotos batches, and its PrepareVLMData run with
    the photo ids it trains and validates on."""

    first: list[str]
    newest: list[str]
    dataset_run: str
    trained_on: set[str]


@pytest.fixture(scope="module")
def dataset_datastore(tmp_path_factory) -> tuple[Path, DatasetRuns]:
    """Two demo UpdatePhotos batches and a PrepareVLMData run over them (what a train task needs), run once per
    module in a datastore of their own; `tiny_base_and_dataset` copies it for each test instead of running them again."""
    root = tmp_path_factory.mktemp("dataset-datastore")
    env = private_env(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("USER", "ci")  # as flow_env: the client in this process needs a user name
        first, _ = run_flow("updatephotos.py", env, source="demo", batch_size=6)
        newest, _ = run_flow("updatephotos.py", env, source="demo", batch_size=6)
        dataset, _ = run_flow("prepare_vlm_data.py", env)
        trained_on = {ex["photo_id"] for ex in dataset.data.train_examples + dataset.data.validation_examples}
        return root, DatasetRuns(list(first.data.unseen), list(newest.data.unseen), dataset.pathspec, trained_on)


def copy_datastore(source: Path, dest: Path) -> None:
    """Copy a local datastore's runs to `dest`, re-rooted: Metaflow records each task's datastore root in its
    metadata (an artifact's location is ":root:<root>"), and the client reads the artifacts from there."""
    shutil.copytree(source / ".metaflow", dest / ".metaflow", dirs_exist_ok=True)
    old, new = json.dumps(str(source / ".metaflow"))[1:-1], json.dumps(str(dest / ".metaflow"))[1:-1]
    for meta in (dest / ".metaflow").glob("*/*/*/*/_meta/*.json"):
        text = meta.read_text()
        if old in text:
            meta.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL, built once per module in a child process, as run_demo.sh does: torch imported
    after Metaflow's client has run in this process can trip over Metaflow's vendored typing_extensions."""
    base = tmp_path_factory.mktemp("tiny-qwen-built") / "tiny-qwen"
    subprocess.run([sys.executable, "-m", "phototagger.training.random_qwen", str(base), "--size", "tiny"], cwd=ROOT, check=True)
    return base


@pytest.fixture
def tiny_base_and_dataset(flow_env, tmp_path, tiny_qwen, dataset_datastore) -> tuple[Path, DatasetRuns]:
    """A copy of the tiny Qwen2.5-VL at `tmp_path/tiny-qwen` and the test's datastore holding two demo batches and a
    PrepareVLMData run over them: the base model and the batches a FineTuneVLM run needs."""
    source, runs = dataset_datastore
    copy_datastore(source, tmp_path)
    return shutil.copytree(tiny_qwen, tmp_path / "tiny-qwen"), runs


@pytest.mark.timeout(900)  # two train attempts, each loading torch and the tiny model, on a shared CPU: past pytest.ini's 300 s under load
def test_a_killed_train_task_resumes_on_retry_from_the_datastore_not_the_lost_disk(flow_env, tmp_path, tiny_base_and_dataset):
    base, _ = tiny_base_and_dataset
    cache = tmp_path / "pod-disk"
    killer = PodKiller(tmp_path, cache)
    killer.start()
    steps = 12  # the kill lands after step 2 or 4: the retry has steps of its own left to train
    trained, _ = run_flow(
        "finetune_vlm.py", flow_env, base_model=str(base), max_steps=steps, save_steps=2, batch_size=2, grad_accum=1,
        quantize="none", output_dir=str(cache),
    )
    killer.done.set()
    killer.join()

    assert killer.killed_at, "the train task was killed after its first stored checkpoint"
    (task,) = trained["train"]
    assert task.current_attempt == 1
    training = trained.data.finetune_meta["training"]
    resumed_step = int(training["resumed_from"].rsplit("checkpoint-", 1)[1])
    assert training["resumed_from"].startswith(str(cache)) and 2 <= resumed_step < steps
    assert training["global_step"] == steps
    assert [p["step"] for p in trained.data.finetune_meta["train_loss"]] == list(range(1, steps + 1))


def failed_run(start: Any, killer: PodKiller):
    """Run `start()` (a Runner's run or resume) with `killer` on the train task; the run must fail. Returns the run."""
    killer.start()
    with start() as running:
        killer.done.set()
        killer.join()
        assert running.status == "failed", f"the killed run was meant to fail:\n{flowrun.failed_task_logs(running)}"
        return running.run


@pytest.mark.timeout(1500)  # three runs, six train tasks, each loading torch and the tiny model on a shared CPU
def test_a_resume_of_a_failed_resume_continues_from_the_newest_checkpoint(flow_env, tmp_path, tiny_base_and_dataset):
    base, _ = tiny_base_and_dataset
    cache = tmp_path / "pod-disk"
    runner = Runner(str(ROOT / "finetune_vlm.py"), show_output=False, env=flow_env, cwd=str(ROOT))

    first_killer, resume_killer = PodKiller(tmp_path, cache, kills=2), PodKiller(tmp_path, cache, kills=2)
    steps = 20  # four kills, each after a newer checkpoint (every 2 steps): the last resume starts near step 8
    first = failed_run(lambda: runner.run(base_model=str(base), max_steps=steps, save_steps=2, batch_size=2, grad_accum=1,
                                          quantize="none", output_dir=str(cache)), first_killer)
    resumed = failed_run(lambda: runner.resume(origin_run_id=first.id), resume_killer)
    newest = newest_stored_step(tmp_path)
    with runner.resume(origin_run_id=resumed.id) as running:
        assert running.status == "successful", f"the resume of the resume failed:\n{flowrun.failed_task_logs(running)}"
        finished = running.run

    assert len(first_killer.killed_at) == len(resume_killer.killed_at) == 2, "each failed run lost its task and its retry"
    training = finished.data.finetune_meta["training"]
    assert training["resumed_from"] == str(cache / f"checkpoint-{newest}"), "continued from the newest step, not from 0"
    assert training["global_step"] == steps
    logged = [p["step"] for p in finished.data.finetune_meta["train_loss"]]
    assert logged == list(range(1, steps + 1)), "the log history came back with the checkpoint: every step once"


def test_a_model_past_its_error_budget_fails_the_run_but_keeps_every_record(flow_env):
    photos = sample_photos(4)
    with FakeUnsplashServer(photos, key="unsplash-key") as unsplash, FakeOpenAIServer() as llm:
        llm.answer_fn = lambda request: "I'd rather describe this lovely picture in a few sentences instead."
        env = {**flow_env, "client_id": "unsplash-key", "openai_api": "sk-test", "UNSPLASH_API_URL": unsplash.base_url,
               "OPENAI_BASE_URL": llm.base_url}
        run_flow("updatephotos.py", env, source="unsplash", batch_size=4)
        with Runner(str(ROOT / "promptmodels.py"), show_output=False, env=env, cwd=str(ROOT)).run(models="openai") as running:
            status, run = running.status, running.run

    assert status == "failed"
    message = run["end"].task.stderr
    assert "openai:gpt-4o-mini" in message and "unparseable" in message
    (stored,) = run["join"].task.data.models_eval["results"].values()
    assert [r["error"] for r in stored] == ["unparseable"] * 4, "the failed run still stored one record per photo"
    [failure] = evals.budget_failures([run])  # what EvaluationFlow lists on the card for this run
    assert mfclient.run_state("PromptModels", run.id) == "failed" and failure.events == []
    assert failure.skipped["openai:gpt-4o-mini"].startswith("broke the error budget: openai:gpt-4o-mini | default@")


LIBRARY = {  # photo: (colour, how it is keyworded, its keywords, what the model suggests)
    "trip/rocket.jpg": ((200, 30, 30), "iptc", ["Rocket", "launch"], ["rocket", "sky", "smoke"]),
    "trip/cat.jpg": ((30, 200, 30), "embedded", ["cat", "sofa"], ["cat", "pet"]),
    "beach.jpg": ((30, 30, 200), "sidecar", ["beach"], ["beach", "sea", "sand"]),
    "plain.jpg": ((200, 200, 30), "none", [], ["kite", "chair"]),
}


def exiftool(*args: str) -> str:
    return subprocess.run(["exiftool", "-q", "-overwrite_original", *args], check=True, capture_output=True, text=True).stdout


def keyworded_library(root: Path) -> Path:
    """A photographer's folder: keywords in IPTC, in embedded XMP, in an XMP sidecar (with a keyword path), and none."""
    from PIL import Image

    for name, (colour, where, keywords, _) in LIBRARY.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), colour).save(path, quality=95)
        if where == "iptc":
            exiftool(*(f"-Keywords={k}" for k in keywords), str(path))
        elif where == "embedded":
            exiftool(*(f"-XMP-dc:Subject={k}" for k in keywords), str(path))
        elif where == "sidecar":
            exiftool("-o", f"{path}.xmp", *(f"-XMP-dc:Subject={k}" for k in keywords), *(f"-XMP-lr:HierarchicalSubject=places|{k}" for k in keywords))
    return root


def answer_by_colour(request: dict) -> str:
    """The fake VLM 'sees' each photo by its colour (local photos reach it as data URIs)."""
    import base64
    import io

    from PIL import Image

    url = next(part["image_url"]["url"] for msg in request["messages"] if isinstance(msg["content"], list)
               for part in msg["content"] if part.get("type") == "image_url")
    pixel = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB").getpixel((32, 32))
    colour, suggestions = min(((c, s) for c, _, _, s in LIBRARY.values()), key=lambda cs: sum(abs(a - b) for a, b in zip(cs[0], pixel)))
    return json.dumps({"tags": suggestions})


def truth_by_name(run) -> dict[str, list[str]]:
    return {photo["name"]: sorted(photo["ground_truth_tags"]) for photo in run.data.unseen.values()}


@pytest.mark.timeout(900)  # seven flow runs and two exports
@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool plays the photo tool (apt-get install libimage-exiftool-perl)")
def test_a_photographer_reviews_suggestions_and_the_next_dashboard_scores_against_them(flow_env, tmp_path):
    library = keyworded_library(tmp_path / "library")
    with FakeOpenAIServer() as llm:
        llm.answer_fn = answer_by_colour
        env = {**flow_env, "openai_api": "sk-test", "OPENAI_BASE_URL": llm.base_url}
        first, _ = run_flow("updatephotos.py", env, source=f"folder:{library}")
        assert truth_by_name(first) == {"trip/rocket.jpg": ["launch", "rocket"], "trip/cat.jpg": ["cat", "sofa"],
                                        "beach.jpg": ["beach"], "plain.jpg": []}
        run_flow("promptmodels.py", env, models="openai")
        exported = subprocess.run([sys.executable, "export_tags.py", "--model", "openai:gpt-4o-mini", "--out", str(tmp_path / "out")], cwd=ROOT,
                                  env={**os.environ, **env}, capture_output=True, text=True)
        assert exported.returncode == 0, exported.stderr

        read_back = {Path(item["SourceFile"]).name: item for item in json.loads(subprocess.run(
            ["exiftool", "-j", "-struct", "-XMP:all", *map(str, sorted(library.rglob("*.xmp")))], capture_output=True, text=True, check=True).stdout)}
        assert sorted(read_back) == ["beach.jpg.xmp", "cat.jpg.xmp", "plain.jpg.xmp", "rocket.jpg.xmp"]
        assert read_back["rocket.jpg.xmp"]["HierarchicalSubject"] == ["AI|sky", "AI|smoke"]  # "rocket" is the photographer's already
        assert read_back["beach.jpg.xmp"]["HierarchicalSubject"] == ["places|beach", "AI|sea", "AI|sand"]
        assert read_back["plain.jpg.xmp"]["TagsList"] == ["AI/kite", "AI/chair"]
        assert [(s["Tag"], s["Model"]) for s in read_back["plain.jpg.xmp"]["Suggestions"]] == [("kite", "openai:gpt-4o-mini"), ("chair", "openai:gpt-4o-mini")]
        assert all(s["Run"].startswith("PromptModels/") for s in read_back["plain.jpg.xmp"]["Suggestions"])

        # The review, as Lightroom or digiKam writes it: two suggestions confirmed (moved out of AI), one deleted.
        for name, tag in (("beach.jpg", "sea"), ("plain.jpg", "kite")):
            exiftool(f"-XMP-lr:HierarchicalSubject-=AI|{tag}", f"-XMP-lr:HierarchicalSubject+={tag}",
                     f"-XMP-digiKam:TagsList-=AI/{tag}", f"-XMP-digiKam:TagsList+={tag}", str(library / f"{name}.xmp"))
        exiftool("-XMP-lr:HierarchicalSubject-=AI|smoke", "-XMP-digiKam:TagsList-=AI/smoke", "-XMP-dc:Subject-=smoke",
                 str(library / "trip" / "rocket.jpg.xmp"))

        second, second_out = run_flow("updatephotos.py", env, source=f"folder:{library}")
        assert truth_by_name(second) == {"trip/rocket.jpg": ["launch", "rocket"], "beach.jpg": ["beach", "sea"], "plain.jpg": ["kite"]}
        by_name = {photo["name"]: photo for photo in second.data.unseen.values()}
        assert by_name["trip/rocket.jpg"]["rejected_tags"] == ["smoke"]
        assert by_name["beach.jpg"]["confirmed_tags"] == ["sea"] and by_name["beach.jpg"]["suggested_tags"] == ["sand"]
        assert sorted(second.data.corrected) == sorted(by_name[n]["id"] for n in ("trip/rocket.jpg", "beach.jpg", "plain.jpg"))
        assert "come again with the suggestions you reviewed" in second_out

        prompted, _ = run_flow("promptmodels.py", env, models="openai")
        evals_run, _ = run_flow("evalsflow.py", env)
        again = subprocess.run([sys.executable, "export_tags.py", "--model", "openai:gpt-4o-mini", "--out", str(tmp_path / "out")], cwd=ROOT,
                               env={**os.environ, **env}, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr

    scored = read_parquet(evals_run.data.photo_results)
    scored = scored[scored["batch_id"] == str(second.data.batch_id)]
    truth = {Path(url).name: sorted(tags) for url, tags in zip(scored["image_url"], scored["ground_truth_tags"])}
    assert truth == {"rocket.jpg": ["launch", "rocket"], "beach.jpg": ["beach", "sea"], "plain.jpg": ["kite"]}
    recall = {Path(url).name: r for url, r in zip(scored["image_url"], scored["recall"])}
    assert recall == {"rocket.jpg": 50.0, "beach.jpg": 100.0, "plain.jpg": 100.0}
    assert "AI|smoke" not in (library / "trip" / "rocket.jpg.xmp").read_text(), "a rejected suggestion is never suggested again"
    with (tmp_path / "out" / "tags.csv").open(newline="") as handle:
        assert {row["photo"] for row in csv.DictReader(handle)} == {"trip/rocket.jpg", "beach.jpg", "plain.jpg"}


def test_a_photo_delivered_twice_upstream_is_counted_once_by_promptmodels_and_evaluationflow(flow_env, tmp_path):
    """The second layer on its own: make the claims say that another UpdatePhotos run delivers two photos of a
    batch already scored (as an upstream that delivered them twice would leave them); EvaluationFlow leaves their
    answers out, and a PromptModels run on that batch does not prompt them."""
    from phototagger.claims import Claims, LocalClaimStore

    run_flow("updatephotos.py", flow_env, source="demo", batch_size=6)
    batch, _ = run_flow("updatephotos.py", flow_env, source="demo", batch_size=6)
    run_flow("promptmodels.py", flow_env, models="prior")
    twice = sorted(batch.data.unseen)[:2]
    other = Claims(LocalClaimStore(tmp_path / ".metaflow" / "UpdatePhotos" / "_claims"), "user.ci", batch.data.claim_epoch, "999",
                   lambda holder: "failed")
    assert [other.claim(photo_id).state for photo_id in twice] == ["won", "won"]

    evals_run, evals_out = run_flow("evalsflow.py", flow_env)
    rescored, prompt_out = run_flow("promptmodels.py", flow_env, models="prior", update_run=batch.id)

    assert "left out 2 answers on 2 photos that another UpdatePhotos run delivered" in evals_out
    assert rows_by_model(evals_run.data.evals)["prior:tag-prior"]["Avg Recall (exact) n"] == 4
    assert f"Left out 2 photos of {batch.pathspec} that UpdatePhotos/999 delivered" in prompt_out
    assert sorted(rescored.data.photos) == sorted(set(batch.data.unseen) - set(twice))


@pytest.mark.timeout(900)  # trains, merges, serves and prompts the tiny model on a CPU
def test_exported_model_served_by_transformers_serve_is_scored_beside_the_baselines(flow_env, tmp_path, tiny_base_and_dataset):
    from phototagger.training.export import transformers_server

    base, runs = tiny_base_and_dataset
    trained, _ = run_flow("finetune_vlm.py", flow_env, base_model=str(base), quantize="none", max_steps=2, batch_size=2,
                          grad_accum=1, epochs=1, output_dir=str(tmp_path / "checkpoints"))
    out = tmp_path / "export"
    exported = subprocess.run([sys.executable, str(ROOT / "export_model.py"), "--out", str(out)], cwd=tmp_path,
                              env={**os.environ, **flow_env}, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    name = f"tiny-qwen-lora-{trained.id}"
    assert f"transformers serve {name}" in exported.stdout and (out / name / "model.safetensors").is_file()
    (entry,) = json.loads((out / "models.json").read_text())["models"]

    with transformers_server(out, name) as base_url:
        models = tmp_path / "models.json"
        served = {**entry, "base_url": base_url, "max_tokens": 16}
        models.write_text(json.dumps({"models": [{"provider": "prior", "model": "tag-prior"}, {"provider": "knn", "model": "jec"}, served]}))
        # A random tiny model answers gibberish, cut at max_tokens: every answer fails, which the error budget would stop.
        prompted, _ = flowrun.run_flow(ROOT / "promptmodels.py", flow_env, ROOT, runner_options={"config": [("model-list", str(models))]},
                                       max_error_share=1.0)
    evals_run, _ = run_flow("evalsflow.py", flow_env)

    key = f"openai-compatible:{name}"
    results = by_model(prompted.data.models_eval["results"])
    assert set(results) == {"prior:tag-prior", "knn:jec", key}
    assert [r["photo_id"] for r in results[key]] == runs.newest, "every photo once, answered by the server"
    assert all(r["error"] in (None, "truncated", "unparseable") and r["raw"] for r in results[key]), [r["error"] for r in results[key]]
    evals, html = dashboard(evals_run)
    assert set(rows_by_model(evals)) == {"prior:tag-prior", "knn:jec", key}
    assert any(row[0].startswith(key) for row in evals["rows"]) and f'data-model="{key}' in html
