"""Reading back from Kafka what a resuming watcher missed.

A watcher that reconnects says where it stopped: the last offset it saw per
partition, and since when it was connected (for partitions it saw nothing on).
The consumer registers it for live events at once, then reads the gap from Kafka
with a short-lived consumer of its own, in a thread. Reading stops per partition
where the watcher's live queue begins, or when Kafka has nothing more; the
watcher skips any offset it already sent, so the two overlap without duplicates.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from .events import delivered_frame, now_ms, parse_record
from .settings import Settings
from .watchers import Frame

__all__ = ["read_missed"]

log = logging.getLogger("labkit.consumer")

IDLE_S = 0.3  # nothing new for this long: the gap is read
LIMIT_S = 30.0  # a gap that takes longer is cut short; the watcher's live queue still has the rest


def _starts(consumer: Consumer, topic: str, resume: Mapping[int, int], since_ms: float | None) -> list[TopicPartition]:
    meta = consumer.list_topics(timeout=5).topics.get(topic)
    partitions = sorted(meta.partitions) if meta is not None and meta.partitions else sorted(resume)
    starts = [TopicPartition(topic, p, resume[p] + 1) for p in partitions if p in resume]
    unseen = [TopicPartition(topic, p, int(since_ms)) for p in partitions if p not in resume]
    if unseen and since_ms is not None:
        found = consumer.offsets_for_times(unseen, timeout=10)
        starts += [tp for tp in found if tp.offset >= 0]  # -1: nothing stored since then
    return starts


def read_missed(
    settings: Settings, resume: Mapping[int, int], since_ms: float | None, first_live: Mapping[int, int]
) -> tuple[list[Frame], bool]:
    """Frames after each resume position (or since ``since_ms``) up to where live delivery took over.

    The flag is False when the gap could not be read whole (Kafka failed, or it took
    too long): the watcher then gets what was read and is asked to resume again.
    """
    from .consumer import CONSUMER_DEFAULTS

    config = {**CONSUMER_DEFAULTS, **settings.kafka_config(), "group.id": f"labkit-resume-{uuid.uuid4().hex[:8]}"}
    consumer = Consumer(config)
    frames: list[Frame] = []
    complete = False
    try:
        starts = _starts(consumer, settings.topic, resume, since_ms)
        if not starts:
            return frames, True
        consumer.assign(starts)
        pending = {tp.partition for tp in starts}
        began = last_seen = time.monotonic()
        while pending and time.monotonic() - began < LIMIT_S:
            msg = consumer.poll(0.05)
            if msg is None:
                if time.monotonic() - last_seen > IDLE_S:
                    pending.clear()
                continue
            last_seen = time.monotonic()
            if msg.error() is not None or msg.partition() not in pending:
                continue
            partition, offset, value = msg.partition(), msg.offset(), msg.value()
            record = parse_record(value)
            if record is not None:
                frame = delivered_frame(value, msg.topic(), partition, offset, msg.timestamp()[1], now_ms())
                frames.append((partition, offset, record.type, frame))
            live = first_live.get(partition)
            if live is not None and offset >= live - 1:
                pending.discard(partition)
        complete = not pending
    except KafkaException as exc:
        log.warning("could not read back what a resuming watcher missed: %s", exc)
    finally:
        consumer.close()
    return frames, complete
