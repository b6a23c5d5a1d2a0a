"""Adaptive concurrency for model calls: back off on rate limits, recover on success (AIMD).

A fixed pool of workers hammering an API that answers 429 only earns more 429s. The limiter
bounds how many calls are in flight: a rate limit halves the bound (down to 1) and pauses new
calls for the server's Retry-After; a run of successes raises it by one, up to the configured
maximum, the way TCP finds a link's capacity.

It also decides when a model gets no more calls, so a run ends in bounded time: at its
deadline, when the server asks to wait past that deadline, or after `max_auth_failures`
rejected keys in a row (a circuit breaker). Then `acquire` raises `CallsStopped`.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)


class CallsStopped(Exception):
    """This model gets no more calls; `error_class` is what the photos not yet answered are recorded as."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class AdaptiveLimiter:
    """Bounds concurrent calls; the Prompter calls `acquire`/`release` around each attempt
    and reports `on_rate_limited(retry_after)` / `on_auth_failure(message)` / `on_success()`."""

    def __init__(
        self,
        max_concurrency: int = 4,
        *,
        increase_after: int = 5,
        max_pause_s: float = 60.0,
        deadline_s: Optional[float] = None,
        max_auth_failures: Optional[int] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`deadline_s` counts from now; None means no deadline, and no breaker without `max_auth_failures`."""
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
        self.deadline_s = deadline_s
        self._deadline = clock() + deadline_s if deadline_s is not None else math.inf
        self.max_auth_failures = max_auth_failures
        self._auth_failures = 0
        self._stopped: Optional[CallsStopped] = None
        self._cond = threading.Condition()
        self.rate_limited = 0  # 429s seen, for the run's summary

    @property
    def limit(self) -> int:
        """How many calls may be in flight now."""
        return self._limit

    @property
    def active(self) -> int:
        return self._active

    def time_left(self) -> float:
        """Seconds until no call may start: to the deadline (inf without one), 0 once calls are stopped."""
        with self._cond:
            return 0.0 if self._stopped_now() else max(0.0, self._deadline - self._clock())

    def acquire(self) -> None:
        """Block until a slot is free and no Retry-After pause is running; CallsStopped when none will be."""
        with self._cond:
            while True:
                stopped = self._stopped_now()
                if stopped is not None:
                    raise stopped
                now = self._clock()
                wait = self._paused_until - now
                if wait <= 0 and self._active < self._limit:
                    self._active += 1
                    return
                wait = min(wait if wait > 0 else math.inf, self._deadline - now)
                self._cond.wait(timeout=wait if wait < math.inf else None)

    def _stopped_now(self) -> Optional[CallsStopped]:
        if self._stopped is None and self._clock() >= self._deadline:
            self._stopped = CallsStopped("deadline", f"not prompted: the model deadline of {self.deadline_s:g}s had passed")
        return self._stopped

    def _stop(self, reason: CallsStopped) -> None:
        if self._stopped is None:
            log.warning("no more calls: %s", reason)
            self._stopped = reason
        self._cond.notify_all()

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
            left = self._deadline - self._clock()
            if retry_after and retry_after >= left:
                self._stop(CallsStopped(
                    "rate_limited", f"not prompted: the server asked to wait {retry_after:g}s, past the model deadline ({left:.0f}s left)"
                ))
            elif retry_after and retry_after > 0:
                until = self._clock() + min(float(retry_after), self.max_pause_s)
                self._paused_until = max(self._paused_until, until)
            if self._limit != previous:
                log.info("rate limited: concurrency %d -> %d", previous, self._limit)
            self._cond.notify_all()

    def on_auth_failure(self, message: str) -> None:
        """Count a rejected key; `max_auth_failures` in a row open the breaker: no more calls."""
        with self._cond:
            self._auth_failures += 1
            if self.max_auth_failures is not None and self._auth_failures >= self.max_auth_failures:
                self._stop(CallsStopped(
                    "auth", f"not prompted: {self._auth_failures} calls in a row were refused as auth; last: {message}"
                ))

    def on_success(self) -> None:
        """Count a success; after `increase_after` in a row, allow one more call in flight."""
        with self._cond:
            self._auth_failures = 0
            self._streak += 1
            if self._streak >= self.increase_after and self._limit < self.max_concurrency:
                self._limit += 1
                self._streak = 0
                log.debug("recovering: concurrency -> %d", self._limit)
                self._cond.notify_all()
