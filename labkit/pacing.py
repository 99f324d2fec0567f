"""Open-loop pacing, the one schedule every sender in labkit keeps.

Event ``seq`` of a :class:`Schedule` is due at ``start_ms + seq / rate`` (epoch
ms). :func:`due_ranges` yields ``(first, end)`` ranges of events as they come
due, from a thread (``time.sleep`` is precise to about 0.1 ms, asyncio's timers
only to about 1 ms). The sending never waits for replies: a stalled system makes
ranges queue up, and they are handed over together, so a stall shows in the
latencies instead of slowing the schedule (no coordinated omission).

The CLI's ``send --rate``, the notebook form's bursts, the soak and the
benchmark all pace with it::

    async for first, end in due_ranges(Schedule.from_now(rate=50, total=100)):
        await send(events[first:end])
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from labkit.events import now_ms

__all__ = ["Schedule", "due_ranges"]


@dataclass(frozen=True)
class Schedule:
    """``total`` events at ``rate`` per second, the first due at ``start_ms`` (epoch ms)."""

    rate: float
    total: int
    start_ms: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"the rate must be a finite number above 0, got {self.rate!r}")
        if self.total < 0:
            raise ValueError(f"the count must be 0 or more, got {self.total!r}")

    @classmethod
    def from_now(cls, rate: float, total: int, ahead_ms: float = 0.0) -> Schedule:
        return cls(rate, total, now_ms() + ahead_ms)

    def due_at(self, seq: int) -> float:
        return self.start_ms + seq * 1000.0 / self.rate

    def due_by(self, at_ms: float) -> int:
        """How many events are due at ``at_ms``."""
        if at_ms < self.start_ms:
            return 0
        return min(self.total, math.floor((at_ms - self.start_ms) * self.rate / 1000.0) + 1)


def _pace(schedule: Schedule, frame_interval_s: float, post, stop: threading.Event) -> None:
    """In a thread: post (first, end) ranges of due events, at most one per frame interval, then None."""
    next_seq = 0
    while next_seq < schedule.total and not stop.is_set():
        due = schedule.due_by(now_ms())
        if due > next_seq:
            post((next_seq, due))
            next_seq = due
            if frame_interval_s:
                stop.wait(frame_interval_s)
        else:
            stop.wait(max(0.0, schedule.due_at(next_seq) - now_ms()) / 1000.0)
    post(None)


async def due_ranges(schedule: Schedule, *, frame_interval_s: float = 0.0) -> AsyncGenerator[tuple[int, int], None]:
    """Yield ``(first, end)`` ranges of the schedule's events as they come due.

    Ranges that came due while the caller was busy are merged into one. Leaving
    the loop early (``break``, an exception, a cancelled task) stops the pacing
    thread.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
    stop = threading.Event()

    def post(item: tuple[int, int] | None) -> None:
        try:
            loop.call_soon_threadsafe(ready.put_nowait, item)
        except RuntimeError:  # the loop closed under a cancelled caller
            stop.set()

    pacer = threading.Thread(target=_pace, args=(schedule, frame_interval_s, post, stop), name="labkit-pacer",
                             daemon=True)
    pacer.start()
    try:
        while (item := await ready.get()) is not None:
            first, end = item
            finished = False
            while not ready.empty():
                more = ready.get_nowait()
                if more is None:
                    finished = True
                    break
                end = more[1]
            yield first, end
            if finished:
                break
    finally:
        stop.set()
        await asyncio.to_thread(pacer.join)
