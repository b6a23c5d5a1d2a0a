"""The Prompter and the API providers against the local fake OpenAI server (real SDK clients)."""
from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import prompter as prompter_cli
from phototagger.http import LocalImage
from phototagger.http import ImageFetchError, fetch_image_bytes
from phototagger.prompting.prompter import Prompter, RetryPolicy
from phototagger.prompting.providers import Answer, MissingKeyError, Provider, ProviderError, make_provider, register_provider
from phototagger.prompting.providers import base as providers_base
from phototagger.prompting.providers.openai_api import retry_after_from_headers
from tests.fakes.openai_server import FakeOpenAIServer, error_body, image_urls

KEYS = {"openai": "sk-test-openai-SECRET-0001", "together": "tg-test-SECRET-0002", "openai-compatible": "oc-test-SECRET-0003"}
API_PROVIDERS = list(KEYS)
NO_WAIT = RetryPolicy(max_attempts=1)
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=2.0, jitter=0.0)
CAT = "https://images.example.com/cat.jpg"


def png_bytes(rgb: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def server():
    with FakeOpenAIServer(tags_by_image={"cat": ["Cat", "pet", " Fur "]}, images={"cat.png": png_bytes()}) as fake:
        yield fake


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer) -> FakeOpenAIServer:
    """Keys and base URLs from the environment, as a user sets them (Together's base URL has no /v1)."""
    monkeypatch.setenv("openai_api", KEYS["openai"])
    monkeypatch.setenv("togetherai_api", KEYS["together"])
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", KEYS["openai-compatible"])
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("TOGETHER_BASE_URL", server.root_url)
    monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", server.base_url)
    return server


def make(provider: str, retry: RetryPolicy = FAST_RETRY, **options) -> Prompter:
    return Prompter(provider, "vision-model", retry=retry, timeout_s=5, **options)


# -- request format ------------------------------------------------------------------------
@pytest.mark.parametrize("provider", API_PROVIDERS)
def test_each_provider_posts_a_chat_request_with_the_image_url_and_bearer_key(env, provider):
    make(provider).prompt("Tag this photo. Answer in JSON.", CAT, photo_id="p1")

    (path, headers, body) = env.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == f"Bearer {KEYS[provider]}"
    assert body["model"] == "vision-model"
    assert body["temperature"] == 0
    assert body["max_tokens"] == 300
    content = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user"
    assert content[0] == {"type": "text", "text": "Tag this photo. Answer in JSON."}
    assert content[1] == {"type": "image_url", "image_url": {"url": CAT}}
    assert ("response_format" in body) == (provider == "openai")


def test_json_mode_is_an_option_used_only_for_prompts_asking_for_json(env):
    make("together", json_mode=True).prompt("Tag, as JSON.", CAT)
    make("openai", json_mode=False).prompt("Tag, as JSON.", CAT)
    make("openai").prompt("Tag.", CAT)

    assert env.requests[0][2]["response_format"] == {"type": "json_object"}
    assert "response_format" not in env.requests[1][2]
    assert "response_format" not in env.requests[2][2]


def test_together_accepts_a_base_url_ending_in_v1(env, monkeypatch):
    monkeypatch.setenv("TOGETHER_BASE_URL", env.base_url)

    result = make("together").prompt("Tag.", CAT)

    assert result["error"] is None
    assert env.requests[0][0] == "/v1/chat/completions"


def test_local_image_is_sent_as_a_base64_data_uri(env, tmp_path: Path):
    path = tmp_path / "local.png"
    path.write_bytes(png_bytes())

    make("openai").prompt("Tag.", LocalImage(path, tmp_path))

    (url,) = image_urls(env.requests[0][2])
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()


def test_inline_images_sends_url_images_as_data_uris(env):
    make("openai-compatible", inline_images=True).prompt("Tag.", env.image_url("cat.png"))

    (url,) = image_urls(env.requests[0][2])
    assert url.startswith("data:image/png;base64,")


@pytest.mark.parametrize("name", ["missing", "notimage", "huge"])
def test_inlined_image_that_cannot_be_fetched_is_bad_image_without_a_model_call(env, name):
    result = make("openai", inline_images=True).prompt("Tag.", env.image_url(name), photo_id="p")

    assert result["error"] == "bad_image"
    assert env.calls == 0


