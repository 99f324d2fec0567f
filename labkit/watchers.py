"""Watchers of the consumer service: what they asked for, and the queue that feeds each one.

A watcher connects with optional query parameters:

- ``types=a,b``: only events of these types;
- ``replay=N``: first, up to N recent events the service holds in memory;
- ``resume=P:O,P:O`` and ``since=MS``: continue after a disconnection. For each
  partition P the watcher saw, it receives the events after offset O; for the
  partitions it saw nothing on, the events stored since epoch milliseconds MS.
  The labkit client sends these by itself when it reconnects.

Each watcher has a bounded queue and its own writer task, and never receives the
same (partition, offset) twice on one connection.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from .events import is_reserved
from .service import ServiceMetrics, can_write_now

__all__ = ["WatchOptions", "parse_watch_query", "Watcher", "Frame"]

#: One delivery: partition, offset, event type and the encoded frame.
Frame = tuple[int, int, str, bytes]

_RESUME_ITEM = re.compile(r"^(\d{1,6}):(-1|\d{1,19})$")
KNOWN_PARAMETERS = {"types", "replay", "resume", "since", "apikey"}


@dataclass(frozen=True, slots=True)
class WatchOptions:
    types: frozenset[str] | None = None
    replay: int = 0
    resume: dict[int, int] | None = field(default=None)
    since_ms: float | None = None

    @property
    def resuming(self) -> bool:
        return self.resume is not None or self.since_ms is not None


def parse_watch_query(path: str, replay_limit: int) -> WatchOptions:
    """Read a watcher's query string; ValueError says what is wrong and how to write it."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    unknown = sorted(set(query) - KNOWN_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown query parameter {unknown[0]!r}: use types=a,b, replay=N, resume=P:O,... and since=MS")
    types = None
    if "types" in query:
        names = {name.strip() for value in query["types"] for name in value.split(",") if name.strip()}
        if not names:
            raise ValueError("types is empty: give event types separated by commas, e.g. types=click,view")
        types = frozenset(names)
    replay = 0
    if "replay" in query:
        raw = query["replay"][-1]
        if not raw.isdigit() or int(raw) > replay_limit:
            raise ValueError(f"replay must be a whole number from 0 to {replay_limit}, not {raw!r}")
        replay = int(raw)
    resume = None
    if "resume" in query:
        resume = {}
        for item in filter(None, query["resume"][-1].split(",")):
            match = _RESUME_ITEM.match(item.strip())
            if match is None:
                raise ValueError(f"resume takes partition:offset pairs separated by commas (e.g. 0:41,2:7), not {item!r}")
            resume[int(match[1])] = int(match[2])
    since_ms = None
    if "since" in query:
        try:
            since_ms = float(query["since"][-1])
        except ValueError:
            raise ValueError(f"since must be epoch milliseconds, not {query['since'][-1]!r}") from None
        if not 0 <= since_ms < 1e14:
            raise ValueError(f"since must be epoch milliseconds, not {query['since'][-1]!r}")
    return WatchOptions(types, replay, resume, since_ms)


class Watcher:
    """One connected client: its filter, its bounded queue of frames and its writer."""

    def __init__(self, ws: ServerConnection, options: WatchOptions, limit: int) -> None:
        self.ws = ws
        self.types = options.types
        self.limit = limit
        self.frames: deque[Frame] = deque()
        self.ready = asyncio.Event()
        self.closed = False
        # The highest offset sent per partition: where read-back and live frames overlap,
        # frames at or below it are not sent again.
        self.sent_upto: dict[int, int] = dict(options.resume or {})
        # Partitions whose live frames are past the overlap; from there on, every frame goes
        # out (an offset going backwards then means the broker's log restarted).
        self.merged: set[int] = set()
        # The first live offset queued per partition: catching up can stop there.
        self.first_live: dict[int, int] = {}
        self.catching_up: asyncio.Future[tuple[list[Frame], bool, dict[int, int]]] | None = None
        # The writer waits with nothing queued: a live frame may go straight to the socket.
        self.idle = False

    def wants(self, event_type: str) -> bool:
        if self.types is None:
            return not is_reserved(event_type)
        return event_type in self.types

    def push(self, frame: Frame) -> bool:
        """Queue a live frame; False when the queue is full."""
        if len(self.frames) >= self.limit:
            return False
        self.first_live.setdefault(frame[0], frame[1])
        self.frames.append(frame)
        self.ready.set()
        return True

    def send_now(self, frame: Frame, wire: bytes) -> bool:
        """Write a live frame straight to the socket, when nothing waits before it and the socket keeps up.

        ``wire`` is the frame's WebSocket bytes, built once for every watcher. False: queue it (``push``).
        A thousand watchers cost a task switch and a websockets send each per event without this.
        """
        if self.closed or not self.idle or self.frames or not can_write_now(self.ws):
            return False
        partition, offset = frame[0], frame[1]
        if partition not in self.merged:
            if offset <= self.sent_upto.get(partition, -1):
                return True  # sent while catching up
            self.merged.add(partition)
        self.sent_upto[partition] = offset
        self.first_live.setdefault(partition, offset)
        self.ws.transport.write(wire)
        return True

    def preload(self, frames: Iterable[Frame]) -> None:
        self.frames.extend(frames)
        self.ready.set()

    async def _send(self, frame: Frame, metrics: ServiceMetrics, live: bool = True) -> None:
        partition, offset, _, data = frame
        if partition not in self.merged:
            if offset <= self.sent_upto.get(partition, -1):
                return
            if live:
                self.merged.add(partition)
        self.sent_upto[partition] = offset
        await self.ws.send(data, text=True)
        metrics.events_out.inc()

    async def write(self, metrics: ServiceMetrics) -> None:
        """Send what was missed (when resuming), then the live frames, in order."""
        frames = self.frames
        try:
            if self.catching_up is not None:
                missed, complete, sent_upto = await self.catching_up
                self.sent_upto.update(sent_upto)  # a resume offset from an older log skips nothing
                for frame in missed:
                    if self.wants(frame[2]):
                        await self._send(frame, metrics, live=False)
                if not complete:
                    await self.ws.close(CloseCode.TRY_AGAIN_LATER, "could not read back all missed events; resume again")
                    return
            while not self.closed:
                if not frames:
                    self.ready.clear()
                    self.idle = True
                    try:
                        await self.ready.wait()
                    finally:
                        self.idle = False
                    continue
                await self._send(frames.popleft(), metrics)
        except ConnectionClosed:
            pass
