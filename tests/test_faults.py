"""The fault suite (issue 4): the real Prompter and prompt_photos against the fake OpenAI server.

For every fault the contract is the same: N photos in gives N result records out, in order, the
failed photo carries the right error class, the others are unharmed, and the error budget decides.
"""
from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from phototagger.http import LocalImage
from phototagger.prompting.batch import DEFAULT_MODEL_DEADLINE_S, PromptSettings, prompt_photos
from phototagger.prompting.budget import ErrorBudget, ErrorBudgetExceeded, raise_if_broken
from phototagger.prompting.cache import LocalCacheBackend, ResponseCache
from phototagger.prompting.configs import ModelSkipped, make_prompter
from phototagger.prompting.limiter import AdaptiveLimiter
from phototagger.prompting.prompter import Prompter, RetryPolicy
from phototagger.scoring.metrics import score_results
from tests.fakes.openai_server import FakeOpenAIServer

KEY = "sk-fault-suite-0000"
FAST_RETRY = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=2.0, jitter=0.0)
N = 4


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("openai_api", KEY)
    with FakeOpenAIServer(images={f"p{i}.png": png() for i in range(N)}, tags_by_image={"p": ["red", "square"]}) as fake:
        yield fake


def photos(server, names=None):
    names = names or [f"p{i}.png" for i in range(N)]
    return [{"id": f"photo{i}", "image_url": server.image_url(name), "ground_truth_tags": ["red", "square"]}
            for i, name in enumerate(names)]


def prompter(server, retry=FAST_RETRY, **options):
    options.setdefault("timeout_s", 2.0)
    return Prompter("openai", "gpt-4o-mini", retry=retry, base_url=server.base_url, **options)


def run(prompter, photos, prompt_text, cache=None, **settings):
    """batch.prompt_photos, scored as the prompt flows do."""
    return score_results(photos, prompt_photos(prompter, photos, prompt_text, PromptSettings(**settings), cache=cache))


def errors(results):
    return [r["error"] for r in results]


PERSISTENT_FAULTS = [
    ("rate_limit", "rate_limited"),
    ("rate_limit_no_header", "rate_limited"),
    ("server_error", "server_error"),
    ("unavailable", "server_error"),
    ("reset", "connection"),
    ("truncated", "server_error"),
    ("non_json", "server_error"),
    ("prose", "unparseable"),
    ("auth", "auth"),
    ("bad_image", "bad_image"),
]
NOT_ANSWERS = [("length", "truncated"), ("refusal", "refused"), ("refusal_prose", "refused"), ("error_body", "quota")]
PERSISTENT_FAULTS += NOT_ANSWERS


@pytest.mark.parametrize("fault,error_class", PERSISTENT_FAULTS, ids=[f for f, _ in PERSISTENT_FAULTS])
def test_a_photo_that_always_fails_is_recorded_with_its_class_and_the_rest_succeed(server, fault, error_class):
    server.fault_by_image = {"p1.png": fault}
    results = run(prompter(server), photos(server), "tag", concurrency=4, progress=False)
    assert [r["photo_id"] for r in results] == [f"photo{i}" for i in range(N)]
    assert errors(results) == [None, error_class, None, None]
    assert results[1]["recall"] == 0.0 and results[0]["recall"] == 100.0
    assert KEY not in results[1]["raw"]


@pytest.mark.parametrize("fault,error_class", NOT_ANSWERS, ids=[f for f, _ in NOT_ANSWERS])
def test_an_answer_that_is_not_an_answer_is_not_cached_and_is_asked_again_once_the_server_heals(server, tmp_path, fault, error_class):
    cache = ResponseCache(LocalCacheBackend(tmp_path))
    server.fault_by_image = {"p1.png": fault}
    first = run(prompter(server), photos(server), "tag", cache=cache, progress=False)
    server.fault_by_image = {}
    calls = server.calls
    healed = run(prompter(server), photos(server), "tag", cache=cache, progress=False)

    assert errors(first) == [None, error_class, None, None]
    assert first[1]["tags"] == [] and first[1]["recall"] == 0.0
    assert server.calls == calls + 1, "only the failed photo is asked again"
    assert [r["cached"] for r in healed] == [True, False, True, True]
    assert errors(healed) == [None] * N and healed[1]["tags"] == ["red", "square"]


