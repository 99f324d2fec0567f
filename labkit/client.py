"""The one client API of labkit: send events and watch them arrive, over WebSocket.

The CLI, the notebook widgets, the live chart, the benchmark and the tests all
use these two things::

    async with Sender() as sender:          # the gateway's /produce-events
        ack = await sender.send({"type": "click", "value": 1})

    async for event in watch(types=["click"], count=10):   # /consume-events
        print(event.type, event.value)

URLs default to the gateway of the running stack; the key-auth key defaults to
the lab key in kong/kong.yml.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlencode

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

from labkit.discovery import lab_api_key, running_settings
from labkit.events import Ack, Delivered, Event, decode_delivered, decode_reply, encode, new_id, now_ms
from labkit.settings import Settings

__all__ = ["Sender", "SendError", "Watch", "watch", "LogRestart", "lab_api_key", "as_event", "stamped",
           "SeenDeliveries"]

ACK_TIMEOUT_S = 60.0  # longer than the producer's message.timeout.ms, so Kafka's verdict arrives first
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 2.0
RECONNECT_GIVE_UP_S = 120.0

log = logging.getLogger("labkit.client")
RECOVERED_PREFIX = '{"recovered"'  # the first frame of a resumed watch
RESTARTED_PREFIX = '{"log_restarted"'  # the broker's log lost its tail while connected


class LogRestart(NamedTuple):
    """The broker's log lost records ``lost_from`` to ``lost_to`` of ``partition`` (a crash); from ``lost_from`` on
    its offsets hold new events, now of ``epoch``."""

    partition: int
    lost_from: int
    lost_to: int
    epoch: str
    reason: str


class SendError(Exception):
    """The producer refused an event or never answered; ``ack`` holds its reply when there is one."""

    def __init__(self, message: str, ack: Ack | None = None) -> None:
        super().__init__(message)
        self.ack = ack


def _settings(settings: Settings | None) -> Settings:
    return running_settings(settings)


def as_event(event: Event | Mapping[str, Any]) -> Event:
    """The event model's check, before anything is sent; ValueError says what is wrong, by field.

    A number JSON cannot carry (nan, inf: Python's float overflows 1e400 to inf) is refused
    here, where the user typed it: on the wire it would arrive as null.
    """
    try:
        item = event if isinstance(event, Event) else msgspec.convert(dict(event), Event)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    if not math.isfinite(item.value):
        raise ValueError(f"value must be a finite number, not {item.value!r} (numbers past 1.8e308 do not fit)")
    return item


def stamped(event: Event | Mapping[str, Any]) -> Event:
    """The event as a Sender sends it: checked by :func:`as_event`, given an ``id`` and a ``sent_at``
    when it has none. ``len(encode(stamped(event)))`` is the size of its frame."""
    item = as_event(event)
    if item.id is msgspec.UNSET:
        item.id = new_id()
    if item.sent_at is msgspec.UNSET:
        item.sent_at = now_ms()
    return item


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Sender:
    """A WebSocket connection to the producer that matches every ack to its event.

    Every event gets an ``id`` (a new one when it has none) and a ``sent_at``
    stamp; ``send`` waits for Kafka's acknowledgment, ``send_many`` pipelines.
    """

    def __init__(self, url: str | None = None, *, settings: Settings | None = None, api_key: str | None = None) -> None:
        self.settings = _settings(settings)
        self.url = url or self.settings.produce_url
        self.api_key = api_key if api_key is not None else lab_api_key(self.settings)
        self.ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[Ack]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sender:
        headers = {"apikey": self.api_key} if self.api_key else None
        self.ws = await websockets.connect(
            self.url, additional_headers=headers, compression=None, max_size=None, open_timeout=10
        )
        self._reader = asyncio.create_task(self._read_replies())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read_replies(self) -> None:
        assert self.ws is not None
        problem: BaseException = SendError("the connection to the producer closed before Kafka acknowledged")
        try:
            async for frame in self.ws:
                reply = decode_reply(frame)
                future = self._pending.pop(reply.ack or reply.id or "", None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except websockets.ConnectionClosed as exc:
            problem = SendError(f"the connection to the producer closed ({exc}) before Kafka acknowledged")
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(problem)
            self._pending.clear()

    def _prepare(self, event: Event | Mapping[str, Any]) -> tuple[Event, asyncio.Future[Ack]]:
        item = stamped(event)
        assert isinstance(item.id, str)  # stamped() gives every event an id
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        # A caller that stopped waiting (a cancelled batch) still gets the failure when it awaits; nobody
        # else is told "Future exception was never retrieved" on stderr, which a notebook shows in red.
        future.add_done_callback(_mark_retrieved)
        self._pending[item.id] = future
        return item, future

    async def send(self, event: Event | Mapping[str, Any], timeout: float = ACK_TIMEOUT_S) -> Ack:
        """Send one event and return Kafka's ack; raises SendError when it is refused."""
        acks = await self.send_many([event], timeout=timeout)
        return acks[0]

    async def send_many(
        self,
        events: Iterable[Event | Mapping[str, Any]],
        *,
        batch: int = 1,
        timeout: float = ACK_TIMEOUT_S,
        raise_on_error: bool = True,
    ) -> list[Ack]:
        """Send events (``batch`` per frame) without waiting in between; return the replies in order."""
        futures: list[asyncio.Future[Ack]] = []
        chunk: list[Event | Mapping[str, Any]] = []
        for event in events:
            chunk.append(event)
            if len(chunk) >= batch:
                futures += await self.submit(chunk)
                chunk = []
        if chunk:
            futures += await self.submit(chunk)
        return await self.replies(futures, timeout=timeout, raise_on_error=raise_on_error)

    async def submit(self, events: Sequence[Event | Mapping[str, Any]]) -> list[asyncio.Future[Ack]]:
        """Send events in one frame now; each future resolves to its reply."""
        if self.ws is None:
            raise RuntimeError("use 'async with Sender() as sender:' before sending")
        prepared = [self._prepare(event) for event in events]
        items = [item for item, _ in prepared]
        payload = encode(items[0]) if len(items) == 1 else encode(items)
        await self.ws.send(payload, text=True)
        return [future for _, future in prepared]

    @staticmethod
    async def replies(
        futures: list[asyncio.Future[Ack]], *, timeout: float = ACK_TIMEOUT_S, raise_on_error: bool = True
    ) -> list[Ack]:
        """Wait for submitted events' replies; raises SendError on the first refusal if asked to."""
        try:
            replies = await asyncio.wait_for(asyncio.gather(*futures), timeout)  # the first failure raises
        except TimeoutError:
            raise SendError(f"no reply from the producer within {timeout:g} s; is the stack running? (labkit "
                            "status)") from None
        if raise_on_error:
            for reply in replies:
                if not reply.ok:
                    raise SendError(f"{reply.error}: {reply.detail}", reply)
        return list(replies)


def watch_url(
    settings: Settings,
    url: str | None,
    types: Iterable[str] | None,
    replay: int = 0,
    resume: Mapping[int, int] | None = None,
    since_ms: float | None = None,
    epoch: str | None = None,
) -> str:
    base = url or settings.consume_url
    query = {}
    if types:
        query["types"] = ",".join(types)
    if replay:
        query["replay"] = str(replay)
    if since_ms is not None:
        query["resume"] = ",".join(f"{p}:{o}" for p, o in sorted((resume or {}).items()))
        query["since"] = f"{since_ms:.0f}"
        if epoch:
            query["epoch"] = epoch
    return f"{base}{'&' if '?' in base else '?'}{urlencode(query, safe=',:')}" if query else base


class SeenDeliveries:
    """The last ``size`` deliveries seen, by (partition, offset), to drop a record delivered twice.

    A duplicate delivery is the same record at the same place: same partition, same
    offset and same Kafka timestamp. Two events with the same ``id`` are two events.
    The same (partition, offset) with another timestamp is a new record: the broker's
    log started again (an embedded broker keeps its log in memory).
    """

    def __init__(self, size: int = 100_000) -> None:
        self.order: deque[tuple[int, int]] = deque()
        self.stamps: dict[tuple[int, int], float] = {}
        self.size = size

    def first_time(self, event: Delivered) -> bool:
        """False when this record was already delivered."""
        place = (event.partition, event.offset)
        if self.stamps.get(place) == event.kafka_ts:
            return False
        if place not in self.stamps:
            self.order.append(place)
        self.stamps[place] = event.kafka_ts
        if len(self.order) > self.size:
            self.stamps.pop(self.order.popleft(), None)
        return True


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, websockets.InvalidStatus):
        return exc.response.status_code >= 500  # the gateway answers 502 while the consumer restarts
    return isinstance(exc, OSError | websockets.ConnectionClosed | websockets.InvalidHandshake | TimeoutError)