def test_image_url_with_credentials_is_bad_image_and_never_reaches_the_api(env):
    url = env.image_url("cat.png").replace("http://", "http://user:secret@")
    result = make("openai").prompt("Tag.", url, photo_id="p")

    assert result["error"] == "bad_image"
    assert "secret" not in result["raw"]
    assert env.calls == 0


def test_missing_local_file_is_bad_image(env, tmp_path):
    result = make("openai").prompt("Tag.", str(tmp_path / "nope.jpg"))

    assert result["error"] == "bad_image"
    assert "nope.jpg" in result["raw"]


def test_image_url_the_api_cannot_download_is_bad_image(env):
    result = make("openai").prompt("Tag.", env.image_url("missing"))

    assert result["error"] == "bad_image"
    assert env.calls == 1  # not retried


# -- parsing and the record ----------------------------------------------------------------
@pytest.mark.parametrize("provider", API_PROVIDERS)
def test_answer_becomes_a_record_with_normalised_tags_and_usage(env, provider):
    result = make(provider).prompt("Tag this photo.", CAT, photo_id="p1")

    assert result["photo_id"] == "p1"
    assert (result["provider"], result["model"]) == (provider, "vision-model")
    assert result["tags"] == ["cat", "pet", "fur"]
    assert result["valid"] is True
    assert result["error"] is None
    assert json.loads(result["raw"]) == {"tags": ["Cat", "pet", " Fur "]}
    assert result["prompt_tokens"] == len("Tag this photo.") // 4 + 85
    assert result["completion_tokens"] > 0
    assert result["latency_ms"] > 0


def test_latency_is_the_time_of_the_successful_call(env):
    env.latency_s = 0.2

    result = make("openai").prompt("Tag.", CAT)

    assert 200 <= result["latency_ms"] < 1000


def test_answer_in_prose_around_json_is_parsed_but_not_valid(env):
    env.answer_fn = lambda request: 'Sure! Here are the tags: ["dog", "park"] Hope this helps.'

    result = make("openai").prompt("Tag.", CAT)

    assert result["tags"] == ["dog", "park"]
    assert result["valid"] is False
    assert result["error"] is None


# -- faults --------------------------------------------------------------------------------
FAULT_CLASSES = {
    "rate_limit": "rate_limited",
    "rate_limit_no_header": "rate_limited",
    "server_error": "server_error",
    "unavailable": "server_error",
    "hang": "timeout",
    "reset": "connection",
    "truncated": "server_error",
    "non_json": "server_error",
    "prose": "unparseable",
    "auth": "auth",
    "bad_image": "bad_image",
    "length": "truncated",
    "refusal": "refused",
    "refusal_prose": "refused",
    "error_body": "quota",
    "quota": "quota",
}


@pytest.mark.parametrize("provider", API_PROVIDERS)
@pytest.mark.parametrize("fault", list(FAULT_CLASSES))
def test_each_fault_is_recorded_with_its_error_class(env, provider, fault):
    env.faults = [fault]

    result = Prompter(provider, "vision-model", retry=NO_WAIT, timeout_s=0.5).prompt("Tag.", CAT, photo_id="p1")

    assert result["error"] == FAULT_CLASSES[fault]
    assert result["tags"] == []
    assert result["valid"] is False
    assert result["photo_id"] == "p1"
    assert result["raw"]


@pytest.mark.parametrize("provider", ["openai", "together"])
def test_a_trickling_answer_times_out_within_timeout_s_not_when_the_last_byte_arrives(env, provider):
    env.faults = ["trickle"]  # one byte every 0.5 s: the answer takes over 100 s, no read waits 2 s

    started = time.monotonic()
    result = Prompter(provider, "vision-model", retry=NO_WAIT, timeout_s=2).prompt("Tag.", CAT)

    assert result["error"] == "timeout" and "within 2s" in result["raw"]
    assert time.monotonic() - started < 30
    assert abandoned_calls_end(), "the call given up on stops reading too"


