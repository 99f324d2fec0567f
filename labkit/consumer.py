"""The consumer service: events out of Kafka, pushed over WebSocket to every watcher.

It is a fan-out service: it reads every partition of the topic with ``assign()``
and no consumer group, so every replica sees every event (two replicas in one
group would split the partitions between them and each watcher would see only
part of the stream).

A thread polls Kafka and hands batches of records to the event loop. There each
record is validated once (a record that is not a labkit event is counted and
skipped), its watcher frame is encoded once, and the same bytes go into the
bounded queue of every watcher whose filter matches. Each watcher has its own
writer task, so a slow watcher never delays the others. A watcher whose queue
overflows is disconnected with close code 1013 (try again later) and counted:
the service never drops an event silently from a stream it is still sending.

What a watcher may ask for (``types``, ``replay``, ``resume``) is in
:mod:`labkit.watchers`; reading back what a resuming watcher missed is in
:mod:`labkit.catchup`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from http import HTTPStatus
from typing import Any

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from .catchup import read_missed
from .events import delivered_frame, is_reserved, now_ms, parse_record
from .kafka import CONSUMER_DEFAULTS, TailReader
from .retention import INTERVAL_S as RETENTION_INTERVAL_S
from .retention import trim_topic
from .service import (
    BrokerProbe, ServiceMetrics, configure_logging, json_response, make_process_request, run_service, text_frame,
)
from .settings import Settings
from .watchers import Frame, Watcher, WatchOptions, parse_watch_query

__all__ = ["ConsumerService", "main"]

log = logging.getLogger("labkit.consumer")

# At start the consumer reads back this far, to fill the replay buffer.
REPLAY_LOOKBACK_MS = 10 * 60 * 1000


class ConsumerService:
    """One Kafka consumer, many watchers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.invalid_records = self.metrics.errors.labels("invalid_record")
        config = {**CONSUMER_DEFAULTS, **settings.kafka_config(), "group.id": f"labkit-fanout-{id(self):x}"}
        self.reader = TailReader(config)
        self.kafka = self.reader.consumer
        self.probe = BrokerProbe(settings)
        self.watchers: set[Watcher] = set()
        self.recent: deque[Frame] = deque(maxlen=settings.replay_buffer or 1)
        self.assigned: list[int] = []
        self.started_at_ms = now_ms()
        self.kept_from: dict[int, int] = {}  # per partition, where the topic starts after trimming
        self._retention: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._reader = threading.Thread(target=self._read_kafka, name="kafka-read", daemon=True)

    # -- Kafka side (reader thread) ---------------------------------------------

    def _assign(self) -> None:
        """Assign every partition, starting a little in the past to fill the replay buffer."""
        topic = self.settings.topic
        while not self._stopped.is_set():
            try:
                # All topics: naming one would let the broker auto-create it with its defaults.
                meta = self.kafka.list_topics(timeout=5).topics.get(topic)
                if meta is not None and meta.error is None and meta.partitions:
                    break
                log.info("waiting for topic %r to exist", topic)
            except KafkaException as exc:
                log.warning("waiting for the broker at %s: %s", self.settings.bootstrap_servers, exc)
            time.sleep(0.5)
        else:
            return
        since = int(self.started_at_ms) - REPLAY_LOOKBACK_MS
        wanted = [TopicPartition(topic, p, since) for p in sorted(meta.partitions)]
        try:
            starts = self.kafka.offsets_for_times(wanted, timeout=10)
        except KafkaException as exc:
            log.warning("could not look up recent offsets (%s); starting at the end", exc)
            starts = [TopicPartition(topic, tp.partition, OFFSET_END) for tp in wanted]
        self.reader.assign(topic, {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_END for tp in starts})
        self.assigned = self.reader.partitions
        log.info("reading %s partitions %s", topic, self.assigned)

    def _read_kafka(self) -> None:
        assert self.loop is not None
        self._assign()
        reader = self.reader
        while not self._stopped.is_set():
            batch = reader.read(0.1)  # returns as soon as one record is there
            if batch:
                self.loop.call_soon_threadsafe(self._dispatch, batch)

    # -- event loop side ---------------------------------------------------------

    def _dispatch(self, batch: list[Any]) -> None:
        now = now_ms()
        metrics = self.metrics
        sent = 0
        for msg in batch:
            error = msg.error()
            if error is not None:
                metrics.errors.labels("kafka_error").inc()
                log.warning("Kafka: %s", error.str())
                continue
            value = msg.value()
            record = parse_record(value)
            if record is None:
                self.invalid_records.inc()
                log.warning("skipped a record that is not a labkit event at %s/%s@%s", msg.topic(), msg.partition(), msg.offset())
                continue
            metrics.events_in.inc()
            self.probe.saw_broker()
            kafka_ts = msg.timestamp()[1]
            partition, offset = msg.partition(), msg.offset()
            frame = (partition, offset, record.type, delivered_frame(value, msg.topic(), partition, offset, kafka_ts, now))
            if not is_reserved(record.type):
                self.recent.append(frame)  # the stack's readiness probes are not replayed
            if kafka_ts < self.started_at_ms:
                continue  # read back at start for the replay buffer; not a live delivery
            metrics.latency.observe(max(0.0, now - record.received_at) / 1000.0)
            wire = None
            for watcher in tuple(self.watchers):
                if not watcher.wants(record.type):
                    continue
                if watcher.idle:
                    wire = wire or text_frame(frame[3])  # encoded once, the same bytes for every watcher
                    if watcher.send_now(frame, wire):
                        sent += 1
                        continue
                if not watcher.push(frame):
                    self._overflow(watcher)
        if sent:
            metrics.events_out.inc(sent)

    def _overflow(self, watcher: Watcher) -> None:
        if watcher.closed:  # already cut off earlier in this batch
            return
        self.metrics.overflows.inc()
        self.watchers.discard(watcher)
        watcher.closed = True
        watcher.ready.set()
        reason = f"too slow: more than {watcher.limit} events queued; reconnect to continue"
        asyncio.ensure_future(watcher.ws.close(CloseCode.TRY_AGAIN_LATER, reason))

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            connection.watch_options = parse_watch_query(request.path, self.settings.replay_buffer)  # type: ignore[attr-defined]
        except ValueError as exc:
            self.metrics.errors.labels("bad_query").inc()
            return json_response(HTTPStatus.BAD_REQUEST, {"error": "bad_query", "detail": str(exc)})
        return None

    async def handle(self, ws: ServerConnection) -> None:
        options: WatchOptions = ws.watch_options  # type: ignore[attr-defined]
        watcher = Watcher(ws, options, self.settings.watcher_queue)
        # Replay is taken and the watcher registered with no await in between: no gap, no duplicate.
        if options.replay:
            matching = [frame for frame in reversed(self.recent) if watcher.wants(frame[2])]
            watcher.preload(reversed(matching[: options.replay]))
        self.watchers.add(watcher)
        if options.resuming:
            # Read back from Kafka what it missed; live frames queue up meanwhile and
            # the watcher skips any offset it has already sent.
            watcher.catching_up = asyncio.ensure_future(
                asyncio.to_thread(
                    read_missed, self.settings, options.resume or {}, options.since_ms, watcher.first_live
                )
            )
        self.metrics.clients.inc()
        writer = asyncio.create_task(watcher.write(self.metrics))
        try:
            # Watchers only listen; reading keeps pings answered and notices the close.
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        finally:
            self.watchers.discard(watcher)
            self.metrics.clients.dec()
            watcher.closed = True
            writer.cancel()

    def health(self) -> dict[str, Any]:
        return {
            "service": "consumer",
            "status": "ok",
            "broker": self.probe.state,
            "topic": self.settings.topic,
            "partitions": self.assigned,
            "watchers": len(self.watchers),
            "replay_buffer": len(self.recent),
            "kept_from": self.kept_from,
            "idle_fetch_cycles": self.reader.idle_cycles,
        }

    async def _keep_topic_bounded(self) -> None:
        """Every few seconds, delete what the retention settings do not keep (one task, not one per watcher)."""
        trimmed = self.metrics.errors.labels("retention_failed")
        while True:
            await asyncio.sleep(RETENTION_INTERVAL_S)  # a period, not synchronisation
            try:
                moved = await asyncio.to_thread(trim_topic, self.probe.admin, self.settings, list(self.assigned))
            except Exception as exc:  # a broker that is down now is retried next period
                trimmed.inc()
                log.warning("could not trim the topic: %s", exc)
                continue
            if moved:
                self.kept_from.update(moved)
                log.info("trimmed %s: partitions now start at %s", self.settings.topic, moved)

    async def started(self, _server: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self._reader.start()
        self.probe.start()
        if self.settings.retain_events or self.settings.retain_minutes:
            self._retention = asyncio.create_task(self._keep_topic_bounded())

    async def stopping(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
        await self.probe.stop()
        self._stopped.set()
        await asyncio.to_thread(self._reader.join, 5)
        self.kafka.close()

    async def run(self) -> None:
        await run_service(
            "consumer",
            self.settings,
            self.settings.consumer_port,
            self.handle,
            make_process_request(self.health, self.metrics, self._check_request),
            started=self.started,
            stopping=self.stopping,
            max_size=4096,  # watchers have nothing to say beyond pings and the close
        )


def main(settings: Settings | None = None) -> None:
    """Run the consumer in the foreground until SIGTERM (``python -m labkit.consumer``)."""
    configure_logging()
    asyncio.run(ConsumerService(settings or Settings()).run())


if __name__ == "__main__":
    main()
