"""AdaptiveLimiter: bounded calls in flight, halved on a rate limit, paused for Retry-After, recovered by successes."""
from __future__ import annotations

import threading
import time

import pytest

from phototagger.limiter import AdaptiveLimiter


def test_never_more_calls_in_flight_than_the_limit():
    limiter, lock = AdaptiveLimiter(3), threading.Lock()
    in_flight, peak = 0, 0

    def call():
        nonlocal in_flight, peak
        limiter.acquire()
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        limiter.release()

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3 and limiter.active == 0


def test_rate_limit_halves_the_limit_down_to_one():
    limiter = AdaptiveLimiter(8)
    seen = []
    for _ in range(5):
        limiter.on_rate_limited(None)
        seen.append(limiter.limit)
    assert seen == [4, 2, 1, 1, 1] and limiter.rate_limited == 5


def test_a_run_of_successes_adds_one_slot_up_to_the_maximum():
    limiter = AdaptiveLimiter(4, increase_after=3)
    limiter.on_rate_limited(None)
    limiter.on_rate_limited(None)
    assert limiter.limit == 1
    for _ in range(3):
        limiter.on_success()
    assert limiter.limit == 2
    limiter.on_success()
    limiter.on_rate_limited(None)  # a 429 breaks the run of successes
    limiter.on_success()
    limiter.on_success()
    assert limiter.limit == 1
    for _ in range(30):
        limiter.on_success()
    assert limiter.limit == 4


def test_retry_after_pauses_new_calls_and_no_header_does_not():
    limiter = AdaptiveLimiter(4)
    limiter.on_rate_limited(None)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started < 0.05
    limiter.release()
    limiter.on_rate_limited(0.3)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.28
    limiter.release()


def test_concurrency_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveLimiter(0)
