"""No API key lands in a result, event, log line, exception message, cache entry, artifact or card.

Known fake keys go to the fake OpenAI server, which echoes the key back in its 401 message (as
OpenAI does), so the keys really travel through the code before everything is scanned for them.
"""
from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from phototagger.prompting.batch import PromptSettings, prompt_photos
from phototagger.prompting.budget import ErrorBudget, ErrorBudgetExceeded, raise_if_broken
from phototagger.prompting.cache import LocalCacheBackend, ResponseCache
from phototagger.prompting.summary import run_summary_lines
from phototagger.scoring.evals import events_from_models_eval
from phototagger.scoring.metrics import score_results
from phototagger.scoring.table import summarise
from phototagger.redact import MIN_SECRET_LEN, scrub
from phototagger.prompting.prompter import Prompter, RetryPolicy
from phototagger.prompting.providers import ProviderError
from tests.fakes.openai_server import FakeOpenAIServer
from tests.flowrun import failed_task_logs

ROOT = Path(__file__).resolve().parent.parent
OPENAI_KEY = "sk-test-OPENAI-0123456789abcdef"
TOGETHER_KEY = "tgp-test-TOGETHER-fedcba9876543210"
KEYS = (OPENAI_KEY, TOGETHER_KEY)
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 210), "yellow": (235, 225, 20)}


def png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), rgb).save(buf, format="PNG")
    return buf.getvalue()


def echoed_forms(key: str) -> list[str]:
    """The spellings of `key` the fake server's echo faults send (see tests/fakes/openai_server.py)."""
    percent = "".join(f"%{ord(c):02X}" if i % 2 else c for i, c in enumerate(key))
    return [key, key.lower(), percent, f"\\u{ord(key[0]):04x}{key[1:]}", base64.b64encode(f"user:{key}".encode()).decode()]


def all_forms() -> list[str]:
    return [form for key in KEYS for form in echoed_forms(key)]


def leaked(text: str) -> list[str]:
    """The keys found in `text` in any spelling the fake server echoes."""
    return [key for key in KEYS if any(form in text for form in echoed_forms(key))]


