"""The WebSocket wire, and every use of websockets' internals in labkit, in one place.

- :func:`text_frame`, :func:`can_write_now` and :func:`write_frames_now`: a text frame
  encoded once and written straight to many connections' sockets (the consumer's
  fan-out), around websockets' per-send work;
- :class:`SenderConnection`: the producer's connection, which closes for a refused
  frame only after the replies it owes (it overrides ``send_data`` and ``recv`` and
  reads ``protocol``, ``recv_messages`` and ``transport``).

These rely on websockets' connection internals, which change between releases
without notice: the version they were written for is asserted below, and
tests/test_units.py (``text_frame`` byte for byte), tests/test_watcher_rule.py and
tests/test_producer_close.py check the behaviour. Move the pin in pyproject.toml
and ``WRITTEN_FOR`` together, after those tests pass.
"""

from __future__ import annotations

from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, TooManyFragments
from websockets.frames import Close, CloseCode
from websockets.protocol import CLOSING, OPEN, State

__all__ = ["WRITTEN_FOR", "text_frame", "can_write_now", "write_frames_now", "InputRefused", "SenderConnection"]

#: The websockets release this module's use of its internals was written and tested against.
WRITTEN_FOR = "17.4"
assert websockets.__version__ == WRITTEN_FOR, (
    f"labkit.services.wire relies on websockets {WRITTEN_FOR}'s internals, and websockets "
    f"{websockets.__version__} is installed: install websockets=={WRITTEN_FOR} (pyproject.toml pins it)"
)

# Bytes waiting in a client's socket above which frames go through websockets' own send, which waits.
WRITE_HIGH_WATER = 64 * 1024


def text_frame(payload: bytes) -> bytes:
    """A WebSocket text frame as a server sends it (servers do not mask): the same bytes suit every client.

    Built once per event and written straight to the socket, it skips websockets' per-send work and,
    for many frames at once, costs one write instead of one each.
    """
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def can_write_now(ws: ServerConnection) -> bool:
    """True when frames may go straight to the socket: the connection is open and its socket keeps up."""
    return ws.protocol.state is State.OPEN and ws.transport.get_write_buffer_size() < WRITE_HIGH_WATER


def write_frames_now(ws: ServerConnection, wires: list[bytes]) -> None:
    """Write ready-made text frames (:func:`text_frame`) to an open connection, in one write, without waiting.

    What websockets' ``broadcast()`` does for each connection (it skips one that is not open, and has no
    backpressure: call it when :func:`can_write_now`), except that ``broadcast()`` encodes the frame
    again for every connection, where the consumer encodes it once for all its watchers.
    """
    if ws.protocol.state is State.OPEN:
        ws.transport.write(wires[0] if len(wires) == 1 else b"".join(wires))


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

    def _takes_frames(self) -> bool:
        """Open, or closing only for a refused frame whose close waits for the replies owed."""
        return (self.protocol.state is OPEN or self._held is not None) and not self.transport.is_closing()

    def can_write_now(self) -> bool:
        """Frames may be written without waiting: the connection takes them and its socket keeps up."""
        return self._takes_frames() and not self.paused

    def write_now(self, data: bytes) -> None:
        """Write ready-made frames at once; only when :meth:`can_write_now` (nothing waits for the socket)."""
        self.transport.write(data)

    async def write_frames(self, data: bytes) -> None:
        """Write ready-made frames, waiting while the socket's buffer is full (the peer reads slowly)."""
        if not self._takes_frames():
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
