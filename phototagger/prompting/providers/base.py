"""The narrow waist every model backend implements, and the registry that names them.

A provider turns (prompt, image) into the model's text or a `ProviderError` with an error class
from `records.ERROR_CLASSES`; retries, timing, parsing and scoring live above it, in the prompter,
so every backend is measured the same way.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeVar, Union

from phototagger.records import ERROR_CLASSES
from phototagger.redact import scrub


class Answer(NamedTuple):
    """The model's text, the token usage the API reported (None when it reports none), and why it stopped.

    `finish_reason` is "length" when the answer hit the token limit; `refusal` holds the text of a
    refusal the API reports apart from the content (OpenAI's `message.refusal`).
    """

    text: str
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    finish_reason: Optional[str] = None
    refusal: Optional[str] = None


RETRYABLE_CLASSES = frozenset({"rate_limited", "timeout", "server_error", "connection"})


class ProviderError(Exception):
    """One call failed; `error_class` says how, `retryable` whether trying again can help.

    The prompter scrubs every message (redact.scrub) before it reaches a record or a log.
    """

    def __init__(
        self,
        error_class: str,
        message: str = "",
        *,
        retry_after: Optional[float] = None,
        retryable: Optional[bool] = None,
    ):
        if error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown error class {error_class!r}; known: {', '.join(ERROR_CLASSES)}")
        super().__init__(message or error_class)
        self.error_class = error_class
        self.retry_after = retry_after
        self.retryable = error_class in RETRYABLE_CLASSES if retryable is None else retryable


class MissingKeyError(ProviderError):
    """A provider that needs a key was built without one; raised at construction, never retried."""

    def __init__(self, message: str):
        super().__init__("auth", message, retryable=False)


class Provider:
    """A model backend. Subclasses set `name`, take `model` plus their options, implement `complete`."""

    name: str = ""
    learns_from_history: bool = False  # an offline baseline built with `history=` (earlier photos)
    reads_prompt: bool = True  # False: the answer does not depend on the prompt, so its variants are one ranking row

    def __init__(self, model: str):
        self.model = model

    def complete(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> Answer:
        """Ask the model about one image (an http(s) URL or a local path)."""
        raise NotImplementedError

    def complete_batch(
        self, prompt_text: str, images: Sequence[str], photo_ids: Sequence[Optional[str]]
    ) -> list[Union[Answer, ProviderError]]:
        """One answer or error per image; local models override this with batched generation."""
        answers: list[Union[Answer, ProviderError]] = []
        for image, photo_id in zip(images, photo_ids):
            try:
                answers.append(self.complete(prompt_text, image, photo_id))
            except ProviderError as exc:
                answers.append(exc)
        return answers

    @property
    def supports_batching(self) -> bool:
        return type(self).complete_batch is not Provider.complete_batch

    def check_reachable(self) -> None:
        """Raise ProviderError("connection") when the model's server cannot be reached at all; a model that
        runs in this process has nothing to reach. Called once in a prompt flow's `start`, before any task."""

    def settings(self) -> dict[str, Any]:
        """What, besides prompt and image, decides the answer (for cache keys); never a secret."""
        return {"provider": self.name, "model": self.model}

    def held_keys(self) -> tuple[str, ...]:
        """The keys this provider sends (besides those in the environment); providers holding one override it."""
        return ()

    def scrub(self, text: str) -> str:
        """`text` without any key this process holds, in any form a server may echo it (redact.scrub)."""
        return scrub(text, self.held_keys())


_REGISTRY: dict[str, type[Provider]] = {}
_LAZY: dict[str, str] = {}
P = TypeVar("P", bound=type[Provider])


def register_provider(name: str) -> Callable[[P], P]:
    """Class decorator: make a provider constructible by `make_provider(name, ...)`."""

    def add(cls: P) -> P:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def register_lazy_provider(name: str, module: str) -> None:
    """Name a provider whose module is imported only when it is asked for (keeps torch out of API runs)."""
    _LAZY[name] = module


def reads_prompt(name: str) -> bool:
    """Whether the provider registered as `name` reads the prompt (an unknown or lazy one is taken to)."""
    cls = _REGISTRY.get(name)
    return cls is None or cls.reads_prompt


def known_providers() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def provider_class(name: str) -> type[Provider]:
    """The class registered as `name` (importing a lazy one); an unknown name fails with the known ones."""
    if name not in _REGISTRY and name in _LAZY:
        try:
            importlib.import_module(_LAZY[name])
        except ImportError as exc:
            raise ImportError(f"provider {name!r} needs packages that are not installed ({exc}): pip install -r requirements.txt") from exc
    if name not in _REGISTRY:
        raise ValueError(f"unknown provider {name!r}; known providers: {', '.join(known_providers())}")
    return _REGISTRY[name]


def make_provider(name: str, model: str, **options: Any) -> Provider:
    """Build the provider registered as `name`."""
    return provider_class(name)(model, **options)
