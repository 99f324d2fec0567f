"""What the bench and its receiver processes say to each other (JSON lines).

Kept apart from :mod:`labkit.bench.receiver`, which runs as ``python -m`` and so
must not be imported by the bench itself.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["ReceiverSpec", "ConnectionReport", "TagReport"]


class ReceiverSpec(msgspec.Struct):
    kind: Literal["websocket", "kafka"]
    connections: int = 1
    url: str = ""
    types: list[str] = []
    kafka_config: dict[str, object] = {}
    pause_when_idle: bool = True  # as the consumer service reads: paused only on a broker that does not long-poll
    topic: str = ""
    open_concurrency: int = 64


class ConnectionReport(msgspec.Struct):
    seqs: list[int]
    latency_ms: list[float]


class TagReport(msgspec.Struct):
    tag: str
    connections: list[ConnectionReport]
    # From the first connection only: seq, sent_at, received_at, kafka_ts, delivered_at, arrival.
    stamps: list[tuple[int, float, float, float, float, float]]
    closed: list[str]  # connections that ended, and why
