"""Watchers of the consumer service: what they asked for, and the queue that feeds each one.

A watcher connects with optional query parameters:

- ``types=a,b``: only events of these types;
- ``replay=N``: first, up to N recent events the service holds in memory;
- ``resume=P:O,P:O``, ``since=MS`` and ``epoch=E``: continue after a disconnection.
  For each partition P the watcher saw, it receives the events after offset O; for
  the partitions it saw nothing on, the events stored since epoch milliseconds MS.
  Its first frame says whether that was whole: ``{"recovered": true}``, or
  ``{"recovered": false, "reason": ...}`` when the log restarted since (the epoch E
  of its last event is gone) or events it missed were trimmed; then it gets
  everything that remains. The labkit client sends these by itself when it reconnects.

Each watcher has a bounded queue and its own writer task, and never receives the
same (partition, offset) twice on one connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from labkit.events import encode, is_reserved
from labkit.services.serving import ServiceMetrics, can_write_now

__all__ = ["WatchOptions", "parse_watch_query", "Watcher", "Frame", "Recovery", "recovery_frame"]

class Frame(NamedTuple):
    """One delivery: where Kafka put it, its event type, and the encoded watcher frame."""

    partition: int
    offset: int
    type: str
    data: bytes


#: Chunks of read-back frames queued per resuming watcher: what a watcher that does not read can hold.
MISSED_CHUNKS = 4


class Recovery(NamedTuple):
    """What a read-back found first: the offsets to count as sent, and whether the resume is whole."""

    sent_upto: dict[int, int]
    recovered: bool
    reason: str | None = None

_RESUME_ITEM = re.compile(r"^(\d{1,6}):(-1|\d{1,19})$")
KNOWN_PARAMETERS = {"types", "replay", "resume", "since", "epoch", "apikey"}
_EPOCH = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class WatchOptions:
    types: frozenset[str] | None = None
    replay: int = 0
    resume: dict[int, int] | None = field(default=None)
    since_ms: float | None = None
    epoch: str | None = None

    @property
    def resuming(self) -> bool:
        return self.resume is not None or self.since_ms is not None


def parse_watch_query(path: str, replay_limit: int) -> WatchOptions:
    """Read a watcher's query string; ValueError says what is wrong and how to write it."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    unknown = sorted(set(query) - KNOWN_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown query parameter {unknown[0]!r}: use types=a,b, replay=N, resume=P:O,..., since=MS and epoch=E")
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
    epoch = None
    if "epoch" in query:
        epoch = query["epoch"][-1]
        if not _EPOCH.match(epoch):
            raise ValueError(f"epoch is the value of a delivered event's epoch field, not {epoch!r}")
    return WatchOptions(types, replay, resume, since_ms, epoch)


def recovery_frame(recovery: Recovery) -> bytes:
    """The first frame a resuming watcher gets: ``{"recovered": true}``, or false with the reason."""
    body: dict[str, object] = {"recovered": recovery.recovered}
    if recovery.reason:
        body["reason"] = recovery.reason
    return encode(body)


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
        # While resuming: what the read-back hands over (offsets counted as sent, chunks of frames,
        # then whether it read all), through a small bounded queue.
        self.missed: asyncio.Queue[Recovery | list[Frame] | bool] | None = (
            asyncio.Queue(MISSED_CHUNKS) if options.resuming else None
        )
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
        self.first_live.setdefault(frame.partition, frame.offset)
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
        partition, offset = frame.partition, frame.offset
        if partition not in self.merged:
            if offset <= self.sent_upto.get(partition, -1):
                return True  # sent while catching up
            self.merged.add(partition)
        self.sent_upto[partition] = offset
        self.first_live.setdefault(partition, offset)
        self.ws.transport.write(wire)
        return True

    def hand_over(self, item: Recovery | list[Frame] | bool, loop: asyncio.AbstractEventLoop, deadline: float) -> bool:
        """From the read-back thread: queue an item for the writer, waiting while the queue is full.

        False when the watcher is gone, or has not made room by ``deadline`` (monotonic): stop reading.
        """
        assert self.missed is not None
        if self.closed:
            return False
        put = asyncio.run_coroutine_threadsafe(self.missed.put(item), loop)
        try:
            put.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            put.cancel()
            return False
        return not self.closed

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
            if self.missed is not None:
                while not isinstance(item := await self.missed.get(), bool):
                    if isinstance(item, Recovery):
                        self.sent_upto.update(item.sent_upto)  # a resume offset from an older log skips nothing
                        await self.ws.send(recovery_frame(item), text=True)
                        continue
                    for frame in item:
                        if self.wants(frame.type):
                            await self._send(frame, metrics, live=False)
                if not item:
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
