"""Prompt a batch of photos with one model: concurrent, adaptive, cached, scored, costed.

This is the one path both prompt flows take. N photos in gives N result records out, in input
order, whatever happens to each call: a rate limit, a timeout or a bug on our side becomes a
record with an error class (records.ERROR_CLASSES), never a missing photo or a crashed run.
Whether the run as a whole is acceptable is `check_error_budget`'s call, made afterwards.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from tqdm.auto import tqdm

from phototagger.errors import UserError
from phototagger.mfclient import config_file
from phototagger.prompting.cache import ResponseCache
from phototagger.prompting.cost import load_prices, result_cost
from phototagger.scoring.evals import model_key
from phototagger.prompting.limiter import AdaptiveLimiter
from phototagger.scoring.metrics import Summary, score_photo
from phototagger.prompting.prompter import Prompter, failed_result
from phototagger.prompting.providers import MissingKeyError, known_providers, provider_class
from phototagger.records import ModelResult, Photo

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_ERROR_SHARE = 0.2
DEFAULT_MODEL_DEADLINE_S = 1800.0  # a model's whole batch; hourly runs must not pile up behind a stuck vendor
DEFAULT_MAX_AUTH_FAILURES = 3  # rejected keys in a row before the rest of the batch is recorded as auth, uncalled
ENTRY_FIELDS = frozenset({"provider", "model", "concurrency"})  # models.json fields that are not provider options


class ErrorBudgetExceeded(UserError):
    """More than the allowed share of a model's calls ended in error."""

    def __init__(self, message: str, counts: Mapping[str, int]):
        super().__init__(message)
        self.counts = dict(counts)


