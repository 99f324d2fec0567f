"""The bench's receiving side: watchers, or a plain Kafka consumer, in processes of their own, and the bench's
handle on them.

:class:`Receivers` spreads ``connections`` over ``processes`` children (``python -m labkit.bench.receivers
SPEC``), so the measuring client does not share an event loop with the senders, and merges their answers.
A child opens raw watchers on the lean watcher below (every frame filed, duplicates included, no
reconnection), or one confluent-kafka consumer that ``assign()``s every partition from the end with the
consumer service's settings. Every arrival is stamped on receipt and filed by its phase tag (ids are
``<tag>.<seq>``). A child speaks JSON lines: ``{"ready": N, "closed": [...]}`` once connected, then one
answer per command on stdin: ``prime`` (has every connection seen the tag on every partition?),
``drain`` (every event of the tag, once all came or nothing came for ``quiet_s``: a :class:`TagReport`), ``quit``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec import UNSET
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from labkit.events import now_ms
from labkit.rlimits import raise_open_files_limit
from labkit.waiting import until

__all__ = ["Receivers", "ReceiverFailed", "ReceiverSpec", "ConnectionReport", "TagReport", "main"]

READY_TIMEOUT_S = 120.0  # a thousand WebSocket handshakes through the gateway, on a busy machine


class ReceiverSpec(msgspec.Struct):
    kind: Literal["websocket", "kafka"]
    connections: int = 1
    url: str = ""
    types: list[str] = []
    kafka_config: Mapping[str, object] = {}
    pause_when_idle: bool = True  # as the consumer service reads: paused only on a broker that does not long-poll
    topic: str = ""
    open_concurrency: int = 64


class ConnectionReport(msgspec.Struct):
    """One connection's arrivals of one tag: each seq, its latency, and the partitions they came from."""

    seqs: list[int] = []
    latency_ms: list[float] = []
    partitions: set[int] = set()


Stamps = tuple[int, float, float, float, float, float]  # seq, sent_at, received_at, kafka_ts, delivered_at, arrival


class TagReport(msgspec.Struct):
    tag: str
    connections: list[ConnectionReport]
    stamps: list[Stamps]  # from the first connection only
    closed: list[str]  # connections that ended, and why


class ReceiverFailed(RuntimeError):
    """A receiver process could not connect, or stopped answering."""


# -- the bench's side ----------------------------------------------------------------------

class Receivers:
    """``async with Receivers(spec, processes, log_dir) as receivers:`` then prime, drain."""

    def __init__(self, spec: ReceiverSpec, processes: int, log_dir: Path) -> None:
        self.spec, self.log_dir = spec, log_dir
        self.processes = max(1, min(processes, spec.connections))
        self.children: list[asyncio.subprocess.Process] = []

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    async def __aenter__(self) -> Receivers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        share, extra = divmod(self.spec.connections, self.processes)
        try:
            for index in range(self.processes):
                spec = msgspec.structs.replace(self.spec, connections=share + (index < extra))
                with (self.log_dir / f"bench-receiver-{index}.log").open("ab") as log:
                    self.children.append(await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "labkit.bench.receivers", msgspec.json.encode(spec).decode(),
                        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"}, limit=1 << 30))
            answers = await asyncio.gather(*(self._answer(c, READY_TIMEOUT_S) for c in self.children))
        except BaseException:
            await self.close()
            raise
        closed = [reason for answer in answers for reason in answer.get("closed", [])]
        if closed:
            await self.close()
            raise ReceiverFailed(f"{len(closed)} of {self.spec.connections} watchers could not connect: {closed[0]}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _answer(self, child: asyncio.subprocess.Process, timeout: float) -> dict:
        assert child.stdout is not None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), timeout)
        except TimeoutError:
            raise ReceiverFailed(
                f"receiver {child.pid} did not answer within {timeout:.0f} s; see {self.log_dir}") from None
        if not line:
            raise ReceiverFailed(f"receiver {child.pid} exited; see its log in {self.log_dir}")
        return msgspec.json.decode(line)

    async def _ask(self, timeout: float, **command: Any) -> list[dict]:
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write(msgspec.json.encode(command) + b"\n")
        return list(await asyncio.gather(*(self._answer(child, timeout) for child in self.children)))

    async def prime(self, tag: str, partitions: int, timeout_s: float = 10.0) -> bool:
        """True once every connection has seen tag ``tag`` on every partition."""
        answers = await self._ask(timeout_s + 30, cmd="prime", tag=tag, partitions=partitions, timeout_s=timeout_s)
        return all(answer["primed"] for answer in answers)

    async def drain(self, tag: str, expect: int, quiet_s: float, limit_s: float) -> TagReport:
        """Wait for ``expect`` events of ``tag`` on every connection; everything that came, merged."""
        answers = await self._ask(limit_s + 60, cmd="drain", tag=tag, expect=expect, quiet_s=quiet_s, limit_s=limit_s)
        reports = [msgspec.convert(answer, TagReport) for answer in answers]
        return TagReport(tag, [c for report in reports for c in report.connections], reports[0].stamps,
                         [reason for report in reports for reason in report.closed])

    async def close(self) -> None:
        for child in self.children:
            if child.returncode is None and child.stdin is not None:
                with suppress(BrokenPipeError, ConnectionResetError):
                    child.stdin.write(b'{"cmd": "quit"}\n')
                    child.stdin.close()
        for child in self.children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
        self.children = []


