"""The producer's per-connection rate limiter (``RateLimiter``), on a clock the test moves by hand: no process,
no socket.

Each test names the rule it checks; breaking that rule makes it fail.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit.services.producer import RateLimiter


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1024.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("labkit.services.producer.time.monotonic", fake)
    return fake


def allowed(limiter: RateLimiter, tries: int) -> int:
    return sum(limiter.allow() for _ in range(tries))


# Rates and steps are powers of two, so the clock's arithmetic is exact.


def test_rate_limiter_allows_one_seconds_worth_at_once_then_refuses(clock: Clock):
    limiter = RateLimiter(8)
    assert allowed(limiter, 8) == 8
    assert not limiter.allow()


def test_rate_limiter_refills_at_its_rate(clock: Clock):
    limiter = RateLimiter(8)
    allowed(limiter, 8)
    clock.now += 1 / 16
    assert not limiter.allow()  # half a token
    clock.now += 1 / 16
    assert limiter.allow() and not limiter.allow()
    clock.now += 0.5
    assert allowed(limiter, 8) == 4


def test_rate_limiter_saves_up_at_most_one_second(clock: Clock):
    limiter = RateLimiter(8)
    clock.now += 3600
    assert allowed(limiter, 100) == 8


def test_rate_limiter_zero_means_unlimited(clock: Clock):
    assert allowed(RateLimiter(0), 10_000) == 10_000


@given(st.floats(1, 1000), st.lists(st.floats(0, 5), min_size=1, max_size=300))
def test_rate_limiter_never_allows_more_than_a_burst_plus_the_rate_times_the_time(rate: float, gaps: list[float]):
    clock = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("labkit.services.producer.time.monotonic", clock)
        limiter = RateLimiter(rate)
        passed = int(limiter.allow())
        for gap in gaps:
            clock.now += gap
            passed += limiter.allow()
    assert passed <= rate + rate * sum(gaps) + 1e-6
