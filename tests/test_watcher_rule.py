"""Unit tests of the consumer's per-watcher duplicate rule through its Watcher (labkit/services/watchers.py),
no network.

The rule: per partition, a frame at or below ``sent_upto`` (the resume point, then
the last offset sent) is skipped until a live frame above it settles the partition;
frames read back while catching up never settle it. After that every frame
goes out, even an offset going backwards (the broker's log began again). The rule
itself, with no Watcher, is tested in tests/test_fanout.py.

The Watcher writes to a :class:`RecordingSocket`, which keeps what it was given.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from waiting import wait_until
from websockets.protocol import State

from labkit.services.fanout import QUEUE
from labkit.services.serving import ServiceMetrics
from labkit.services.watchers import Delivery, Recovery, Watcher, WatchOptions
from labkit.services.wire import text_frame


class RecordingSocket:
    """Stands in for the consumer's ServerConnection: records each frame's "partition:offset" payload."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.protocol = SimpleNamespace(state=State.OPEN)
        self.transport = self

    def _record(self, payload: bytes) -> None:
        if payload.startswith(b'{"recovered"'):  # a resume's first frame: not a delivery
            return
        partition, offset = payload.decode().split(":")
        self.sent.append((int(partition), int(offset)))

    async def send(self, data: bytes, text: bool = False) -> None:  # the writer's path
        self._record(data)

    def write(self, wires: bytes) -> None:  # deliver's path: encoded text frames, one write
        while wires:
            assert wires[0] == 0x81 and wires[1] < 126, "the test's payloads are short text frames"
            self._record(wires[2:2 + wires[1]])
            wires = wires[2 + wires[1]:]

    def get_write_buffer_size(self) -> int:
        return 0

    async def close(self, code: int, reason: str) -> None:
        self.protocol.state = State.CLOSED


def frame(partition: int, offset: int) -> Delivery:
    return Delivery(partition, offset, "t", f"{partition}:{offset}".encode())


def frames(partition: int, offsets) -> list[Delivery]:
    return [frame(partition, offset) for offset in offsets]


class Run:
    """A Watcher resuming from ``resume``, its catch-up already read, its writer running."""

    def __init__(self, resume: dict[int, int], missed: list[Delivery], live: list[Delivery],
                 counted_as_sent: dict[int, int] | None = None) -> None:
        self.socket = RecordingSocket()
        self.watcher = Watcher(self.socket, WatchOptions(resume=resume), limit=100_000)  # type: ignore[arg-type]  # a recording double
        # What the read-back hands over, read whole: the offsets it counts as sent (the resume offsets, or less
        # where one lies outside the log), the missed frames, and that it read all.
        floor = resume if counted_as_sent is None else counted_as_sent
        assert self.watcher.missed is not None  # a resuming watcher has a catch-up queue
        for handed_over in (Recovery(floor, True), missed, True):
            self.watcher.missed.put_nowait(handed_over)
        for item in live:  # live frames queue up while catching up
            assert self.watcher.state.live(item, writable=True) is QUEUE
        self.writer = asyncio.create_task(self.watcher.write(ServiceMetrics()))

    async def drained(self) -> list[tuple[int, int]]:
        def drained() -> bool:
            return self.watcher.state.idle and not self.watcher.state.queue

        await wait_until(drained, 5, "the watcher's writer did not drain its queue")
        return self.socket.sent

    def deliver(self, item: Delivery) -> int | None:
        """A live frame while the writer is idle: how many frames went out at once."""
        wire = text_frame(item.data)
        return self.watcher.deliver([item], [wire], wire)

    async def stop(self) -> None:
        self.watcher.stop()
        await asyncio.wait_for(self.writer, 5)


async def test_offsets_at_or_below_the_resume_point_are_skipped_until_a_live_frame_settles():
    run = Run({0: 10}, missed=frames(0, range(8, 13)), live=frames(0, range(11, 15)))
    assert await run.drained() == [(0, 11), (0, 12), (0, 13), (0, 14)]
    assert run.watcher.state.unsettled == set()
    await run.stop()


