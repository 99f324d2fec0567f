"""Open-loop load, and the two senders that carry it: the labkit Sender over WebSocket, or a plain Kafka producer.

Event ``seq`` of a plan is due at ``start + seq / rate`` and carries that time as
``sent_at`` (epoch ms). :mod:`labkit.pacing` hands the event loop whatever is due,
and the loop sends it in one frame, never waiting for replies. A system that stalls
makes the sending fall behind; the events sent late still carry their scheduled
time, so the stall shows in every latency instead of hiding (no coordinated omission).
Event ids are ``<tag>.<seq>``, so a receiver can sort arrivals by phase.

Both senders report which events were acknowledged, which were refused and why, and
how long each ack took from the event's scheduled time. The baseline's Kafka producer
writes through the producer service's own :class:`labkit.kafka.Writer` with the same
settings, so the baseline differs from the other paths only by what they add:
WebSocket, the services and the gateway.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import cached_property, partial

import websockets
from msgspec import UNSET

from labkit.client import Sender
from labkit.events import Ack, Event, encode, now_ms
from labkit.kafka import Report, Writer
from labkit.pacing import Schedule, due_ranges
from labkit.settings import Settings
from labkit.waiting import until

__all__ = ["LoadPlan", "SendOutcome", "run_open_loop", "WebSocketLoad", "KafkaLoad", "BENCH_TYPE", "split_id"]

BENCH_TYPE = "bench"


def split_id(event_id: str) -> tuple[str, int]:
    """``"<tag>.<seq>"`` -> (tag, seq); (id, -1) for an id that is not the bench's."""
    tag, _, seq = event_id.rpartition(".")
    return (tag, int(seq)) if tag and seq.isdigit() else (event_id, -1)


