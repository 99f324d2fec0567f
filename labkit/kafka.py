"""labkit's Kafka clients: the defaults, a writer whose delivery reports reach the event loop, and a tail reader.

Every producer labkit runs (the producer service, the benchmark's baseline sender)
writes through :class:`Writer`: librdkafka calls delivery reports from
``poll()``, which the asyncio loop calls without waiting, on a short timer while
records are in flight (a poll thread of its own cost more: docs/performance.md).
Every consumer labkit runs (the consumer service, a resuming watcher's
read-back, the benchmark's receivers) reads through :class:`TailReader`, whose
:meth:`TailReader.feed` hands batches to the loop the same way.

Measured against ``confluent_kafka.aio.AIOProducer`` (2.16.1, one noida-db
broker, 3 s per rate, a loaded 2-core machine): the Writer acked at p50 0.14 ms
for 137 µs of CPU per event at 1,000 ev/s, and 23 µs per event at 10,000 ev/s;
AIOProducer with ``batch_size=1`` (each event sent at once) took p50 1.4 ms and
235 µs at 1,000 ev/s, 98 µs at 10,000 ev/s (a thread-pool hop per call); with
``batch_size=100`` it costs about as little CPU but holds events for tens of
milliseconds (p50 16-70 ms). So labkit keeps its Writer.

Why the reader pauses: a Kafka broker holds an empty fetch for ``fetch.wait.max.ms``
(long polling), so an idle consumer asks a few times a second. noida-db 0.2.3
answers every fetch at once, so librdkafka's fetcher spins on an idle topic
(measured: 0.65 core in the client and 0.44 in the broker, whatever
``fetch.wait.max.ms`` or ``fetch.min.bytes``). The reader therefore pauses its
partitions once the broker has said, with a partition-EOF event, that every one
of them is read to its end, sleeps a short tick (0.5 ms, doubling to 8 ms while
nothing comes), then resumes and seeks to where it stopped, which makes
librdkafka fetch at once. Pausing only after a confirmed end is what keeps the
scheme from starving: a loop that paused on a timer could pause before any
fetch went out, and then never fetch again. Against a broker that long-polls,
the first fetch after a resume simply waits there, so the scheme costs nothing
extra.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

__all__ = [
    "PRODUCER_DEFAULTS", "CONSUMER_DEFAULTS", "Report", "Writer", "TailReader", "IDLE_TICK_MIN_S", "IDLE_TICK_MAX_S",
    "read_everything", "PartitionState", "cluster_state", "position",
]

log = logging.getLogger("labkit.kafka")

# Latency first: a lab shows one event at a time, so batch only what arrives together.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "client.id": "labkit-producer",
    "enable.idempotence": True,
    "acks": "all",
    # One millisecond: at 1,000 ev/s (Apache Kafka, 3 runs of 8,000 events) the producer spent 133-143 µs
    # of CPU per event instead of 166-185 at 0 (a request per event in librdkafka's broker thread, and in
    # the broker); an event waits at most this long. librdkafka also batches what queues up meanwhile.
    "linger.ms": 1,
    "message.timeout.ms": 30_000,
    "queue.buffering.max.messages": 100_000,
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "client.id": "labkit-consumer",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # A broker that long-polls (Kafka, Tansu) answers an empty fetch after this wait; it bounds the delay
    # of the first record after a quiet spell. noida-db ignores it (see the module docstring).
    "fetch.wait.max.ms": 5,
    "enable.partition.eof": True,  # the reader pauses only on the broker's word that a partition is read
    "auto.offset.reset": "earliest",  # a position past the log's end (a broker that lost its log): skip nothing
}
IDLE_TICK_MIN_S = 0.0005
# How often a Writer polls for delivery reports while records are in flight, unless its owner polls
# first (the producer does after each frame it reads): how late an ack may be handed over. Polling
# from the loop instead of a thread of its own (which handed each batch over with
# call_soon_threadsafe) saved that thread and its GIL hand-offs: 8,748 futex calls per 5,000
# events fell to 1,245 (strace -c -f, 1,000 ev/s); CPU figures in docs/performance.md.
ACTIVE_POLL_S = 0.002
IDLE_POLL_S = 0.1  # with nothing in flight: how soon a fatal error is noticed without traffic


def position(msg: Message) -> tuple[int, int]:
    """A consumed message's (partition, offset).

    librdkafka gives both on every message a consumer returns, partition-EOF events
    included (their offset is the end); the types allow None for a producer's
    undelivered message, which never comes here.
    """
    partition, offset = msg.partition(), msg.offset()
    if partition is None or offset is None:
        raise ValueError(f"a consumed Kafka message without a position: {msg.error() or msg.topic()}")
    return partition, offset


class Report(NamedTuple):
    """One delivery report: the tag given to :meth:`Writer.produce`, and Kafka's verdict."""

    tag: Any
    error: KafkaError | None  # None: stored
    partition: int | None  # None for an event that was not stored (librdkafka gives no position then)
    offset: int | None