def test_keys_stay_out_of_results_logs_errors_and_cache(monkeypatch, tmp_path, caplog, capsys):
    monkeypatch.setenv("openai_api", OPENAI_KEY)
    monkeypatch.setenv("togetherai_api", TOGETHER_KEY)
    caplog.set_level(logging.DEBUG)
    cache = ResponseCache(LocalCacheBackend(tmp_path / "cache"))
    photos = [{"id": name, "image_url": f"https://img.example/{name}.png", "ground_truth_tags": [name]} for name in COLOURS]
    texts = []
    with FakeOpenAIServer(tags_by_image={name: [name] for name in COLOURS}) as server:
        server.fault_by_image = {"green": "auth", "blue": "server_error"}
        for provider, base_url in (("openai", server.base_url), ("together", server.root_url)):
            prompter = Prompter(provider, "vision-model", retry=RetryPolicy(max_attempts=2, base_delay_s=0.01), base_url=base_url)
            results = prompt_photos(prompter, photos, "tag", PromptSettings(progress=False), cache=cache)
            assert [r["error"] for r in results] == [None, "auth", "server_error", None]
            with pytest.raises(ErrorBudgetExceeded) as failed:
                raise_if_broken(ErrorBudget(0.2).check({prompter.model_key: results}))
            texts += [json.dumps(results), str(failed.value), repr(prompter.settings())]
        sent = {headers.get("authorization") for _, headers, _ in server.requests}
    assert sent == {f"Bearer {OPENAI_KEY}", f"Bearer {TOGETHER_KEY}"}  # the keys really went out
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    texts += [p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert "Incorrect API key provided: ***" in texts[0]  # the echo was there, and scrubbed
    assert leaked("\n".join(texts)) == []


def test_a_key_echoed_in_the_answer_or_an_error_reaches_no_record_cache_event_log_or_summary(monkeypatch, tmp_path, caplog, capsys):
    monkeypatch.setenv("openai_api", OPENAI_KEY)
    monkeypatch.setenv("togetherai_api", TOGETHER_KEY)
    caplog.set_level(logging.DEBUG)
    cache_dir = tmp_path / "cache"
    photos = [{"id": name, "image_url": f"https://img.example/{name}.png", "ground_truth_tags": [name]} for name in COLOURS]
    texts, results_by_model = [], {}
    with FakeOpenAIServer(tags_by_image={name: [name] for name in COLOURS}) as server:
        server.fault_by_image = {"red": "echo_key", "blue": "echo_key_error"}
        for provider, base_url in (("openai", server.base_url), ("together", server.root_url)):
            prompter = Prompter(provider, "vision-model", retry=RetryPolicy(max_attempts=2, base_delay_s=0.01), base_url=base_url)
            for _ in range(2):  # the second run answers red, green and yellow from the cache
                results = score_results(photos, prompt_photos(prompter, photos, "tag", PromptSettings(progress=False),
                                                              cache=ResponseCache(LocalCacheBackend(cache_dir))))
            assert [r["error"] for r in results] == [None, None, "server_error", None]
            assert [r["cached"] for r in results] == [True, True, False, True]
            red = results[0]
            assert red["tags"] == ["red", "key"] and red["recall"] == 100.0  # the echoed key is no tag
            assert red["raw"].count("***") == 4 and "Upstream failed" in results[2]["raw"]
            results_by_model[prompter.model_key] = results
            texts.append(json.dumps(results))
    models_eval = {"photos": {p["id"]: p for p in photos}, "results": results_by_model, "batch_id": "b1", "batch_date": "2024-05-01"}
    print("\n".join(run_summary_lines(models_eval, {k: summarise(v) for k, v in results_by_model.items()}, {})))
    captured = capsys.readouterr()
    events = events_from_models_eval(models_eval, "PromptModels", "1")
    texts += [json.dumps(events), caplog.text, captured.out, captured.err]
    cached = [p.read_text() for p in cache_dir.rglob("*") if p.is_file()]
    assert len(cached) == 6 and all("***" in text for text in cached if '"red"' in text)
    assert leaked("\n".join(texts + cached)) == []


def test_the_scrubber_masks_each_spelling_of_every_key_the_environment_holds(monkeypatch):
    monkeypatch.setenv("openai_api", OPENAI_KEY)
    monkeypatch.setenv("MY_GATEWAY_API_KEY", "gw_Secret_12345")  # named like a key: masked too
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret-value")
    monkeypatch.setenv("HF_TOKEN", "short")  # under MIN_SECRET_LEN: masking it would garble text
    basic = base64.b64encode(f"me:{OPENAI_KEY}".encode()).decode()
    text = (f"a {OPENAI_KEY}, {OPENAI_KEY.upper()}, {echoed_forms(OPENAI_KEY)[2]}, {echoed_forms(OPENAI_KEY)[3]}, "
            f"&#115;k-test-OPENAI-0123456789abcdef, gw secret 12345, Basic {basic}; short not-a-secret-value")
    scrubbed = scrub(text)
    assert scrubbed.startswith("a ***, ***, ***, ***, ***, ***, Basic ") and scrubbed.endswith("; short not-a-secret-value")
    assert leaked(scrubbed) == [] and basic not in scrubbed
    assert scrub("held by a provider: Tok-0123456789", ("Tok-0123456789",)) == "held by a provider: ***"
    assert scrub("1234567", ("1234567",)) == "1234567" and len("1234567") < MIN_SECRET_LEN


def test_a_key_cut_by_the_error_messages_length_limit_leaves_no_part_of_it(monkeypatch):
    monkeypatch.setenv("openai_api", OPENAI_KEY)
    provider = Prompter("openai", "vision-model", base_url="http://127.0.0.1:9/v1").backend
    with pytest.raises(ProviderError) as failed:
        provider._answer("<html>" + "x" * 80 + f"Authorization: Bearer {OPENAI_KEY}</html>")  # a gateway's page, not JSON
    assert "Bearer ***" in str(failed.value) and OPENAI_KEY[:8] not in str(failed.value)


# -- the flows, end to end ---------------------------------------------------------------------

# Read back in a child process: Metaflow fixes its datastore root when first imported, so this
# process's client could be looking at another datastore. Cards are scanned as files (_scan_files).
SCAN_RUNS = """
import json, sys
from metaflow import Run, namespace
keys = json.loads(sys.argv[1])
namespace(None)
hits, texts = [], {}
for pathspec in sys.argv[2:]:
    for step in Run(pathspec):
        for task in step:
            for name, text in (("stdout", task.stdout), ("stderr", task.stderr)):
                texts[f"{task.pathspec} {name}"] = text or ""
            for artifact in task:
                texts[f"{task.pathspec} artifact {artifact.id}"] = repr(artifact.data)
join = Run(sys.argv[3])["join"].task.data
print(json.dumps({
    "hits": [where for where, text in texts.items() if any(k in text for k in keys)],
    "skipped": sorted(join.skipped_models),
    "results": join.models_eval["results"],
}))
"""


def _scan_files(root: Path) -> list[str]:
    """Every file under `root`, gunzipped where compressed (Metaflow's artifact blobs): the paths holding a key."""
    hits = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                pass
        if any(form.encode() in data for form in all_forms()):
            hits.append(str(path))
    return hits


def test_flow_runs_leave_no_key_in_artifacts_logs_cards_or_the_datastore(tmp_path, monkeypatch):
    from metaflow import Runner

    monkeypatch.setenv("USER", "secrets-test")  # the Runner resolves each run's namespace in this process

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, rgb in COLOURS.items():
        (photos / f"{name}.png").write_bytes(png(rgb))
    (photos / "tags.json").write_text(json.dumps({f"{name}.png": [name, "plain colour"] for name in COLOURS}))
    env = {
        "USER": "secrets-test",
        "METAFLOW_USER": "secrets-test",
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "datastore"),
        "METAFLOW_HOME": str(tmp_path / "mfhome"),
        "PHOTOTAGGER_CACHE_DIR": str(tmp_path / "cache"),
        "openai_api": OPENAI_KEY,
        "togetherai_api": TOGETHER_KEY,
        "PYTHONPATH": str(ROOT),
    }
    configs = [("prompt", str(ROOT / "prompt.txt")), ("prices", str(ROOT / "prices.json"))]
    # Local photos travel as data URIs: the fake server tells them apart by their base64 bytes.
    b64 = {name: base64.b64encode(png(rgb)).decode() for name, rgb in COLOURS.items()}
    outputs, runs = [], []
    with FakeOpenAIServer(tags_by_image={b64[name]: [name, "plain colour"] for name in COLOURS}) as server:
        server.fault_by_image = {b64["green"]: "auth",  # a 401 that echoes the key, as OpenAI does
                                 b64["red"]: "echo_key"}  # an answer whose tags echo it, as is and encoded
        models = {"models": [
            {"provider": "openai", "model": "gpt-4o-mini", "base_url": server.base_url, "timeout_s": 5},
            {"provider": "together", "model": "Qwen/Qwen2.5-VL-72B-Instruct", "base_url": server.root_url, "timeout_s": 5},
            {"provider": "openai-compatible", "model": "local-vlm"},  # no base URL: skipped
            {"provider": "prior", "model": "tag-prior"},  # first batch: learns from it, leave-one-out
        ]}
        for flow, options, params in (
            ("updatephotos.py", {}, {"source": f"folder:{photos}"}),
            ("promptmodels.py", {"config": configs, "config_value": [("model-list", models)]}, {"max_error_share": 0.5, "skip_unavailable": True}),
            ("evalsflow.py", {}, {}),
        ):
            with Runner(str(ROOT / flow), show_output=False, cwd=str(tmp_path), env=env, **options).run(**params) as done:
                assert done.status == "successful", failed_task_logs(done)
                outputs += [done.stdout, done.stderr]
                runs.append(done.run.pathspec)
        sent = {h.get("authorization") for _, h, _ in server.requests}
    assert sent == {f"Bearer {OPENAI_KEY}", f"Bearer {TOGETHER_KEY}"}  # the keys really went out

    child = subprocess.run([sys.executable, "-c", SCAN_RUNS, json.dumps(all_forms()), *runs], env={**os.environ, **env},
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    scan = json.loads(child.stdout.strip().splitlines()[-1])
    assert scan["skipped"] == ["openai-compatible:local-vlm"]
    assert sorted(key.split(" | ")[0] for key in scan["results"]) == ["openai:gpt-4o-mini", "prior:tag-prior", "together:Qwen/Qwen2.5-VL-72B-Instruct"]
    vendors = {key: rows for key, rows in scan["results"].items() if not key.startswith("prior:")}
    for rows in vendors.values():
        assert sorted(r["error"] or "" for r in rows) == ["", "", "", "auth"]
        assert sorted(r["recall"] for r in rows) == [0.0, 100.0, 100.0, 100.0]
    assert "***" in json.dumps(scan["results"])  # the echoed key was there, and scrubbed
    red = [r for rows in vendors.values() for r in rows if "red" in r["tags"]]
    assert [(r["tags"], r["raw"].count("***")) for r in red] == [(["red", "plain colour", "key"], 4)] * 2
    assert scan["hits"] == []
    assert [i for i, text in enumerate(outputs) if leaked(text or "")] == []
    cards = [p.name for p in tmp_path.rglob("*.html")]
    assert len(cards) >= 3, cards  # UpdatePhotos, PromptModels and the dashboard
    assert _scan_files(tmp_path) == []  # datastore, cards, metadata, response cache


def test_the_file_scan_finds_a_key_inside_a_compressed_blob(tmp_path):
    (tmp_path / "blob").write_bytes(gzip.compress(f"headers: Bearer {OPENAI_KEY}".encode()))
    (tmp_path / "clean.txt").write_text("Incorrect API key provided: ***")
    assert _scan_files(tmp_path) == [str(tmp_path / "blob")]
