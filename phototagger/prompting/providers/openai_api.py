"""Chat-completions providers: `openai` and `openai-compatible` (openai SDK) and `together` (together SDK).

The SDK clients never retry (max_retries=0): the prompter owns retries, so Retry-After, the
limiter and the error budget see every 429. Every SDK failure becomes a `ProviderError` with an
error class, and no message leaves this module with the key in it.
"""
from __future__ import annotations

import email.utils
import io
import logging
import os
import re
import time
from types import ModuleType
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

import httpx

from phototagger.http import (
    MAX_IMAGE_BYTES,
    DeadlineExceeded,
    ImageFetchError,
    URLRefused,
    check_request_url,
    data_uri,
    fetch_image_bytes,
    image_mime,
    is_url,
    sdk_http_client,
    within_deadline,
)
from phototagger.prompting.providers.base import Answer, MissingKeyError, Provider, ProviderError, register_provider

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_TOKENS = 300
REACHABLE_TIMEOUT_S = 5.0  # the one-off check in `start`: a server that does not answer a GET in this is not there
KEYLESS_PLACEHOLDER = "EMPTY"  # what vLLM's docs pass when the server wants no key
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
QUOTA_CODE = "insufficient_quota"  # OpenAI's code for an account without credit (sent with 429, or 200 by some gateways)


def retry_after_from_headers(headers: Mapping[str, str]) -> Optional[float]:
    """Seconds to wait, from the headers OpenAI and Together send with a 429 (None when none).

    Reads, in order: `retry-after-ms`, `retry-after` (seconds or an HTTP date), `x-ratelimit-reset`
    (seconds, an epoch time, or a duration like "6m0s"), `x-ratelimit-reset-requests`/`-tokens`.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    for name in ("retry-after", "x-ratelimit-reset", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        value = (lower.get(name) or "").strip()
        if value:
            seconds = _seconds(value)
            if seconds is not None:
                return seconds
    return None


def _seconds(value: str) -> Optional[float]:
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if number > 1e12:  # epoch milliseconds
            number = number / 1000 - time.time()
        elif number > 1e9:  # epoch seconds
            number -= time.time()
        return max(0.0, number)
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value.replace(" ", ""):
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _public_url(url: Optional[str]) -> Optional[str]:
    """A base URL without user:password, fit for settings and messages."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


