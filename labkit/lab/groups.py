"""Kafka consumer groups next to labkit's fan-out, for a notebook: members in threads, and a live picture.

The consumer service reads every partition with ``assign()``: every watcher sees
every event. A **consumer group** does the opposite: its members split the
topic's partitions, so each event reaches one member. :class:`ConsumerGroup`
starts members (confluent-kafka consumers that ``subscribe()`` with one
``group.id``) in threads of this kernel; :class:`GroupView` draws who owns which
partition and how many records each member read, refreshed live::

    group = ConsumerGroup(settings, event_type="orders")
    GroupView(group)                  # the picture
    group.add_member(); await group.settled()
    group.owners()                    # {partition: member name}
    group.close()

:func:`keys_for_partitions` picks one key per partition from the producer's
partitioner (librdkafka's default ``consistent_random``: CRC32 of the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import threading
import time
import uuid
import zlib
from collections import Counter
from typing import Any

import ipywidgets as w
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from labkit.events import parse_record
from labkit.kafka import position
from labkit.lab.palette import GREY, RED, SERIES
from labkit.lab.tables import Styled, html_table
from labkit.settings import Settings
from labkit.waiting import until

__all__ = ["ConsumerGroup", "GroupMember", "GroupView", "keys_for_partitions", "partition_for"]

# A member joins in about half a second on noida-db at these settings (librdkafka's default session
# timeout, 45 s, makes a first join wait about 23 s on brokers that delay it).
GROUP_DEFAULTS = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "auto.offset.reset": "latest",
    "enable.auto.commit": False,  # a member commits what it read as soon as it has caught up (see _run)
    "enable.partition.eof": True,
    "partition.assignment.strategy": "range",
}
IDLE_PAUSE_S = 0.05


def partition_for(key: str, partitions: int) -> int:
    """The partition librdkafka's default partitioner (consistent_random: CRC32) gives a non-empty key."""
    return zlib.crc32(key.encode()) % partitions


def keys_for_partitions(partitions: int, prefix: str = "customer") -> dict[int, str]:
    """One key per partition, ``prefix-N`` with the smallest N landing there."""
    found: dict[int, str] = {}
    number = 0
    while len(found) < partitions:
        key = f"{prefix}-{number}"
        found.setdefault(partition_for(key, partitions), key)
        number += 1
    return dict(sorted(found.items()))


