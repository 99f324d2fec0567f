"""The producer service: events in over WebSocket, into Kafka, acks back.

Each text frame holds one event object or a JSON array of them. Every event is
validated, stamped with ``received_at`` (and an ``id`` when it has none), and
written to the topic with key ``key`` (else ``type``). The sender gets one reply
per event: ``{"ack": id, "partition": P, "offset": O}`` once Kafka has
acknowledged it, or ``{"error": code, "id": id, "detail": ...}``.

librdkafka runs its own threads; a poll thread (:class:`labkit.kafka.Writer`) collects delivery reports and
hands them to the event loop in batches, so the loop never blocks on Kafka. When
librdkafka's queue is full the handler stops reading the socket until there is
room again (backpressure) instead of dropping events. The Kafka side, and how a
failed Kafka producer is replaced, is in :mod:`labkit.services.producer_flights`; each
sender's replies (bounded), and closing only after them, in
:mod:`labkit.services.producer_replies`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import Counter
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from labkit.events import UNSET, Event, EventError, FrameError, encode, new_id, now_ms, parse_frame
from labkit.kafka import PRODUCER_DEFAULTS
from labkit.services.producer_flights import Flights
from labkit.services.producer_replies import Replies
from labkit.services.serving import (
    BrokerProbe,
    ServiceMetrics,
    configure_logging,
    make_process_request,
    run_on_event_loop,
    run_service,
)
from labkit.services.wire import InputRefused, SenderConnection
from labkit.settings import Settings

__all__ = ["ProducerService", "RateLimiter", "main"]

log = logging.getLogger("labkit.services.producer")

# Replies owed to one sender (events taken, replies not yet written) before its frames stop being
# read: about 1.5 MB of replies at most per sender (settings.sender_reply_backlog once it exists).


class RateLimiter:
    """A token bucket: ``rate`` messages per second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ProducerService:
    """One Kafka producer (replaced when it fails) shared by every sender connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.backlog_full = Counter(
            "labkit_sender_backlog_full",
            "Times the producer stopped reading a sender's frames because its replies were not being read",
            registry=self.metrics.registry,
        )
        self.refused_frames = Counter(
            "labkit_refused_frames",
            "Connections closed for a frame too big (1009) or not UTF-8 (1007), after their replies",
            ["close_code"],
            registry=self.metrics.registry,
        )
        self.reply_limit = settings.sender_reply_backlog
        self.reply_stall_s = settings.sender_reply_stall_s or settings.ping_timeout_s
        self.probe = BrokerProbe(settings)
        self.flights = Flights(
            {**PRODUCER_DEFAULTS, **settings.kafka_config()},
            self.metrics,
            broker_up=lambda: self.probe.state == "up",
            saw_broker=self.probe.saw_broker,
        )
        self.senders = 0

    @staticmethod
    def _record(event: Event) -> tuple[bytes, str, str, float]:
        """What goes to Kafka for an event: its value (the event, its id, its arrival time), key, id and
        arrival time."""
        if event.id is UNSET:
            event.id = new_id()
        received_at = now_ms()
        value = b"%s,\"received_at\":%.3f}" % (encode(event)[:-1], received_at)
        return value, event.key if event.key is not UNSET else event.type, event.id, received_at

    def _produce(self, record: tuple[bytes, str, str, float], replies: Replies) -> bool | None:
        """Hand one record to Kafka: True when taken; False when refused (its error reply is given);
        None when librdkafka's queue is full (try again)."""
        value, key, event_id, received_at = record
        try:
            self.flights.produce(self.settings.topic, value, key, replies, event_id, received_at)
        except BufferError:
            return None
        except KafkaException as exc:
            self.metrics.errors.labels("kafka_error").inc()
            replies.reply(EventError("kafka_error", exc.args[0].str(), event_id).frame())
            return False
        replies.promise()
        return True

    def _refuse(self, replies: Replies, error: EventError) -> None:
        self.metrics.errors.labels(error.code).inc()
        replies.reply(error.frame())

    def _refuse_frame(self, replies: Replies, message: str | bytes, error: EventError) -> None:
        """Refuse every event of a frame, one reply per event id, so a sender knows which were not taken."""
        try:
            items = list(parse_frame(message, self.settings.max_batch))
        except FrameError:
            items = []
        ids = [item.id if item.id is not UNSET else None for item in items]
        for event_id in ids or [None]:
            self._refuse(replies, EventError(error.code, error.detail, event_id))

    async def handle(self, ws: SenderConnection) -> None:
        replies = Replies(ws, self.reply_limit, self.reply_stall_s)
        limiter = RateLimiter(self.settings.sender_rate_limit)
        self.senders += 1
        self.metrics.clients.inc()
        try:
            while True:
                if replies.owed >= replies.limit:
                    self.backlog_full.inc()
                    if not await replies.wait_for_room():
                        self.metrics.overflows.inc()
                        await ws.close(CloseCode.TRY_AGAIN_LATER, "replies not read: read them, then send more")
                        return
                try:
                    message = await ws.recv()
                except InputRefused as refused:
                    await self._close_after_replies(ws, replies, refused)
                    return
                if not limiter.allow():
                    self._refuse_frame(replies, message, RATE_LIMITED(self.settings.sender_rate_limit))
                elif isinstance(message, bytes):
                    self._refuse(replies, BINARY_FRAME)
                else:
                    await self._read(message, replies)
                    self.flights.take_reports()  # acks of earlier frames, in this wake-up
                replies.flush()  # this frame's refusals (its acks come from Kafka)
        except ConnectionClosed:
            pass
        finally:
            self.senders -= 1
            self.metrics.clients.dec()
            await replies.stop()

    async def _read(self, message: str, replies: Replies) -> None:
        taken = 0
        try:
            for item in parse_frame(message, self.settings.max_batch):
                if isinstance(item, EventError):
                    self._refuse(replies, item)
                    continue
                record = self._record(item)
                # librdkafka's queue is full: stop reading this socket until it drains. Nothing signals room (the
                # poll thread's delivery reports, a purge and a new producer all make it): poll for it.
                while (done := self._produce(record, replies)) is None:  # noqa: ASYNC110 - a deliberate poll
                    await asyncio.sleep(0.002)
                taken += done
        except FrameError as exc:
            self._refuse(replies, exc.error)
        finally:
            if taken:  # once per frame: a counter's lock per event showed in profiles
                self.metrics.events_in.inc(taken)

    async def _close_after_replies(self, ws: SenderConnection, replies: Replies, refused: InputRefused) -> None:
        """Every event taken before the refused frame gets its reply (Kafka's verdict comes within its timeout)."""
        self.refused_frames.labels(str(refused.close.code)).inc()
        if not await replies.settle(self.flights.message_timeout_s + self.reply_stall_s):
            log.warning("closing a sender (%s) with %d replies not written", refused, replies.owed)
        await ws.close_after_replies()

    def health(self) -> dict[str, Any]:
        broker, producer = self.probe.state, self.flights.state()
        return {
            "service": "producer",
            # ok only when events can be stored now: the broker answers and the producer takes them.
            "status": "ok" if broker == "up" and producer == "ok" else "degraded",
            **self.probe.view(),
            "producer": producer,
            "topic": self.settings.topic,
            "senders": self.senders,
            "in_flight": self.flights.in_flight(),
        }

    async def started(self, _server: Any) -> None:
        self.flights.start()
        self.probe.start()

    async def stopping(self) -> None:
        await self.probe.stop()
        remaining = await self.flights.stop()
        if remaining:
            log.warning("%d events were not acknowledged by Kafka before shutdown", remaining)

    async def run(self) -> None:
        await run_service(
            "producer",
            self.settings,
            self.settings.producer_port,
            self.handle,
            make_process_request(self.health, self.metrics),
            started=self.started,
            stopping=self.stopping,
            max_size=self.settings.max_frame_bytes,
            create_connection=SenderConnection,
        )


BINARY_FRAME = EventError("binary_frame", "binary frames are not read: send events as JSON in text frames")


def RATE_LIMITED(rate: float) -> EventError:  # upper case: reads as the error it builds, like BINARY_FRAME
    return EventError(
        "rate_limited",
        f"over {rate:g} messages per second on this connection: slow down, or send events in batches (a JSON array)",
    )


def main(settings: Settings | None = None) -> None:
    """Run the producer in the foreground until SIGTERM (``python -m labkit.services.producer``)."""
    configure_logging()
    settings = settings or Settings()
    run_on_event_loop(ProducerService(settings).run(), settings.event_loop)


if __name__ == "__main__":
    main()