class ChatAPIProvider(Provider):
    """A vision chat model behind an OpenAI-style chat-completions endpoint."""

    label = "chat API"
    key_env = ""
    key_required = True
    base_url_env = ""
    json_mode_default = False

    def __init__(
        self,
        model: str,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        json_mode: Optional[bool] = None,
        inline_images: bool = False,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_pixels: Optional[int] = None,
    ):
        """`json_mode` asks for `response_format={"type": "json_object"}` when the prompt asks for
        JSON (not every server has it); `inline_images` sends URL images as data URIs too (for
        servers that cannot reach the web); `max_pixels` (a fine-tuned model's training cap) sends every
        image inline as a PNG, loaded and shrunk as training loaded it, so the server's processor sees
        the pixels the in-process model sees."""
        super().__init__(model)
        key = api_key or os.environ.get(self.key_env) or None
        if key is None and self.key_required:
            raise MissingKeyError(
                f"{self.label} key missing: export {self.key_env}=... or drop {self.name}:{model} from models.json"
            )
        self._key = key
        self.base_url = base_url or os.environ.get(self.base_url_env) or None
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.json_mode = self.json_mode_default if json_mode is None else json_mode
        self.inline_images = inline_images
        self.max_image_bytes = max_image_bytes
        self.max_pixels = int(max_pixels) if max_pixels else None
        self._sdk = self._import_sdk()
        self._client = self._make_client(key or KEYLESS_PLACEHOLDER)

    # -- what subclasses supply ------------------------------------------------------------
    def _import_sdk(self) -> ModuleType:
        import openai

        return openai

    def _make_client(self, key: str) -> Any:
        return self._sdk.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0,
                                http_client=sdk_http_client(self.timeout_s))

    # -- the call --------------------------------------------------------------------------
    def complete(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> Answer:
        """One chat call; `timeout_s` bounds all of it (inlining the image, connect, headers, body)."""
        try:
            response = within_deadline(self.timeout_s, self._call, prompt_text, image)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a classified ProviderError
            raise self._error(exc) from None
        return self._answer(response)

    def _call(self, prompt_text: str, image: str) -> Any:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": prompt_text},
                        {"type": "image_url", "image_url": {"url": self._image_ref(image)}},
                    ],
                }
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.json_mode and "json" in prompt_text.lower():  # OpenAI refuses JSON mode for prompts not asking for JSON
            request["response_format"] = {"type": "json_object"}
        return self._create(request)

    def _create(self, request: dict[str, Any]) -> Any:
        """POST the chat request through the SDK's own transport (auth, timeouts, error classes).

        `client.post` skips the SDK's per-call re-validation of the typed arguments, which costs
        several ms of CPU under the GIL per call and showed at 16 calls in flight (bench/).
        """
        from openai.types.chat import ChatCompletion

        return self._client.post("/chat/completions", body=request, cast_to=ChatCompletion)

    def _image_ref(self, image: str) -> str:
        """URLs go to the API as they are (never with user:password@); local files (and all images with
        inline_images) as data URIs; with max_pixels, every image as training loaded it, as a PNG."""
        if self.max_pixels:
            return self._shrunk_png(image)
        if is_url(image) and not self.inline_images:
            try:
                check_request_url(image)
            except URLRefused as exc:
                raise ProviderError("bad_image", str(exc), retryable=False) from None
            return image
        try:
            data = fetch_image_bytes(image, self.max_image_bytes, self.timeout_s)
        except ImageFetchError as exc:
            raise ProviderError(exc.error_class, str(exc)) from None
        if not image_mime(image, data).startswith("image/"):
            raise ProviderError("bad_image", f"not an image file: {image}")
        return data_uri(image, data)

    def _shrunk_png(self, image: str) -> str:
        from phototagger.images import load_image
        from phototagger.training.vlm import max_side_for

        try:
            loaded = load_image(image, max_side_for(self.max_pixels), max_bytes=self.max_image_bytes, timeout_s=self.timeout_s)
        except ImageFetchError as exc:
            raise ProviderError(exc.error_class, str(exc)) from None
        png = io.BytesIO()
        loaded.save(png, format="PNG")  # lossless: the server decodes exactly these pixels
        return data_uri("image.png", png.getvalue())

    def _answer(self, response: Any) -> Answer:
        """The completion's text, usage, finish reason and refusal; the prompter decides what they mean."""
        choices = getattr(response, "choices", None)
        if not choices:
            error = getattr(response, "error", None)
            if isinstance(error, dict):
                raise self._body_error(error)
            body = response if isinstance(response, str) else type(response).__name__
            raise ProviderError(
                "server_error", f"{self.label} answered without a chat completion (not JSON?): {self.scrub(body)[:120]!r}"
            )
        message = choices[0].message
        refusal = getattr(message, "refusal", None)
        usage = getattr(response, "usage", None)
        return Answer(
            text=message.content if isinstance(message.content, str) else "",
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            finish_reason=getattr(choices[0], "finish_reason", None),
            refusal=refusal if isinstance(refusal, str) and refusal.strip() else None,
        )

    def _body_error(self, error: Mapping[str, Any]) -> ProviderError:
        """HTTP 200 with an {"error": ...} body, as some gateways send a used-up quota: `quota` for that,
        else a (retryable) server error; the server's message, scrubbed, stays in the record so it says why."""
        code = " ".join(dict.fromkeys(str(error[k]) for k in ("code", "type") if error.get(k)))
        detail = self.scrub(str(error.get("message") or code or "no message"))
        return ProviderError(
            "quota" if QUOTA_CODE in code else "server_error",
            f"{self.label} ({self.model}) answered HTTP 200 with an error ({code or 'no code'}): {detail}",
        )

    def _error(self, exc: Exception) -> ProviderError:
        """Map an SDK exception to an error class, with a message that names the service and no key."""
        sdk = self._sdk
        detail = self.scrub(_api_message(exc))
        where = f"{self.label} ({self.model})"
        if isinstance(exc, sdk.RateLimitError):
            if _api_code(exc) == QUOTA_CODE:
                return ProviderError("quota", f"{where} has no quota left (HTTP 429): {detail}")
            retry_after = retry_after_from_headers(exc.response.headers)
            return ProviderError("rate_limited", f"{where} rate limited (HTTP 429): {detail}", retry_after=retry_after)
        if isinstance(exc, (sdk.APITimeoutError, DeadlineExceeded)):
            return ProviderError("timeout", f"{where} did not answer within {self.timeout_s:g}s")
        if isinstance(exc, sdk.APIConnectionError):
            return ProviderError("connection", f"{where} could not reach {self._public_base_url()}: {detail}")
        if isinstance(exc, (sdk.AuthenticationError, sdk.PermissionDeniedError)):
            return ProviderError(
                "auth", f"{where} at {self._public_base_url()} rejected the key (HTTP {exc.status_code}): {detail}. "
                f"Check {self.key_env or 'the key'}.", retryable=False
            )
        if isinstance(exc, sdk.BadRequestError):
            error_class = "bad_image" if "image" in f"{_api_code(exc)} {detail}".lower() else "bad_request"
            return ProviderError(error_class, f"{where} refused the request (HTTP 400): {detail}", retryable=False)
        if isinstance(exc, sdk.APIStatusError):
            status = exc.status_code
            if status == 408:
                return ProviderError("timeout", f"{where} timed out (HTTP 408): {detail}")
            if status >= 500:
                return ProviderError("server_error", f"{where} failed (HTTP {status}): {detail}")
            return ProviderError("bad_request", f"{where} refused the request (HTTP {status}): {detail}", retryable=False)
        if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
            return ProviderError("server_error", f"{where} sent a malformed or truncated body: {detail}")
        log.warning("unexpected %s from %s", type(exc).__name__, where)
        return ProviderError("internal", f"{where} call failed with {type(exc).__name__}: {detail}", retryable=False)

    def check_reachable(self) -> None:
        """One GET of the base URL without retries: any HTTP answer (404 and 401 too) means a server is there;
        a refused connection, an unknown host or no answer within REACHABLE_TIMEOUT_S means there is none."""
        url = self._public_base_url()
        fix = f"start it, or correct base_url in models.json or {self.base_url_env}"
        try:
            with httpx.Client(timeout=min(REACHABLE_TIMEOUT_S, self.timeout_s)) as client:
                client.get(str(self._client.base_url))
        except httpx.TimeoutException:
            raise ProviderError("connection", f"{self.label} at {url} did not answer within {min(REACHABLE_TIMEOUT_S, self.timeout_s):g}s: {fix}") from None
        except httpx.HTTPError as exc:
            raise ProviderError("connection", f"{self.label} at {url} cannot be reached ({self.scrub(_transport_reason(exc))}): {fix}") from None

    # -- secrets and settings --------------------------------------------------------------
    def held_keys(self) -> tuple[str, ...]:
        return (self._key,) if self._key else ()

    def _public_base_url(self) -> str:
        return _public_url(str(self._client.base_url))

    def settings(self) -> dict[str, Any]:
        settings = {
            **super().settings(),
            "base_url": self._public_base_url(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "json_mode": self.json_mode,
            "inline_images": self.inline_images,
        }
        if self.max_pixels:  # only where set, so the cache keys of every other chat model stay as they were
            settings["max_pixels"] = self.max_pixels
        return settings


def _transport_reason(exc: Exception) -> str:
    """The innermost reason of a connection failure ("[Errno 111] Connection refused")."""
    for _ in range(10):  # a chain, not a cycle
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner  # type: ignore[assignment]
    return str(exc) or type(exc).__name__


def _api_body(exc: Exception) -> Any:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return body


def _api_message(exc: Exception) -> str:
    """The server's own error message when it sent OpenAI's error JSON, else the exception text."""
    body = _api_body(exc)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc) or type(exc).__name__