async def _watch(state: Watch) -> AsyncGenerator[Delivered, None]:
    """The events of a :class:`Watch`; ``state`` holds its options and gets how each resume went."""
    url, types, replay, count, opened, raw = state.url, state.types, state.replay, state.count, state.opened, state.raw
    reconnect, give_up_after = state.reconnect, state.give_up_after
    resolved = _settings(state.settings)
    kinds = list(types) if types else None
    positions: dict[int, int] = {}
    seen = None if raw else SeenDeliveries()
    since_ms: float | None = None
    epoch: str | None = None
    delivered = 0
    failing_since: float | None = None
    backoff = RECONNECT_FIRST_S
    while True:
        target = watch_url(resolved, url, kinds, replay if since_ms is None else 0, positions, since_ms, epoch)
        try:
            async with websockets.connect(target, compression=None, max_size=None, open_timeout=10) as ws:
                if since_ms is None:
                    # Partitions it sees nothing on resume from here (a second early, for clock steps).
                    since_ms = now_ms() - 1000
                failing_since, backoff = None, RECONNECT_FIRST_S
                if opened is not None:
                    opened.set()
                try:
                    async for message in ws:
                        # The consumer sends text frames; a binary one is read as UTF-8 all the same.
                        frame = message if isinstance(message, str) else message.decode()
                        if frame.startswith(RECOVERED_PREFIX):
                            recovery = msgspec.json.decode(frame)
                            state.recovered, state.reason = recovery["recovered"], recovery.get("reason")
                            state.resumes += 1
                            # a caller that shows it itself (a lab widget) keeps it out of stderr
                            if not state.recovered:
                                state.gaps.append(state.reason or "the resume was not whole")
                                (log.warning if state.report_gap else log.info)("watch: resumed with a gap: %s",
                                                                                state.reason)
                            continue
                        if frame.startswith(RESTARTED_PREFIX):
                            body = msgspec.json.decode(frame)
                            where = body["log_restarted"]
                            lost_from, lost_to = where["lost"]
                            restart = LogRestart(where["partition"], lost_from, lost_to, body["epoch"], body["reason"])
                            state.restarts.append(restart)
                            log.warning("watch: %s", restart.reason)
                            epoch = restart.epoch
                            if restart.partition in positions:  # a resume from here asks for the new records
                                positions[restart.partition] = min(positions[restart.partition], restart.lost_from - 1)
                            continue
                        event = decode_delivered(frame)
                        epoch = event.epoch or epoch
                        if seen is not None and not seen.first_time(event):
                            continue
                        positions[event.partition] = event.offset  # in order per partition: the last is the furthest
                        yield event
                        delivered += 1
                        if count is not None and delivered >= count:
                            return
                finally:
                    if opened is not None:
                        opened.clear()
        except Exception as exc:
            if since_ms is None or not reconnect or not _retryable(exc):
                raise
            log.info("watch: connection lost (%s); resuming", exc)
        if not reconnect:
            return
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > give_up_after:
            raise ConnectionError(f"no connection to {target.split('?')[0]} for {give_up_after:.0f} s; is the stack "
                                  "running? (labkit status)")
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, RECONNECT_MAX_S)


