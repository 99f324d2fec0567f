"""The producer service: events in over WebSocket, into Kafka, acks back.

Each text frame holds one event object or a JSON array of them. Every event is
validated, stamped with ``received_at`` (and an ``id`` when it has none), and
written to the topic with key ``key`` (else ``type``). The sender gets one reply
per event: ``{"ack": id, "partition": P, "offset": O}`` once Kafka has
acknowledged it, or ``{"error": code, "id": id, "detail": ...}``.

librdkafka runs its own threads; a poll thread collects delivery reports and
hands them to the event loop in batches, so the loop never blocks on Kafka. When
librdkafka's queue is full the handler stops reading the socket until there is
room again (backpressure) instead of dropping events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .events import UNSET, Event, EventError, FrameError, encode, new_id, now_ms, parse_frame
from .service import (
    BrokerProbe, ServiceMetrics, can_write_now, configure_logging, make_process_request, run_service, text_frame,
)
from .settings import Settings

__all__ = ["ProducerService", "RateLimiter", "main"]

log = logging.getLogger("labkit.producer")

# Latency first: a lab shows one event at a time, so batch only what arrives together.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "client.id": "labkit-producer",
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 0,  # librdkafka still batches what queues up while a request is in flight
    "message.timeout.ms": 30_000,
    "queue.buffering.max.messages": 100_000,
}
RENEW_INTERVAL_S = 5.0


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
    """One Kafka producer shared by every sender connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.config = {**PRODUCER_DEFAULTS, **settings.kafka_config(), "error_cb": self._on_kafka_error}
        self.kafka = Producer(self.config)
        # Producers replaced after a fatal error, polled until their last reports are out.
        self.retiring: list[Producer] = []
        self.renewed_at = 0.0
        self.probe = BrokerProbe(settings)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.senders = 0
        # Delivery reports gathered by the poll thread, handed to the loop in one call.
        self._reports: deque[tuple[asyncio.Queue[bytes], str, float, KafkaError | None, int, int]] = deque()
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll_kafka, name="kafka-poll", daemon=True)

    # -- Kafka side (poll thread) -------------------------------------------------

    def _poll_kafka(self) -> None:
        assert self.loop is not None
        while not self._stopped.is_set():
            served = self.kafka.poll(0.05)
            for old in list(self.retiring):
                served += old.poll(0)
                if len(old) == 0:
                    self.retiring.remove(old)
            if served and self._reports:
                self.loop.call_soon_threadsafe(self._deliver_reports)

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("Kafka producer failed for good: %s", err.str())
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._renew_producer, err.str())

    def _renew_producer(self, why: str) -> None:
        """Start a new idempotent producer (a new producer id) in place of a stuck one.

        A broker that lost its state (Tansu keeps it in memory) no longer knows the
        producer's id and refuses its writes forever; events already queued on the old
        producer still get their error replies.
        """
        if time.monotonic() - self.renewed_at < RENEW_INTERVAL_S:
            return
        self.renewed_at = time.monotonic()
        log.warning("starting a new Kafka producer (%s)", why)
        self.retiring.append(self.kafka)
        self.kafka = Producer(self.config)

    def _on_delivery(
        self, outbox: asyncio.Queue[bytes], event_id: str, received_at: float, err: KafkaError | None, msg: Any
    ) -> None:
        self._reports.append((outbox, event_id, received_at, err, msg.partition(), msg.offset()))

    # -- event loop side ----------------------------------------------------------

    def _deliver_reports(self) -> None:
        now = now_ms()
        reports = self._reports
        metrics = self.metrics
        acked = 0
        while reports:
            outbox, event_id, received_at, err, partition, offset = reports.popleft()
            if err is None:
                outbox.put_nowait(encode({"ack": event_id, "partition": partition, "offset": offset}))
                acked += 1
                metrics.latency.observe((now - received_at) / 1000.0)
                self.probe.saw_broker()
            else:
                metrics.errors.labels("kafka_error").inc()
                outbox.put_nowait(EventError("kafka_error", f"Kafka did not store the event: {err.str()}", event_id).frame())
                if err.code() == KafkaError._MSG_TIMED_OUT and self.probe.state == "up":
                    # The broker answers yet takes nothing from this producer: it forgot us.
                    self._renew_producer(err.str())
        if acked:
            metrics.events_out.inc(acked)  # once per batch: a counter's lock per event showed in profiles

    async def _produce(self, event: Event, outbox: asyncio.Queue[bytes]) -> None:
        if event.id is UNSET:
            event.id = new_id()
        received_at = now_ms()
        value = b"%s,\"received_at\":%.3f}" % (encode(event)[:-1], received_at)
        key = event.key if event.key is not UNSET else event.type
        report = partial(self._on_delivery, outbox, event.id, received_at)
        while True:
            try:
                self.kafka.produce(self.settings.topic, value, key, on_delivery=report)
                self.metrics.events_in.inc()
                return
            except BufferError:
                # librdkafka's queue is full: stop reading this socket until it drains.
                await asyncio.sleep(0.002)
            except KafkaException as exc:
                self.metrics.errors.labels("kafka_error").inc()
                outbox.put_nowait(EventError("kafka_error", exc.args[0].str(), event.id).frame())
                return

    def _refuse(self, outbox: asyncio.Queue[bytes], error: EventError) -> None:
        self.metrics.errors.labels(error.code).inc()
        outbox.put_nowait(error.frame())

    def _refuse_frame(self, outbox: asyncio.Queue[bytes], message: str | bytes, error: EventError) -> None:
        """Refuse every event of a frame, one reply per event id, so a sender knows which were not taken."""
        try:
            items = list(parse_frame(message, self.settings.max_batch))
        except FrameError:
            items = []
        ids = [item.id if item.id is not UNSET else None for item in items]
        for event_id in ids or [None]:
            self._refuse(outbox, EventError(error.code, error.detail, event_id))

    async def handle(self, ws: ServerConnection) -> None:
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        writer = asyncio.create_task(self._write_replies(ws, outbox))
        limiter = RateLimiter(self.settings.sender_rate_limit)
        self.senders += 1
        self.metrics.clients.inc()
        try:
            async for message in ws:
                if not limiter.allow():
                    self._refuse_frame(outbox, message, RATE_LIMITED(self.settings.sender_rate_limit))
                    continue
                if isinstance(message, bytes):
                    self._refuse(outbox, BINARY_FRAME)
                    continue
                try:
                    for item in parse_frame(message, self.settings.max_batch):
                        if isinstance(item, EventError):
                            self._refuse(outbox, item)
                        else:
                            await self._produce(item, outbox)
                except FrameError as exc:
                    self._refuse(outbox, exc.error)
        except ConnectionClosed:
            pass
        finally:
            self.senders -= 1
            self.metrics.clients.dec()
            # Let acks already on their way reach a sender that is still listening.
            await asyncio.sleep(0)
            writer.cancel()

    @staticmethod
    async def _write_replies(ws: ServerConnection, outbox: asyncio.Queue[bytes]) -> None:
        """Send the replies in order, one frame each; all the replies ready at once go in one socket write.

        A write per reply was a third of the producer's CPU at 10,000 events/s (py-spy).
        """
        try:
            while True:
                replies = [await outbox.get()]
                while not outbox.empty():
                    replies.append(outbox.get_nowait())
                if can_write_now(ws):
                    ws.transport.write(b"".join(map(text_frame, replies)))
                    continue
                for reply in replies:  # a slow reader, or a closing connection: websockets waits for it
                    await ws.send(reply, text=True)
        except ConnectionClosed:
            pass

    def health(self) -> dict[str, Any]:
        return {
            "service": "producer",
            "status": "ok",
            "broker": self.probe.state,
            "topic": self.settings.topic,
            "senders": self.senders,
            "in_flight": len(self.kafka) + sum(len(old) for old in self.retiring),
        }

    async def started(self, _server: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self._poller.start()
        self.probe.start()

    async def stopping(self) -> None:
        await self.probe.stop()
        remaining = await asyncio.to_thread(self.kafka.flush, 10)
        self._stopped.set()
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
        )


BINARY_FRAME = EventError("binary_frame", "binary frames are not read: send events as JSON in text frames")


def RATE_LIMITED(rate: float) -> EventError:  # noqa: N802 - reads as the error it builds
    return EventError(
        "rate_limited",
        f"over {rate:g} messages per second on this connection: slow down, or send events in batches (a JSON array)",
    )


def main(settings: Settings | None = None) -> None:
    """Run the producer in the foreground until SIGTERM (``python -m labkit.producer``)."""
    configure_logging()
    asyncio.run(ProducerService(settings or Settings()).run())


if __name__ == "__main__":
    main()
