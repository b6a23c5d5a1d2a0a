"""UpdatePhotos: the incremental logic on its own, then the flow itself through Metaflow's Runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

from markupsafe import escape

import pytest
from PIL import Image

from phototagger.blobs import MemoryBlobStore
from phototagger.ingest import batches, state
from phototagger.output import run_card
from phototagger.records import Photo
from tests.fakes.bomb import bomb_png
from tests.fakes.moto_s3 import moto_s3

REPO = Path(__file__).resolve().parents[1]


def photo(photo_id: str, *tags: str) -> Photo:
    return Photo(id=photo_id, image_url=f"/photos/{photo_id}.jpg", ground_truth_tags=list(tags), source="demo")


class RunData:
    """A client Run's `.data`: artifacts as attributes, `in` for which ones exist."""

    def __init__(self, artifacts: dict):
        self.__dict__.update(artifacts)

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__


def previous_run(store, unseen: dict, before=None, batch_id: str = "1") -> batches.Previous:
    return batches.Previous(before or state.empty_state(), unseen, batch_id)


def test_first_run_delivers_everything_it_fetched():
    before = batches.delivered_before(MemoryBlobStore(), None)
    batch = batches.plan_batch(state.delivered_ids(MemoryBlobStore(), before["delivered"]), [photo("a", "cat"), photo("b")])

    assert list(batch.unseen) == ["a", "b"] and batch.delivered_before == 0


def test_next_run_skips_the_previous_batch_and_what_came_before_it():
    store = MemoryBlobStore()
    first = batches.delivered_before(store, previous_run(store, {"a": photo("a", "cat")}))
    before = batches.delivered_before(store, previous_run(store, {"b": photo("b")}, first, "2"))
    delivered = state.delivered_ids(store, before["delivered"])
    batch = batches.plan_batch(delivered, [photo("b"), photo("c"), photo("a"), photo("d")])

    assert delivered == {"a", "b"} and before["delivered"]["count"] == 2
    assert list(batch.unseen) == ["c", "d"] and batch.delivered_before == 2


def test_reset_starts_from_an_empty_state():
    store = MemoryBlobStore()
    assert batches.delivered_before(store, previous_run(store, {"b": photo("b")}), reset=True) == state.empty_state()


def test_a_photo_fetched_twice_is_delivered_once():
    batch = batches.plan_batch({}, [photo("a", "cat"), photo("a", "dog")])
    assert list(batch.unseen) == ["a"] and batch.unseen["a"]["ground_truth_tags"] == ["cat"]


def test_previous_state_reads_the_runs_artifacts():
    before = state.empty_state()
    data = {**before, "unseen": {"b": photo("b")}, "batch_id": "7"}
    run = SimpleNamespace(data=RunData(data))
    assert batches.previous_state(run) == batches.Previous(before, {"b": photo("b")}, "7")
    assert batches.previous_state(run).claim_epoch is None
    run = SimpleNamespace(data=RunData({**data, "claim_epoch": "reset-5"}))
    assert batches.previous_state(run) == batches.Previous(before, {"b": photo("b")}, "7", claim_epoch="reset-5")
    assert batches.previous_state(None) is None


def test_a_run_from_before_the_chunked_state_has_its_history_folded_in_once():
    store = MemoryBlobStore()
    data = {"history": {"a": photo("a", "cat")}, "unseen": {"b": photo("b", "dog")}, "batch_id": "7"}
    run = SimpleNamespace(data=RunData(data))
    before = batches.delivered_before(store, batches.previous_state(run))

    assert state.delivered_ids(store, before["delivered"]) == {"a", "b"}
    assert before["tag_stats"]["tags"] == {"cat": 1, "dog": 1}


