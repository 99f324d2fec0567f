"""The bench's receiving side, in a process of its own: watchers, or a plain Kafka consumer.

Run as ``python -m labkit.bench.receiver_process SPEC`` (SPEC: a JSON :class:`ReceiverSpec`),
so the measuring client does not share a core's event loop with the senders. It
opens ``connections`` raw watchers on the lean watcher below (kind
``websocket``: every frame filed, duplicates included, no reconnection), or one confluent-kafka consumer that ``assign()``s every
partition from the end with the consumer service's settings (kind ``kafka``).
Every arrival is stamped on receipt and filed by its phase tag (the id is
``<tag>.<seq>``).

It speaks JSON lines: it prints ``{"ready": N}`` once connected, then answers
commands read from stdin:

- ``{"cmd": "prime", "tag": T, "partitions": P, "timeout_s": S}``: wait until every
  connection has seen events of tag T from all P partitions; ``{"primed": bool}``.
- ``{"cmd": "drain", "tag": T, "expect": N, "quiet_s": Q, "limit_s": L}``: wait until
  every connection has N events of tag T (or nothing arrived for Q s, or L s
  passed); answer a :class:`TagReport` and forget the tag.
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from labkit.events import now_ms
from labkit.rlimits import raise_open_files_limit
from labkit.bench.receiver_pool import ConnectionReport, ReceiverSpec, TagReport

__all__ = ["main"]

log = logging.getLogger("labkit.bench.receiver_process")


@dataclass
class Tally:
    seqs: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    partitions: set[int] = field(default_factory=set)


class Arrivals:
    """Every arrival, by tag and connection."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.tags: dict[str, list[Tally]] = {}
        self.stamps: dict[str, list[tuple[int, float, float, float, float, float]]] = {}
        self.last_arrival = 0.0
        self.closed: list[str] = []

    def record(self, index: int, event_id: str, sent_at: float, received_at: float, kafka_ts: float,
               delivered_at: float, partition: int, arrival: float) -> None:
        tag, _, seq_text = event_id.rpartition(".")
        tallies = self.tags.get(tag)
        if tallies is None:
            tallies = self.tags[tag] = [Tally() for _ in range(self.connections)]
            self.stamps[tag] = []
        tally = tallies[index]
        seq = int(seq_text)
        tally.seqs.append(seq)
        tally.latency_ms.append(arrival - sent_at)
        tally.partitions.add(partition)
        if index == 0:
            self.stamps[tag].append((seq, sent_at, received_at, kafka_ts, delivered_at, arrival))
        self.last_arrival = arrival

    def counts(self, tag: str) -> list[int]:
        return [len(t.seqs) for t in self.tags.get(tag, [])] or [0] * self.connections

    def partitions_seen(self, tag: str) -> list[int]:
        return [len(t.partitions) for t in self.tags.get(tag, [])] or [0] * self.connections

    def take(self, tag: str) -> TagReport:
        tallies = self.tags.pop(tag, None) or [Tally() for _ in range(self.connections)]
        return TagReport(
            tag, [ConnectionReport(t.seqs, t.latency_ms) for t in tallies], self.stamps.pop(tag, []), list(self.closed)
        )


# -- the lean watcher ---------------------------------------------------------------------
# Fan-out watchers that cost little: websockets' sans-I/O client protocol on a bare asyncio transport.
# A thousand watchers at 100 events/s are 100,000 frames a second on a machine the consumer and the
# gateway share: with websockets' asyncio client (a task, a frame assembler and a future per message)
# the measuring side used as much CPU as the consumer. Here each connection is an asyncio.Protocol
# feeding bytes to websockets.client.ClientProtocol, which parses frames and answers pings; each text
# frame is decoded once into the few fields the bench reads. A frame that is not an event (a resume's
# {"recovered": ...}) is skipped.


class _Arrival(msgspec.Struct):
    """The fields of a watcher frame the bench reads (the rest are skipped by the decoder)."""

    id: str
    sent_at: float = 0.0
    received_at: float = 0.0
    kafka_ts: float = 0.0
    delivered_at: float = 0.0
    partition: int = -1