class GroupMember:
    """One consumer of the group, polling in a thread: what it owns, and the records it read per partition.

    Idle, it pauses its partitions once the broker has said each is read to its end, and
    resumes a moment later: noida-db answers fetches at once, so a consumer that never
    pauses spins (0.45 core measured, plus 0.3 in the broker); paused, it costs nothing
    and a record arrives within a second or two.
    """

    def __init__(self, settings: Settings, group_id: str, name: str, event_type: str | None, log: list[str]) -> None:
        self.name = name
        self.event_type = event_type
        self.owned: list[int] = []
        self.joined = False  # the group gave it an assignment (maybe empty) at least once
        self.counts: Counter[int] = Counter()
        self.at_end: set[int] = set()  # partitions read to their end since they were assigned
        self._idle: set[int] = set()  # partitions at their end with nothing read since
        self._log = log
        self._stop = threading.Event()
        self.error: str | None = None
        # On a broker that long-polls (Apache Kafka) an idle member waits in its fetch: no pausing needed.
        self.pauses_when_idle = not settings.broker_long_polls
        self.consumer = Consumer({**settings.kafka_reader_config(), **GROUP_DEFAULTS, "group.id": group_id,
                                  "client.id": name})
        self.consumer.subscribe([settings.topic], on_assign=self._assigned, on_revoke=self._revoked)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _note(self, text: str) -> None:
        self._log.append(f"{time.strftime('%H:%M:%S')} {self.name} {text}")

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.owned = sorted(tp.partition for tp in partitions)
        self.at_end.clear()
        self._idle.clear()
        self.joined = True
        self._note(f"was assigned partitions {self.owned}")

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # KafkaException: nothing new to commit, or the assignment is already gone: _run committed what it read.
        with contextlib.suppress(KafkaException):
            consumer.commit(asynchronous=False)  # the next owner goes on from here, not from the end
        self._note(f"gave back partitions {sorted(tp.partition for tp in partitions)}")
        self.owned = []
        self.at_end.clear()
        self._idle.clear()

    @property
    def ready(self) -> bool:
        """Owns partitions and has read each to its end once: records sent now reach it."""
        return bool(self.owned) and self.at_end >= set(self.owned)

    def _run(self) -> None:
        paused: list[TopicPartition] = []
        read: Counter[int] = Counter()  # records read and not yet committed
        try:
            while not self._stop.is_set():
                if paused:
                    time.sleep(IDLE_PAUSE_S)
                    self.consumer.resume(paused)
                    paused = []
                msg = self.consumer.poll(0.1)
                error = msg.error() if msg is not None else None
                if msg is None or error is not None:
                    if read:
                        self._commit(read)
                    if msg is not None and error is not None and error.code() == KafkaError._PARTITION_EOF:
                        partition = position(msg)[0]
                        self.at_end.add(partition)
                        self._idle.add(partition)
                        # Paused only once every partition is at its end: pausing drops queued events,
                        # and librdkafka reports each end once.
                        if self.pauses_when_idle and self.owned and self._idle >= set(self.owned):
                            paused = self.consumer.assignment()
                            self.consumer.pause(paused)
                    continue
                partition = position(msg)[0]
                self._idle.discard(partition)
                record = parse_record(msg.value())
                if record is not None and (self.event_type is None or record.type == self.event_type):
                    read[partition] += 1
            if read:
                self._commit(read)
        except Exception as exc:  # shown in the view, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.consumer.close()  # leaves the group at once: the others rebalance now, not after a timeout
            self._note("left the group")
            self.owned = []

    def _commit(self, read: Counter[int]) -> None:
        """Commit what was read, then count it: a count seen from outside is already committed.

        So whoever takes a partition over after a rebalance goes on from there: nothing is read twice.
        """
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                self._note(f"could not commit: {exc.args[0].str()}")
        self.counts.update(read)
        read.clear()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.thread.join(timeout)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class ConsumerGroup:
    """Members of one consumer group (a fresh ``group.id`` per object), started and stopped from a notebook."""

    def __init__(self, settings: Settings, event_type: str | None = None, group_id: str | None = None) -> None:
        self.settings = settings
        self.event_type = event_type
        self.group_id = group_id or f"lab-group-{uuid.uuid4().hex[:8]}"
        self.members: list[GroupMember] = []
        self.log: list[str] = []
        self._numbered = 0
        self._step_from: dict[str, Counter[int]] = {}  # each member's counts when the last join or leave began a step

    def add_member(self) -> GroupMember:
        self._numbered += 1
        member = GroupMember(self.settings, self.group_id, f"member-{self._numbered}", self.event_type, self.log)
        self.members.append(member)
        self._new_step()
        return member

    def remove_member(self, name: str | None = None) -> GroupMember:
        """Stop a member (the newest, or the one named); ValueError when there is none."""
        candidates = [m for m in self.members if name is None or m.name == name]
        if not candidates:
            raise ValueError(f"no member named {name!r} runs" if name else "no member runs: add one first")
        member = candidates[-1]
        member.stop()
        self.members.remove(member)
        self._new_step()
        return member

    def _new_step(self) -> None:
        self._step_from = {m.name: Counter(m.counts) for m in self.members}

    def step_counts(self, member: GroupMember) -> Counter[int]:
        """What ``member`` read per partition since the last join or leave (the current step), not since it joined."""
        return member.counts - self._step_from.get(member.name, Counter())

    def owners(self) -> dict[int, str]:
        return {p: m.name for m in self.members for p in m.owned}

    def is_settled(self) -> bool:
        """Every member has joined, every partition has one owner, and each owner has read what it owns to its end."""
        owned = [p for m in self.members for p in m.owned]
        sharing = len(self.members) <= self.settings.partitions  # else some members rightly own nothing
        return (len(owned) == len(set(owned)) == self.settings.partitions
                and all(m.joined and (m.ready or (not m.owned and not sharing)) for m in self.members))

    async def settled(self, timeout: float = 30.0) -> dict[int, str]:
        """Wait until the group has shared out every partition after a join or a leave; returns the owners."""

        def settled_or_failed() -> bool:
            if errors := [f"{m.name}: {m.error}" for m in self.members if m.error]:
                raise TimeoutError("; ".join(errors))
            return self.is_settled()

        await until(settled_or_failed, lambda: f"the group did not settle; owners now {self.owners()}", timeout)
        return self.owners()

    async def wait_for(self, total: int, timeout: float = 30.0) -> None:
        """Wait until the members together counted ``total`` records (of the group's type)."""
        await until(lambda: sum(m.total for m in self.members) >= total,
                    lambda: f"the members read {sum(m.total for m in self.members)} of {total} records", timeout)

    def close(self) -> None:
        while self.members:
            self.remove_member()