class Writer:
    """One librdkafka producer, polled from the event loop: its delivery reports are handed over in batches.

    librdkafka serves delivery reports and errors only from ``poll()``. The loop polls (without
    waiting) every ``ACTIVE_POLL_S`` while records are in flight, and every ``IDLE_POLL_S`` otherwise,
    so a fatal error is noticed without traffic. ``on_reports(reports)`` gets every report one poll
    served; ``on_error(err)`` gets librdkafka's errors (its ``error_cb``, and an exception raised by
    ``poll()``, as a fatal one is). Both run on the loop, except while :meth:`flush` runs in a thread.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        on_reports: Callable[[list[Report]], None],
        on_error: Callable[[KafkaError], None] | None = None,
        *,
        name: str = "kafka-writer",
    ) -> None:
        extra = {"error_cb": on_error} if on_error is not None else {}
        self.kafka = Producer({**PRODUCER_DEFAULTS, **config, **extra})
        self.on_reports = on_reports
        self.on_error = on_error
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reports: deque[Report] = deque()  # appended by poll(), on the loop or in flush()'s thread
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # the timer is set for ACTIVE_POLL_S (records are in flight)
        self._stopped = False

    def start(self) -> None:
        """Start polling on the running loop."""
        self.loop = asyncio.get_running_loop()
        self._poll_in(IDLE_POLL_S)

    def produce(self, topic: str, value: bytes, key: str | bytes | None, tag: Any) -> None:
        """Hand one record to librdkafka; its :class:`Report` carries ``tag``.

        Raises BufferError when librdkafka's queue is full, KafkaException when it refuses the record.
        """
        self.kafka.produce(topic, value, key, on_delivery=partial(self._on_delivery, tag))
        if not self._busy and not self._stopped and self.loop is not None:
            self._poll_in(ACTIVE_POLL_S)  # its report comes soon: poll sooner than the idle period

    def __len__(self) -> int:
        """Records librdkafka still holds (queued or in flight)."""
        try:
            return len(self.kafka)
        except Exception:  # a failed producer still answers this; a broken binding must not stop the caller
            return 0

    def take_reports(self) -> None:
        """On the loop: poll now, and hand over every report gathered so far.

        A caller already awake (the producer, after each frame it reads) saves the timer a wake-up:
        the next timed poll moves back by ``ACTIVE_POLL_S``.
        """
        self._poll()
        if self._busy and not self._stopped:
            self._poll_in(ACTIVE_POLL_S)

    def _poll(self) -> None:
        try:
            self.kafka.poll(0)
        except KafkaException as exc:  # a fatal error: poll() raises it rather than calling error_cb
            if self.on_error is not None:
                self.on_error(exc.args[0])
        if self._reports:
            self.on_reports(_drain(self._reports))

    async def flush(self, timeout_s: float) -> int:
        """Wait until librdkafka has sent everything (or ``timeout_s``); returns how many records remain."""
        return await asyncio.to_thread(self.kafka.flush, timeout_s)

    def purge(self, *, in_flight: bool) -> None:
        try:
            self.kafka.purge(in_queue=True, in_flight=in_flight, blocking=False)
        except Exception:  # a failed producer may refuse even this; its owner answers for its records
            log.exception("purging a Kafka producer failed")

    def stop(self) -> None:
        """Stop polling (reports not yet polled are not handed over)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()

    async def close(self, flush_s: float = 10.0) -> int:
        """Flush and stop polling; returns how many records were not sent."""
        remaining = await self.flush(flush_s)
        self.stop()
        self._poll()  # and hand over those served by flush(), in its thread
        return remaining

    # -- polling on the loop ---------------------------------------------------------

    def _on_delivery(self, tag: Any, err: KafkaError | None, msg: Message) -> None:
        self._reports.append(Report(tag, err, msg.partition(), msg.offset()))

    def _poll_in(self, delay: float) -> None:
        assert self.loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._busy = delay == ACTIVE_POLL_S
        self._timer = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._stopped:
            return
        try:
            self._poll()
        except Exception:  # whatever a callback raises, polling must go on
            log.exception("polling the Kafka producer %s failed", self.name)
        if not self._stopped:
            self._poll_in(ACTIVE_POLL_S if len(self) else IDLE_POLL_S)