def prompt_photos(
    prompter: Prompter,
    photos: Sequence[Photo],
    prompt_text: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    cache: Optional[ResponseCache] = None,
    prices: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    deadline_s: float = DEFAULT_MODEL_DEADLINE_S,
    max_auth_failures: int = DEFAULT_MAX_AUTH_FAILURES,
) -> list[ModelResult]:
    """Tag every photo with `prompter` and return one scored result per photo, in input order.

    API models run on a thread pool of `concurrency` workers behind an AdaptiveLimiter (the
    prompter's own limiter if it has one). A prompter with `supports_batching` (a local GPU
    model) gets chunks of `batch_size` photos through `prompt_batch`, one chunk at a time.
    Answers come from `cache` when it has them; new successful answers go into it. Each result
    is scored against the photo's ground truth and priced with `prices` (the prices.json table);
    the flows store the results as their `models_eval` artifact, which EvaluationFlow reads.
    No call starts after `deadline_s` (nor a retry that would wait past it), and `max_auth_failures`
    rejected keys in a row stop the calls: the photos left are recorded as `deadline`, or with
    the error that stopped them, so the run ends in bounded time with every photo accounted for.
    """
    if not deadline_s > 0:
        raise ValueError(f"the model deadline must be a positive number of seconds, got {deadline_s!r} (--model-deadline-s)")
    photos = list(photos)
    price_table = load_prices(prices)
    settings = prompter.settings() if cache is not None else {}
    label = model_key(prompter.provider, prompter.model)
    results: list[Optional[ModelResult]] = [None] * len(photos)
    bar = _progress_bar(len(photos), label, progress)
    errors = 0

    def finish(index: int, result: ModelResult) -> None:
        nonlocal errors
        photo = photos[index]
        result.setdefault("provider", prompter.provider)
        result.setdefault("model", prompter.model)
        result.setdefault("tags", [])
        result.setdefault("cached", False)
        result["photo_id"] = photo["id"]
        result.update(score_photo(photo.get("ground_truth_tags") or [], [] if result.get("error") else result["tags"]))
        result["cost_usd"] = result_cost(result, price_table)
        results[index] = result
        errors += bool(result.get("error"))
        bar.update(1)
        bar.set_postfix(errors=errors, refresh=False)

    def key_of(photo: Photo) -> Optional[str]:
        return _cache_key(cache, settings, prompt_text, photo)

    try:
        if getattr(prompter, "supports_batching", False):
            _run_batched(prompter, photos, prompt_text, cache, key_of, max(1, batch_size), finish, deadline_s)
        else:
            limiter = AdaptiveLimiter(max(1, concurrency), deadline_s=deadline_s, max_auth_failures=max_auth_failures)
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
            answers = prompter.prompt_batch(prompt_text, [photos[i]["image_url"] for i in chunk],
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
    return prompter.prompt(prompt_text, photo["image_url"], photo_id=photo["id"])


def _internal_error(prompter, exc: BaseException) -> ModelResult:
    """A bug on our side, recorded as a result; only the exception's type is kept (its text might hold a secret)."""
    log.error("%s:%s: internal error %s", prompter.provider, prompter.model, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
    return failed_result(prompter.provider, prompter.model, "internal", f"internal error: {type(exc).__name__}")


def error_counts(results: Iterable[ModelResult]) -> Counter:
    """How many results ended in each error class."""
    return Counter(r["error"] for r in results if r.get("error"))


def check_error_budget(results: Sequence[ModelResult], max_error_share: float = DEFAULT_MAX_ERROR_SHARE, label: str = "") -> None:
    """Raise ErrorBudgetExceeded when more than `max_error_share` of the calls ended in error (Inspect's fail-on-error)."""
    if not results:
        return
    counts = error_counts(results)
    failed = sum(counts.values())
    if failed / len(results) <= max_error_share:
        return
    label = label or model_key(results[0].get("provider", ""), results[0].get("model", ""))
    by_class = ", ".join(f"{name}={n}" for name, n in counts.most_common())
    first_class = counts.most_common(1)[0][0]
    example = next(r.get("raw") or "no message" for r in results if r.get("error") == first_class)
    raise ErrorBudgetExceeded(
        f"{label}: {failed} of {len(results)} calls failed ({100.0 * failed / len(results):.1f}% > "
        f"{100.0 * max_error_share:g}% allowed): {by_class}. First {first_class} error: {example} "
        f"Fix the cause (key, quota, base URL, model name), lower --concurrency, or raise --max-error-share",
        counts,
    )


class ModelSkipped(Exception):
    """A configured model cannot run here (no key, no base URL, no history yet); the flow skips it with this reason."""


def make_prompter(entry: Mapping[str, Any], history: Sequence[Photo] = ()) -> Prompter:
    """A Prompter for one models.json entry; the other fields are provider options (base_url, timeout_s, ...).

    Raises ModelSkipped when the provider's key or base URL is missing, or when an offline baseline
    has no earlier batch to learn from (the first batch of a branch): neither is a failed call.
    """
    key = model_key(entry["provider"], entry["model"])
    options = {k: v for k, v in entry.items() if k not in ENTRY_FIELDS}
    if provider_class(entry["provider"]).learns_from_history:
        if not history:
            raise ModelSkipped("no earlier batch to learn from yet; it is scored from the next batch on")
        options["history"] = list(history)
    try:
        return Prompter(entry["provider"], entry["model"], **options)
    except MissingKeyError as exc:
        raise ModelSkipped(str(exc)) from None
    except TypeError as exc:
        raise UserError(f"models.json entry {key}: unknown option ({exc})", "remove it, or see the provider's options in the README") from None


def prompt_config(text: str) -> dict[str, str]:
    """Metaflow Config parser for prompt.txt: a plain-text prompt becomes {"text": ...}."""
    if not text.strip():
        raise UserError(f"{config_file('prompt', 'prompt.txt')} is empty", "write the prompt into it, or pass --config prompt FILE")
    return {"text": text.strip()}


def model_list_config(text: str) -> dict[str, Any]:
    """Metaflow Config parser for models.json: a mistake in it fails at parse time, naming the file and the field."""
    name = config_file("model-list", "models.json")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{name} is not valid JSON ({exc})", "correct the file at that line and column, or pass --config model-list FILE") from None
    check_model_list(config, name)
    return config


def check_model_list(models_config: Any, name: str = "models.json") -> None:
    """Raise UserError unless `models_config` is {"models": [{"provider": <known>, "model": ...}, ...]}."""
    models = (models_config.get("models") or []) if isinstance(models_config, Mapping) else None
    if not isinstance(models, (list, tuple)) or not all(isinstance(entry, Mapping) for entry in models):
        raise UserError(
            f'{name}: "models" must be a list of objects, got {models!r:.80}',
            'write {"models": [{"provider": "openai", "model": "gpt-4o-mini"}, ...]}',
        )
    for number, entry in enumerate(models, 1):
        missing = [field for field in ("provider", "model") if not entry.get(field)]
        if missing:
            raise UserError(f'{name}: model {number} ({dict(entry)}) has no "{missing[0]}"', 'give every entry a "provider" and a "model"')
        if entry["provider"] not in known_providers():
            raise UserError(
                f'{name}: model {number} has an unknown "provider" {entry["provider"]!r}', f"use one of: {', '.join(known_providers())}"
            )


def select_models(models_config: Mapping[str, Any], only: str = "") -> list[dict[str, Any]]:
    """The entries of models.json to run: all, or those whose model key or provider is in comma-separated `only`."""
    check_model_list(models_config)
    entries = [dict(entry) for entry in models_config.get("models") or []]
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    if not wanted:
        return entries
    chosen = [e for e in entries if e["provider"] in wanted or model_key(e["provider"], e["model"]) in wanted]
    unknown = wanted - {e["provider"] for e in entries} - {model_key(e["provider"], e["model"]) for e in entries}
    if unknown or not chosen:
        known = ", ".join(model_key(e["provider"], e["model"]) for e in entries)
        raise UserError(
            f"--models {only!r}: no configured model matches {', '.join(sorted(unknown)) or only}; known: {known}",
            "name some of those, or add the model to models.json",
        )
    return chosen


def budget_problems(results_by_model: Mapping[str, Sequence[ModelResult]], max_error_share: float) -> dict[str, dict[str, Any]]:
    """The models over the error budget: model key -> {"message", "counts"}; empty when all are within it."""
    problems: dict[str, dict[str, Any]] = {}
    for key, results in results_by_model.items():
        try:
            check_error_budget(results, max_error_share, label=key)
        except ErrorBudgetExceeded as exc:
            problems[key] = {"message": str(exc), "counts": exc.counts}
    return problems


def run_summary_lines(
    models_eval: Mapping[str, Any], summaries: Mapping[str, Summary], skipped: Mapping[str, str], failed: bool = False
) -> list[str]:
    """Three lines for the end of a prompt flow: what ran, how the models rank, what it cost, and what to run
    next unless the run `failed` (its error budget was broken, so there is nothing to evaluate yet)."""
    photos, results = models_eval["photos"], models_eval["results"]
    if not photos:
        return [
            f"Batch {models_eval['batch_id']} ({models_eval['batch_date']}) had no new photos: nothing was prompted.",
            "Models: none run.",
            "Next: ingest more photos with `python updatephotos.py run`.",
        ]
    skipped_text = f"; skipped {', '.join(skipped)} (reasons in skipped_models)" if skipped else ""
    ranked = sorted(summaries.items(), key=lambda kv: -(kv[1]["avg_recall"] if kv[1]["avg_recall"] is not None else -1))
    ranking = "; ".join(
        f"{key} {_pct(s['avg_recall'])} ({_pct(s['avg_recall_all'])} over all photos, {s['error_pct']:g}% errors)"
        for key, s in ranked
    ) or "none ran"
    cached = sum(1 for rows in results.values() for r in rows if r.get("cached"))
    calls = sum(len(rows) for rows in results.values())
    cost = sum(s["cost_usd"] for s in summaries.values())
    return [
        f"Prompted {len(results)} of {len(results) + len(skipped)} models on {len(photos)} photos of batch {models_eval['batch_id']} ({models_eval['batch_date']}){skipped_text}.",
        f"Avg recall: {ranking}.",
        f"Cost ${cost:.4f} at list price; {cached} of {calls} answers from the cache."
        + ("" if failed else " Next: python evalsflow.py run"),
    ]


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}%"