class GroupView(w.VBox):
    """A live picture of a group: one row per partition (its owner, in the owner's colour) and counts per member."""

    def __init__(self, group: ConsumerGroup, refresh_s: float = 0.2) -> None:
        self.group = group
        self.picture = w.HTML("")
        self.picture.add_class("labkit-group-picture")
        self.message = w.HTML("")
        self.add_button = w.Button(description="Add member", icon="user-plus", layout=w.Layout(width="auto"))
        self.remove_button = w.Button(description="Remove member", icon="user-minus", layout=w.Layout(width="auto"))
        self.add_button.on_click(lambda _: self._act(self.group.add_member))
        self.remove_button.on_click(lambda _: self._act(self.group.remove_member))
        self.journal = w.HTML("")
        super().__init__([w.HBox([self.add_button, self.remove_button]), self.message, self.picture, self.journal])
        self.redraw()
        self._task = asyncio.get_running_loop().create_task(self._refresh(refresh_s))

    def _act(self, action) -> None:
        try:
            action()
        except ValueError as exc:
            self.message.value = f"<span style='color:{RED}'>{html.escape(str(exc))}</span>"
            return
        self.message.value = ""
        self.redraw()

    def _color(self, name: str) -> str:
        return SERIES[(int(name.rsplit("-", 1)[-1]) - 1) % len(SERIES)]

    def redraw(self) -> None:
        owners = self.group.owners()
        members = self.group.members
        read = {m.name: f"{m.name} read this step" for m in members}
        rows: list[dict[str, Any]] = []
        for p in range(self.group.settings.partitions):
            owner = owners.get(p)
            rows.append({"partition": p,
                         "owner": Styled(owner, f"background:{self._color(owner)};color:white") if owner
                         else Styled("nobody", f"color:{GREY}"),
                         **{read[m.name]: self.group.step_counts(m)[p] for m in members}})
        rows.append({"partition": Styled("this step", span=2, bold=True),
                     **{read[m.name]: Styled(sum(self.group.step_counts(m).values()), bold=True) for m in members}})
        table = html_table(rows, ["partition", "owner", *read.values()],
                           head_style={read[m.name]: f"color:{self._color(m.name)}" for m in members}).data
        since = ("<div style='color:#666;font-size:90%'>a step begins when a member joins or leaves; "
                 "each member's total since it joined: "
                 + ", ".join(f"{html.escape(m.name)} {m.total}" for m in members) + "</div>") if members else ""
        self.picture.value = table + since
        self.journal.value = "<br>".join(html.escape(line) for line in self.group.log[-8:])

    async def _refresh(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)  # the refresh period
            self.redraw()

    def close(self) -> None:
        self._task.cancel()
        super().close()
