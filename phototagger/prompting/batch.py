"""Prompt a batch of photos with one model: concurrent, adaptive, cached, bounded in time.

This is the one path both prompt flows and export_tags.py take. N photos in gives N result records
out, in input order, whatever happens to each call: a rate limit, a timeout or a bug on our side
becomes a record with an error class (records.ERROR_CLASSES), never a missing photo or a crashed run.
The records are then scored (`metrics.score_results`) and priced (`cost.price_results`) by the flows,
and whether the run as a whole is acceptable is `budget.ErrorBudget`'s call.
"""
from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from tqdm.auto import tqdm

from phototagger.images import photo_image
from phototagger.prompting.cache import ResponseCache
from phototagger.prompting.limiter import AdaptiveLimiter
from phototagger.prompting.prompter import Prompter, failed_result
from phototagger.records import ModelResult, Photo
from phototagger.scoring.evals import model_key

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH_SIZE = 8
DEFAULT_MODEL_DEADLINE_S = 1800.0  # a model's whole batch; hourly runs must not pile up behind a stuck vendor
DEFAULT_MAX_AUTH_FAILURES = 3  # rejected keys in a row before the rest of the batch is recorded as auth, uncalled


@dataclass(frozen=True)
class PromptSettings:
    """How one model's batch is run: calls in flight (API models), photos per call (local GPU models),
    the time the whole batch may take, the rejected keys in a row that stop it, and a progress bar."""

    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_BATCH_SIZE
    deadline_s: float = DEFAULT_MODEL_DEADLINE_S
    max_auth_failures: int = DEFAULT_MAX_AUTH_FAILURES
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.deadline_s > 0:
            raise ValueError(f"the model deadline must be a positive number of seconds, got {self.deadline_s!r} (--model-deadline-s)")


def prompt_photos(
    prompter: Prompter,
    photos: Sequence[Photo],
    prompt_text: str,
    settings: PromptSettings = PromptSettings(),
    cache: Optional[ResponseCache] = None,
) -> list[ModelResult]:
    """Tag every photo with `prompter` and return one result per photo, in input order (not yet scored or priced).

    API models run on a thread pool of `settings.concurrency` workers behind an AdaptiveLimiter (the
    prompter's own limiter if it has one). A prompter with `supports_batching` (a local GPU model)
    gets chunks of `settings.batch_size` photos through `prompt_batch`, one chunk at a time.
    Answers come from `cache` when it has them; new successful answers go into it.
    No call starts after `settings.deadline_s` (nor a retry that would wait past it), and
    `settings.max_auth_failures` rejected keys in a row stop the calls: the photos left are recorded
    as `deadline`, or with the error that stopped them, so the run ends in bounded time with every
    photo accounted for.
    """
    photos = list(photos)
    cache_settings = prompter.settings() if cache is not None else {}
    label = model_key(prompter.provider, prompter.model)
    results: list[Optional[ModelResult]] = [None] * len(photos)
    bar = _progress_bar(len(photos), label, settings.progress)
    errors = 0

    def finish(index: int, result: ModelResult) -> None:
        nonlocal errors
        result.setdefault("provider", prompter.provider)
        result.setdefault("model", prompter.model)
        result.setdefault("tags", [])
        result.setdefault("cached", False)
        result["photo_id"] = photos[index]["id"]
        results[index] = result
        errors += bool(result.get("error"))
        bar.update(1)
        bar.set_postfix(errors=errors, refresh=False)

    def key_of(photo: Photo) -> Optional[str]:
        return _cache_key(cache, cache_settings, prompt_text, photo)

    try:
        if getattr(prompter, "supports_batching", False):
            _run_batched(prompter, photos, prompt_text, cache, key_of, max(1, settings.batch_size), finish, settings.deadline_s)
        else:
            limiter = AdaptiveLimiter(max(1, settings.concurrency), deadline_s=settings.deadline_s,
                                      max_auth_failures=settings.max_auth_failures)
            _run_concurrent(prompter, photos, prompt_text, cache, key_of, limiter, finish)
    finally:
        bar.close()
    if cache is not None:
        log.info("%s: cache %d hits, %d misses, %d stored at %s", label, cache.hits, cache.misses, cache.writes, cache.location)
    return [r for r in results if r is not None]


