"""labkit's Kafka reading: client defaults, and a tail reader that costs nothing while idle.

Every consumer labkit runs (the consumer service, a resuming watcher's read-back,
the benchmark's receivers) reads through :class:`TailReader`.

Why it pauses: a Kafka broker holds an empty fetch for ``fetch.wait.max.ms``
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

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, TopicPartition

__all__ = ["CONSUMER_DEFAULTS", "TailReader", "IDLE_TICK_MIN_S", "IDLE_TICK_MAX_S"]

log = logging.getLogger("labkit.kafka")

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
IDLE_TICK_MAX_S = 0.008
BATCH = 1000  # most records handed over at once


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
                self.at_end.add(msg.partition())
                self.next[msg.partition()] = msg.offset()  # the EOF event carries the end offset
                continue
            if error is None:
                self.at_end.discard(msg.partition())
                self.next[msg.partition()] = msg.offset() + 1
            records.append(msg)
        if records:
            self.tick = IDLE_TICK_MIN_S
        if self.pause_when_idle and self._assigned and self.at_end.issuperset(self.partitions):
            self.consumer.pause(self._assigned)
            self.paused = True
        return records

    def caught_up(self, partition: int) -> bool:
        """Whether the broker said this partition is read to its end (and nothing was read after that)."""
        return partition in self.at_end

    def _wake(self) -> None:
        self.consumer.resume(self._assigned)
        # A resume alone waits for librdkafka's broker thread to wake (up to about a second); a seek
        # wakes it at once, but only for a partition whose position it changes, so every partition
        # is sought (seeking one was cheaper and stalled up to 0.5 s). Each has a known next offset.
        for tp in self._assigned:
            self.consumer.seek(TopicPartition(self.topic, tp.partition, self.next.get(tp.partition, OFFSET_END)))
        self.at_end.clear()
        self.paused = False
        self.idle_cycles += 1

    def close(self) -> None:
        self.consumer.close()
