"""AdaptiveLimiter: bounded calls in flight, halved on a rate limit, paused for Retry-After, recovered by successes."""
from __future__ import annotations

import threading
import time

import pytest

from phototagger.prompting.limiter import AdaptiveLimiter, CallsStopped


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


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_no_call_starts_after_the_deadline():
    clock = Clock()
    limiter = AdaptiveLimiter(2, deadline_s=60, clock=clock)
    limiter.acquire()
    limiter.release()
    clock.now += 45
    assert limiter.time_left() == 15
    clock.now += 15
    with pytest.raises(CallsStopped, match="deadline of 60s") as stopped:
        limiter.acquire()
    assert stopped.value.error_class == "deadline" and limiter.time_left() == 0


def test_a_retry_after_past_the_deadline_stops_calls_as_rate_limited_and_a_shorter_one_does_not():
    limiter = AdaptiveLimiter(4, deadline_s=600)
    limiter.on_rate_limited(0.01)
    limiter.acquire()
    limiter.release()
    limiter.on_rate_limited(3600)
    with pytest.raises(CallsStopped, match="wait 3600s") as stopped:
        limiter.acquire()
    assert stopped.value.error_class == "rate_limited" and limiter.time_left() == 0


def test_repeated_auth_failures_open_the_breaker_and_a_success_between_them_resets_it():
    limiter = AdaptiveLimiter(4, max_auth_failures=3)
    limiter.on_auth_failure("rejected")
    limiter.on_auth_failure("rejected")
    limiter.on_success()
    limiter.on_auth_failure("rejected")
    limiter.on_auth_failure("rejected")
    limiter.acquire()
    limiter.release()
    limiter.on_auth_failure("rejected (HTTP 401)")
    with pytest.raises(CallsStopped, match=r"3 calls in a row were refused as auth; last: rejected \(HTTP 401\)") as stopped:
        limiter.acquire()
    assert stopped.value.error_class == "auth"


def test_concurrency_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveLimiter(0)