IDLE_TICK_MAX_S = 0.008
BATCH = 1000  # most records handed over at once


def _drain(items: deque[Any]) -> list[Any]:
    """Take everything a deque holds now (another thread may append meanwhile)."""
    taken = []
    while items:
        taken.append(items.popleft())
    return taken


class TailReader:
    """One consumer on explicit partitions, read in batches, paused while every partition is at its end.

    Not thread-safe: one thread calls :meth:`read`.
    """

    def __init__(self, config: Mapping[str, Any], *, pause_when_idle: bool = True) -> None:
        self.consumer = Consumer({**CONSUMER_DEFAULTS, **config, "enable.partition.eof": True})
        self.pause_when_idle = pause_when_idle
        self.topic = ""
        #: Per partition, the offset of the next record to read (known once a record or an EOF was seen).
        self.next: dict[int, int] = {}
        #: Partitions the broker said are read to their end, with nothing read since.
        self.at_end: set[int] = set()
        self.paused = False
        self.tick = IDLE_TICK_MIN_S
        self.idle_cycles = 0
        self._assigned: list[TopicPartition] = []

    def assign(self, topic: str, starts: Mapping[int, int]) -> None:
        """Read ``topic`` from these offsets per partition (``OFFSET_END`` and the other logical offsets work too)."""
        self.topic = topic
        self._assigned = [TopicPartition(topic, p, o) for p, o in sorted(starts.items())]
        self.next = {p: o for p, o in starts.items() if o >= 0}
        self.at_end.clear()
        self.paused = False
        self.consumer.assign(self._assigned)

    @property
    def partitions(self) -> list[int]:
        return [tp.partition for tp in self._assigned]

    def read(self, timeout: float) -> list[Message]:
        """Records that arrived (and Kafka errors, as messages whose ``error()`` is set); [] after ``timeout``.

        While paused it first sleeps one idle tick, then fetches once more.
        """
        if self.paused:
            time.sleep(self.tick)
            self.tick = min(self.tick * 2, IDLE_TICK_MAX_S)
            self._wake()
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        batch = [first, *self.consumer.consume(num_messages=BATCH - 1, timeout=0)]
        records = []
        for msg in batch:
            error = msg.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                partition, end = position(msg)  # the EOF event carries the end offset
                self.at_end.add(partition)
                self.next[partition] = end
                continue
            if error is None:
                partition, offset = position(msg)
                self.at_end.discard(partition)
                self.next[partition] = offset + 1
            records.append(msg)
        if records:
            self.tick = IDLE_TICK_MIN_S
        if self.pause_when_idle and self._assigned and self.at_end.issuperset(self.partitions):
            self.consumer.incremental_unassign(self._assigned)
            self.paused = True
        return records

    def feed(self, loop: asyncio.AbstractEventLoop, on_batch: Callable[[list[Message]], None],
             stopped: threading.Event, timeout: float = 0.1, before_read: Callable[[], None] | None = None) -> None:
        """In the reading thread, until ``stopped``: hand what is read to ``on_batch`` on the loop.

        ``before_read``, when given, runs in this thread before each read (it may assign again).

        Batches read while the loop has not yet taken the last one go with it, in one call: a busy
        loop then handles one bigger batch (one write per watcher) instead of many small ones.
        """
        waiting: deque[list[Message]] = deque()
        called = False

        def hand_over() -> None:
            nonlocal called
            called = False  # before taking: a batch added after this gets a call of its own
            batch = waiting.popleft() if len(waiting) == 1 else [msg for part in _drain(waiting) for msg in part]
            if batch:
                on_batch(batch)

        while not stopped.is_set():
            if before_read is not None:
                before_read()
            batch = self.read(timeout)  # returns as soon as one record is there
            if batch:
                waiting.append(batch)
                if called:
                    continue
                called = True
                try:
                    loop.call_soon_threadsafe(hand_over)
                except RuntimeError:  # the loop closed: its owner is stopping
                    return

    def caught_up(self, partition: int) -> bool:
        """Whether the broker said this partition is read to its end (and nothing was read after that)."""
        return partition in self.at_end

    def _wake(self) -> None:
        # Assigning again at the next offsets starts a fetch at once. pause() and resume() did not:
        # a resumed partition waits for librdkafka's broker thread to wake by itself (up to a second),
        # and a seek to the same offset woke it only some of the time. Every partition has a known
        # next offset here: its EOF gave it.
        self.consumer.incremental_assign(
            [TopicPartition(self.topic, tp.partition, self.next.get(tp.partition, OFFSET_END)) for tp in self._assigned]
        )
        self.at_end.clear()
        self.paused = False
        self.idle_cycles += 1

    def close(self) -> None:
        self.consumer.close()


