"""Inside the topic: a small Kafka viewer for a notebook, in the spirit of kafka-ui, AKHQ or Redpanda Console.

:class:`TopicViewer` shows, refreshed live from the Kafka consumer API:

- per partition, the low and high watermarks (the first offset kept, the next
  offset to be written) and what the consumer service has read (its position, from
  its ``/healthz``), so its **lag**: high watermark minus position;
- a live tail of records: key, partition, offset, timestamp and value;
- a seek: to the start of what is kept, to the end, or to a time (Kafka's
  ``offsets_for_times``), after which the tail reads from there.

::

    viewer = TopicViewer(stack)
    viewer                                   # the widget
    await viewer.refresh()                   # one refresh now (it also runs by itself)
    viewer.seek("start"); viewer.seek("end"); viewer.seek("-30s"); viewer.seek("17:05:00")
    viewer.watermarks, viewer.lag(), list(viewer.rows)
"""

from __future__ import annotations

import asyncio
import html
import re
import time
import uuid
from collections import deque
from datetime import datetime, timedelta
from typing import Any

import ipywidgets as w
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from labkit.kafka import PartitionState, TailReader, cluster_state
from labkit.lab.palette import RED
from labkit.lab.tables import html_table
from labkit.ops.base import LabStack
from labkit.settings import Settings

__all__ = ["TopicViewer", "group_lag", "parse_when"]

READ_PER_REFRESH = 5_000  # records read in one refresh at most, so a seek to the start shows progress
_AGO = re.compile(r"^\s*-?\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)\s*(ago)?\s*$", re.IGNORECASE)


def parse_when(text: str, now: datetime | None = None) -> int:
    """A time typed by a person, as epoch ms: ``-30s``, ``2 m ago``, ``17:05:00`` (today), or an ISO date and time.

    ValueError says what is accepted.
    """
    now = now or datetime.now()
    text = (text or "").strip()
    found = _AGO.match(text)
    if found:
        amount, unit = float(found.group(1)), found.group(2).lower()[0]
        seconds = amount * {"s": 1, "m": 60, "h": 3600}[unit]
        return int((now - timedelta(seconds=seconds)).timestamp() * 1000)
    try:
        clock = datetime.strptime(text, "%H:%M:%S").time()
        return int(datetime.combine(now.date(), clock).timestamp() * 1000)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: write -30s, 2 m ago, 17:05:00 (today) or 2026-11-25T17:05:00"
        ) from None


