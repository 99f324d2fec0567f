"""Open-loop load: every event has a scheduled send time, and latency counts from it.

Event ``seq`` of a plan is due at ``start + seq / rate`` and carries that time as
``sent_at`` (epoch ms). A pacing thread (``time.sleep`` is precise to about 0.1 ms,
asyncio's timers only to about 1 ms) hands the event loop whatever is due, and the
loop sends it in one frame, never waiting for replies. A system that stalls makes
the sending fall behind; the events sent late still carry their scheduled time,
so the stall shows in every latency instead of hiding (no coordinated omission).

Event ids are ``<tag>.<seq>``, so a receiver can sort arrivals by phase.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from labkit.events import Event, now_ms

__all__ = ["LoadPlan", "SendStats", "run_open_loop", "BENCH_TYPE", "split_id"]

BENCH_TYPE = "bench"


def split_id(event_id: str) -> tuple[str, int]:
    """``"<tag>.<seq>"`` -> (tag, seq); (id, -1) for an id that is not the bench's."""
    tag, _, seq = event_id.rpartition(".")
    return (tag, int(seq)) if tag and seq.isdigit() else (event_id, -1)


@dataclass(frozen=True)
class LoadPlan:
    """``rate`` events per second for ``duration_s``, from ``start_ms`` (epoch ms)."""

    tag: str
    rate: float
    duration_s: float
    start_ms: float
    keys: int = 16

    @property
    def total(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    def due_at(self, seq: int) -> float:
        return self.start_ms + seq * 1000.0 / self.rate

    def due_by(self, at_ms: float) -> int:
        """How many events are due at ``at_ms``."""
        if at_ms < self.start_ms:
            return 0
        return min(self.total, math.floor((at_ms - self.start_ms) * self.rate / 1000.0) + 1)

    def event(self, seq: int) -> Event:
        return Event(
            type=BENCH_TYPE, value=seq, id=f"{self.tag}.{seq}", key=f"k{seq % self.keys}", sent_at=round(self.due_at(seq), 3)
        )


@dataclass
class SendStats:
    """How well the sending kept its schedule (the client's own share of every latency)."""

    sent: int = 0
    frames: int = 0
    lag_mean_ms: float = 0.0  # mean time from an event's scheduled time to its frame leaving
    lag_max_ms: float = 0.0
    finished_ms: float = 0.0


def _pace(plan: LoadPlan, frame_interval_s: float, post: Callable[[tuple[int, int] | None], None], stop: threading.Event) -> None:
    """In a thread: post (first, end) ranges of due events, at most one per frame interval."""
    next_seq, total = 0, plan.total
    while next_seq < total and not stop.is_set():
        due = plan.due_by(now_ms())
        if due > next_seq:
            post((next_seq, due))
            next_seq = due
            time.sleep(frame_interval_s)
        else:
            time.sleep(max(0.0, plan.due_at(next_seq) - now_ms()) / 1000.0)
    post(None)


async def run_open_loop(
    plan: LoadPlan,
    send_batch: Callable[[list[Event]], Awaitable[None]],
    *,
    max_batch: int,
    frame_interval_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> SendStats:
    """Send the plan's events when due; ``send_batch`` gets the events due together (one frame)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
    stop = threading.Event()
    pacer = threading.Thread(
        target=_pace, args=(plan, frame_interval_s, lambda item: loop.call_soon_threadsafe(ready.put_nowait, item), stop),
        name="bench-pacer", daemon=True,
    )
    stats = SendStats()
    lag_total = 0.0
    pacer.start()
    try:
        finished = False
        while not finished:
            item = await ready.get()
            if item is None:
                break
            first, end = item
            # Ranges that queued up while a send waited (backpressure) go out together.
            while not ready.empty():
                more = ready.get_nowait()
                if more is None:
                    finished = True
                    break
                end = more[1]
            for start in range(first, end, max_batch):
                stop_at = min(end, start + max_batch)
                now = now_ms()
                lag_total += (stop_at - start) * (now - (plan.due_at(start) + plan.due_at(stop_at - 1)) / 2)
                stats.lag_max_ms = max(stats.lag_max_ms, now - plan.due_at(start))
                await send_batch([plan.event(seq) for seq in range(start, stop_at)])
                stats.frames += 1
            stats.sent = end
            if on_progress is not None:
                on_progress(end)
    finally:
        stop.set()
        await asyncio.to_thread(pacer.join)
    stats.lag_mean_ms = lag_total / stats.sent if stats.sent else 0.0
    stats.finished_ms = now_ms()
    return stats