class Watch:
    """Events as the consumer delivers them (through the gateway by default): ``async for event in watch(...)``.

    ``count`` stops after that many; ``opened`` is set while a connection is up (set
    when it opens, cleared when it drops), so a caller can start sending only when
    nothing can be missed. When the connection drops (a consumer or gateway restart,
    a network fault) it reconnects with backoff and resumes from the last offset it
    saw per partition, so every acknowledged event arrives. A record delivered twice
    (same partition and offset) is yielded once; ``raw=True`` yields every frame as
    delivered, duplicates included, to count them. It gives up after
    ``give_up_after`` seconds without a connection; the first connection is not retried.

    Each resume names the epoch of the last event seen. ``recovered`` then says how
    it went: None before any resume, True when nothing was missed, False when the
    broker's log restarted or the events missed were trimmed (``reason`` says which);
    the events that remain still arrive. A gap is logged as a warning unless
    ``report_gap=False``: then the caller shows ``recovered`` and ``reason`` itself.
    ``resumes`` counts the resumes, and ``gaps`` keeps the reason of every one that had a
    gap, so a whole resume later does not hide an earlier loss.

    ``restarts`` lists each :class:`LogRestart`: the broker lost the tail of a
    partition (a crash) while this watch was connected; the records stored at those
    offsets since are new events, and they arrive too.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        types: Iterable[str] | None = None,
        replay: int = 0,
        count: int | None = None,
        settings: Settings | None = None,
        opened: asyncio.Event | None = None,
        reconnect: bool = True,
        give_up_after: float = RECONNECT_GIVE_UP_S,
        raw: bool = False,
        report_gap: bool = True,
    ) -> None:
        self.report_gap = report_gap
        self.url, self.types, self.replay, self.count, self.settings = url, types, replay, count, settings
        self.opened, self.reconnect, self.give_up_after, self.raw = opened, reconnect, give_up_after, raw
        self.recovered: bool | None = None
        self.reason: str | None = None
        self.resumes = 0
        self.gaps: list[str] = []
        self.restarts: list[LogRestart] = []
        self._events = _watch(self)

    def __aiter__(self) -> AsyncIterator[Delivered]:
        return self._events

    async def aclose(self) -> None:
        await self._events.aclose()


#: The one way to watch: ``watch(types=[...])`` is a :class:`Watch`.
watch = Watch
