"""Noticing that the broker's log lost its tail: what the consumer delivered, checked again after a reconnect.

noida-db saves its log about a second after changes; a ``kill -9`` loses the last
acked records, and the broker then gives their offsets to new records (measured
2026-12-03: 139 to 146 records at 200 ev/s). Nothing in the Kafka protocol tells a
plain consumer: its next fetch either finds the old position past the end (and
librdkafka resets it) or finds new records at offsets it counts as read, and
skips them. So the consumer remembers the Kafka timestamp of the last records it
delivered per partition (:class:`LogMemory`); once the broker connection drops, it
reads those offsets again before it reads on. The first offset whose record is gone
or has another timestamp is where the log restarted (:class:`labkit.epoch.Truncation`).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from labkit.epoch import Truncation
from labkit.kafka import CONSUMER_DEFAULTS, TailReader, position

__all__ = ["LogMemory", "WINDOW"]

#: Records remembered per partition: a crash that loses more than this is still noticed, at the oldest one kept.
#: About 120 bytes each; noida-db loses about a second of records.
WINDOW = 4096


class LogMemory:
    """Per partition, (offset, Kafka timestamp) of the last ``window`` records delivered."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.stamps: dict[int, deque[tuple[int, int]]] = {}

    def remember(self, partition: int, offset: int, timestamp: int) -> None:
        kept = self.stamps.get(partition)
        if kept is None:
            kept = self.stamps[partition] = deque(maxlen=self.window)
        kept.append((offset, timestamp))

    def forget_from(self, partition: int, offset: int) -> None:
        kept = self.stamps.get(partition)
        while kept and kept[-1][0] >= offset:
            kept.pop()

    def check(self, config: Mapping[str, Any], topic: str, timeout: float = 10.0) -> dict[int, Truncation]:
        """Read the remembered offsets again; per partition whose tail changed, where and up to where.

        Raises KafkaException while the broker does not answer.
        """
        reader = TailReader({**CONSUMER_DEFAULTS, **config, "group.id": f"labkit-check-{uuid.uuid4().hex[:8]}"},
                            pause_when_idle=False)
        try:
            ends: dict[int, int] = {}  # the old end: one past the last offset delivered
            starts: dict[int, int] = {}
            cut: dict[int, Truncation] = {}
            for partition, kept in self.stamps.items():
                if not kept:
                    continue
                low, high = reader.consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                                  timeout=timeout, cached=False)
                first, end = kept[0][0], kept[-1][0] + 1
                if high <= first:
                    cut[partition] = Truncation(max(high, low), end)  # everything remembered is gone
                elif (start := max(first, low)) < end:
                    starts[partition], ends[partition] = start, min(end, high)
                    if high < end:
                        cut[partition] = Truncation(high, end)  # at most: an earlier change may show below
            stamps = {p: dict(self.stamps[p]) for p in starts}
            if starts:
                reader.assign(topic, starts)
            pending, deadline = set(starts), time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "could not read back the delivered records"))
                for msg in reader.read(0.1):
                    if msg.error() is not None or msg.partition() not in pending:
                        continue
                    partition, offset = position(msg)
                    if stamps[partition].get(offset, msg.timestamp()[1]) != msg.timestamp()[1]:
                        cut[partition] = Truncation(offset, self.stamps[partition][-1][0] + 1)
                        pending.discard(partition)
                    elif offset >= ends[partition] - 1:
                        pending.discard(partition)
                pending -= reader.at_end
            return cut
        finally:
            reader.close()

