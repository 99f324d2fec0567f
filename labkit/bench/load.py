"""Open-loop load: every event has a scheduled send time, and latency counts from it.

Event ``seq`` of a plan is due at ``start + seq / rate`` and carries that time as
``sent_at`` (epoch ms). :mod:`labkit.pacing` hands the event loop whatever is due,
and the loop sends it in one frame, never waiting for replies. A system that stalls
makes the sending fall behind; the events sent late still carry their scheduled
time, so the stall shows in every latency instead of hiding (no coordinated omission).

Event ids are ``<tag>.<seq>``, so a receiver can sort arrivals by phase.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from functools import cached_property

from labkit.events import Event, now_ms
from labkit.pacing import Schedule, due_ranges

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

    @cached_property
    def schedule(self) -> Schedule:
        return Schedule(self.rate, self.total, self.start_ms)

    def due_at(self, seq: int) -> float:
        return self.schedule.due_at(seq)

    def due_by(self, at_ms: float) -> int:
        """How many events are due at ``at_ms``."""
        return self.schedule.due_by(at_ms)

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


async def run_open_loop(
    plan: LoadPlan,
    send_batch: Callable[[list[Event]], Awaitable[None]],
    *,
    max_batch: int,
    frame_interval_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> SendStats:
    """Send the plan's events when due; ``send_batch`` gets the events due together (one frame)."""
    stats = SendStats()
    lag_total = 0.0
    async with aclosing(due_ranges(plan.schedule, frame_interval_s=frame_interval_s)) as ranges:
        async for first, end in ranges:
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
    stats.lag_mean_ms = lag_total / stats.sent if stats.sent else 0.0
    stats.finished_ms = now_ms()
    return stats