@dataclass(frozen=True)
class LoadPlan:
    """``rate`` events per second for ``duration_s``, from ``start_ms`` (epoch ms)."""

    tag: str
    rate: float
    duration_s: float
    start_ms: float
    keys: int = 16

    @property
    def total(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    @cached_property
    def schedule(self) -> Schedule:
        return Schedule(self.rate, self.total, self.start_ms)

    def event(self, seq: int) -> Event:
        return Event(type=BENCH_TYPE, value=seq, id=f"{self.tag}.{seq}", key=f"k{seq % self.keys}",
                     sent_at=round(self.schedule.due_at(seq), 3))


@dataclass
class SendOutcome:
    """What the sending side knows about one phase, and how well it kept its schedule (the lag: the client's own
    share of every latency)."""

    sent: int = 0
    frames: int = 0
    lag_mean_ms: float = 0.0  # mean time from an event's scheduled time to its frame leaving
    lag_max_ms: float = 0.0
    acked: list[int] = field(default_factory=list)  # seqs Kafka acknowledged
    refused: Counter[str] = field(default_factory=Counter)  # error code -> events
    ack_latency_ms: list[float] = field(default_factory=list)  # ack arrival - scheduled time
    closed_because: str = ""  # the sender's connection closed during the phase


async def run_open_loop(plan: LoadPlan, send_batch: Callable[[list[Event]], Awaitable[None]], *, max_batch: int,
                        frame_interval_s: float, on_progress: Callable[[int], None] | None = None,
                        outcome: SendOutcome | None = None) -> SendOutcome:
    """Send the plan's events when due; ``send_batch`` gets the events due together (one frame)."""
    outcome = outcome or SendOutcome()
    lag_total, due_at = 0.0, plan.schedule.due_at
    async with aclosing(due_ranges(plan.schedule, frame_interval_s=frame_interval_s)) as ranges:
        async for first, end in ranges:
            for start in range(first, end, max_batch):
                stop_at = min(end, start + max_batch)
                now = now_ms()
                lag_total += (stop_at - start) * (now - (due_at(start) + due_at(stop_at - 1)) / 2)
                outcome.lag_max_ms = max(outcome.lag_max_ms, now - due_at(start))
                await send_batch([plan.event(seq) for seq in range(start, stop_at)])
                outcome.frames += 1
            outcome.sent = end
            if on_progress is not None:
                on_progress(end)
    outcome.lag_mean_ms = lag_total / outcome.sent if outcome.sent else 0.0
    return outcome


class WebSocketLoad:
    """A labkit Sender on one connection (to the gateway or to the producer's own port).

    A connection the producer closed (a frame too big, a restart) ends the phase: the events not sent count as
    refused (``connection_closed``). Each phase opens a sender of its own.
    """

    def __init__(self, url: str, settings: Settings, api_key: str | None) -> None:
        self.sender = Sender(url, settings=settings, api_key=api_key)

    async def __aenter__(self) -> WebSocketLoad:
        await self.sender.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sender.close()

    async def send_now(self, events: list[Event]) -> None:
        """Send without keeping track (priming)."""
        for future in await self.sender.submit(events):
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody waits: not "never retrieved"

    async def run(self, plan: LoadPlan, ack_timeout_s: float, **pacing: object) -> SendOutcome:
        sender, outcome, futures = self.sender, SendOutcome(), []

        def on_reply(future: asyncio.Future[Ack], sent_at: float) -> None:
            if not future.cancelled() and future.exception() is None:
                outcome.ack_latency_ms.append(now_ms() - sent_at)

        async def send_batch(events: list[Event]) -> None:
            for event, future in zip(events, submitted := await sender.submit(events), strict=True):
                if event.sent_at is not UNSET:  # the plan's events all carry it
                    future.add_done_callback(partial(on_reply, sent_at=event.sent_at))
            futures.extend(submitted)

        try:
            await run_open_loop(plan, send_batch, outcome=outcome, **pacing)  # type: ignore[arg-type]
        except websockets.ConnectionClosed as exc:
            outcome.sent = len(futures)
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


class KafkaLoad:
    """The baseline's sender: the producer service's Kafka writer (:class:`labkit.kafka.Writer`), same settings."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.writer = Writer({**settings.kafka_config(), "client.id": "labkit-bench-baseline"}, self._on_reports,
                             name="bench-kafka-poll")
        self.outcome: SendOutcome | None = None  # None while priming: nobody keeps track

    async def __aenter__(self) -> KafkaLoad:
        self.writer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.writer.close(10)
        self.writer.kafka.close()  # else its threads outlive the phase's broker, retrying and logging

    def _on_reports(self, reports: list[Report]) -> None:
        # On the loop, as in the producer service, so acks are seen when they come.
        outcome, now = self.outcome, now_ms()
        for tag, err, _partition, _offset in reports:
            if outcome is None or tag is None:
                continue
            if err is None:
                outcome.acked.append(tag[0])
                outcome.ack_latency_ms.append(now - tag[1])
            else:
                outcome.refused[f"kafka_error: {err.name()}"] += 1

    async def send_now(self, events: list[Event], tracked: bool = False) -> None:
        """Write what the producer service writes, the event plus its arrival time; ``tracked``: count the acks."""
        for event in events:
            value = b'%s,"received_at":%.3f}' % (encode(event)[:-1], now_ms())
            tag = (split_id(event.id)[1], event.sent_at) if tracked and event.id is not UNSET else None
            key = event.key if event.key is not UNSET else event.type  # as the producer service keys it
            while True:
                try:
                    self.writer.produce(self.topic, value, key, tag)
                    break
                except BufferError:  # librdkafka's queue is full: wait, as the producer service does
                    await asyncio.sleep(0.002)

    async def run(self, plan: LoadPlan, ack_timeout_s: float, **pacing: object) -> SendOutcome:
        outcome = self.outcome = SendOutcome()
        await run_open_loop(plan, lambda events: self.send_now(events, tracked=True), outcome=outcome,
                            **pacing)  # type: ignore[arg-type]

        def answered() -> int:
            return len(outcome.acked) + sum(outcome.refused.values())

        try:
            await until(lambda: answered() >= outcome.sent, "every ack from Kafka", ack_timeout_s)
        except TimeoutError:
            outcome.refused["no_reply"] += outcome.sent - answered()
        return outcome
