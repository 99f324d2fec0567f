"""The producer's Kafka side: librdkafka producers, the events they owe a reply for, and replacing a failed one.

librdkafka can fail a producer for good (a fatal error): a broker that lost its
state no longer knows the idempotent producer's id or sequence numbers. Every
later produce() on it fails, and poll() raises instead of calling error_cb. So:

- the poll thread survives any exception from librdkafka; a fatal one marks its
  producer failed;
- a failed producer, one that gets no ack for ``STALL_S`` while the broker
  answers, or one whose session the broker no longer knows (a delivery report of
  ``SESSION_LOST``: a broker that lost the tail of its log in a crash answers "out of
  order sequence number" to every later write of the old session) is replaced by a
  new one (a new producer id) at once; the old one is retired: purged if it failed,
  else polled until its last reports are out;
- every event handed to a producer is recorded in its ``Flight`` until its reply
  is given, so each event gets exactly one reply: its delivery report or, when a
  retired producer still owes reports past its deadline, an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import Counter

from labkit.events import EventError, encode, now_ms
from labkit.kafka import Report, Writer
from labkit.services.serving import ServiceMetrics

__all__ = ["Flight", "Flights", "ReplyTarget"]

log = logging.getLogger("labkit.services.producer")

# No ack for this long, with events waiting and the broker answering: the broker no longer takes
# this producer's writes (it forgot its id), so waiting for message.timeout.ms would only delay errors.
STALL_S = 5.0
# After purging a failed producer, how long it gets to hand back its reports before we answer for it.
PURGE_GRACE_S = 2.0
WATCH_INTERVAL_S = 0.25
# Replacements are at least this far apart, so a broker that fails every new producer at once
# costs one producer a second, not a busy loop.
MIN_RENEW_INTERVAL_S = 1.0
# Delivery errors that mean the broker no longer knows this producer's idempotent session. Measured
# 2026-12-03: after a noida-db kill -9 the old session got only OUT_OF_ORDER_SEQUENCE_NUMBER, 6,002
# errors and 0 acks over 50 s; none is fatal in librdkafka, so only a new session ends it.
SESSION_LOST = frozenset({
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.INVALID_PRODUCER_EPOCH,
})


class ReplyTarget(Protocol):
    """Where one sender's replies go (see :class:`labkit.services.producer_replies.Replies`)."""

    def put(self, frame: bytes) -> None: ...

    def flush(self) -> None: ...


class Flight:
    """One librdkafka producer (a :class:`labkit.kafka.Writer`) and the events it owes a reply for, by token."""

    def __init__(self, config: dict[str, Any], flights: Flights) -> None:
        self.writer = Writer(config, partial(flights._deliver, self), partial(flights._on_error, self))
        self.pending: dict[int, tuple[ReplyTarget, str, float]] = {}
        self.failed: str | None = None
        self.last_ack = time.monotonic()  # or its start
        self.deadline = float("inf")  # once retired: past it, what is still pending gets an error

    def stalled(self, now: float) -> bool:
        """Events wait and none was acked for STALL_S (the oldest waits at least that long too)."""
        if not self.pending or now - self.last_ack < STALL_S:
            return False
        _target, _event_id, received_at = next(iter(self.pending.values()))
        return now_ms() - received_at >= STALL_S * 1000