def group_lag(settings: Settings, group_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Per partition, a consumer group's committed offset, the high watermark, and the lag between them.

    A group's position lives in the broker (its committed offsets), so anyone can read
    its lag with the admin API; a partition it never committed shows ``None``.
    """
    admin = AdminClient(settings.kafka_config())
    parts = [TopicPartition(settings.topic, p) for p in range(settings.partitions)]
    request = [ConsumerGroupTopicPartitions(group_id, parts)]
    committed = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group_id].result()
    highs = admin.list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=timeout)
    rows = []
    for tp in sorted(committed.topic_partitions, key=lambda tp: tp.partition):
        high = highs[TopicPartition(settings.topic, tp.partition)].result().offset
        offset = tp.offset if tp.offset >= 0 else None
        rows.append({"partition": tp.partition, "committed": offset, "high watermark": high,
                     "lag": None if offset is None else high - offset})
    return rows


def _table(rows: list[dict[str, Any]], empty: str) -> str:
    return html_table(rows, empty=empty).data


def _replication_columns(state: PartitionState | None) -> dict[str, str]:
    """Leader, replicas and in-sync replicas of one partition, in words for the table."""
    if state is None:
        return {"leader": "?", "replicas": "?", "in sync": "?"}
    short = " (under-replicated)" if state.under_replicated else ""
    return {"leader": f"broker {state.leader}" if state.leader >= 0 else "none",
            "replicas": ", ".join(map(str, state.replicas)), "in sync": ", ".join(map(str, state.isr)) + short}


class TopicViewer(w.VBox):
    """Watermarks, the consumer service's lag, and a live tail of one topic, with a seek."""

    def __init__(self, stack: LabStack, *, tail_rows: int = 12, refresh_s: float = 0.5) -> None:
        self.stack = stack
        self.settings = stack.settings
        self.topic = self.settings.topic
        self.partitions = list(range(self.settings.partitions))
        self.watermarks: dict[int, tuple[int, int]] = {}
        self.replication: dict[int, PartitionState] = {}  # per partition: leader, replicas, in-sync replicas
        self.positions: dict[int, int] = {}  # the consumer service's, per partition
        self.rows: deque[dict[str, Any]] = deque(maxlen=tail_rows)
        self.read_count = 0  # records the tail read since the last seek
        self.refreshes = 0
        self.problem: str | None = None
        config = {**self.settings.kafka_reader_config(), "group.id": f"labkit-viewer-{uuid.uuid4().hex[:8]}"}
        self._reader = TailReader(config, pause_when_idle=not self.settings.broker_long_polls)
        self._pending_seek: str | int | None = "end"  # "start", "end" or epoch ms; applied by the next refresh
        self._seek_target = 0  # records between the seek point and the high watermarks then
        self._lock = asyncio.Lock()
        self._closed = False
        self._closing: asyncio.Future[None] | None = None  # held so that the loop cannot drop a close under way

        self.marks = w.HTML("")
        self.marks.add_class("labkit-topic-marks")
        self.tail = w.HTML("")
        self.tail.add_class("labkit-topic-tail")
        self.when = w.Text(value="-30s", description="time", placeholder="-30s, 2 m ago, 17:05:00")
        self.message = w.HTML("")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="read")
        start, end, at = (w.Button(description=d) for d in ("Seek to start", "Seek to end", "Seek to time"))
        start.on_click(lambda _: self.seek("start"))
        end.on_click(lambda _: self.seek("end"))
        at.on_click(lambda _: self.seek(self.when.value))
        self.status = w.HTML("")
        super().__init__([
            w.HTML(f"<b>topic <code>{html.escape(self.topic)}</code></b> on "
                   f"{html.escape(self.settings.bootstrap_servers)}"),
            self.marks, w.HBox([start, end, self.when, at]), self.message,
            w.HBox([self.progress, self.status]), self.tail,
        ])
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(refresh_s))

    # -- seeking ---------------------------------------------------------------------

    def seek(self, where: str | int) -> bool:
        """Read the tail from ``"start"``, ``"end"``, a time (text, see :func:`parse_when`) or epoch ms.

        Bad input is shown in red and changes nothing (returns False).
        """
        if where not in ("start", "end"):
            try:
                where = where if isinstance(where, int) else parse_when(str(where))
            except ValueError as exc:
                self._say(str(exc))
                return False
        self._say("")
        self._pending_seek = where
        return True

    def _say(self, text: str) -> None:
        self.problem = text or None
        self.message.value = f"<span style='color:{RED}'>{html.escape(text)}</span>" if text else ""

    def _apply_seek(self, where: str | int) -> None:
        """In the reading thread: resolve a time to offsets, assign, and note how much there is to read."""
        reader = self._reader
        if where == "start":
            starts = {p: OFFSET_BEGINNING for p in self.partitions}
        elif where == "end":
            starts = {p: OFFSET_END for p in self.partitions}
        else:
            wanted = [TopicPartition(self.topic, p, int(where)) for p in self.partitions]
            found = reader.consumer.offsets_for_times(wanted, timeout=10)
            starts = {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_END for tp in found}  # -1: nothing since
        reader.assign(self.topic, starts)
        self.rows.clear()
        self.read_count = 0
        target = 0
        for p, o in starts.items():
            low, high = self.watermarks.get(p, (0, 0))
            target += 0 if o == OFFSET_END else high - (low if o == OFFSET_BEGINNING else o)
        self._seek_target = max(target, 0)

    # -- refreshing ------------------------------------------------------------------

    def _read(self) -> None:
        """In a worker thread: watermarks, a pending seek, and what the tail can read now."""
        consumer = self._reader.consumer
        self.watermarks = {
            p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5, cached=False)
            for p in self.partitions
        }
        try:  # who leads each partition, and which replicas are in sync: one metadata request
            self.replication = {state.partition: state for state in cluster_state(consumer, self.topic)[1]}
        except KafkaException:
            self.replication = {}
        seek, self._pending_seek = self._pending_seek, None
        if seek is not None:
            self._apply_seek(seek)
        for _ in range(READ_PER_REFRESH // 1000):
            batch = self._reader.read(0.05)
            for msg in batch:
                if msg.error() is not None:
                    continue
                key = msg.key()
                stamp = datetime.fromtimestamp(msg.timestamp()[1] / 1000).strftime("%H:%M:%S.%f")[:-3]
                value = (msg.value() or b"").decode(errors="replace")
                self.rows.appendleft({"partition": msg.partition(), "offset": msg.offset(),
                                      "key": key.decode(errors="replace") if key else "", "timestamp": stamp,
                                      "value": value if len(value) <= 90 else value[:87] + "..."})
                self.read_count += 1
            if len(batch) < 1000:
                break

    async def refresh(self) -> None:
        """Read watermarks, the consumer's position and new records now, and redraw."""
        async with self._lock:
            await asyncio.to_thread(self._read)
            try:
                health = await asyncio.to_thread(self.stack.health, "consumer")
                self.positions = {int(p): o for p, o in health.get("positions", {}).items()}
            except OSError:
                self.positions = {}  # the consumer is down: no position to show
            self.refreshes += 1
            self._draw()

    def lag(self) -> dict[int, int | None]:
        """Per partition, records the consumer service has yet to read (None when its position is unknown)."""
        return {p: (high - self.positions[p] if p in self.positions else None)
                for p, (_, high) in self.watermarks.items()}

    def _draw(self) -> None:
        lag = self.lag()
        marks = [{"partition": p, "low watermark": low, "high watermark": high, "records kept": high - low,
                  "consumer position": self.positions.get(p, "?"), "consumer lag": "?" if lag[p] is None else lag[p],
                  **_replication_columns(self.replication.get(p))}
                 for p, (low, high) in sorted(self.watermarks.items())]
        self.marks.value = _table(marks, "no partition yet")
        self.tail.value = _table(list(self.rows), "no record since the seek: send some events")
        self.progress.max = max(self._seek_target, 1)
        self.progress.value = min(self.read_count, self.progress.max)
        self.status.value = (f"{self.read_count} records read since the seek · refreshed "
                             f"{time.strftime('%H:%M:%S')}")

    async def _refresh_loop(self, every: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a broker that is away: say so, try again next period
                self.status.value = f"<span style='color:{RED}'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>"
            await asyncio.sleep(every)  # the refresh period

    async def wait_for(self, condition, what: str, timeout: float = 30.0) -> None:
        """Refresh until ``condition(self)`` holds; TimeoutError naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            await self.refresh()
            if condition(self):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout:g} s: {what}")

    async def aclose(self) -> None:
        """Stop refreshing and close the Kafka consumer, once no read is under way."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        async with self._lock:
            if not self._closed:
                self._closed = True
                self._reader.close()
        super().close()

    def close(self) -> None:
        """Close in the background (the reader may be in the middle of a read)."""
        if self._task.done() and self._closed:
            super().close()
            return
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.aclose())