def _api_code(exc: Exception) -> str:
    body = _api_body(exc)
    return str(body.get("code") or "") if isinstance(body, dict) else ""


@register_provider("openai")
class OpenAIProvider(ChatAPIProvider):
    """OpenAI's API (base URL from OPENAI_BASE_URL when set); JSON mode on by default."""

    label = "OpenAI"
    key_env = "openai_api"
    base_url_env = "OPENAI_BASE_URL"
    json_mode_default = True


@register_provider("openai-compatible")
class OpenAICompatibleProvider(ChatAPIProvider):
    """Any server speaking OpenAI's chat API (vLLM, Ollama, LM Studio); the key is optional."""

    label = "OpenAI-compatible server"
    key_env = "OPENAI_COMPATIBLE_API_KEY"
    key_required = False
    base_url_env = "OPENAI_COMPATIBLE_BASE_URL"

    def __init__(self, model: str, **options: Any):
        if not (options.get("base_url") or os.environ.get(self.base_url_env)):
            raise MissingKeyError(
                f"{self.label} base URL missing: pass base_url=... or export {self.base_url_env}=http://localhost:8000/v1"
            )
        super().__init__(model, **options)


@register_provider("together")
class TogetherProvider(ChatAPIProvider):
    """Together's API through the together SDK (base URL from TOGETHER_BASE_URL when set)."""

    label = "Together"
    key_env = "togetherai_api"
    base_url_env = "TOGETHER_BASE_URL"

    def _import_sdk(self) -> ModuleType:
        import together

        return together

    def _make_client(self, key: str) -> Any:
        # The together SDK appends "/v1/chat/completions" itself: accept ".../v1" as users write it.
        if self.base_url:
            self.base_url = re.sub(r"/v1/?$", "", self.base_url.rstrip("/"))
        return self._sdk.Together(api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0,
                                  http_client=sdk_http_client(self.timeout_s))

    def _create(self, request: dict[str, Any]) -> Any:
        return self._client.chat.completions.create(**request)