class Flights:
    """The current producer, and the retired ones still owing replies (each polled by its own Writer)."""

    def __init__(
        self,
        config: dict[str, Any],
        metrics: ServiceMetrics,
        broker_up: Callable[[], bool],
        saw_broker: Callable[[], None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.broker_up = broker_up
        self.saw_broker = saw_broker
        self.message_timeout_s = float(config.get("message.timeout.ms", 300_000)) / 1000.0
        self.renewals = Counter(
            "labkit_producer_renewals",
            "Kafka producers replaced because one failed for good or stopped getting acks",
            ["why"],
            registry=metrics.registry,
        )
        self.current = Flight(config, self)
        self.retiring: list[Flight] = []
        self.renewed_at = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tokens = itertools.count()
        self._watcher: asyncio.Task[None] | None = None

    def _on_error(self, flight: Flight, err: KafkaError) -> None:
        """librdkafka's error_cb, or an exception from poll() (in their threads): a fatal error fails the producer."""
        if not err.fatal():
            log.debug("Kafka producer: %s", err.str())  # librdkafka logs these itself
            return
        if flight.failed is None:
            flight.failed = err.str()
            log.error("Kafka producer failed for good: %s", err.str())
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the service is stopping
                self.loop.call_soon_threadsafe(self._replace_failed, flight)

    # -- event loop -------------------------------------------------------------------

    def produce(
        self, topic: str, value: bytes, key: str, target: ReplyTarget, event_id: str, received_at: float
    ) -> None:
        """Hand one event to the current producer; its reply goes to ``target`` later.

        Raises BufferError when librdkafka's queue is full, KafkaException when it refuses the event.
        """
        for attempt in (1, 2):
            if self.current.failed is not None:
                self._replace_failed(self.current)
            flight, token = self.current, next(self._tokens)
            try:
                flight.writer.produce(topic, value, key, token)
            except KafkaException as exc:
                if not exc.args[0].fatal() or attempt == 2:
                    raise
                flight.failed = flight.failed or exc.args[0].str()
                continue  # on a new producer
            flight.pending[token] = (target, event_id, received_at)
            return

    def _deliver(self, flight: Flight, reports: list[Report]) -> None:
        """A flight's delivery reports, on the loop: each event's reply to its sender."""
        now = now_ms()
        metrics = self.metrics
        acked = 0
        targets: dict[int, ReplyTarget] = {}
        for token, err, partition, offset in reports:
            entry = flight.pending.pop(token, None)
            if entry is None:
                continue  # already answered with an error when its producer was given up
            target, event_id, received_at = entry
            targets[id(target)] = target
            if err is None:
                target.put(encode({"ack": event_id, "partition": partition, "offset": offset}))
                acked += 1
                metrics.latency.observe((now - received_at) / 1000.0)
                flight.last_ack = time.monotonic()
                continue
            metrics.errors.labels("kafka_error").inc()
            target.put(EventError("kafka_error", f"Kafka did not store the event: {err.str()}", event_id).frame())
            if flight is not self.current:
                continue
            if err.code() in SESSION_LOST:
                self._replace("session_lost", f"the broker no longer knows this producer's session: {err.str()}")
            elif err.code() == KafkaError._MSG_TIMED_OUT and self.broker_up():
                self._replace("timed_out", "the broker answers yet an event timed out: it no longer takes our writes")
        for target in targets.values():  # each sender's replies of this batch in one write
            target.flush()
        if acked:
            metrics.events_out.inc(acked)  # once per batch: a counter's lock per event showed in profiles
            self.saw_broker()

    def _replace_failed(self, flight: Flight) -> None:
        if flight is self.current:
            self._replace("fatal", f"the producer failed for good: {flight.failed}")

    def _replace(self, why: str, detail: str) -> None:
        """Start a new idempotent producer (a new producer id) and retire the current one."""
        now = time.monotonic()
        if now - self.renewed_at < MIN_RENEW_INTERVAL_S:
            return  # the watch task tries again
        try:
            fresh = Flight(self.config, self)
            fresh.writer.start()
        except Exception:
            log.exception("could not start a new Kafka producer")
            return
        self.renewed_at = now
        self.renewals.labels(why).inc()
        log.warning("starting a new Kafka producer: %s", detail)
        old, self.current = self.current, fresh
        if old.failed is not None:
            # Nothing on a failed producer will be sent: all its events get their error replies now.
            old.writer.purge(in_flight=True)
            old.deadline = now + PURGE_GRACE_S
        else:
            # Events still queued on it would only time out; those in flight get Kafka's verdict.
            old.writer.purge(in_flight=False)
            old.deadline = now + self.message_timeout_s + PURGE_GRACE_S
        self.retiring.append(old)

    def _settle_retired(self) -> None:
        """Drop retired producers that owe nothing; answer for those past their deadline."""
        now = time.monotonic()
        for old in list(self.retiring):
            old.writer.take_reports()
            if len(old.writer) and now < old.deadline:
                continue
            for target, event_id, _received_at in old.pending.values():
                self.metrics.errors.labels("kafka_error").inc()
                detail = f"Kafka did not confirm the event before its producer was replaced ({old.failed or 'stalled'})"
                target.put(EventError("kafka_error", detail, event_id).frame())
                target.flush()
            old.pending.clear()
            old.writer.purge(in_flight=True)
            old.writer.stop()
            self.retiring.remove(old)

    async def _watch(self) -> None:
        while True:
            try:
                if self.current.failed is not None:
                    self._replace_failed(self.current)
                elif self.current.stalled(time.monotonic()) and self.broker_up():
                    self._replace("stalled", f"no ack for {STALL_S:g} s although the broker answers")
                self._settle_retired()
            except Exception:  # the watch must go on: it is what answers for retired producers
                log.exception("watching the Kafka producers failed")
            await asyncio.sleep(WATCH_INTERVAL_S)

    # -- state and lifecycle ----------------------------------------------------------

    def state(self) -> str:
        """``ok``, ``failed`` (a fatal error, until replaced) or ``stalled`` (no ack while events wait)."""
        if self.current.failed is not None:
            return "failed"
        return "stalled" if self.current.stalled(time.monotonic()) else "ok"

    def take_reports(self) -> None:
        """Poll the current producer now (the loop is awake anyway): acks go out without a wake-up of their own."""
        self.current.writer.take_reports()

    def in_flight(self) -> int:
        return len(self.current.writer) + sum(len(old.writer) for old in self.retiring)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.current.writer.start()
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self, flush_s: float = 10.0) -> int:
        """Flush the current producer; returns how many events it could not deliver."""
        if self._watcher is not None:
            self._watcher.cancel()
        for old in self.retiring:
            old.writer.stop()
        return await self.current.writer.close(flush_s)
