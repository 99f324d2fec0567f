"""Fan-out watchers that cost little: websockets' sans-I/O client protocol on a bare asyncio transport.

A thousand watchers at 100 events/s are 100,000 frames a second on a machine the
consumer and the gateway share: with websockets' asyncio client (a task, a frame
assembler and a future per message) the measuring side used as much CPU as the
consumer. Here each connection is an :class:`asyncio.Protocol` feeding bytes to
:class:`websockets.client.ClientProtocol`, which parses frames and answers pings;
each text frame is decoded once into the few fields the bench reads. A frame
that is not an event (a resume's ``{"recovered": ...}``) is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from labkit.events import now_ms

__all__ = ["Arrival", "open_lean_watcher"]


class Arrival(msgspec.Struct):
    """The fields of a watcher frame the bench reads (the rest are skipped by the decoder)."""

    id: str
    sent_at: float = 0.0
    received_at: float = 0.0
    kafka_ts: float = 0.0
    delivered_at: float = 0.0
    partition: int = -1


OnArrival = Callable[[Arrival, float], None]  # the event, its arrival (epoch ms)
_decode = msgspec.json.Decoder(Arrival).decode


class _LeanWatcher(asyncio.Protocol):
    def __init__(self, url: str, on_arrival: OnArrival, opened: asyncio.Future[None], ended: asyncio.Future[str]) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.on_arrival, self.opened, self.ended = on_arrival, opened, ended
        self.parts: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        arrival = now_ms()  # one stamp per read: the frames in it arrived together
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self._frame(event, arrival)
            elif isinstance(event, Response) and not self.opened.done():
                if self.protocol.handshake_exc is not None:
                    self.opened.set_exception(self.protocol.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()

    def _frame(self, frame: Frame, arrival: float) -> None:
        if frame.opcode not in (Opcode.TEXT, Opcode.CONT):
            return  # pings are answered by the protocol; a close ends the connection
        if not frame.fin or self.parts:
            self.parts.append(frame.data)
            if not frame.fin:
                return
            data, self.parts = b"".join(self.parts), []
        else:
            data = frame.data
        try:
            event = _decode(data)
        except msgspec.DecodeError:  # not an event
            return
        self.on_arrival(event, arrival)

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"closed, code {self.protocol.close_code}" if self.protocol.close_code else "the connection ended"
        if exc is not None:
            reason += f": {type(exc).__name__}: {exc}"
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        if not self.ended.done():
            self.ended.set_result(reason)


async def open_lean_watcher(url: str, on_arrival: OnArrival, timeout_s: float = 30.0) -> asyncio.Future[str]:
    """Connect and finish the handshake; returns a future holding why the connection ended, once it does."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()
    ended: asyncio.Future[str] = loop.create_future()
    uri = parse_uri(url)
    await loop.create_connection(lambda: _LeanWatcher(url, on_arrival, opened, ended), uri.host, uri.port)
    await asyncio.wait_for(opened, timeout_s)
    return ended
