"""What the notebook widgets share: waiting on a condition, and closing a widget and everything inside it.

Widgets that run background tasks (the live chart, the event form) cancel them and then
close their whole tree of child widgets, so nothing keeps a comm open in the front end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import ipywidgets as w

__all__ = ["cancel", "close_tree", "until"]

POLL_S = 0.02  # how often until() looks again


def cancel(tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Cancel every task still running (``None`` entries are skipped)."""
    for task in tasks:
        if task is not None and not task.done():
            task.cancel()


def close_tree(widget: w.Widget) -> None:
    """Close the children of ``widget``, theirs, and so on (not ``widget`` itself)."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
        child.close()


async def until(condition: Callable[[], bool], what: str | Callable[[], str], timeout: float = 30.0) -> None:
    """Look at ``condition`` every few milliseconds until it holds; TimeoutError saying ``what`` did not happen.

    ``what`` may be a function, to describe the state at the moment of giving up. An
    exception from ``condition`` (a member that failed, say) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:g} s: {what() if callable(what) else what}")
        await asyncio.sleep(POLL_S)  # polling the condition, not waiting for time to pass