async def test_frames_read_back_while_catching_up_do_not_settle_a_partition():
    run = Run({0: 10}, missed=frames(0, [11, 12]), live=[])
    assert await run.drained() == [(0, 11), (0, 12)]
    assert run.watcher.state.unsettled == {0}
    for item in frames(0, [12, 13]):  # 12 was read back already; live delivery reaches it too
        run.watcher.state.live(item, writable=False)
    run.watcher.ready.set()
    assert await run.drained() == [(0, 11), (0, 12), (0, 13)]
    await run.stop()


async def test_deliver_skips_what_was_sent_then_settles_and_sends_everything():
    run = Run({0: 10}, missed=frames(0, [11, 12]), live=[])
    await run.drained()
    assert run.deliver(frame(0, 12)) == 0  # already sent while catching up, so not written
    assert run.socket.sent == [(0, 11), (0, 12)]
    assert run.deliver(frame(0, 13)) == 1 and run.deliver(frame(0, 3)) == 1  # settled: an offset going back goes out
    assert run.socket.sent == [(0, 11), (0, 12), (0, 13), (0, 3)]
    await run.stop()


async def test_once_settled_the_queue_sends_an_offset_going_backwards():
    run = Run({0: 10}, missed=[], live=[*frames(0, [11, 12]), frame(0, 0), frame(0, 1)])
    assert await run.drained() == [(0, 11), (0, 12), (0, 0), (0, 1)]
    await run.stop()


async def test_each_partition_settles_on_its_own():
    live = [frame(0, 11), frame(1, 5), frame(1, 6)]
    run = Run({0: 10, 1: 6}, missed=[], live=live)
    assert await run.drained() == [(0, 11)]
    assert run.watcher.state.unsettled == {1}
    await run.stop()


async def test_partitions_the_watcher_never_saw_send_everything():
    run = Run({0: 10}, missed=frames(2, [0, 1]), live=frames(2, [1, 2]))
    assert await run.drained() == [(2, 0), (2, 1), (2, 2)]
    await run.stop()


async def test_a_resume_offset_outside_the_log_skips_nothing_the_read_back_found():
    # The broker's log began again: the read-back starts at the log's start and counts nothing as sent.
    run = Run({0: 10**12}, missed=frames(0, [0, 1, 2]), live=frames(0, [2, 3]), counted_as_sent={0: -1})
    assert await run.drained() == [(0, 0), (0, 1), (0, 2), (0, 3)]
    await run.stop()


@st.composite
def overlapping_resumes(draw):
    """Per partition: a resume point, a read-back range after it, and live frames overlapping its end."""
    resume, missed, live = {}, [], []
    for partition in range(draw(st.integers(1, 3))):
        start = draw(st.integers(-1, 50))
        read_upto = draw(st.integers(start, start + 30))
        live_from = draw(st.integers(start + 1, read_upto + 1))
        live_upto = draw(st.integers(read_upto, read_upto + 30))
        resume[partition] = start
        missed += frames(partition, range(start + 1, read_upto + 1))
        live.append(frames(partition, range(live_from, live_upto + 1)))
    # Live frames of different partitions interleave in any way; each partition's stay in order.
    order = draw(st.permutations([p for p, queue in enumerate(live) for _ in queue]))
    queues = [iter(queue) for queue in live]
    return resume, missed, [next(queues[p]) for p in order]


@given(overlapping_resumes())
@hypothesis_settings(max_examples=100, deadline=None)
async def test_a_resume_delivers_each_offset_after_it_once_and_in_order(case):
    resume, missed, live = case
    run = Run(resume, missed, live)
    sent = await run.drained()
    await run.stop()
    for partition, start in resume.items():
        last = max((offset for p, offset, _, _ in missed + live if p == partition), default=start)
        assert [offset for p, offset in sent if p == partition] == list(range(start + 1, last + 1))
