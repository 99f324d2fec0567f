"""A sender that sends without reading its replies: the producer stops reading it, stays small, then closes it.

The hog is a plain websockets client that never reads (its transport paused):
its replies pile up in the producer unless the producer bounds them. Refused
events are used so that the replies, not Kafka's queue, are what would grow.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import psutil
import pytest
import websockets
from waiting import wait_until
from websockets.frames import CloseCode

from labkit import Settings, Stack

# Each frame is a batch of events the producer refuses one by one, so each one costs a reply.
REFUSED_BATCH = json.dumps([{"type": "", "value": i} for i in range(1000)])
HOG_FRAMES = 1500  # 1.5 million replies of ~100 bytes if nothing bounds them
RSS_GROWTH_BOUND = 30 * 2**20  # bytes; bounded, it grew 7 MB; unbounded, 248 MB
STALL_S = 3.0


@pytest.fixture(scope="module")
def backlog_stack(tmp_path_factory):
    # The stall rule uses the ping timeout: short here, with pings rare, so that the close below
    # comes from the reply bound and not from the keepalive.
    settings = Settings(ping_interval_s=120, ping_timeout_s=STALL_S).with_free_ports(
        state_dir=tmp_path_factory.mktemp("backlog")
    )
    with Stack(settings) as stack:
        yield stack


def producer_rss(stack: Stack) -> int:
    pid = next(row["pid"] for row in stack.status() if row["component"] == "producer")
    return psutil.Process(pid).memory_info().rss


def metric(settings: Settings, name: str) -> float:
    text = urllib.request.urlopen(settings.url(settings.producer_port, "/metrics", "http"), timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def wait_for_metric(settings: Settings, name: str, unless: asyncio.Task | None = None) -> None:
    """Until the producer's counter ``name`` is at least 1 (or ``unless`` finished first)."""

    def counted() -> bool:
        return (unless is not None and unless.done()) or metric(settings, name) >= 1

    await wait_until(lambda: asyncio.to_thread(counted), 60, f"the producer's {name} to count")


async def test_a_sender_that_never_reads_is_paused_then_closed_and_others_go_on(backlog_stack: Stack):
    settings = backlog_stack.settings
    before = await asyncio.to_thread(producer_rss, backlog_stack)
    hog = await websockets.connect(settings.url(settings.producer_port), max_size=None)
    hog.transport.pause_reading()  # never reads a reply

    async def flood() -> None:
        for _ in range(HOG_FRAMES):
            await hog.send(REFUSED_BATCH)  # waits while the producer reads no more

    flooding = asyncio.create_task(flood())
    await wait_for_metric(settings, "labkit_sender_backlog_full_total", unless=flooding)
    grown = await asyncio.to_thread(producer_rss, backlog_stack) - before
    assert grown < RSS_GROWTH_BOUND, f"the producer grew by {grown / 2**20:.0f} MB for a sender that reads nothing"
    assert not flooding.done(), "the producer read every frame of a sender that reads no reply"

    # Another sender is served meanwhile.
    async with websockets.connect(settings.url(settings.producer_port)) as other:
        await other.send(json.dumps([{"type": "other", "value": i, "id": f"o{i}"} for i in range(100)]))
        async with asyncio.timeout(10):
            replies = [json.loads(await other.recv()) for _ in range(100)]
    assert [r.get("ack") for r in replies] == [f"o{i}" for i in range(100)]

    # Still not reading after the stall time: the producer gives up on it with 1013. Its replies and the
    # close wait in the socket for close_timeout, so the hog reads them as soon as the close is counted.
    await wait_for_metric(settings, "labkit_queue_overflows_total")
    hog.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(30):
            while True:
                await hog.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.TRY_AGAIN_LATER
    flooding.cancel()
    await asyncio.gather(flooding, return_exceptions=True)
