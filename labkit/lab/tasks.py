"""What the notebook widgets share: cancelling their tasks, closing a widget and everything inside it, and
:func:`labkit.waiting.until` for a notebook to wait on a widget.

Widgets that run background tasks (the live chart, the event form) cancel them and then
close their whole tree of child widgets, so nothing keeps a comm open in the front end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import ipywidgets as w

from labkit.waiting import until  # for the notebooks, which wait on a widget with it (02)

__all__ = ["cancel", "close_tree", "until"]


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