# -- the receiver process --------------------------------------------------------------------

class Arrival(msgspec.Struct):
    """The fields of a watcher frame the bench reads (the rest are skipped by the decoder)."""

    id: str
    sent_at: float = 0.0
    received_at: float = 0.0
    kafka_ts: float = 0.0
    delivered_at: float = 0.0
    partition: int = -1


class Arrivals:
    """Every arrival, by tag and connection."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.tags: dict[str, list[ConnectionReport]] = {}
        self.stamps: dict[str, list[Stamps]] = {}
        self.last_arrival = 0.0
        self.closed: list[str] = []

    def record(self, index: int, event: Arrival, arrival: float) -> None:
        tag, _, seq_text = event.id.rpartition(".")
        if tag not in self.tags:
            self.tags[tag], self.stamps[tag] = [ConnectionReport() for _ in range(self.connections)], []
        tally, seq = self.tags[tag][index], int(seq_text)
        tally.seqs.append(seq)
        tally.latency_ms.append(arrival - event.sent_at)
        tally.partitions.add(event.partition)
        if index == 0:
            self.stamps[tag].append(
                (seq, event.sent_at, event.received_at, event.kafka_ts, event.delivered_at, arrival))
        self.last_arrival = arrival

    def reached(self, tag: str, count: Callable[[ConnectionReport], int], wanted: int) -> Callable[[], bool]:
        """A check that every connection's ``count`` of ``tag`` is at least ``wanted`` (never before its first
        arrival), bound to these values."""
        return lambda: min((count(t) for t in self.tags.get(tag, [])), default=0) >= wanted

    def take(self, tag: str) -> TagReport:
        tallies = self.tags.pop(tag, None) or [ConnectionReport() for _ in range(self.connections)]
        return TagReport(tag, tallies, self.stamps.pop(tag, []), list(self.closed))

    async def settled(self, done: Callable[[], bool], quiet_s: float, limit_s: float) -> bool:
        """Wait until ``done()``, or nothing arrived for ``quiet_s``, or ``limit_s`` passed; whether it is done."""
        began = now_ms()

        def over() -> bool:
            return done() or now_ms() - max(self.last_arrival, began) > quiet_s * 1000

        with suppress(TimeoutError):
            await until(over, "", limit_s)
        return done()


_decode = msgspec.json.Decoder(Arrival).decode


class LeanWatcher(asyncio.Protocol):
    """A watcher that costs little: websockets' sans-I/O ClientProtocol on a bare asyncio transport.

    A thousand watchers at 100 events/s are 100,000 frames a second on a machine the consumer and the gateway
    share: with websockets' asyncio client (a task, a frame assembler and a future per message) the measuring
    side used as much CPU as the consumer. Each text frame is decoded once into the few fields the bench reads;
    a frame that is not an event (a resume's ``{"recovered": ...}``) is skipped.
    """

    def __init__(self, url: str, on_arrival: Callable[[Arrival, float], None], opened: asyncio.Future[None],
                 ended: asyncio.Future[str]) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.on_arrival, self.opened, self.ended = on_arrival, opened, ended
        self.parts: list[bytes | bytearray | memoryview] = []  # websockets' frame data: a bytearray of its own
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
        self.parts.append(frame.data)
        if not frame.fin:
            return
        data, self.parts = b"".join(self.parts), []
        with suppress(msgspec.DecodeError):  # not an event
            self.on_arrival(_decode(data), arrival)

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


async def _open_watchers(spec: ReceiverSpec, arrivals: Arrivals) -> None:
    """Every watcher connected (at most ``open_concurrency`` handshakes at once), each on the lean client; one that
    ends is filed in ``arrivals.closed`` (no reconnection: a watcher the consumer closes shows, with its losses)."""
    from labkit.client import watch_url
    from labkit.settings import Settings

    url = watch_url(Settings(), spec.url, spec.types or None)
    uri, loop = parse_uri(url), asyncio.get_running_loop()
    gate = asyncio.Semaphore(spec.open_concurrency)

    async def one(index: int) -> None:
        on_arrival = partial(arrivals.record, index)
        opened: asyncio.Future[None] = loop.create_future()
        ended: asyncio.Future[str] = loop.create_future()
        async with gate:
            try:
                await loop.create_connection(lambda: LeanWatcher(url, on_arrival, opened, ended), uri.host, uri.port)
                await asyncio.wait_for(opened, 30)
            except Exception as exc:  # a refused connection is a result, not a crash
                arrivals.closed.append(f"{index}: {type(exc).__name__}: {exc}")
                return
        ended.add_done_callback(lambda end: arrivals.closed.append(f"{index}: {end.result()}"))

    await asyncio.gather(*(one(i) for i in range(spec.connections)))


def _read_kafka(spec: ReceiverSpec, arrivals: Arrivals, loop: asyncio.AbstractEventLoop,
                assigned: threading.Event, stop: threading.Event) -> None:
    """In a thread: the consumer service's read loop, on a plain consumer."""
    from confluent_kafka import OFFSET_END

    from labkit.events import parse_record
    from labkit.kafka import TailReader

    reader = TailReader({**spec.kafka_config, "client.id": "labkit-bench-baseline",
                         "group.id": f"labkit-bench-{uuid.uuid4().hex[:8]}"}, pause_when_idle=spec.pause_when_idle)
    partitions = reader.consumer.list_topics(timeout=10).topics[spec.topic].partitions
    reader.assign(spec.topic, {p: OFFSET_END for p in partitions})
    assigned.set()

    def file(batch: list) -> None:
        arrival = now_ms()
        for msg in batch:
            record = parse_record(msg.value()) if msg.error() is None else None
            if record is not None and isinstance(record.id, str):
                # No sent_at reads as 0.0, as the watchers' decoder reads a frame without one.
                sent_at = 0.0 if record.sent_at is UNSET else record.sent_at
                arrivals.record(0, Arrival(record.id, sent_at, record.received_at, msg.timestamp()[1], arrival,
                                           msg.partition()), arrival)

    try:
        reader.feed(loop, file, stop)  # as the consumer service reads
    finally:
        reader.close()


async def serve(spec: ReceiverSpec) -> None:
    loop = asyncio.get_running_loop()
    arrivals = Arrivals(spec.connections if spec.kind == "websocket" else 1)
    stop, reader = threading.Event(), None
    if spec.kind == "websocket":
        await _open_watchers(spec, arrivals)
    else:
        assigned = threading.Event()
        reader = threading.Thread(target=_read_kafka, args=(spec, arrivals, loop, assigned, stop), daemon=True)
        reader.start()
        await asyncio.to_thread(assigned.wait, 30)
    out = sys.stdout.buffer
    out.write(msgspec.json.encode({"ready": arrivals.connections, "closed": arrivals.closed}) + b"\n")
    out.flush()
    commands = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():
        command = msgspec.json.decode(line)
        tag = command.get("tag", "")
        if command["cmd"] == "prime":
            wanted, wait_s = command["partitions"], command["timeout_s"]
            primed = await arrivals.settled(arrivals.reached(tag, lambda t: len(t.partitions), wanted), wait_s, wait_s)
            if primed:
                arrivals.take(tag)
            reply = msgspec.json.encode({"primed": primed, "closed": arrivals.closed})
        elif command["cmd"] == "drain":
            await arrivals.settled(arrivals.reached(tag, lambda t: len(t.seqs), command["expect"]),
                                   command["quiet_s"], command["limit_s"])
            reply = msgspec.json.encode(arrivals.take(tag))
        else:
            break
        out.write(reply + b"\n")
        out.flush()
    stop.set()
    if reader is not None:
        await asyncio.to_thread(reader.join, 5)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_open_files_limit()  # a thousand watchers need a thousand sockets
    asyncio.run(serve(msgspec.json.decode(sys.argv[1], type=ReceiverSpec)))


if __name__ == "__main__":
    main()
