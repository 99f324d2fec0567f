"""A sender's side of the producer: its replies, bounded, and a close that waits for them.

Policy for replies (one per event, in order):

- A sender owes nothing for its replies, but the producer holds each one until it
  is written. ``Replies`` counts the replies owed to a sender (events taken, not yet
  answered on the socket); at ``limit`` the producer stops reading that sender's
  frames (backpressure: TCP then slows the sender down) until its replies are read.
- A sender still at the limit whose replies have not moved for ``stall_s`` is closed
  with 1013 (try again later). Both are counted in /metrics.

websockets closes a connection at once for a frame over ``max_size`` (1009) or a
text frame that is not UTF-8 (1007). Events the sender sent before that frame
would lose their acks, so :class:`SenderConnection` holds that close back until
the handler has written every reply it owes (``close_after_replies``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, TooManyFragments
from websockets.frames import Close, CloseCode
from websockets.protocol import CLOSING, OPEN

from labkit.services.serving import text_frame

__all__ = ["InputRefused", "Replies", "SenderConnection"]


class InputRefused(Exception):
    """The sender sent a frame the connection must close for; the frames before it were all read."""

    def __init__(self, close: Close) -> None:
        super().__init__(f"{close.code} {close.reason}")
        self.close = close


class SenderConnection(ServerConnection):
    """A WebSocket that, when a frame makes it close, closes only after the replies already owed.

    It relies on websockets' connection internals (``protocol``, ``recv_messages``,
    ``send_data``), pinned with websockets; tests/test_producer_close.py checks the behaviour.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refusal: Close | None = None
        self._held: list[bytes] | None = None  # the close frame and EOF websockets wanted to send

    def send_data(self) -> None:
        protocol = self.protocol
        if (
            self.refusal is None
            and protocol.state is CLOSING
            and protocol.close_rcvd is None
            and protocol.close_sent is not None
            and protocol.close_sent.code == CloseCode.MESSAGE_TOO_BIG
        ):
            # websockets failed the connection on a frame's header (too big). The frames before it
            # are still to be read: end the stream after them rather than now.
            self.refusal, self._held = protocol.close_sent, []
            self.loop.call_soon(self.recv_messages.close)
        if self._held is not None:
            self._held.extend(protocol.data_to_send())
            return
        super().send_data()

    async def recv(self, decode: bool | None = None) -> Any:
        if self.refusal is None or self._held is not None:  # frames received before a too-big one
            try:
                return await self.recv_messages.get(decode)
            except UnicodeDecodeError as exc:
                self.refusal = self.refusal or Close(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            except TooManyFragments:
                self.refusal = self.refusal or Close(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            except EOFError:
                if self.refusal is None:
                    return await super().recv(decode)  # websockets' own end of stream
        assert self.refusal is not None
        raise InputRefused(self.refusal)

    async def write_frames(self, data: bytes) -> None:
        """Write ready-made frames, waiting while the socket's buffer is full (the peer reads slowly)."""
        if (self.protocol.state is not OPEN and self._held is None) or self.transport.is_closing():
            raise ConnectionClosed(self.protocol.close_rcvd, self.protocol.close_sent)
        self.transport.write(data)
        await self.drain()

    async def close_after_replies(self) -> None:
        """Send the close that a refused frame called for, now that the replies are out."""
        if self._held is not None:
            held, self._held = self._held, None
            for data in held:
                if data:
                    self.transport.write(data)
                elif self.transport.can_write_eof():
                    self.transport.write_eof()
                else:
                    self.transport.close()
        elif self.refusal is not None and self.protocol.state is OPEN:
            async with self.send_context():
                self.protocol.fail(self.refusal.code, self.refusal.reason)


class Replies:
    """One sender's replies: queued in order, written in batches by one task, counted until written."""

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
        """A promised reply, ready to write."""
        self._queue.append(frame)
        self._ready.set()

    def reply(self, frame: bytes) -> None:
        """A reply given at once (a refusal)."""
        self.promise()
        self.put(frame)

    async def _write(self) -> None:
        """All the replies ready at once go in one socket write.

        A write per reply was a third of the producer's CPU at 10,000 events/s (py-spy).
        """
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
                    self.owed -= len(batch)
                    self.last_written = time.monotonic()
                    if self.owed < self.limit:
                        self._room.set()
                    if self.owed == 0:
                        self._settled.set()
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
