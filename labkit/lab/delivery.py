"""Delivery guarantees made visible in a notebook: what a watcher that stops reading gets, and a hot key's skew.

:func:`slow_watcher` opens a watcher that stops reading (its socket is paused, as a
busy or stalled client's would be), sends until the consumer's queue for it overflows,
and reports the close code (1013, try again later) and how many events it had taken.
:func:`partition_skew` counts acks per partition.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import websockets

from labkit.client import Sender
from labkit.events import Ack
from labkit.ops.stack import Stack

__all__ = ["SlowWatcher", "slow_watcher", "partition_skew"]

PAD = "x" * 4000  # large events fill the socket buffers in a few thousand events, not millions


@dataclass
class SlowWatcher:
    """What happened to a watcher that stopped reading."""

    sent: int  # events acked while it was not reading
    overflows: int  # the consumer's labkit_queue_overflows_total afterwards
    close_code: int | None  # 1013: the consumer closed it, try again later
    close_reason: str
    read_before_close: int  # frames it still read from its socket buffer once it read again


def _overflows(stack: Stack) -> float:
    url = stack.settings.url(stack.settings.consumer_port, "/metrics", "http")
    with urllib.request.urlopen(url, timeout=5) as answer:
        metrics = answer.read().decode()
    overflows = next(line for line in metrics.splitlines() if line.startswith("labkit_queue_overflows_total"))
    return float(overflows.split()[1])


async def slow_watcher(stack: Stack, event_type: str, rounds: int = 20) -> SlowWatcher:
    """A watcher of ``event_type`` that stops reading while events are sent, until the consumer gives up on it."""
    url = stack.settings.url(stack.settings.consumer_port, f"/?types={event_type}")
    slow = await websockets.connect(url, max_size=None)
    slow.transport.pause_reading()  # a client that stops reading: the consumer's queue for it fills up
    before = await asyncio.to_thread(_overflows, stack)
    sent = 0
    async with Sender(settings=stack.settings) as sender:
        for _ in range(rounds):
            acks = await sender.send_many([{"type": event_type, "value": i,
                                            "data": {"pad": PAD}} for i in range(1000)], batch=10)
            sent += len(acks)
            if await asyncio.to_thread(_overflows, stack) > before:
                break
    slow.transport.resume_reading()
    read = 0
    try:
        while True:
            await slow.recv()
            read += 1
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
        reason = closed.rcvd.reason if closed.rcvd else ""
    return SlowWatcher(sent, int(await asyncio.to_thread(_overflows, stack) - before), code, reason, read)


def partition_skew(acks: Iterable[Ack], partitions: int) -> list[dict[str, object]]:
    """One row per partition: how many of ``acks`` landed there, and its share."""
    counts = Counter(ack.partition for ack in acks)
    total = sum(counts.values()) or 1
    return [{"partition": p, "events": counts[p],
             "share": f"{100 * counts[p] / total:.0f}%"} for p in range(partitions)]
