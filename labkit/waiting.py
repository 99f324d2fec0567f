"""Waiting on a condition, never on the clock: the one wait loop of the lab widgets, the bench and the tests.

:func:`until` looks at a condition every few milliseconds until it holds, and gives up after
``timeout`` seconds with an error saying what did not happen. The pause between looks is
polling, not synchronisation: nothing is assumed to be done because time passed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["until", "until_blocking", "Condition", "POLL_S"]

#: A condition: a plain function, or one returning an awaitable (a health answer over HTTP, a thread's result).
Condition = Callable[[], object | Awaitable[object]]
POLL_S = 0.02  # how often until() looks again


async def until(condition: Condition, what: str | Callable[[], str], timeout: float = 30.0, *,
                poll_s: float = POLL_S, error: type[Exception] = TimeoutError) -> None:
    """Return once ``condition()`` holds; ``error`` (TimeoutError) saying ``what`` did not happen after ``timeout`` s.

    ``what`` may be a function, to describe the state at the moment of giving up. An
    exception from ``condition`` (a member that failed, say) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() >= deadline:
            raise error(f"after {timeout:g} s: {what() if callable(what) else what}")
        await asyncio.sleep(poll_s)  # polling the condition, not waiting for time to pass


def until_blocking(condition: Condition, what: str | Callable[[], str], timeout: float = 30.0, *,
                   poll_s: float = POLL_S, error: type[Exception] = TimeoutError) -> None:
    """:func:`until` for plain functions (a condition that polls a Kafka client, say): blocks the caller.

    The wait runs on an event loop of its own in a worker thread, so it also works where the
    caller's thread already runs one; the condition is called from that thread, one call at a time.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="labkit-until") as pool:
        pool.submit(lambda: asyncio.run(until(condition, what, timeout, poll_s=poll_s, error=error))).result()
