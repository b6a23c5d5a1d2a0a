"""The response cache: what its key covers, what it stores, and where it lives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from phototagger.prompting.cache import LocalCacheBackend, ResponseCache, make_cache
from tests.fakes.moto_s3 import moto_s3

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.0, "max_tokens": 300}
ANSWER = {"provider": "openai", "model": "gpt-4o-mini", "tags": ["cat", "pet"], "raw": '{"tags": ["cat", "pet"]}',
          "valid": True, "error": None, "latency_ms": 812.5, "prompt_tokens": 120, "completion_tokens": 9}


@pytest.fixture
def cache(tmp_path):
    return ResponseCache(LocalCacheBackend(tmp_path / "responses"))


def test_key_changes_with_provider_model_prompt_image_and_settings(cache):
    base = cache.key(SETTINGS, "tag it", "https://img/1.jpg")
    assert base == cache.key(dict(SETTINGS), "tag it", "https://img/1.jpg")
    variants = [
        cache.key({**SETTINGS, "provider": "together"}, "tag it", "https://img/1.jpg"),
        cache.key({**SETTINGS, "model": "gpt-4o"}, "tag it", "https://img/1.jpg"),
        cache.key(SETTINGS, "tag it!", "https://img/1.jpg"),
        cache.key(SETTINGS, "tag it", "https://img/2.jpg"),
        cache.key({**SETTINGS, "temperature": 0.7}, "tag it", "https://img/1.jpg"),
    ]
    assert len({base, *variants}) == 6


def test_local_image_is_identified_by_its_bytes_not_its_path(cache, tmp_path):
    first, moved, other = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    first.write_bytes(b"\xff\xd8\xff same photo")
    moved.write_bytes(b"\xff\xd8\xff same photo")
    other.write_bytes(b"\xff\xd8\xff other photo")
    key = cache.key(SETTINGS, "p", str(first))
    assert key == cache.key(SETTINGS, "p", str(moved))
    assert key != cache.key(SETTINGS, "p", str(other))


def test_stored_answer_comes_back_marked_cached_without_per_photo_fields(cache):
    key = cache.key(SETTINGS, "p", "https://img/1.jpg")
    assert cache.get(key) is None
    assert cache.put(key, {**ANSWER, "photo_id": "p1", "recall": 50.0, "cost_usd": 0.1, "cached": False})
    hit = cache.get(key)
    assert hit["tags"] == ["cat", "pet"] and hit["latency_ms"] == 812.5 and hit["prompt_tokens"] == 120
    assert hit["cached"] is True and hit["error"] is None
    assert "photo_id" not in hit and "recall" not in hit and "cost_usd" not in hit
    assert (cache.hits, cache.misses, cache.writes) == (1, 1, 1)


def test_errors_are_never_cached(cache, tmp_path):
    key = cache.key(SETTINGS, "p", "https://img/1.jpg")
    assert not cache.put(key, {**ANSWER, "tags": [], "error": "rate_limited", "raw": "429"})
    assert cache.get(key) is None
    assert not list((tmp_path / "responses").rglob("*.json"))


def test_corrupt_entry_is_a_miss_not_a_crash(cache, tmp_path):
    key = cache.key(SETTINGS, "p", "https://img/1.jpg")
    cache.put(key, ANSWER)
    next((tmp_path / "responses").rglob("*.json")).write_text('{"tags": ["cut')
    assert cache.get(key) is None


def test_concurrent_writers_leave_whole_files_and_no_temp_files(cache, tmp_path):
    keys = [cache.key(SETTINGS, "p", f"https://img/{i % 5}.jpg") for i in range(40)]

    def write(key):
        cache.put(key, ANSWER)

    threads = [threading.Thread(target=write, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = list((tmp_path / "responses").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    assert sorted(f.stem for f in files if f.suffix == ".json") == sorted(set(keys))
    assert all(cache.get(k)["tags"] == ["cat", "pet"] for k in keys)


def test_disabled_cache_is_none_and_the_env_var_picks_the_directory(tmp_path, monkeypatch):
    assert make_cache(False) is None
    monkeypatch.setenv("PHOTOTAGGER_CACHE_DIR", str(tmp_path / "mine"))
    assert make_cache(True).location == str(tmp_path / "mine")


def test_default_directory_is_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("PHOTOTAGGER_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    cache = make_cache(True)
    assert cache.location == str(tmp_path / ".phototagger_cache" / "responses")


def test_s3_datastore_puts_the_cache_in_the_datastore_bucket(tmp_path):
    """A deployed run (Metaflow datastore on S3) shares its cache through the datastore's storage.

    Metaflow reads its config at import, so this runs in a child process against a moto S3 server.
    """
    script = textwrap.dedent(
        """
        import json, os, boto3
        from phototagger.prompting.cache import make_cache
        data = json.loads(os.environ["CACHE_TEST_DATA"])
        s3 = boto3.client("s3", endpoint_url=os.environ["METAFLOW_S3_ENDPOINT_URL"])
        cache = make_cache(True)
        key = cache.key(data["settings"], "p", "https://img/1.jpg")
        assert cache.get(key) is None
        cache.put(key, data["answer"])
        cache.put(key[::-1], dict(data["answer"], error="timeout"))
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tagger-ci")["Contents"]]
        print(json.dumps({"location": cache.location, "tags": cache.get(key)["tags"], "keys": keys}))
        """
    )
    with moto_s3("tagger-ci") as endpoint:
        env = {k: v for k, v in os.environ.items() if k != "PHOTOTAGGER_CACHE_DIR"}
        env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                   METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3="s3://tagger-ci/metaflow",
                   METAFLOW_S3_ENDPOINT_URL=endpoint, METAFLOW_HOME=str(tmp_path), PYTHONPATH=str(ROOT),
                   CACHE_TEST_DATA=json.dumps({"settings": SETTINGS, "answer": ANSWER}))
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["location"] == "s3://tagger-ci/metaflow/photo_tagger/response_cache"
    assert out["tags"] == ["cat", "pet"]
    assert len(out["keys"]) == 1 and out["keys"][0].startswith("metaflow/photo_tagger/response_cache/")


def test_a_rerun_served_from_the_cache_keeps_the_latency_measured_when_the_answer_was_made(cache):
    """The dashboard's latency is the model's: a rerun answered from the cache shows what the calls took, not 'n/a'
    and not the microseconds of a cache read."""
    from phototagger.prompting.batch import PromptSettings, prompt_photos
    from phototagger.prompting.prompter import Prompter
    from phototagger.prompting.providers import Answer, Provider, register_provider
    from phototagger.scoring.table import summarise

    @register_provider("slow-test-tagger")
    class SlowTagger(Provider):
        def complete(self, prompt_text, image, photo_id=None):
            time.sleep(0.05)
            return Answer('{"tags": ["cat"]}', 10, 3)

    photos = [{"id": f"p{i}", "image_url": f"https://img.test/{i}.jpg", "ground_truth_tags": ["cat"]} for i in range(3)]
    settings = PromptSettings(concurrency=1, progress=False)
    made = prompt_photos(Prompter("slow-test-tagger", "m"), photos, "tag it", settings, cache=cache)
    rerun = prompt_photos(Prompter("slow-test-tagger", "m"), photos, "tag it", settings, cache=cache)

    assert [r["cached"] for r in made] == [False] * 3 and [r["cached"] for r in rerun] == [True] * 3
    assert [r["latency_ms"] for r in rerun] == [r["latency_ms"] for r in made]
    assert all(r["latency_ms"] >= 50 for r in rerun)
    assert summarise(rerun)["avg_latency_ms"] == summarise(made)["avg_latency_ms"] >= 50
