"""Reading back from Kafka what a resuming watcher missed.

A watcher that reconnects says where it stopped: the last offset it saw per
partition, and since when it was connected (for partitions it saw nothing on).
The consumer registers it for live events at once, then reads the gap from Kafka
with a short-lived consumer of its own, in a thread. Reading stops per partition
where the watcher's live queue begins, or where the broker says the partition ends; the
watcher skips any offset it already sent, so the two overlap without duplicates.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from .events import delivered_frame, now_ms, parse_record
from .kafka import CONSUMER_DEFAULTS, TailReader
from .settings import Settings
from .watchers import Frame

__all__ = ["read_missed"]

log = logging.getLogger("labkit.consumer")

LIMIT_S = 30.0  # a gap that takes longer is cut short; the watcher is asked to resume again


def _starts(consumer: Consumer, topic: str, resume: Mapping[int, int], since_ms: float | None) -> dict[int, int]:
    """Where to read back from, per partition: after the resume offset, or from ``since_ms``.

    A resume offset at or past the partition's end (a broker whose log restarted, or a
    made-up offset) reads from the start of what the partition holds now.
    """
    meta = consumer.list_topics(timeout=5).topics.get(topic)
    partitions = sorted(meta.partitions) if meta is not None and meta.partitions else sorted(resume)
    starts: dict[int, int] = {}
    for p in partitions:
        if p not in resume:
            continue
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
        after = resume[p] + 1
        starts[p] = after if low <= after <= high else low
    unseen = [TopicPartition(topic, p, int(since_ms)) for p in partitions if p not in resume and since_ms is not None]
    if unseen:
        found = consumer.offsets_for_times(unseen, timeout=10)
        starts.update({tp.partition: tp.offset for tp in found if tp.offset >= 0})  # -1: nothing stored since then
    return starts


def read_missed(
    settings: Settings, resume: Mapping[int, int], since_ms: float | None, first_live: Mapping[int, int]
) -> tuple[list[Frame], bool, dict[int, int]]:
    """Frames after each resume position (or since ``since_ms``) up to where live delivery took over.

    A partition is read when its reading reaches the watcher's first live offset, or the
    broker says it is read to its end (an EOF): never because the broker was slow. The
    flag is False when the gap could not be read whole (Kafka failed, or it took longer
    than LIMIT_S): the watcher then gets what was read and is asked to resume again.
    The mapping gives, per resumed partition, the offset the watcher counts as sent:
    its resume offset, or less where that offset lies outside the log.
    """
    config = {**CONSUMER_DEFAULTS, **settings.kafka_config(), "group.id": f"labkit-resume-{uuid.uuid4().hex[:8]}"}
    reader = TailReader(config, pause_when_idle=False)
    frames: list[Frame] = []
    complete = False
    sent_upto = dict(resume)
    try:
        starts = _starts(reader.consumer, settings.topic, resume, since_ms)
        sent_upto.update({p: starts[p] - 1 for p in resume if p in starts})
        if not starts:
            return frames, True, sent_upto
        reader.assign(settings.topic, starts)
        pending = set(starts)
        began = time.monotonic()
        while pending and time.monotonic() - began < LIMIT_S:
            for msg in reader.read(0.1):
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
            pending -= reader.at_end
        complete = not pending
    except KafkaException as exc:
        log.warning("could not read back what a resuming watcher missed: %s", exc)
    finally:
        reader.close()
    return frames, complete, sent_upto
