"""The consumer service: events out of Kafka, pushed over WebSocket to every watcher.

It is a fan-out service: it reads every partition of the topic with ``assign()``
and no consumer group, so every replica sees every event (two replicas in one
group would split the partitions between them and each watcher would see only
part of the stream).

A thread polls Kafka and hands batches of records to the event loop
(:meth:`labkit.kafka.TailReader.feed`). There each record is validated once (a
record that is not a labkit event is counted and skipped), its WebSocket frame is
encoded once, and each watcher whose filter matches gets the batch's frames: in
one socket write when its writer is idle and its socket keeps up, else in its
bounded queue. What a frame means for a watcher (send, queue, skip a duplicate,
overflow) is decided by :class:`labkit.services.fanout.WatcherState`, with no
I/O. Each watcher has its own writer task, so a slow watcher never delays the
others. A watcher whose queue overflows is disconnected with close code 1013
(try again later) and counted: the service never drops an event silently from a
stream it is still sending.

When the broker connection drops, the reader stops and checks the records it
delivered last (:mod:`labkit.services.truncation`) before it reads on. A log that
lost its tail gets a new epoch (:func:`labkit.epoch.new_epoch`), every watcher a
frame saying where the log restarted, and reading goes on from there: no silent
duplicate, no stored event skipped at a reused offset.

What a watcher may ask for (``types``, ``replay``, ``resume``) is in
:mod:`labkit.services.watchers`; reading back what a resuming watcher missed is in
:mod:`labkit.services.catchup`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from confluent_kafka import OFFSET_END, KafkaError, KafkaException, TopicPartition
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from labkit.epoch import EpochStep, Truncation, epoch_is_kept, log_epochs, losses_since, new_epoch
from labkit.events import encode, is_reserved, now_ms
from labkit.kafka import CONSUMER_DEFAULTS, TailReader
from labkit.services.addresses import Tally, client_address
from labkit.services.catchup import LIMIT_S as READ_BACK_LIMIT_S
from labkit.services.catchup import give_back_memory, limit_arenas, read_missed
from labkit.services.fanout import CONTROL, delivery_of
from labkit.services.retention import INTERVAL_S as RETENTION_INTERVAL_S
from labkit.services.retention import trim_topic
from labkit.services.serving import (
    BrokerProbe,
    ServiceMetrics,
    configure_logging,
    json_response,
    make_process_request,
    run_on_event_loop,
    run_service,
)
from labkit.services.truncation import LogMemory
from labkit.services.watchers import Delivery, Watcher, WatchOptions, parse_watch_query
from labkit.services.wire import text_frame
from labkit.settings import Settings

__all__ = ["ConsumerService", "main"]

log = logging.getLogger("labkit.services.consumer")

# At start the consumer reads back this far, to fill the replay buffer.
REPLAY_LOOKBACK_MS = 10 * 60 * 1000


class ConsumerService:
    """One Kafka consumer, many watchers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.invalid_records = self.metrics.errors.labels("invalid_record")
        config = {**CONSUMER_DEFAULTS, **settings.kafka_reader_config(), "group.id": f"labkit-fanout-{id(self):x}"}
        self.reader = TailReader({**config, "error_cb": self._kafka_error},
                                 pause_when_idle=not settings.broker_long_polls)
        self.kafka = self.reader.consumer
        self.probe = BrokerProbe(settings)
        self.watchers: set[Watcher] = set()
        self.recent: deque[Delivery] = deque(maxlen=settings.replay_buffer or 1)
        self.assigned: list[int] = []
        self.started_at_ms = now_ms()
        self.kept_from: dict[int, int] = {}  # per partition, where the topic starts after trimming
        self.epoch = ""  # the broker log's identity (labkit.epoch), stamped on every delivery
        self.epochs: list[EpochStep] = []  # how the log came to that epoch: what each lost tail took
        self.memory = LogMemory()  # what was delivered last per partition, to check after a reconnect
        self.log_restarts = 0
        self._check_log = False  # the broker connection dropped: check the log before reading on
        self.reading: asyncio.Event = asyncio.Event()  # set once partitions are assigned and the epoch is known
        # Read-backs for resuming watchers run on a pool of their own, bounded: each holds a Kafka
        # consumer and up to MISSED_CHUNKS chunks of frames; past the bound, resumes are refused.
        self.read_backs = ThreadPoolExecutor(settings.max_resumes, thread_name_prefix="read-back")
        # Per client address too: resumers that never read, from one address, would hold every slot.
        self.resumes = Tally(settings.max_resumes, settings.max_resumes_per_address)
        self.read_back_slots: dict[Watcher, str] = {}  # watcher -> its address, while its read-back holds a slot
        self._maintenance: asyncio.Task[None] | None = None
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
        self._check_epoch()
        since = int(self.started_at_ms) - REPLAY_LOOKBACK_MS
        wanted = [TopicPartition(topic, p, since) for p in sorted(meta.partitions)]
        try:
            found = self.kafka.offsets_for_times(wanted, timeout=10)
            # No record since then: start at the partition's end, as a number looked up now.
            starts = {tp.partition: tp.offset if tp.offset >= 0 else self._end_offset(tp.partition) for tp in found}
        except KafkaException as exc:
            log.warning("could not look up recent offsets (%s); starting at the end", exc)
            starts = {tp.partition: OFFSET_END for tp in wanted}
        self.reader.assign(topic, starts)
        self.assigned = self.reader.partitions
        log.info("reading %s partitions %s", topic, self.assigned)

    def _end_offset(self, partition: int) -> int:
        """The partition's end now, as a number: OFFSET_END would be resolved at the first fetch, later,
        and skip what a watcher that connected meanwhile was sent (a readiness probe on a slow start)."""
        try:
            return int(self.kafka.get_watermark_offsets(TopicPartition(self.settings.topic, partition),
                                                        timeout=10, cached=False)[1])
        except KafkaException as exc:
            log.warning("could not look up the end of partition %s (%s); starting at the end", partition, exc)
            return OFFSET_END

    def _read_kafka(self) -> None:
        assert self.loop is not None
        self._assign()
        self.loop.call_soon_threadsafe(self.reading.set)
        self.reader.feed(self.loop, self._dispatch, self._stopped, before_read=self._before_read)

    def _kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb, called from poll() in the reader thread."""
        if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self._check_log = True

    def _before_read(self) -> None:
        """In the reader thread: after a dropped broker connection, check the log before reading on."""
        if not self._check_log or not self.assigned:
            return
        self._check_log = False
        try:
            self._check_log_tail()
        except Exception:  # the reader thread must go on whatever the check meets
            log.exception("checking the log after the broker connection dropped failed; reading on")
            self.reader.assign(self.settings.topic, {p: self.reader.next.get(p, OFFSET_END) for p in self.assigned})

    def _check_log_tail(self) -> None:
        assert self.loop is not None
        self.kafka.unassign()  # nothing more is fetched (a fetch past a lost tail would restart from 0)
        while True:  # what was handed over is dispatched first: the memory is complete
            try:
                asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(timeout=5)
                break
            except RuntimeError:
                return  # the loop is closing: the service is stopping
            except concurrent.futures.TimeoutError:
                # A loop busy for 5 s (a loaded machine): wait on. Giving up here left the reader
                # unassigned, and the consumer delivered nothing more.
                if self._stopped.is_set():
                    return
        config = {**self.settings.kafka_config(), "client.id": "labkit-consumer-check"}
        while not self._stopped.is_set():
            try:
                cut = self.memory.check(config, self.settings.topic)
                break
            except KafkaException as exc:  # the broker is not back yet
                log.info("checking the log after the broker connection dropped: %s", exc)
                self._stopped.wait(0.2)
        else:
            return
        starts = {p: self.reader.next.get(p, OFFSET_END) for p in self.assigned}
        if cut:
            chain = new_epoch(self.settings, self.epoch, cut)
            for partition, truncation in cut.items():
                self.memory.forget_from(partition, truncation.offset)
                starts[partition] = truncation.offset
            self.loop.call_soon_threadsafe(self._log_restarted, chain, cut)
        self.reader.assign(self.settings.topic, starts)

    # -- event loop side ---------------------------------------------------------

    def _dispatch(self, batch: list[Any]) -> None:
        now = now_ms()
        metrics = self.metrics
        live: list[Delivery] = []
        valid = 0
        for msg in batch:
            error = msg.error()
            if error is not None:
                metrics.errors.labels("kafka_error").inc()
                log.warning("Kafka: %s", error.str())
                continue
            found = delivery_of(msg, now, self.epoch)
            if found is None:
                self.invalid_records.inc()
                log.warning("skipped a record that is not a labkit event at %s/%s@%s",
                            msg.topic(), msg.partition(), msg.offset())
                continue
            frame, record = found
            valid += 1
            kafka_ts = msg.timestamp()[1]
            self.memory.remember(frame.partition, frame.offset, kafka_ts)
            if not is_reserved(record.type):
                self.recent.append(frame)  # the stack's readiness probes are not replayed
            if kafka_ts < self.started_at_ms:
                continue  # read back at start for the replay buffer; not a live delivery
            metrics.latency.observe(max(0.0, now - record.received_at) / 1000.0)
            live.append(frame)
        if valid:  # counted once per batch: a counter's lock per event showed in profiles
            metrics.events_in.inc(valid)
            self.probe.saw_broker()
        if not live or not self.watchers:
            return
        wires = [text_frame(frame.data) for frame in live]  # encoded once, the same bytes for every watcher
        # What each filter selects, worked out once for all the watchers that share it.
        selections: dict[frozenset[str] | None, tuple[list[Delivery], list[bytes], bytes]] = {}
        sent = 0
        for watcher in tuple(self.watchers):
            types = watcher.state.types
            selected = selections.get(types)
            if selected is None:
                wants = watcher.wants
                pairs = [(frame, wire) for frame, wire in zip(live, wires, strict=True) if wants(frame.type)]
                chosen = [wire for _, wire in pairs]
                selected = selections[types] = ([frame for frame, _ in pairs], chosen, b"".join(chosen))
            if not selected[0]:
                continue
            written = watcher.deliver(*selected)
            if written is None:
                self._overflow(watcher)
            else:
                sent += written
        if sent:
            metrics.events_out.inc(sent)

    def _log_restarted(self, chain: list[EpochStep], cut: dict[int, Truncation]) -> None:
        """The log lost its tail: a new epoch, and every watcher told in order where each partition restarted."""
        before, self.epochs, self.epoch = self.epoch, chain, chain[-1].epoch
        self.log_restarts += 1
        self.metrics.errors.labels("log_truncated").inc()
        kept = [f for f in self.recent if f.partition not in cut or f.offset < cut[f.partition].offset]
        self.recent.clear()
        self.recent.extend(kept)  # replay never offers a record that is gone
        for partition, (offset, old_end) in sorted(cut.items()):
            reason = (f"the broker lost records {offset} to {old_end - 1} of partition {partition} (a crash); "
                      f"from offset {offset} on it holds new events (epoch {before} -> {self.epoch})")
            log.warning("%s", reason)
            body = {"log_restarted": {"partition": partition, "offset": offset, "lost": [offset, old_end - 1]},
                    "epoch": self.epoch, "reason": reason}
            frame = Delivery(partition, offset, CONTROL, encode(body))
            for watcher in tuple(self.watchers):
                watcher.log_restarted_at(frame)

    def _overflow(self, watcher: Watcher) -> None:
        self.metrics.overflows.inc()
        self.watchers.discard(watcher)
        watcher.close(CloseCode.TRY_AGAIN_LATER,
                      f"too slow: more than {watcher.limit} events queued; reconnect to continue")

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            connection.watch_options = parse_watch_query(request.path, self.settings.replay_buffer)  # type: ignore[attr-defined]
        except ValueError as exc:
            self.metrics.errors.labels("bad_query").inc()
            return json_response(HTTPStatus.BAD_REQUEST, {"error": "bad_query", "detail": str(exc)})
        return None

    async def handle(self, ws: ServerConnection) -> None:
        options: WatchOptions = ws.watch_options  # type: ignore[attr-defined]
        if options.resuming and not self.reading.is_set():
            # A resume right after start: its epoch and offsets are judged against the log, once read.
            try:
                await asyncio.wait_for(self.reading.wait(), READ_BACK_LIMIT_S)
            except TimeoutError:
                await ws.close(CloseCode.TRY_AGAIN_LATER, "the consumer cannot reach the broker yet; resume again")
                return
        watcher = Watcher(ws, options, self.settings.watcher_queue)
        # Replay is taken and the watcher registered with no await in between: no gap, no duplicate.
        if options.replay:
            matching = [frame for frame in reversed(self.recent) if watcher.wants(frame.type)]
            watcher.preload(reversed(matching[: options.replay]))
        self.watchers.add(watcher)
        refusal = self._start_read_back(watcher, options, client_address(ws, self.settings.trusted_proxies)) \
            if options.resuming else None
        if refusal is not None:
            self.watchers.discard(watcher)
            self.metrics.errors.labels("resume_refused").inc()
            await ws.close(CloseCode.TRY_AGAIN_LATER, f"too many resumes in progress ({refusal}); try again shortly")
            return
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
            watcher.stop()
            writer.cancel()
            self._free_slot(watcher)  # its read-back stops at its next hand-over; the slot is free now
            if options.resuming:  # what it was handed, now freed, goes back to the system (catchup.py)
                await asyncio.to_thread(give_back_memory)

    def _start_read_back(self, watcher: Watcher, options: WatchOptions, address: str) -> str | None:
        """Read back from Kafka what a resuming watcher missed, on the bounded pool; else which limit is full.

        Live frames queue up meanwhile and the watcher skips any offset it has already sent.
        """
        refusal = self.resumes.refusal(address)
        if refusal is not None:
            return refusal
        self.resumes.take(address)
        self.read_back_slots[watcher] = address
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + READ_BACK_LIMIT_S
        resume, since_ms, known_loss = options.resume or {}, options.since_ms, None
        lost = losses_since(self.epochs, options.epoch) if options.epoch is not None and self.epochs else None
        if options.epoch is not None and options.epoch != self.epoch and lost is not None:
            # The log lost tails since its epoch: read from the first changed offset of each.
            resume = {p: min(o, lost[p].offset - 1) if p in lost else o for p, o in resume.items()}
            known_loss = "; ".join(
                f"the broker lost records {cut.offset} to {cut.old_end - 1} of partition {p} in a crash since epoch "
                f"{options.epoch} (now {self.epoch}); from offset {cut.offset} on it holds new events"
                for p, cut in sorted(lost.items())
            ) or None
        elif options.epoch is not None and self.epoch and options.epoch != self.epoch:
            # Its offsets belong to a log that is gone: everything in the new one is news to it.
            resume, since_ms = {}, 0.0
            watcher.state.log_restarted()
            known_loss = (f"the broker's log restarted since epoch {options.epoch} (now {self.epoch}): "
                          "events stored before are gone; what follows is everything since")

        def hand_over(item: Any) -> bool:
            return watcher.hand_over(item, loop, deadline)

        job = loop.run_in_executor(
            self.read_backs, read_missed, self.settings, resume, since_ms, watcher.state.first_live,
            hand_over, READ_BACK_LIMIT_S, known_loss, self.epoch,
        )

        def finished(done: asyncio.Future[bool]) -> None:
            self._free_slot(watcher)
            if not watcher.closed and (done.cancelled() or done.exception() is not None or not done.result()):
                watcher.close(CloseCode.TRY_AGAIN_LATER, "could not read back all missed events in time; resume again")

        job.add_done_callback(finished)
        return None

    def _free_slot(self, watcher: Watcher) -> None:
        """The read-back's slot, once: when it ends, or when its watcher leaves (whichever is first)."""
        address = self.read_back_slots.pop(watcher, None)
        if address is not None:
            self.resumes.give_back(address)

    def health(self) -> dict[str, Any]:
        return {
            "service": "consumer",
            "status": "ok",
            **self.probe.view(),
            "topic": self.settings.topic,
            "partitions": self.assigned,
            # Per partition, the offset of the next record it will read: its lag is the high watermark minus this.
            "positions": dict(self.reader.next),
            "watchers": len(self.watchers),
            "replay_buffer": len(self.recent),
            "kept_from": self.kept_from,
            "epoch": self.epoch,
            "log_restarts": self.log_restarts,  # logs that lost their tail while this consumer read them
            "resuming": self.resumes.count,
            "idle_fetch_cycles": self.reader.idle_cycles,
        }

    def _check_epoch(self) -> None:
        try:
            chain = log_epochs(self.settings)
        except KafkaException as exc:
            log.warning("could not read the log's epoch: %s", exc)
            return
        epoch = chain[-1].epoch
        if self.epoch and epoch != self.epoch:
            log.warning("the broker's log restarted (epoch %s, before %s): offsets from before mean nothing now",
                        epoch, self.epoch)
        self.epochs, self.epoch = chain, epoch

    async def _maintain(self) -> None:
        """Every few seconds: a new epoch after the broker comes back, and the retention (one task for all)."""
        while True:
            await asyncio.sleep(RETENTION_INTERVAL_S)  # a period, not synchronisation
            # A broker that lost its log lost the epoch record too: a new log, a new epoch.
            if self.probe.state == "up" and not await asyncio.to_thread(epoch_is_kept, self.probe.admin, self.settings):
                await asyncio.to_thread(self._check_epoch)
            if self.settings.retain_events or self.settings.retain_minutes:
                await self._keep_topic_bounded()

    async def _keep_topic_bounded(self) -> None:
        """Delete what the retention settings do not keep."""
        try:
            moved = await asyncio.to_thread(trim_topic, self.probe.admin, self.settings, list(self.assigned))
        except Exception as exc:  # a broker that is down now is retried next period
            self.metrics.errors.labels("retention_failed").inc()
            log.warning("could not trim the topic: %s", exc)
            return
        if moved:
            self.kept_from.update(moved)
            log.info("trimmed %s: partitions now start at %s", self.settings.topic, moved)

    async def started(self, _server: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self._reader.start()
        self.probe.start()
        self._maintenance = asyncio.create_task(self._maintain())

    async def stopping(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
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
            create_connection=ServerConnection,
            started=self.started,
            stopping=self.stopping,
            max_size=4096,  # watchers have nothing to say beyond pings and the close
        )


def main(settings: Settings | None = None) -> None:
    """Run the consumer in the foreground until SIGTERM (``python -m labkit.services.consumer``)."""
    configure_logging()
    limit_arenas()  # before any thread allocates (labkit.services.catchup: memory after read-backs)
    settings = settings or Settings()
    run_on_event_loop(ConsumerService(settings).run(), settings.event_loop)


if __name__ == "__main__":
    main()
