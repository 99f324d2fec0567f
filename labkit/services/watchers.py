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
  When the log lost its tail since E (a broker crash), the reason gives the lost
  offsets and the watcher gets what the log holds from the first of them.

A watcher connected while the broker's log loses its tail gets, in order, a frame
``{"log_restarted": {"partition": P, "offset": T, "lost": [T, N]}, "epoch": E2, "reason": ...}``:
records T to N of that partition are gone, and the records from T on are new.

Each watcher has a bounded queue and its own writer task, and never receives the
same (partition, offset) twice on one connection: what a frame means for a watcher
is decided by :class:`labkit.services.fanout.WatcherState`, with no I/O; the
:class:`Watcher` here moves the bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from labkit.events import encode
from labkit.services.fanout import OVERFLOW, QUEUE, SEND, Delivery, WatcherState
from labkit.services.serving import ServiceMetrics
from labkit.services.wire import can_write_now, text_frame, write_frames_now

__all__ = ["WatchOptions", "parse_watch_query", "Watcher", "Delivery", "Recovery", "recovery_frame"]


#: Chunks of read-back frames queued per resuming watcher: what a watcher that does not read can hold.
MISSED_CHUNKS = 4

#: Closes started by :meth:`Watcher.close`, held until they end.
_closing: set[asyncio.Task[None]] = set()


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
        raise ValueError(f"unknown query parameter {unknown[0]!r}: "
                         "use types=a,b, replay=N, resume=P:O,..., since=MS and epoch=E")
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
                raise ValueError("resume takes partition:offset pairs separated by commas (e.g. 0:41,2:7), "
                                 f"not {item!r}")
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
    """One connected client: its :class:`WatcherState` (filter, queue, sent offsets), and the I/O around it."""

    def __init__(self, ws: ServerConnection, options: WatchOptions, limit: int) -> None:
        self.ws = ws
        self.state = WatcherState(options.types, limit, options.resume, catching_up=options.resuming)
        self.wants = self.state.wants
        self.limit = limit
        self.ready = asyncio.Event()
        # While resuming: what the read-back hands over (offsets counted as sent, chunks of frames,
        # then whether it read all), through a small bounded queue.
        self.missed: asyncio.Queue[Recovery | list[Delivery] | bool] | None = (
            asyncio.Queue(MISSED_CHUNKS) if options.resuming else None
        )
        self._put: concurrent.futures.Future[None] | None = None  # the read-back's hand-over waiting for room

    @property
    def closed(self) -> bool:
        return self.state.closed

    def deliver(self, frames: list[Delivery], wires: list[bytes], joined: bytes) -> int | None:
        """Live frames of one Kafka batch that this watcher wants, with their WebSocket bytes.

        ``wires`` are built once for every watcher with the same filter, and ``joined`` is their
        concatenation. What the writer is not waiting for is written now, in one write; the rest
        is queued for it. Returns how many were written now; None when the queue overflowed (the
        watcher is to be closed). A thousand watchers cost a task switch and a websockets send
        each per event without this.
        """
        state = self.state
        writable = can_write_now(self.ws)
        if state.takes_all(writable):
            write_frames_now(self.ws, [joined])
            return len(frames)
        now: list[bytes] = []
        queued = False
        for frame, wire in zip(frames, wires, strict=True):
            action = state.live(frame, writable)
            if action is SEND:
                now.append(wire)
            elif action is QUEUE:
                queued = True
            elif action is OVERFLOW:
                self.ready.set()
                return None
        if now:
            write_frames_now(self.ws, now)
        if queued:
            self.ready.set()
        return len(now)

    def log_restarted_at(self, frame: Delivery) -> None:
        """A control frame saying the log restarted at (partition, offset): written now or queued, in order."""
        action = self.state.log_restarted_at(frame, can_write_now(self.ws))
        if action is SEND:
            write_frames_now(self.ws, [text_frame(frame.data)])
        elif action is QUEUE:
            self.ready.set()

    def hand_over(
        self, item: Recovery | list[Delivery] | bool, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> bool:
        """From the read-back thread: queue an item for the writer, waiting while the queue is full.

        False when the watcher is gone, or has not made room by ``deadline`` (monotonic): stop reading.
        """
        assert self.missed is not None
        if self.closed:
            return False
        put = self._put = asyncio.run_coroutine_threadsafe(self.missed.put(item), loop)
        try:
            put.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            put.cancel()
            return False
        except concurrent.futures.CancelledError:  # stop(): the watcher is gone, reading stops now
            return False
        finally:
            self._put = None
        return not self.closed

    def preload(self, frames: Iterable[Delivery]) -> None:
        self.state.preload(frames)
        self.ready.set()

    def stop(self) -> None:
        """The connection is gone or is being closed: send nothing more, and let a waiting read-back go.

        A read-back blocked on a full queue would otherwise hold its slot and its memory until its deadline.
        """
        self.state.closed = True
        self.ready.set()
        if self._put is not None:
            self._put.cancel()

    def close(self, code: CloseCode, reason: str) -> None:
        """Stop, and close the connection (in the background)."""
        self.stop()
        closing = asyncio.create_task(self.ws.close(code, reason))
        _closing.add(closing)  # the loop keeps only a weak reference: unheld, the close could be collected mid-way
        closing.add_done_callback(_closing.discard)

    async def write(self, metrics: ServiceMetrics) -> None:
        """Send what was missed (when resuming), then the live frames, in order."""
        state, ws = self.state, self.ws
        try:
            if self.missed is not None:
                while not isinstance(item := await self.missed.get(), bool):
                    if isinstance(item, Recovery):
                        state.recovered(item.sent_upto)  # a resume offset from an older log skips nothing
                        await ws.send(recovery_frame(item), text=True)
                        continue
                    for frame in item:
                        if state.missed(frame) is SEND:
                            await ws.send(frame.data, text=True)
                            metrics.events_out.inc()
                state.caught_up()
                if not item:
                    await ws.close(CloseCode.TRY_AGAIN_LATER, "could not read back all missed events; resume again")
                    return
            while not state.closed:
                queued = state.next_queued()
                if queued is None:
                    self.ready.clear()
                    state.idle = True
                    try:
                        await self.ready.wait()
                    finally:
                        state.idle = False
                    continue
                await ws.send(queued.data, text=True)
                metrics.events_out.inc()
        except ConnectionClosed:
            pass