def test_a_trickling_image_fetch_times_out_within_timeout_s(env):
    started = time.monotonic()
    with pytest.raises(ImageFetchError, match="timed out after 2s") as failed:
        fetch_image_bytes(env.image_url("trickle"), timeout_s=2)
    assert failed.value.error_class == "timeout"
    assert time.monotonic() - started < 30  # the image takes over 100 s to trickle in
    assert abandoned_calls_end()


def abandoned_calls_end(within_s: float = 10.0) -> bool:
    """Whether every call within_deadline gave up on has ended within `within_s` (not at the server's pace)."""
    end = time.monotonic() + within_s
    while any(t.name == "deadline-call" and t.is_alive() for t in threading.enumerate()):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def test_retryable_faults_are_retried_until_an_answer(env):
    env.faults = ["server_error", "reset", None]

    result = make("openai").prompt("Tag.", CAT)

    assert result["error"] is None
    assert result["tags"] == ["cat", "pet", "fur"]
    assert env.calls == 3


@pytest.mark.parametrize("fault", ["auth", "bad_image", "length", "refusal", "error_body", "quota"])
def test_non_retryable_faults_are_not_retried(env, fault):
    env.faults = [fault, fault, fault]

    result = make("openai").prompt("Tag.", CAT)

    assert result["error"] == FAULT_CLASSES[fault]
    assert env.calls == 1


@pytest.mark.parametrize("provider", API_PROVIDERS)
def test_error_body_with_http_200_keeps_the_servers_message_without_the_key(env, provider):
    env.faults = ["error_body"]

    result = Prompter(provider, "vision-model", retry=NO_WAIT, timeout_s=5).prompt("Tag.", CAT)

    assert result["error"] == "quota"
    assert "You exceeded your current quota" in result["raw"] and "insufficient_quota" in result["raw"]
    assert KEYS[provider] not in json.dumps(result) and "(key ***)" in result["raw"]


def test_other_error_bodies_with_http_200_are_retryable_server_errors_with_their_message(env):
    error = make("openai").backend._body_error(error_body("Upstream model is overloaded", "server_error", None)["error"])

    assert (error.error_class, error.retryable) == ("server_error", True)
    assert "Upstream model is overloaded" in str(error)


def test_cut_off_or_refused_answers_keep_the_models_text_and_token_usage(env):
    for fault, raw in (("length", '{"tags": ["red", "squ'), ("refusal", "I'm sorry, I can't help with identifying people in images.")):
        env.faults = [fault]

        result = make("openai").prompt("Tag.", CAT)

        assert (result["raw"], result["tags"]) == (raw, [])
        assert result["completion_tokens"] and result["prompt_tokens"], "a cut-off answer was still billed"


def test_rate_limit_retry_waits_for_retry_after(env):
    env.faults = ["rate_limit"]

    started = time.perf_counter()
    result = make("openai").prompt("Tag.", CAT)
    elapsed = time.perf_counter() - started

    assert result["error"] is None
    assert env.calls == 2
    assert elapsed >= 1.0  # the fake sends Retry-After: 1; the policy's own base delay is 0.01 s


def test_rate_limit_without_header_backs_off_exponentially(env):
    env.faults = ["rate_limit_no_header", "rate_limit_no_header"]

    started = time.perf_counter()
    result = make("openai", retry=RetryPolicy(max_attempts=3, base_delay_s=0.2, jitter=0.0)).prompt("Tag.", CAT)

    assert result["error"] is None
    assert time.perf_counter() - started >= 0.6  # 0.2 + 0.4


def test_rate_limited_on_every_attempt_is_recorded_as_rate_limited(env):
    env.faults = ["rate_limit_no_header"] * 3

    result = make("openai").prompt("Tag.", CAT)

    assert result["error"] == "rate_limited"
    assert env.calls == 3


def test_limiter_hears_of_rate_limits_and_successes(env):
    class RecordingLimiter:
        def __init__(self):
            self.events = []

        def acquire(self):
            self.events.append("acquire")

        def release(self):
            self.events.append("release")

        def time_left(self):
            return float("inf")

        def on_rate_limited(self, retry_after):
            self.events.append(("rate_limited", retry_after))

        def on_auth_failure(self, message):
            self.events.append("auth")

        def on_success(self):
            self.events.append("success")

    limiter = RecordingLimiter()
    env.faults = ["rate_limit"]

    make("openai", limiter=limiter).prompt("Tag.", CAT)

    assert limiter.events == ["acquire", "release", ("rate_limited", 1.0), "acquire", "release", "success"]


