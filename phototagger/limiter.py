"""Adaptive concurrency for model calls: back off on rate limits, recover on success (AIMD).

A fixed pool of workers hammering an API that answers 429 only earns more 429s. The limiter
bounds how many calls are in flight: a rate limit halves the bound (down to 1) and pauses new
calls for the server's Retry-After; a run of successes raises it by one, up to the configured
maximum, the way TCP finds a link's capacity.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)


class AdaptiveLimiter:
    """Bounds concurrent calls; the Prompter calls `acquire`/`release` around each attempt
    and reports `on_rate_limited(retry_after)` / `on_success()`."""

    def __init__(
        self,
        max_concurrency: int = 4,
        *,
        increase_after: int = 5,
        max_pause_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.increase_after = increase_after
        self.max_pause_s = max_pause_s
        self._clock = clock
        self._limit = max_concurrency
        self._active = 0
        self._streak = 0
        self._paused_until = 0.0
        self._cond = threading.Condition()
        self.rate_limited = 0  # 429s seen, for the run's summary

    @property
    def limit(self) -> int:
        """How many calls may be in flight now."""
        return self._limit

    @property
    def active(self) -> int:
        return self._active

    def acquire(self) -> None:
        """Block until a slot is free and no Retry-After pause is running."""
        with self._cond:
            while True:
                wait = self._paused_until - self._clock()
                if wait <= 0 and self._active < self._limit:
                    self._active += 1
                    return
                self._cond.wait(timeout=wait if wait > 0 else None)

    def release(self) -> None:
        with self._cond:
            self._active = max(0, self._active - 1)
            self._cond.notify_all()

    def on_rate_limited(self, retry_after: Optional[float] = None) -> None:
        """Halve the bound (multiplicative decrease) and pause new calls for `retry_after` seconds."""
        with self._cond:
            self.rate_limited += 1
            self._streak = 0
            previous = self._limit
            self._limit = max(1, self._limit // 2)
            if retry_after and retry_after > 0:
                until = self._clock() + min(float(retry_after), self.max_pause_s)
                self._paused_until = max(self._paused_until, until)
            if self._limit != previous:
                log.info("rate limited: concurrency %d -> %d", previous, self._limit)
            self._cond.notify_all()

    def on_success(self) -> None:
        """Count a success; after `increase_after` in a row, allow one more call in flight."""
        with self._cond:
            self._streak += 1
            if self._streak >= self.increase_after and self._limit < self.max_concurrency:
                self._limit += 1
                self._streak = 0
                log.debug("recovering: concurrency -> %d", self._limit)
                self._cond.notify_all()
