"""Waiting on conditions, never on the clock: the one way tests synchronise.

``wait_until`` checks a condition until it holds and fails after ``timeout``
seconds with a message saying what did not happen. The short pause between
checks is polling, not synchronisation: nothing is assumed to be done because
time passed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Condition = Callable[[], bool | Awaitable[bool]]

POLL_S = 0.01


async def wait_until(condition: Condition, timeout: float, what: str | Callable[[], str]) -> None:
    """Return once ``condition()`` is true; AssertionError naming ``what`` did not happen after ``timeout`` s.

    ``condition`` may be a coroutine function (for a health answer over HTTP, say);
    ``what`` may be a callable, to describe the state at the moment of failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() >= deadline:
            message = what() if callable(what) else what
            raise AssertionError(f"after {timeout:g} s: {message}")
        await asyncio.sleep(POLL_S)


async def health(stack, component: str) -> dict:
    """A component's /healthz answer, without blocking the event loop."""
    return await asyncio.to_thread(stack.health, component)