def test_fake_server_answers_concurrent_calls_in_parallel(env):
    env.latency_s = 0.25
    tagger = make("openai")

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: tagger.prompt("Tag.", CAT, photo_id=str(i)), range(32)))
    elapsed = time.perf_counter() - started

    assert all(r["error"] is None for r in results)
    assert elapsed < 1.5  # two waves of 0.25 s, not 32 x 0.25 s


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset": "1.5s"}, 1.5),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_the_rate_limit_headers(headers, seconds):
    value = retry_after_from_headers(headers)

    assert value == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_as_epoch_or_http_date_counts_from_now():
    in_ten = time.time() + 10
    assert retry_after_from_headers({"x-ratelimit-reset": str(int(in_ten))}) == pytest.approx(10, abs=1.5)
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(in_ten))
    assert retry_after_from_headers({"Retry-After": date}) == pytest.approx(10, abs=1.5)


def test_retry_policy_doubles_caps_and_only_adds_jitter():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0, jitter=0.2)

    assert RetryPolicy(jitter=0.0).delay(1) == 0.5
    assert RetryPolicy(jitter=0.0).delay(3) == 2.0
    assert RetryPolicy(jitter=0.0, max_delay_s=3.0).delay(10) == 3.0
    assert all(2.0 <= policy.delay(1, retry_after=2.0) <= 2.4 for _ in range(50))
    assert RetryPolicy(jitter=0.0, max_delay_s=3.0).delay(1, retry_after=60) == 3.0


# -- keys ----------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", API_PROVIDERS)
def test_rejected_key_never_appears_in_the_record_or_logs(env, provider, caplog):
    env.require_key = "the-right-key"  # the fake echoes the wrong key back in its 401 message
    caplog.set_level(logging.DEBUG)

    result = make(provider).prompt("Tag.", CAT)

    assert result["error"] == "auth"
    assert "rejected the key" in result["raw"]
    assert KEYS[provider] not in json.dumps(result)
    assert KEYS[provider] not in caplog.text


@pytest.mark.parametrize("fault", [None, *FAULT_CLASSES])
def test_key_never_appears_in_any_record_even_when_the_model_echoes_it(env, fault):
    env.faults = [fault]
    env.answer_fn = lambda request: f"my key is {KEYS['openai']}"

    result = Prompter("openai", "vision-model", retry=NO_WAIT, timeout_s=0.5).prompt("Tag.", CAT)

    assert KEYS["openai"] not in json.dumps(result)


def test_settings_name_the_generation_and_hold_no_key(env):
    settings = make("openai").settings()

    assert settings["provider"] == "openai"
    assert settings["model"] == "vision-model"
    assert settings["temperature"] == 0.0
    assert settings["json_mode"] is True
    assert KEYS["openai"] not in json.dumps(settings)


def test_settings_drop_credentials_from_the_base_url(env):
    settings = make("openai-compatible", base_url=f"http://user:pw@127.0.0.1:{env.root_url.rsplit(':', 1)[1]}/v1").settings()

    assert "pw" not in settings["base_url"]


@pytest.mark.parametrize(("provider", "env_var"), [("openai", "openai_api"), ("together", "togetherai_api")])
def test_missing_key_fails_at_construction_naming_the_env_var(monkeypatch, provider, env_var):
    monkeypatch.delenv(env_var, raising=False)

    with pytest.raises(MissingKeyError, match=f"export {env_var}="):
        Prompter(provider, "vision-model")


