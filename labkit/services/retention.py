"""A bounded topic: keep the most recent events per partition, delete the rest with DeleteRecords.

A lab runs for hours and the embedded brokers keep records in memory, so the
consumer service trims the topic every few seconds: to the last
``retain_events`` records per partition, and to ``retain_minutes`` when set.
A watcher that resumes from before what is kept gets what remains (the read-back
starts at the partition's new start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from labkit.settings import Settings

__all__ = ["trim_points", "trim_topic", "INTERVAL_S"]

log = logging.getLogger("labkit.services.retention")

INTERVAL_S = 5.0
TIMEOUT_S = 10.0


def trim_points(
    ends: Mapping[int, tuple[int, int]], retain_events: int, by_time: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Per partition, the offset before which records go, where anything goes at all.

    ``ends`` maps a partition to its (low, high) watermarks; ``by_time`` to the first
    offset young enough to keep (-1: every record is too old).
    """
    points = {}
    for partition, (low, high) in ends.items():
        keep_from = low
        if retain_events:
            keep_from = max(keep_from, high - retain_events)
        if by_time is not None and partition in by_time:
            young = by_time[partition]
            keep_from = max(keep_from, high if young < 0 else young)
        if keep_from > low:
            points[partition] = min(keep_from, high)
    return points


def _offsets(admin: AdminClient, topic: str, partitions: list[int], spec: OffsetSpec) -> dict[int, int]:
    futures = admin.list_offsets({TopicPartition(topic, p): spec for p in partitions}, request_timeout=TIMEOUT_S)
    return {tp.partition: future.result().offset for tp, future in futures.items()}


def trim_topic(admin: AdminClient, settings: Settings, partitions: list[int]) -> dict[int, int]:
    """Delete what the retention settings do not keep; returns, per partition, the offset it now starts at."""
    if not partitions or not (settings.retain_events or settings.retain_minutes):
        return {}
    topic = settings.topic
    lows = _offsets(admin, topic, partitions, OffsetSpec.earliest())
    highs = _offsets(admin, topic, partitions, OffsetSpec.latest())
    by_time = None
    if settings.retain_minutes:
        cutoff = int(time.time() * 1000 - settings.retain_minutes * 60_000)
        by_time = _offsets(admin, topic, partitions, OffsetSpec.for_timestamp(cutoff))
    points = trim_points({p: (lows[p], highs[p]) for p in partitions}, settings.retain_events, by_time)
    if not points:
        return {}
    futures = admin.delete_records([TopicPartition(topic, p, o) for p, o in points.items()], request_timeout=TIMEOUT_S)
    trimmed = {}
    for tp, future in futures.items():
        try:
            trimmed[tp.partition] = future.result().low_watermark
        except KafkaException as exc:
            log.warning("could not trim %s/%s: %s", topic, tp.partition, exc)
    return trimmed