def test_batch_date_is_the_utc_date():
    late_evening_in_new_york = datetime(2024, 3, 1, 22, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert batches.batch_date(late_evening_in_new_york) == "2024-03-02"


def test_summary_says_what_arrived_and_what_is_seen():
    batch = batches.plan_batch({"a": photo("a")}, [photo("b", "cat"), photo("c")])
    lines = batches.summary_lines("demo", batch, ["Stopped at the rate limit."])

    assert lines == [
        "2 new photos from demo (1 with ground-truth tags).",
        "3 photos seen in total on this branch (1 before this run).",
        "Notes: Stopped at the rate limit.",
    ]
    assert "<tr><td>b</td><td>cat</td></tr>" in run_card.updatephotos_card("demo", batch, [])


def test_empty_batch_summary_says_there_is_nothing_to_do():
    batch = batches.plan_batch({"a": photo("a")}, [photo("a")])
    lines = batches.summary_lines("demo", batch, [])

    assert batch.unseen == {}
    assert lines[0] == "No new photos from demo: an empty batch, downstream flows have nothing to do."
    assert lines[2] == "Notes: none."


def test_many_per_photo_notes_print_a_few_and_the_card_lists_them_all():
    batch = batches.plan_batch({}, [photo("a")])
    notes = [f"p{i}.jpg has no ground truth: its tags.json entry 'p{i}.jpg' is a number" for i in range(40)]

    line = batches.summary_lines("folder:/x", batch, notes)[2]
    assert line.count("has no ground truth") == batches.NOTES_SHOWN and line.endswith("and 35 more notes, all listed on the run's card.")
    card = run_card.updatephotos_card("folder:/x", batch, notes)
    assert all(f"<li>{escape(note)}</li>" in card.splitlines() for note in notes)


def test_updatephotos_delivers_new_photos_each_run_then_an_empty_batch(tmp_path, monkeypatch):
    from tests import flowrun

    env = {"METAFLOW_USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    monkeypatch.setenv("USER", "test")  # the client in this process needs a user name, even as root in CI

    def run_once():
        return flowrun.run_flow(REPO / "updatephotos.py", env, tmp_path, source="demo")

    first, _ = run_once()
    second, _ = run_once()
    third, third_out = run_once()

    first_ids, second_ids = set(first.data.unseen), set(second.data.unseen)
    assert len(first_ids) == len(second_ids) == 9 and not first_ids & second_ids
    assert second.data.delivered["count"] == len(first_ids) and set(second.data.delivered["tail"]) == first_ids
    assert second.data.tag_stats["photos"] == len(first_ids)
    assert "history" not in second.data and "seen_ids" not in second.data
    assert second.data.batch_id == second.id and len(second.data.batch_date) == 10
    assert second.data.source_name == "demo" and second.data.notes == []
    assert "project_branch:user.test" in second.tags

    assert third.data.unseen == {} and third.data.delivered["count"] == 18
    assert "No new photos from demo" in third_out


def test_updatephotos_delivers_the_good_photos_of_a_folder_holding_a_decompression_bomb(tmp_path, monkeypatch):
    from metaflow import Runner

    monkeypatch.setenv("USER", "test")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg"):
        Image.new("RGB", (12, 8), (200, 30, 30)).save(folder / name)
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "tags.json").write_text(json.dumps({"a.jpg": ["cat"], "c.jpg": {"tags": ["dog"]}}))
    env = {"METAFLOW_USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    runner = Runner(str(REPO / "updatephotos.py"), show_output=False, env=env, cwd=str(tmp_path))
    with runner.run(source=f"folder:{folder}") as running:
        assert running.status == "successful", running.stderr
        run, out = running.run, running.stdout

    assert sorted(Path(p["image_url"]).name for p in run.data.unseen.values()) == ["a.jpg", "c.jpg"]
    assert any("bomb.png" in note for note in run.data.notes) and "bomb.png" in out
    assert any(note.startswith("c.jpg has no ground truth") for note in run.data.notes)
@pytest.fixture
def datastore_env(request, tmp_path):
    """The environment of a run on the local datastore, or on S3 (a moto server on 127.0.0.1), as deployed runs use."""
    env = {"METAFLOW_USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    if request.param == "local":
        yield env
        return
    keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_s3("photo-tagger-claims") as endpoint:
        yield {
            **env,
            **keys,
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": "s3://photo-tagger-claims/metaflow",
            "METAFLOW_S3_ENDPOINT_URL": endpoint,
        }


@pytest.mark.parametrize("datastore_env", ["local", "s3"], indirect=True)
def test_two_updatephotos_runs_started_together_deliver_each_photo_once(datastore_env, tmp_path, monkeypatch):
    """Both runs read the same (empty) history; the claims in the datastore keep them apart."""
    from concurrent.futures import ThreadPoolExecutor

    from metaflow import Runner

    monkeypatch.setenv("USER", "test")

    def run_once() -> str:
        runner = Runner(str(REPO / "updatephotos.py"), show_output=False, env=datastore_env, cwd=str(tmp_path))
        with runner.run(source="demo") as running:
            assert running.status == "successful", running.stderr
            return running.run.id

    with ThreadPoolExecutor(2) as pool:
        together = [pool.submit(run_once) for _ in range(2)]
        run_ids = [future.result() for future in together]
    run_ids.append(run_once())
    first, second, later = delivered_by(run_ids, datastore_env, tmp_path)

    assert len(first["unseen"]) == len(second["unseen"]) == 9, "two full batches"
    assert not set(first["unseen"]) & set(second["unseen"]), "no photo in both"
    assert later["unseen"] == [] and sorted(later["delivered"]) == sorted(first["unseen"] + second["unseen"])


def delivered_by(run_ids: list[str], env: dict, cwd: Path) -> list[dict]:
    """`unseen` ids and `delivered` ids (before the batch) of UpdatePhotos runs, read by a client in a process with the runs' datastore settings."""
    script = (
        "import json, sys\n"
        "from metaflow import Run, namespace\n"
        "from phototagger.ingest.state import delivered_ids\n"
        "from phototagger.mfclient import DatastoreBlobs\n"
        "namespace(None)\n"
        "data = [Run('UpdatePhotos/' + i).data for i in sys.argv[1:]]\n"
        "blobs = DatastoreBlobs('UpdatePhotos')\n"
        "print(json.dumps([{'unseen': list(d.unseen), 'delivered': sorted(delivered_ids(blobs, d.delivered))} for d in data]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *run_ids], env={**os.environ, **env, "PYTHONPATH": str(REPO)}, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_run_card_is_a_small_page_that_shows_hostile_names_as_text():
    photos = [photo(f"p{i}", "cat") for i in range(150)] + [photo("<script>alert(1)</script>", "dog")]
    batch = batches.plan_batch({}, photos)

    card = run_card.updatephotos_card("folder:/x", batch, ['"bad.jpg" <img src=x> is not an image'])

    assert "<script>" not in card and "&lt;script&gt;alert(1)&lt;/script&gt;" not in card  # row 151 is past the cap
    assert "&#34;bad.jpg&#34; &lt;img src=x&gt; is not an image" in card and "and 51 more" in card
    assert len(card.encode()) < 20_000  # Metaflow's blank card is about 1.1 MB
