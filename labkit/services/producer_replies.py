"""A sender's side of the producer: its replies, bounded, and a close that waits for them.

Policy for replies (one per event, in order):

- A sender owes nothing for its replies, but the producer holds each one until it
  is written: at once while its socket keeps up, else by a writer task that waits
  for it. ``Replies`` counts the replies owed to a sender (events taken, not yet
  answered on the socket); at ``limit`` the producer stops reading that sender's
  frames (backpressure: TCP then slows the sender down) until its replies are read.
- A sender still at the limit whose replies have not moved for ``stall_s`` is closed
  with 1013 (try again later). Both are counted in /metrics.

websockets closes a connection at once for a frame over ``max_size`` (1009) or a
text frame that is not UTF-8 (1007). Events the sender sent before that frame
would lose their acks, so :class:`labkit.services.wire.SenderConnection` holds that close back until
the handler has written every reply it owes (``close_after_replies``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from websockets.exceptions import ConnectionClosed

from labkit.services.wire import SenderConnection, text_frame

__all__ = ["Replies"]


class Replies:
    """One sender's replies: queued in order, written in batches, counted until written.

    Whoever puts replies calls :meth:`flush` once for the batch (a poll's acks, a frame's refusals):
    they go out in one write at once while the socket keeps up; a writer task takes over only
    while the sender reads slowly, and waits for its socket.
    """

    def __init__(self, ws: SenderConnection, limit: int, stall_s: float) -> None:
        self.ws = ws
        self.limit = limit
        self.stall_s = stall_s
        self.owed = 0  # replies promised (an event taken) and not yet written to the socket
        self.last_written = time.monotonic()
        self.writing = 0  # replies taken from the queue by the writer and not yet written
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()  # set while owed < limit
        self._room.set()
        self._settled = asyncio.Event()  # set while owed == 0
        self._settled.set()
        self.writer = asyncio.create_task(self._write())

    def promise(self) -> None:
        """One more reply will come (an event was taken)."""
        self.owed += 1
        self._settled.clear()
        if self.owed >= self.limit:
            self._room.clear()

    def put(self, frame: bytes) -> None:
        """A promised reply, ready to write at the next :meth:`flush`."""
        self._queue.append(frame)

    def reply(self, frame: bytes) -> None:
        """A reply given at once (a refusal), written at the next :meth:`flush`."""
        self.promise()
        self.put(frame)

    def flush(self) -> None:
        """Write the replies put so far: now, in one write, when the socket keeps up; else through the writer task.

        At 1,000 events/s, waking a writer task for every batch of acks was a task switch and a
        loop turn per batch (py-spy); a write per reply was a third of the producer's CPU at
        10,000 events/s.
        """
        if not self._queue or self.writing:
            return  # the writer, waiting for the socket, takes these next
        if self.ws.can_write_now():
            batch = list(self._queue)
            self._queue.clear()
            self.ws.write_now(b"".join(map(text_frame, batch)))
            self._written(len(batch))
        else:
            self._ready.set()

    def _written(self, count: int) -> None:
        self.owed -= count
        self.last_written = time.monotonic()
        if self.owed < self.limit:
            self._room.set()
        if self.owed == 0:
            self._settled.set()

    async def _write(self) -> None:
        """Replies the socket could not take at once: written in batches, each waiting for the socket."""
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    batch = list(self._queue)
                    self._queue.clear()
                    self.writing = len(batch)
                    await self.ws.write_frames(b"".join(map(text_frame, batch)))
                    self.writing = 0
                    self._written(len(batch))
        except ConnectionClosed:
            pass

    async def wait_for_room(self) -> bool:
        """Wait until fewer than ``limit`` replies are owed; False if the sender stopped reading them."""
        while self.owed >= self.limit:
            try:
                await asyncio.wait_for(self._room.wait(), self.stall_s)
            except TimeoutError:
                # Replies ready (queued, or taken by a write that waits) but not written for stall_s:
                # the sender does not read. (Replies still waiting for Kafka are not the sender's
                # fault: keep waiting for those.)
                if (self._queue or self.writing) and time.monotonic() - self.last_written >= self.stall_s:
                    return False
        return True

    async def settle(self, timeout: float) -> bool:
        """Wait until every promised reply is written; False after ``timeout``."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        await asyncio.sleep(0)  # let replies already queued go out to a sender that still listens
        self.writer.cancel()