class _LogLines:
    """tqdm's output as whole lines, for logs that are not a terminal (Metaflow task logs, CI)."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text:
            print(text, file=sys.stderr, flush=True)

    def flush(self) -> None:
        pass


def _progress_bar(total: int, label: str, progress: bool) -> tqdm:
    """A bar with done/total, rate and errors: live on a terminal, else a line every 15 s (and at the end)."""
    enabled = progress and total > 0
    if sys.stderr.isatty():
        return tqdm(total=total, desc=label, unit="photo", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
    return tqdm(total=total, desc=label, unit="photo", disable=not enabled, file=_LogLines(), mininterval=15, ncols=100, ascii=True)


def _cache_key(cache: Optional[ResponseCache], settings: Mapping[str, Any], prompt_text: str, photo: Photo) -> Optional[str]:
    """The photo's cache key; None (no caching) without a cache, an image, or a readable local file."""
    if cache is None or not photo.get("image_url"):
        return None
    try:
        return cache.key(settings, prompt_text, photo["image_url"])
    except OSError as exc:
        log.warning("photo %s: image unreadable for the cache key (%s); not cached", photo["id"], type(exc).__name__)
        return None


def _from_cache(cache: Optional[ResponseCache], key: Optional[str]) -> Optional[ModelResult]:
    return cache.get(key) if cache is not None and key is not None else None


def _store(cache: Optional[ResponseCache], key: Optional[str], result: ModelResult) -> None:
    if cache is not None and key is not None:
        cache.put(key, result)


def _run_concurrent(prompter, photos, prompt_text, cache, key_of: Callable, limiter: AdaptiveLimiter, finish: Callable) -> None:
    """Cache lookups and calls on a thread pool behind `limiter` (unless the prompter has its own);
    results are finished on this thread as they complete."""
    own_limiter = getattr(prompter, "limiter", None) is None
    if own_limiter:
        prompter.limiter = limiter

    def work(index: int) -> ModelResult:
        key = key_of(photos[index])
        hit = _from_cache(cache, key)
        if hit is not None:
            return hit
        result = _prompt_one(prompter, prompt_text, photos[index])
        _store(cache, key, result)
        return result

    try:
        with ThreadPoolExecutor(max_workers=limiter.max_concurrency, thread_name_prefix="prompt") as pool:
            futures = {pool.submit(work, i): i for i in range(len(photos))}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as exc:  # the cache or our own code, never the model call
                    result = _internal_error(prompter, exc)
                finish(futures[future], result)
    finally:
        if own_limiter:
            prompter.limiter = None


def _run_batched(prompter, photos, prompt_text, cache, key_of: Callable, batch_size: int, finish: Callable, deadline_s: float) -> None:
    """Cache hits first, then the misses in chunks through `prompt_batch`, one chunk at a time, until `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    keys = [key_of(photo) for photo in photos]
    misses = []
    for index in range(len(photos)):
        hit = _from_cache(cache, keys[index])
        if hit is not None:
            finish(index, hit)
        elif not photos[index].get("image_url"):
            finish(index, _prompt_one(prompter, prompt_text, photos[index]))
        else:
            misses.append(index)
    for start in range(0, len(misses), batch_size):
        chunk = misses[start : start + batch_size]
        if time.monotonic() >= deadline:
            for index in chunk:
                finish(index, failed_result(prompter.provider, prompter.model, "deadline",
                                            f"not prompted: the model deadline of {deadline_s:g}s had passed"))
            continue
        try:
            answers = prompter.prompt_batch(prompt_text, [photo_image(photos[i]) for i in chunk],
                                            [photos[i]["id"] for i in chunk])
            if len(answers) != len(chunk):
                raise RuntimeError(f"prompt_batch returned {len(answers)} results for {len(chunk)} photos")
        except Exception as exc:
            answers = [_internal_error(prompter, exc) for _ in chunk]
        for index, result in zip(chunk, answers):
            _store(cache, keys[index], result)
            finish(index, result)


def _prompt_one(prompter, prompt_text: str, photo: Photo) -> ModelResult:
    if not photo.get("image_url"):
        return failed_result(prompter.provider, prompter.model, "bad_image", f"photo {photo['id']} has no image_url")
    return prompter.prompt(prompt_text, photo_image(photo), photo_id=photo["id"])


def _internal_error(prompter, exc: BaseException) -> ModelResult:
    """A bug on our side, recorded as a result; only the exception's type is kept (its text might hold a secret)."""
    log.error("%s:%s: internal error %s", prompter.provider, prompter.model, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
    return failed_result(prompter.provider, prompter.model, "internal", f"internal error: {type(exc).__name__}")