def test_openai_compatible_needs_a_base_url_but_no_key(monkeypatch, server):
    monkeypatch.delenv("OPENAI_COMPATIBLE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="OPENAI_COMPATIBLE_BASE_URL"):
        Prompter("openai-compatible", "local-model")

    result = Prompter("openai-compatible", "local-model", base_url=server.base_url).prompt("Tag.", CAT)

    assert result["error"] is None


# -- registry ------------------------------------------------------------------------------
def test_unknown_provider_fails_listing_the_known_ones():
    with pytest.raises(ValueError) as info:
        Prompter("gpt-vision", "x")

    for name in ("openai", "together", "openai-compatible", "prior", "knn", "finetuned"):
        assert name in str(info.value)


def test_lazy_provider_module_is_imported_only_when_asked_for(monkeypatch):
    monkeypatch.setitem(providers_base._LAZY, "not-installed", "phototagger.prompting.providers.no_such_module")

    with pytest.raises(ImportError, match="pip install"):
        make_provider("not-installed", "x")


def test_importing_the_prompter_does_not_import_torch():
    code = "import sys, phototagger.prompting.prompter; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# -- failures that are bugs, and batches ---------------------------------------------------
class Exploding(Provider):
    def complete(self, prompt_text, image, photo_id=None):
        raise RuntimeError("boom")


class Batched(Provider):
    """Answers a batch in one call; the photo "flaky" fails once with a retryable error."""

    def __init__(self, model):
        super().__init__(model)
        self.batch_calls = 0
        self.single_calls = 0

    def complete(self, prompt_text, image, photo_id=None):
        self.single_calls += 1
        return Answer(json.dumps({"tags": [image]}), 10, 2)

    def complete_batch(self, prompt_text, images, photo_ids):
        self.batch_calls += 1
        return [
            ProviderError("server_error", "flaky") if image == "flaky" else ProviderError("bad_image", "unreadable")
            if image == "broken" else Answer(json.dumps({"tags": [image]}), 10, 2)
            for image in images
        ]


@pytest.fixture
def test_providers(monkeypatch):
    monkeypatch.setattr(providers_base, "_REGISTRY", dict(providers_base._REGISTRY))
    register_provider("test-exploding")(Exploding)
    register_provider("test-batched")(Batched)


def test_a_bug_in_a_provider_is_recorded_as_internal(test_providers):
    result = Prompter("test-exploding", "m", retry=FAST_RETRY).prompt("Tag.", CAT, photo_id="p")

    assert result["error"] == "internal"
    assert "boom" in result["raw"]


def test_prompt_batch_uses_the_batched_call_and_retries_retryable_failures(test_providers):
    tagger = Prompter("test-batched", "m", retry=FAST_RETRY)

    results = tagger.prompt_batch("Tag.", ["red", "flaky", "broken"], ["a", "b", "c"])

    assert tagger.supports_batching is True
    assert [r["photo_id"] for r in results] == ["a", "b", "c"]
    assert [r["tags"] for r in results] == [["red"], ["flaky"], []]
    assert [r["error"] for r in results] == [None, None, "bad_image"]
    assert (tagger.backend.batch_calls, tagger.backend.single_calls) == (1, 1)


def test_prompt_batch_without_batching_loops_over_photos(env):
    tagger = make("openai")
    env.fault_by_image = {"dog": "bad_image"}

    results = tagger.prompt_batch("Tag.", [CAT, "https://images.example.com/dog.jpg"], ["a", "b"])

    assert tagger.supports_batching is False
    assert [r["error"] for r in results] == [None, "bad_image"]


# -- command line --------------------------------------------------------------------------
def test_cli_prints_the_result_record_as_json(env, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Tag this photo.")

    status = prompter_cli.main(["--provider", "openai", "--model", "gpt-4o-mini", "--prompt-file", str(prompt), CAT])

    record = json.loads(capsys.readouterr().out)
    assert status == 0
    assert record["tags"] == ["cat", "pet", "fur"]
    assert env.requests[0][2]["model"] == "gpt-4o-mini"


def test_cli_passes_provider_options_and_exits_1_on_an_error(env, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Tag this photo; answer in JSON.")
    env.faults = ["bad_image"]

    status = prompter_cli.main(
        ["--provider", "openai", "--model", "m", "--prompt-file", str(prompt), "--option", "json_mode=false", CAT]
    )

    assert status == 1
    assert json.loads(capsys.readouterr().out)["error"] == "bad_image"
    assert "response_format" not in env.requests[0][2]


def test_cli_explains_a_missing_key(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("openai_api", raising=False)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Tag.")

    with pytest.raises(SystemExit):
        prompter_cli.main(["--provider", "openai", "--model", "m", "--prompt-file", str(prompt), CAT])

    assert "export openai_api=" in capsys.readouterr().err
