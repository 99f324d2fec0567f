"""The sending side of each path: the labkit Sender over WebSocket, or a plain Kafka producer.

Both run an open-loop plan (:mod:`labkit.bench.load`) and report which events were
acknowledged, which were refused and why, and how long each ack took from the
event's scheduled time. The Kafka producer of the baseline has exactly the
producer service's librdkafka settings, so the baseline differs from the other
paths only by what they add: WebSocket, the services and the gateway; it writes
through the same :class:`labkit.kafka.Writer` as the producer service.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import websockets

from labkit.client import Sender
from labkit.events import Ack, Event, encode, now_ms
from labkit.kafka import Report, Writer
from labkit.settings import Settings
from labkit.bench.load import LoadPlan, SendStats, run_open_loop, split_id

__all__ = ["SendOutcome", "WebSocketLoad", "KafkaLoad"]


@dataclass
class SendOutcome:
    """What the sending side knows about one phase."""

    stats: SendStats
    acked: list[int] = field(default_factory=list)  # seqs Kafka acknowledged
    refused: Counter[str] = field(default_factory=Counter)  # error code -> events
    ack_latency_ms: list[float] = field(default_factory=list)  # ack arrival - scheduled time
    closed_because: str = ""  # the sender's connection closed during the phase


class WebSocketLoad:
    """A labkit Sender on one connection (to the gateway or to the producer's own port).

    A connection the producer closed (a frame too big, a restart) ends the phase: the
    events not sent count as refused (``connection_closed``), and the next phase opens
    a new connection.
    """

    def __init__(self, url: str, settings: Settings, api_key: str | None) -> None:
        self.url, self.settings, self.api_key = url, settings, api_key
        self.sender: Sender | None = None

    async def _connected(self) -> Sender:
        if self.sender is None or self.sender.ws is None or self.sender.ws.close_code is not None:
            if self.sender is not None:
                await self.sender.close()
            self.sender = Sender(self.url, settings=self.settings, api_key=self.api_key)
            await self.sender.__aenter__()
        return self.sender

    async def __aenter__(self) -> WebSocketLoad:
        await self._connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.sender is not None:
            await self.sender.close()

    async def send_now(self, events: list[Event]) -> None:
        """Send without keeping track (priming)."""
        for future in await (await self._connected()).submit(events):
            future.add_done_callback(_retrieve)

    async def run(self, plan: LoadPlan, *, max_batch: int, frame_interval_s: float, ack_timeout_s: float,
                  on_progress: Any = None) -> SendOutcome:
        sender = await self._connected()
        futures: list[asyncio.Future[Ack]] = []
        ack_latency: list[float] = []

        def on_reply(sent_at: float, future: asyncio.Future[Ack]) -> None:
            if not future.cancelled() and future.exception() is None:
                ack_latency.append(now_ms() - sent_at)

        async def send_batch(events: list[Event]) -> None:
            submitted = await sender.submit(events)
            for event, future in zip(events, submitted):
                future.add_done_callback(partial(on_reply, event.sent_at))
            futures.extend(submitted)

        outcome = SendOutcome(SendStats(), ack_latency_ms=ack_latency)
        try:
            outcome.stats = await run_open_loop(plan, send_batch, max_batch=max_batch, frame_interval_s=frame_interval_s,
                                                on_progress=on_progress)
        except websockets.ConnectionClosed as exc:
            outcome.stats.sent = len(futures)
            outcome.refused["connection_closed"] += plan.total - len(futures)
            outcome.closed_because = f"the producer closed the connection: {exc}"
        if futures:
            await asyncio.wait(futures, timeout=ack_timeout_s)
        for future in futures:
            if not future.done():
                outcome.refused["no_reply"] += 1
            elif future.exception() is not None:
                outcome.refused["connection_closed"] += 1
            elif future.result().ok:
                outcome.acked.append(split_id(future.result().ack or "")[1])
            else:
                outcome.refused[future.result().error or "unknown"] += 1
        return outcome


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a reply nobody waits for: keep asyncio from logging it as lost


class KafkaLoad:
    """The baseline's sender: the producer service's Kafka writer (:class:`labkit.kafka.Writer`), same settings."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.writer = Writer({**settings.kafka_config(), "client.id": "labkit-bench-baseline"}, self._on_reports,
                             name="bench-kafka-poll")
        self._outcome: SendOutcome | None = None

    async def __aenter__(self) -> KafkaLoad:
        self.writer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.writer.close(10)
        self.writer.kafka.close()  # else its threads outlive the phase's broker, retrying and logging

    def _on_reports(self, reports: list[Report]) -> None:
        # On the loop, as in the producer service, so acks are seen when they come.
        outcome, now = self._outcome, now_ms()
        if outcome is None:  # priming: nobody keeps track
            return
        for tag, err, _partition, _offset in reports:
            if tag is None:  # a priming event
                continue
            seq, sent_at = tag
            if err is None:
                outcome.acked.append(seq)
                outcome.ack_latency_ms.append(now - sent_at)
            else:
                outcome.refused[f"kafka_error: {err.name()}"] += 1

    async def send_now(self, events: list[Event]) -> None:
        """Send without keeping track (priming)."""
        for event in events:
            self.writer.produce(self.topic, b'%s,"received_at":%.3f}' % (encode(event)[:-1], now_ms()), event.key, None)

    async def run(self, plan: LoadPlan, *, max_batch: int, frame_interval_s: float, ack_timeout_s: float,
                  on_progress: Any = None) -> SendOutcome:
        outcome = self._outcome = SendOutcome(SendStats())
        produce, topic = self.writer.produce, self.topic

        async def send_batch(events: list[Event]) -> None:
            for event in events:
                # What the producer service writes: the event plus its arrival time.
                value = b'%s,"received_at":%.3f}' % (encode(event)[:-1], now_ms())
                tag = (split_id(event.id)[1], event.sent_at)
                while True:
                    try:
                        produce(topic, value, event.key, tag)
                        break
                    except BufferError:  # librdkafka's queue is full: wait, as the producer service does
                        await asyncio.sleep(0.002)

        outcome.stats = await run_open_loop(plan, send_batch, max_batch=max_batch, frame_interval_s=frame_interval_s,
                                            on_progress=on_progress)
        deadline = now_ms() + ack_timeout_s * 1000
        while len(outcome.acked) + sum(outcome.refused.values()) < outcome.stats.sent and now_ms() < deadline:
            await asyncio.sleep(0.01)
        missing = outcome.stats.sent - len(outcome.acked) - sum(outcome.refused.values())
        if missing > 0:
            outcome.refused["no_reply"] += missing
        return outcome
