"""One way to ask any model about a photo: `Prompter(provider, model).prompt(prompt_text, image)`.

The prompter owns what every provider shares: retries with back-off that honour the server's
Retry-After, the concurrency limiter's hooks, timing, tag parsing and the result record, and the
scrubbing of every text a provider sends back (answers and error messages) before any of it is
parsed, stored or logged. A per-photo failure never raises: it comes back as a record with an
error class, so a run always has one result per photo.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

from phototagger.prompting.limiter import CallsStopped
from phototagger.prompting.providers import Answer, ProviderError, make_provider
from phototagger.records import ModelResult
from phototagger.scoring.tags import ParsedTags, normalise_tags, parse_tags

log = logging.getLogger(__name__)


class Limiter(Protocol):
    """What the prompter tells a concurrency limiter (batch.AdaptiveLimiter implements it)."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def time_left(self) -> float: ...

    def on_rate_limited(self, retry_after: Optional[float]) -> None: ...

    def on_auth_failure(self, message: str) -> None: ...

    def on_success(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before trying a retryable failure again.

    The wait is the server's Retry-After when it sent one, else `base_delay_s` doubling per
    attempt; either is capped at `max_delay_s` and stretched by up to `jitter` (a fraction) so
    parallel callers do not retry in lock-step. Jitter only adds: never earlier than asked.
    """

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        wait = retry_after if retry_after is not None else self.base_delay_s * 2 ** (attempt - 1)
        return min(wait, self.max_delay_s) * (1 + random.uniform(0, self.jitter))


class Prompter:
    """A named provider and model, with retries; `prompt` returns a `ModelResult` for any outcome."""

    def __init__(
        self,
        provider: str,
        model: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        limiter: Optional[Limiter] = None,
        **provider_options: Any,
    ):
        """Raises ValueError for an unknown provider and MissingKeyError for a missing key or base URL."""
        self.provider = provider
        self.model = model
        self.retry = retry
        self.limiter = limiter
        self.backend = make_provider(provider, model, **provider_options)

    @property
    def model_key(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def supports_batching(self) -> bool:
        """True when the provider generates for several photos in one call (local models)."""
        return self.backend.supports_batching

    def settings(self) -> dict[str, Any]:
        """Provider, model and generation settings, for cache keys; never a secret."""
        return self.backend.settings()

    # -- one photo -------------------------------------------------------------------------
    def prompt(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> ModelResult:
        """Ask about one image (URL or local path), retrying what can be retried before the limiter's deadline."""
        attempt = 0
        while True:
            attempt += 1
            started = None  # set once a limiter slot is held: waiting for one is not latency
            try:
                with self._slot():
                    started = time.perf_counter()
                    answer = self.backend.complete(prompt_text, image, photo_id)
            except CallsStopped as exc:
                return self._failure(photo_id, exc.error_class, str(exc), 0.0)
            except ProviderError as exc:
                elapsed = time.perf_counter() - started if started is not None else 0.0
                if exc.error_class == "rate_limited" and self.limiter is not None:
                    self.limiter.on_rate_limited(exc.retry_after)
                if exc.error_class == "auth" and self.limiter is not None:
                    self.limiter.on_auth_failure(str(exc))
                message = str(exc)
                if exc.retryable and attempt < self.retry.max_attempts:
                    wait = self.retry.delay(attempt, exc.retry_after)
                    if wait < self._time_left():
                        log.info("%s %s: %s; retry %d in %.2fs", self.model_key, photo_id or image, exc.error_class, attempt, wait)
                        time.sleep(wait)
                        continue
                    message += f"; not retried: waiting {wait:.1f}s would pass the model deadline"
                return self._failure(photo_id, exc.error_class, message, elapsed)
            except Exception as exc:  # noqa: BLE001 - a bug must cost one record, not the run
                return self._internal(photo_id, exc, time.perf_counter() - started if started is not None else 0.0)
            if self.limiter is not None:
                self.limiter.on_success()
            return self._result(photo_id, answer, time.perf_counter() - started)

    def _time_left(self) -> float:
        """How long a retry may still wait: never past the limiter's deadline, nor once it stopped calls."""
        return self.limiter.time_left() if self.limiter is not None else math.inf

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self.limiter is None:
            yield
            return
        self.limiter.acquire()
        try:
            yield
        finally:
            self.limiter.release()

    # -- several photos in one generation --------------------------------------------------
    def prompt_batch(
        self, prompt_text: str, images: Sequence[str], photo_ids: Sequence[Optional[str]]
    ) -> list[ModelResult]:
        """One record per image through the provider's batched call.

        Each record's latency is the batch's wall time divided by its size. Retryable failures
        are tried again one photo at a time; a batch that fails as a whole falls back to `prompt`.
        """
        if len(images) != len(photo_ids):
            raise ValueError(f"{len(images)} images but {len(photo_ids)} photo ids")
        if not images:
            return []
        started = time.perf_counter()
        try:
            answers = self.backend.complete_batch(prompt_text, list(images), list(photo_ids))
            if len(answers) != len(images):
                raise RuntimeError(f"complete_batch returned {len(answers)} answers for {len(images)} images")
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: retry photo by photo
            log.warning("%s batch of %d failed (%s); prompting one at a time", self.model_key, len(images), self._scrub(exc))
            return [self.prompt(prompt_text, image, pid) for image, pid in zip(images, photo_ids)]
        each = (time.perf_counter() - started) / len(images)
        results = []
        for image, photo_id, answer in zip(images, photo_ids, answers):
            if isinstance(answer, ProviderError):
                if answer.retryable:
                    results.append(self.prompt(prompt_text, image, photo_id))
                else:
                    results.append(self._failure(photo_id, answer.error_class, str(answer), each))
            else:
                results.append(self._result(photo_id, answer, each))
        return results

    # -- records ---------------------------------------------------------------------------
    def _result(self, photo_id: Optional[str], answer: Answer, elapsed_s: float) -> ModelResult:
        # A server may echo the key in its answer: scrub before parsing, and the decoded tags again
        # (a key spelled with escapes the scrubber does not know shows only once JSON is decoded).
        text, parsed = read_answer(answer, self.backend.scrub)
        return ModelResult(
            photo_id=photo_id,
            provider=self.provider,
            model=self.model,
            tags=normalise_tags(self.backend.scrub(tag) for tag in parsed.tags),
            raw=text,
            valid=parsed.valid,
            error=parsed.error,
            latency_ms=round(elapsed_s * 1000, 1),
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
        )

    def _failure(self, photo_id: Optional[str], error_class: str, message: str, elapsed_s: float) -> ModelResult:
        return failed_result(self.provider, self.model, error_class, self.backend.scrub(message), elapsed_s * 1000, photo_id)

    def _internal(self, photo_id: Optional[str], exc: Exception, elapsed_s: float) -> ModelResult:
        message = self._scrub(exc)
        log.error("%s %s: internal error %s", self.model_key, photo_id, message)
        log.debug("internal error detail", exc_info=True)
        return self._failure(photo_id, "internal", message, elapsed_s)

    def _scrub(self, exc: Exception) -> str:
        return self.backend.scrub(f"{type(exc).__name__}: {exc}")


def read_answer(answer: Answer, scrub: Callable[[str], str]) -> tuple[str, ParsedTags]:
    """(the text to keep as raw, its parsed tags) for every provider's answer, read after `scrub`.

    A refusal the API reports apart from the content is `refused`; an answer cut at the token limit
    is `truncated` unless it is already the whole requested JSON. Either is an error, so it is
    never scored and never cached.
    """
    if answer.refusal:
        return scrub(answer.refusal), ParsedTags([], False, "refused")
    text = scrub(answer.text)
    parsed = parse_tags(text)
    if answer.finish_reason == "length" and not parsed.valid:
        return text, ParsedTags([], False, "truncated")
    return text, parsed


def failed_result(
    provider: str, model: str, error_class: str, message: str, latency_ms: float = 0.0, photo_id: Optional[str] = None
) -> ModelResult:
    """The record of a call that failed: no tags, the error class, and `message` (already free of secrets) as raw."""
    return ModelResult(
        photo_id=photo_id,
        provider=provider,
        model=model,
        tags=[],
        raw=message,
        valid=False,
        error=error_class,
        latency_ms=round(latency_ms, 1),
        prompt_tokens=None,
        completion_tokens=None,
    )
