"""Reading back from Kafka what a resuming watcher missed.

A watcher that reconnects says where it stopped: the last offset it saw per
partition, and since when it was connected (for partitions it saw nothing on).
The consumer registers it for live events at once, then reads the gap from Kafka
with a short-lived consumer of its own, in a thread, and streams it to the
watcher in chunks through a small bounded queue. Reading stops per partition
where the watcher's live queue begins, or where the broker says the partition ends; the
watcher skips any offset it already sent, so the two overlap without duplicates.

Memory. A read-back holds at most its Kafka consumer's prefetch (``READ_BACK_CONFIG``)
and ``MISSED_CHUNKS`` chunks of frames, and stops as soon as its watcher leaves. Measured
on noida-db, a consumer at 74 MB idle, 4 rounds of 4 whole-log read-backs (19,000 to
27,000 events of 1 KB) took it to 142, 228, 291 and 356 MB, never given back: freed
memory stayed in glibc's per-thread malloc arenas, and each read-back's consumer could
prefetch librdkafka's default 64 MB. With 2 arenas (:func:`limit_arenas`), a 2 MB
prefetch and :func:`give_back_memory` after each read-back: 76, 75, 75, 76 MB.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import time
import uuid
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from labkit.events import now_ms
from labkit.kafka import CONSUMER_DEFAULTS, TailReader, position
from labkit.services.fanout import Delivery, delivery_of
from labkit.services.watchers import Recovery
from labkit.settings import Settings

__all__ = ["read_missed", "give_back_memory", "limit_arenas", "READ_BACK_CONFIG"]

log = logging.getLogger("labkit.services.consumer")

LIMIT_S = 30.0  # a gap that takes longer is cut short; the watcher is asked to resume again

#: librdkafka's prefetch for one read-back: the watcher reads it as fast as its socket lets it,
#: so more than a few fetches ahead only holds memory (the default allows 64 MB per consumer).
READ_BACK_CONFIG = {"queued.max.messages.kbytes": 2048, "queued.min.messages": 1000}


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: its allocator gives memory back by itself, or not at all
        return None


_TRIM = _malloc_trim()
M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_arenas(count: int = 2) -> None:
    """Let glibc keep at most ``count`` malloc arenas (its default: 8 per core), before the read-back threads start.

    Each thread that allocates may get an arena of its own, and memory freed into it stays there,
    fragmented between what is still held: fewer arenas, less kept.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator has no such setting
        ctypes.CDLL(name).mallopt(M_ARENA_MAX, count)


def give_back_memory() -> None:
    """Return the allocator's free pages to the system (glibc's malloc_trim; nothing elsewhere).

    librdkafka and the read-back threads allocate from glibc's per-thread arenas, which keep
    freed memory for reuse: without this, RSS stays at its peak after the read-backs end.
    """
    if _TRIM is not None:
        _TRIM(0)


def _starts(
    consumer: Consumer, topic: str, resume: Mapping[int, int], since_ms: float | None
) -> tuple[dict[int, int], list[str]]:
    """Where to read back from, per partition: after the resume offset, or from ``since_ms``; and what is lost.

    A resume offset past the partition's end (a broker whose log restarted, or a made-up
    offset) reads from the start of what the partition holds now; so does one before
    that start (trimmed by retention). Each such case is named in the list.
    """
    meta = consumer.list_topics(timeout=5).topics.get(topic)
    partitions = sorted(meta.partitions) if meta is not None and meta.partitions else sorted(resume)
    starts: dict[int, int] = {}
    lost: list[str] = []
    unknown = sorted(set(resume) - set(partitions))
    if unknown:
        lost.append(f"the topic has no partition {', '.join(map(str, unknown))}: its partitions are "
                    f"{', '.join(map(str, partitions))}")
    for p in partitions:
        if p not in resume:
            continue
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
        after = resume[p] + 1
        starts[p] = after if low <= after <= high else low
        if after > high:
            lost.append(f"partition {p} ends at offset {high}, before the resume point {resume[p]}: its log restarted")
        elif after < low:
            lost.append(f"partition {p} now starts at offset {low}: events {after} to {low - 1} were trimmed")
    unseen = [TopicPartition(topic, p, int(since_ms)) for p in partitions if p not in resume and since_ms is not None]
    if unseen:
        found = consumer.offsets_for_times(unseen, timeout=10)
        starts.update({tp.partition: tp.offset for tp in found if tp.offset >= 0})  # -1: nothing stored since then
    return starts, lost


CHUNK = 500  # frames handed to the watcher at once
#: What read_missed hands over, in order: a Recovery, chunks of frames, and whether it read all.
Deliver = Callable[["Recovery | list[Delivery] | bool"], bool]


def read_missed(
    settings: Settings, resume: Mapping[int, int], since_ms: float | None, first_live: Mapping[int, int],
    deliver: Deliver, limit_s: float = LIMIT_S, known_loss: str | None = None, epoch: str = "",
) -> bool:
    """Stream the frames after each resume position (or since ``since_ms``) up to where live delivery took over.

    Runs in a thread. ``deliver`` gets, in order: a Recovery (the offsets the watcher counts
    as sent per resumed partition, its resume offset or less where that lies outside the
    log; and whether nothing was lost, else why: ``known_loss`` or what the watermarks
    show), chunks of frames, and finally True when the gap was read whole. It blocks while the watcher's
    queue of missed frames is full (a watcher that does not read holds only that much in
    memory) and returns False when the watcher is gone or too slow: reading stops.

    A partition is read when its reading reaches the watcher's first live offset, or the
    broker says it is read to its end (an EOF): never because the broker was slow. Past
    ``limit_s`` the gap counts as not read whole: the watcher is asked to resume again.
    """
    config = {**CONSUMER_DEFAULTS, **READ_BACK_CONFIG, **settings.kafka_reader_config(),
              "group.id": f"labkit-resume-{uuid.uuid4().hex[:8]}"}
    reader = TailReader(config, pause_when_idle=False)
    complete = False
    began = time.monotonic()
    try:
        starts, lost = _starts(reader.consumer, settings.topic, resume, since_ms)
        problems = [*([known_loss] if known_loss else []), *lost]
        floor = {**resume, **{p: starts[p] - 1 for p in resume if p in starts}}
        if not deliver(Recovery(floor, not problems, "; ".join(problems) or None)):
            return False
        if starts:
            reader.assign(settings.topic, starts)
        pending = set(starts)
        chunk: list[Delivery] = []
        while pending and time.monotonic() - began < limit_s:
            for msg in reader.read(0.1):
                if msg.error() is not None or msg.partition() not in pending:
                    continue
                partition, offset = position(msg)
                found = delivery_of(msg, now_ms(), epoch)
                if found is not None:
                    chunk.append(found[0])
                live = first_live.get(partition)
                if live is not None and offset >= live - 1:
                    pending.discard(partition)
            pending -= reader.at_end
            if len(chunk) >= CHUNK or (chunk and not pending):
                if not deliver(chunk):
                    return False
                chunk = []
        complete = not pending
    except KafkaException as exc:
        log.warning("could not read back what a resuming watcher missed: %s", exc)
    finally:
        reader.close()
        give_back_memory()
    deliver(complete)
    return complete