BAD_ENTRIES = [{}, {"tags": None}, {"tags": "sky"}, {"tags": [1, {}]}, ["sky"],
               {"tags": ["red", "squ"], "raw": '{"tags": ["red", "squ', "valid": False},  # cut off, stored by an older version
               {"tags": ["sorry", "i can't"], "raw": "Sorry, I can't.", "valid": False}]


@pytest.mark.parametrize("entry", BAD_ENTRIES, ids=[json.dumps(e) for e in BAD_ENTRIES])
def test_a_cache_entry_of_the_wrong_shape_is_a_miss_and_is_overwritten(server, tmp_path, entry):
    cache = ResponseCache(LocalCacheBackend(tmp_path))
    run(prompter(server), photos(server), "tag", cache=cache, progress=False)
    bad = sorted(tmp_path.rglob("*.json"))[0]
    bad.write_text(json.dumps(entry))
    calls = server.calls

    again = run(prompter(server), photos(server), "tag", cache=cache, progress=False)

    assert server.calls == calls + 1 and sum(not r["cached"] for r in again) == 1
    assert errors(again) == [None] * N and all(r["tags"] == ["red", "square"] for r in again)
    assert json.loads(bad.read_text())["tags"] == ["red", "square"], "the next answer overwrote the bad entry"


def test_a_hanging_call_times_out_per_call_and_does_not_hold_up_the_others(server):
    server.fault_by_image = {"p2.png": "hang"}
    started = time.monotonic()
    results = run(prompter(server, timeout_s=0.4), photos(server), "tag", concurrency=4, progress=False)
    assert errors(results) == [None, None, "timeout", None]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("fault", ["rate_limit_no_header", "server_error", "unavailable", "reset", "truncated", "non_json", "hang"])
def test_a_transient_fault_is_retried_and_the_photo_succeeds(server, fault):
    server.faults = [fault]
    results = run(prompter(server, timeout_s=0.4), photos(server), "tag", concurrency=1, progress=False)
    assert errors(results) == [None] * N and server.calls == N + 1


def many_photos(server, n=40):
    return [{"id": f"photo{i}", "image_url": server.image_url(f"p{i % N}.png"), "ground_truth_tags": ["red"]} for i in range(n)]


def test_a_trickling_answer_is_a_timeout_within_the_call_deadline_and_the_others_succeed(server):
    server.fault_by_image = {"p2.png": "trickle"}  # the whole answer takes over 100 s to arrive
    started = time.monotonic()
    results = run(prompter(server, retry=RetryPolicy(max_attempts=1)), photos(server), "tag", concurrency=4, progress=False)
    assert errors(results) == [None, None, "timeout", None]
    assert time.monotonic() - started < 30


def test_a_429_storm_asking_for_an_hour_ends_at_once_with_every_photo_recorded(server):
    server.fault_all = "rate_limit_long"  # Retry-After: 3600, past the model deadline
    started = time.monotonic()
    results = run(prompter(server, retry=RetryPolicy()), many_photos(server), "tag", concurrency=4,
                  progress=False, deadline_s=DEFAULT_MODEL_DEADLINE_S)
    assert [r["photo_id"] for r in results] == [f"photo{i}" for i in range(40)]
    assert set(errors(results)) == {"rate_limited"}
    assert server.calls <= 4
    assert time.monotonic() - started < 60
    assert any("not prompted: the server asked to wait 3600s" in r["raw"] for r in results)


def test_the_model_deadline_ends_a_run_of_short_rate_limits_with_every_photo_recorded(server):
    server.fault_all = "rate_limit"  # Retry-After: 1, again and again
    started = time.monotonic()
    results = run(prompter(server, retry=RetryPolicy()), many_photos(server), "tag", concurrency=4,
                  progress=False, deadline_s=3)
    assert len(results) == 40 and set(errors(results)) <= {"rate_limited", "deadline"}
    assert time.monotonic() - started < 60  # the deadline plus one call's timeout, with room for a loaded machine


