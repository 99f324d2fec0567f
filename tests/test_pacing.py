"""The one open-loop pacer: every event is handed over once, in order, when due, and never early."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from labkit.events import now_ms
from labkit.pacing import Schedule, due_ranges

pytestmark = pytest.mark.timeout(30)


def test_a_schedule_refuses_a_rate_it_cannot_keep():
    for rate in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate"):
            Schedule(rate, 10, 0.0)
    with pytest.raises(ValueError, match="count"):
        Schedule(10, -1, 0.0)


async def test_every_event_is_handed_over_once_in_order_and_never_before_it_is_due():
    schedule = Schedule.from_now(rate=400, total=200, ahead_ms=20)
    seen: list[int] = []
    async for first, end in due_ranges(schedule):
        handed_at = now_ms()
        assert first == len(seen) and end > first
        assert handed_at >= schedule.due_at(end - 1)  # never early
        seen.extend(range(first, end))
    assert seen == list(range(200))


async def test_ranges_due_while_the_caller_was_busy_come_merged():
    schedule = Schedule.from_now(rate=1_000, total=300)
    ranges = []
    async with aclosing(due_ranges(schedule)) as stream:
        async for first, end in stream:
            ranges.append((first, end))
            await asyncio.sleep(0.05)  # a slow send: about 50 events come due meanwhile
    assert [seq for first, end in ranges for seq in range(first, end)] == list(range(300))
    assert len(ranges) < 30 and max(end - first for first, end in ranges) > 10


async def test_leaving_early_stops_the_pacing_thread():
    import threading

    schedule = Schedule.from_now(rate=100, total=10_000)
    async with aclosing(due_ranges(schedule)) as stream:
        async for _ in stream:
            break
    assert not any(t.name == "labkit-pacer" for t in threading.enumerate())
