"""The consumer's fan-out core: what each frame means for one watcher, decided without I/O.

In the manner of websockets' sans-I/O ``Protocol``: :class:`WatcherState` holds a
watcher's filter, its bounded queue and the offsets it was sent, and answers, in
one place, whether a frame is to be sent, skipped as a duplicate, queued for the
watcher's writer, or overflows its queue (the watcher is then closed). It never
touches a socket; :class:`labkit.services.watchers.Watcher` moves the bytes.

The duplicate rule, for a watcher that resumes: per partition, a frame at or
below the offset counted as sent (the resume point, then each frame read back) is
a duplicate until a live frame above it is sent, which settles the partition;
frames read back never settle it. After that every frame of the partition goes
out, even an offset going backwards (the broker's log began again). Partitions
with nothing sent before their live frames have nothing to skip.

When the broker's log loses its tail, the consumer tells every watcher in order
(:meth:`WatcherState.log_restarted_at`, a control frame that no filter holds back):
from there the partition's offsets hold new records, so nothing at or above that
offset counts as sent any more.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from labkit.events import Recorded, delivered_frame, is_reserved, parse_record

__all__ = ["Delivery", "delivery_of", "Action", "WatcherState", "SEND", "SKIP", "QUEUE", "OVERFLOW", "CONTROL"]


class Delivery(NamedTuple):
    """One delivery to watchers: where Kafka put the record, its event type, and the JSON a watcher gets."""

    partition: int
    offset: int
    type: str
    data: bytes


def delivery_of(msg: Any, now: float, epoch: str) -> tuple[Delivery, Recorded] | None:
    """A Kafka record (a confluent_kafka Message) as a delivery, and the event it holds; None when it is not one.

    The one place a record becomes what watchers get, live (the consumer) or read back (catchup).
    """
    value = msg.value()
    record = parse_record(value)
    if record is None:
        return None
    partition, offset = msg.partition(), msg.offset()
    data = delivered_frame(value, msg.topic(), partition, offset, msg.timestamp()[1], now, epoch)
    return Delivery(partition, offset, record.type, data), record


#: The type of a control frame (the log restarted): sent to every watcher, never skipped as a duplicate.
CONTROL = "labkit.control"


class Action(enum.Enum):
    SEND = "send"  # write it now
    SKIP = "skip"  # a duplicate (or the watcher is closed): nothing to write
    QUEUE = "queue"  # the writer sends it later, in order
    OVERFLOW = "overflow"  # the queue is full: close the watcher


SEND, SKIP, QUEUE, OVERFLOW = Action.SEND, Action.SKIP, Action.QUEUE, Action.OVERFLOW


class WatcherState:
    """One watcher's filter, queue and sent offsets; no I/O."""

    __slots__ = ("types", "limit", "queue", "sent_upto", "unsettled", "first_live", "catching_up", "idle", "closed")

    def __init__(self, types: frozenset[str] | None, limit: int, resume: Mapping[int, int] | None = None,
                 catching_up: bool = False) -> None:
        self.types = types
        self.limit = limit
        self.queue: deque[Delivery] = deque()
        #: Per partition, the highest offset counted as sent while it is unsettled.
        self.sent_upto: dict[int, int] = dict(resume or {})
        #: Partitions where frames at or below ``sent_upto`` are duplicates (no live frame sent yet).
        self.unsettled: set[int] = set(self.sent_upto)
        #: While catching up, the first live offset queued per partition: reading back can stop there.
        self.first_live: dict[int, int] = {}
        self.catching_up = catching_up
        self.idle = False  # the writer waits with nothing queued: a live frame may be sent at once
        self.closed = False

    def wants(self, event_type: str) -> bool:
        if self.types is None:
            return not is_reserved(event_type)
        return event_type in self.types

    # -- the rule, in one place ------------------------------------------------------

    def _fresh(self, frame: Delivery, live: bool) -> bool:
        """Whether a frame was not sent yet; records it as sent."""
        partition = frame.partition
        if partition not in self.unsettled:
            if not live:  # read back: what comes live later may repeat it
                self.unsettled.add(partition)
                self.sent_upto[partition] = frame.offset
            return True
        if frame.offset <= self.sent_upto[partition]:
            return False
        if live:
            self.unsettled.discard(partition)  # settled: from here on every frame goes out
        else:
            self.sent_upto[partition] = frame.offset
        return True

    def takes_all(self, writable: bool) -> bool:
        """Whether every live frame it wants is SEND now: the writer is idle and nothing is queued or unsettled.

        The common case, asked once per watcher for a whole batch instead of once per frame.
        """
        return writable and self.idle and not self.queue and not self.unsettled and not self.closed

    def live(self, frame: Delivery, writable: bool) -> Action:
        """A live frame from Kafka (of a type the watcher wants).

        ``writable``: the socket is open and keeps up. SEND when the writer is idle, else QUEUE (OVERFLOW
        when the queue is full: the state is closed then); SKIP a duplicate or when closed.
        """
        if self.closed:
            return SKIP
        if self.idle and writable and not self.queue:
            return SEND if self._fresh(frame, True) else SKIP
        if len(self.queue) >= self.limit:
            self.closed = True
            return OVERFLOW
        if self.catching_up:
            self.first_live.setdefault(frame.partition, frame.offset)
        self.queue.append(frame)
        return QUEUE

    def next_queued(self) -> Delivery | None:
        """The writer's next frame to send from the queue, duplicates skipped; None when the queue is empty."""
        queue = self.queue
        while queue:
            frame = queue.popleft()
            if frame.type == CONTROL or self._fresh(frame, True):
                return frame
        return None

    def missed(self, frame: Delivery) -> Action:
        """A frame read back while catching up: SEND or SKIP."""
        return SEND if self.wants(frame.type) and self._fresh(frame, False) else SKIP

    # -- what the consumer tells it --------------------------------------------------

    def preload(self, frames: Iterable[Delivery]) -> None:
        """Replayed frames, sent before any live one."""
        self.queue.extend(frames)

    def recovered(self, counted_as_sent: Mapping[int, int]) -> None:
        """The read-back's first word: these offsets count as sent (less than the resume point where it lies
        outside the log)."""
        self.sent_upto.update(counted_as_sent)
        self.unsettled.update(counted_as_sent)

    def log_restarted_at(self, frame: Delivery, writable: bool) -> Action:
        """A control frame: the log of ``frame.partition`` restarted at ``frame.offset``; SEND now or QUEUE it in order.

        From that offset on, the partition holds new records: none of them counts as sent.
        """
        if self.closed:
            return SKIP
        partition = frame.partition
        if partition in self.sent_upto:
            self.sent_upto[partition] = min(self.sent_upto[partition], frame.offset - 1)
        if self.idle and writable and not self.queue:
            return SEND
        self.queue.append(frame)  # past the limit by one at most per restart: a control frame is never dropped
        return QUEUE

    def log_restarted(self) -> None:
        """The broker's log began again since the resume point: nothing counts as sent."""
        self.sent_upto.clear()
        self.unsettled.clear()

    def caught_up(self) -> None:
        self.catching_up = False
        self.first_live.clear()