_OnArrival = Callable[[_Arrival, float], None]  # the event, its arrival (epoch ms)
_decode = msgspec.json.Decoder(_Arrival).decode


class _LeanWatcher(asyncio.Protocol):
    def __init__(self, url: str, on_arrival: _OnArrival, opened: asyncio.Future[None], ended: asyncio.Future[str]) -> None:
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


async def _open_lean_watcher(url: str, on_arrival: _OnArrival, timeout_s: float = 30.0) -> asyncio.Future[str]:
    """Connect and finish the handshake; returns a future holding why the connection ended, once it does."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()
    ended: asyncio.Future[str] = loop.create_future()
    uri = parse_uri(url)
    await loop.create_connection(lambda: _LeanWatcher(url, on_arrival, opened, ended), uri.host, uri.port)
    await asyncio.wait_for(opened, timeout_s)
    return ended


async def _open_watchers(spec: ReceiverSpec, arrivals: Arrivals) -> list[asyncio.Task[None]]:
    """Every watcher connected (at most ``open_concurrency`` handshakes at once), each on the lean client."""
    from labkit.client import watch_url
    from labkit.settings import Settings

    url = watch_url(Settings(), spec.url, spec.types or None)
    gate = asyncio.Semaphore(spec.open_concurrency)
    record = arrivals.record

    async def one(index: int) -> asyncio.Future[str] | None:
        def on_arrival(event: _Arrival, arrival: float) -> None:
            record(index, event.id, event.sent_at, event.received_at, event.kafka_ts, event.delivered_at,
                   event.partition, arrival)

        async with gate:
            try:
                return await _open_lean_watcher(url, on_arrival)
            except Exception as exc:  # a refused connection is a result, not a crash
                arrivals.closed.append(f"{index}: {type(exc).__name__}: {exc}")
                return None

    async def closed(index: int, ended: asyncio.Future[str]) -> None:
        # No reconnection: a watcher the consumer closes must show as closed, with its losses.
        arrivals.closed.append(f"{index}: {await ended}")

    endings = await asyncio.gather(*(one(i) for i in range(spec.connections)))
    return [asyncio.create_task(closed(i, ended)) for i, ended in enumerate(endings) if ended is not None]


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
            if msg.error() is not None:
                continue
            record = parse_record(msg.value())
            if record is None or not isinstance(record.id, str):
                continue
            arrivals.record(0, record.id, record.sent_at, record.received_at, msg.timestamp()[1], arrival,
                            msg.partition(), arrival)

    try:
        reader.feed(loop, file, stop)  # as the consumer service reads
    finally:
        reader.close()


async def _wait(condition, quiet_s: float, limit_s: float, arrivals: Arrivals) -> bool:
    began = now_ms()
    while not condition():
        now = now_ms()
        if now - began > limit_s * 1000 or now - max(arrivals.last_arrival, began) > quiet_s * 1000:
            return False
        await asyncio.sleep(0.02)
    return True


async def serve(spec: ReceiverSpec) -> None:
    loop = asyncio.get_running_loop()
    arrivals = Arrivals(spec.connections if spec.kind == "websocket" else 1)
    stop = threading.Event()
    reader: threading.Thread | None = None
    tasks: list[asyncio.Task[None]] = []
    if spec.kind == "websocket":
        tasks = await _open_watchers(spec, arrivals)
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
            wanted = command["partitions"]
            primed = await _wait(lambda: min(arrivals.partitions_seen(tag)) >= wanted, command["timeout_s"],
                                 command["timeout_s"], arrivals)
            if primed:
                arrivals.take(tag)
            reply = msgspec.json.encode({"primed": primed, "closed": arrivals.closed})
        elif command["cmd"] == "drain":
            expect = command["expect"]
            await _wait(lambda: min(arrivals.counts(tag)) >= expect, command["quiet_s"], command["limit_s"], arrivals)
            reply = msgspec.json.encode(arrivals.take(tag))
        else:
            break
        out.write(reply + b"\n")
        out.flush()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if reader is not None:
        await asyncio.to_thread(reader.join, 5)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_open_files_limit()  # a thousand watchers need a thousand sockets
    spec = msgspec.json.decode(sys.argv[1], type=ReceiverSpec)
    asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
