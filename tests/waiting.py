"""Waiting on conditions, never on the clock: the one way tests synchronise.

``wait_until`` (labkit's :func:`labkit.waiting.until`, failing as a test fails) checks a condition until it
holds and fails after ``timeout`` seconds with a message saying what did not happen. The short pause between
checks is polling, not synchronisation: nothing is assumed to be done because
time passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from labkit.waiting import Condition, until, until_blocking

POLL_S = 0.01


async def wait_until(condition: Condition, timeout: float, what: str | Callable[[], str]) -> None:
    """Return once ``condition()`` is true; AssertionError naming ``what`` did not happen after ``timeout`` s.

    ``condition`` may be a coroutine function (for a health answer over HTTP, say);
    ``what`` may be a callable, to describe the state at the moment of failure.
    The loop is labkit's own (:func:`labkit.waiting.until`), with a test's failure.
    """
    await until(condition, what, timeout, poll_s=POLL_S, error=AssertionError)


def wait_until_blocking(condition: Condition, timeout: float, what: str | Callable[[], str]) -> None:
    """:func:`wait_until` outside an event loop (a condition that itself polls a Kafka client)."""
    until_blocking(condition, what, timeout, poll_s=0.0, error=AssertionError)


async def health(stack, component: str) -> dict:
    """A component's /healthz answer, without blocking the event loop."""
    return await asyncio.to_thread(stack.health, component)
