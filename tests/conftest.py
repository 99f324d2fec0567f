"""Shared fixtures: one real embedded stack (broker, services, gateway) on free loopback ports.

Watchers in tests are raw (:class:`Collector`): they see every frame the consumer
delivers, duplicates included, so "exactly once" checks can fail.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
from waiting import wait_until

from labkit import Ack, Delivered, Sender, Settings, Stack, watch

pytest_plugins = ["browser_lab"]  # the JupyterLab and Chromium fixtures of the browser tests

MARKER_ROUNDS = 20  # rounds of 8 keyed markers to reach every partition asked for


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings().with_free_ports(state_dir=tmp_path_factory.mktemp("stack"))
    with Stack(settings) as running:
        yield running


@pytest.fixture
def event_type() -> str:
    """A type no other test uses, so watchers can filter on it."""
    return f"t-{uuid.uuid4().hex[:10]}"


def stored(ack: Ack) -> tuple[str, int, int]:
    """An acked event's id, partition and offset (a refusal has none: AssertionError)."""
    assert ack.ack is not None and ack.partition is not None and ack.offset is not None, ack
    return ack.ack, ack.partition, ack.offset


def is_marker(event: Delivered) -> bool:
    return isinstance(event.data, dict) and event.data.get("marker") is True


class Collector:
    """A watcher task gathering events in arrival order: raw (every delivered frame) unless ``raw=False``."""

    def __init__(self, settings: Settings, raw: bool = True, **options: object) -> None:
        self.settings = settings
        self.events: list[Delivered] = []
        self.opened = asyncio.Event()  # set while connected (watch() clears it when the connection drops)
        self.task = asyncio.create_task(self._run(settings, raw, options))

    async def _run(self, settings: Settings, raw: bool, options: dict) -> None:
        async for event in watch(settings=settings, opened=self.opened, raw=raw, **options):
            self.events.append(event)

    def _alive(self) -> None:
        if self.task.done():
            self.task.result()
            raise AssertionError(f"the watcher stopped after {len(self.events)} events")

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait until the watcher's connection is up (again, after a drop)."""

        def up() -> bool:
            self._alive()
            return self.opened.is_set()

        await wait_until(up, timeout, "the watcher did not connect")

    async def until(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        """Wait until ``count`` frames arrived (a duplicate counts); return them all."""

        def enough() -> bool:
            self._alive()
            return len(self.events) >= count

        await wait_until(enough, timeout, lambda: f"the watcher got {len(self.events)} of {count} events")
        return self.events

    async def until_ids(self, ids: Iterable[str], timeout: float = 30.0) -> list[Delivered]:
        """Wait until every id in ``ids`` arrived at least once."""
        wanted = set(ids)

        def missing() -> set[str]:
            self._alive()
            return wanted - {e.id for e in self.events}

        await wait_until(lambda: not missing(), timeout,
                         lambda: f"{len(missing())} of {len(wanted)} events never arrived")
        return self.events

    async def settle(self, event_type: str, partitions: Iterable[int], timeout: float = 30.0) -> list[Delivered]:
        """Make what this watcher holds final; return it without the markers.

        Sends marker events (of ``event_type``) until each partition in ``partitions``
        holds one after the checked events, and waits for every marker here. A watcher
        gets each partition's frames in offset order, so any frame before a marker (a
        duplicate too) has arrived by the time the marker has: no sleep needed.
        """
        wanted, covered, markers = set(partitions), set(), set()
        async with Sender(settings=self.settings) as sender:
            for round_ in range(MARKER_ROUNDS):
                acks = await sender.send_many(
                    [{"type": event_type, "value": 0, "key": f"marker-{round_}-{i}",
                      "data": {"marker": True}} for i in range(8)]
                )
                placed = [stored(ack) for ack in acks]
                markers |= {event_id for event_id, _, _ in placed}
                covered |= {partition for _, partition, _ in placed}
                if covered >= wanted:
                    break
        assert covered >= wanted, f"no marker reached partitions {sorted(wanted - covered)}"
        await self.until_ids(markers, timeout)
        return [event for event in self.events if not is_marker(event)]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def repeated_deliveries(events: Iterable[Delivered]) -> dict[tuple[int, int], int]:
    """(partition, offset) -> times delivered, for every record delivered more than once."""
    counts = Counter((event.partition, event.offset) for event in events)
    return {place: n for place, n in counts.items() if n > 1}


@pytest.fixture
async def collectors() -> AsyncIterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for collector in made:
        await collector.stop()


@pytest.fixture
def collect(collectors: list[Collector], stack: Stack):
    async def start(**options: Any) -> Collector:
        collector = Collector(stack.settings, **options)
        collectors.append(collector)
        await collector.connected()
        return collector

    return start