def test_photos_not_answered_by_the_model_deadline_are_recorded_as_deadline_without_a_call(server):
    server.latency_s = 0.5  # 40 photos two at a time need 10 s; the deadline is 2 s
    results = run(prompter(server), many_photos(server), "tag", concurrency=2, progress=False, deadline_s=2)
    answered = [r for r in results if r["error"] is None]
    late = [r for r in results if r["error"] == "deadline"]
    assert len(answered) + len(late) == 40 and answered and late
    assert server.calls == len(answered)
    assert "not prompted: the model deadline of 2s had passed" in late[0]["raw"]


def test_repeated_rejected_keys_trip_the_breaker_and_the_rest_are_recorded_as_auth_uncalled(server):
    server.require_key = "sk-the-right-key"
    results = run(prompter(server), many_photos(server), "tag", concurrency=4, progress=False, max_auth_failures=3)
    assert set(errors(results)) == {"auth"} and len(results) == 40
    assert server.calls <= 3 + 4
    assert sum("refused as auth" in r["raw"] for r in results) >= 40 - server.calls
    assert not any(KEY in r["raw"] for r in results)


def test_rate_limit_honours_retry_after_and_halves_concurrency(server):
    limiter = AdaptiveLimiter(4)
    server.faults = ["rate_limit"]
    started = time.monotonic()
    results = run(prompter(server, limiter=limiter), photos(server), "tag", concurrency=4, progress=False)
    assert errors(results) == [None] * N
    assert time.monotonic() - started >= 1.0  # the fake sends Retry-After: 1
    assert limiter.rate_limited == 1 and limiter.limit == 2


@pytest.mark.parametrize("name", ["missing", "notimage", "huge"])
@pytest.mark.parametrize("inline", [False, True], ids=["url-to-api", "fetched-by-us"])
def test_an_image_that_404s_is_not_an_image_or_is_50mb_is_a_bad_image(server, name, inline):
    results = run(prompter(server, inline_images=inline), photos(server, ["p0.png", name, "p2.png"]), "tag",
                  progress=False)
    assert errors(results) == [None, "bad_image", None]


def test_a_local_image_that_is_missing_is_a_bad_image_without_a_call(server, tmp_path):
    items = [{"id": "gone", "image_url": LocalImage(tmp_path / "gone.jpg", tmp_path), "ground_truth_tags": ["red"]}]
    (result,) = run(prompter(server), items, "tag", progress=False)
    assert result["error"] == "bad_image" and server.calls == 0


def test_an_empty_batch_makes_no_calls_and_no_records(server):
    assert run(prompter(server), [], "tag", concurrency=4, progress=False) == []
    assert server.calls == 0


def test_a_missing_key_stops_the_model_before_any_call_and_names_the_variable(server, monkeypatch):
    monkeypatch.delenv("openai_api")
    with pytest.raises(ModelSkipped, match="export openai_api="):
        make_prompter({"provider": "openai", "model": "gpt-4o-mini", "base_url": server.base_url})
    assert server.calls == 0


def test_a_rejected_key_fails_every_photo_as_auth_and_breaks_the_error_budget(server):
    server.require_key = "sk-the-right-one"
    results = run(prompter(server), photos(server), "tag", concurrency=4, progress=False)
    assert errors(results) == ["auth"] * N and server.calls == N  # auth is not retried
    with pytest.raises(ErrorBudgetExceeded) as failed:
        raise_if_broken(ErrorBudget(0.2).check({"openai:gpt-4o-mini": results}))
    assert failed.value.counts == {"auth": N} and KEY not in str(failed.value)


def test_error_budget_tolerates_one_failure_in_five_and_fails_on_two(server):
    names = [f"p{i % N}.png" for i in range(5)]
    server.fault_by_image = {"p1.png": "bad_image"}
    one_bad = run(prompter(server), photos(server, names), "tag", progress=False)
    assert len(one_bad) == 5 and errors(one_bad).count("bad_image") == 1
    raise_if_broken(ErrorBudget(0.2).check({"openai:gpt-4o-mini": one_bad}))
    server.fault_by_image = {"p1.png": "bad_image", "p2.png": "prose"}
    two_bad = run(prompter(server), photos(server, names), "tag", progress=False)
    with pytest.raises(ErrorBudgetExceeded, match="2 of 5 calls failed"):
        raise_if_broken(ErrorBudget(0.2).check({"openai:gpt-4o-mini": two_bad}))