def read_everything(config: Mapping[str, Any], topic: str, timeout_s: float = 30.0) -> dict[tuple[int, int], bytes]:
    """Every record the topic holds now, by (partition, offset): a plain consumer read to each partition's end.

    A record without a value reads as ``b""``. For checks that acked records are stored (a crash, a leader
    election): the reader does no deduplication and no resuming, so what it finds is what the broker keeps.
    """
    consumer = Consumer({**config, "group.id": f"labkit-check-{time.monotonic_ns():x}", "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    found: dict[tuple[int, int], bytes] = {}
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        done = {p for p, (low, high) in ends.items() if low >= high}
        deadline = time.monotonic() + timeout_s
        while len(done) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(found)} records of {topic!r} in {timeout_s:g} s; ends: {ends}")
            for msg in consumer.consume(1000, timeout=0.5):
                error = msg.error()
                if error is None:
                    partition, offset = position(msg)
                    found[(partition, offset)] = msg.value() or b""
                    if offset + 1 >= ends[partition][1]:
                        done.add(partition)
                elif error.code() == KafkaError._PARTITION_EOF:
                    done.add(position(msg)[0])
    finally:
        consumer.close()
    return found


class PartitionState(NamedTuple):
    """One partition as the cluster's metadata shows it: its leader (-1: none), replicas and in-sync replicas."""

    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)


def cluster_state(client: Any, topic: str, timeout: float = 2.0) -> tuple[list[int], list[PartitionState]]:
    """The brokers that answer, and each partition of ``topic``, from one metadata request (any confluent_kafka client).

    Lists every topic: asking for one by name would let a broker auto-create it.
    """
    meta = client.list_topics(timeout=timeout)
    found = meta.topics.get(topic)
    partitions = [] if found is None else [
        PartitionState(p.id, p.leader, list(p.replicas), list(p.isrs))
        for p in sorted(found.partitions.values(), key=lambda p: p.id)
    ]
    return sorted(meta.brokers), partitions
