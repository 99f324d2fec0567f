"""Shared fixtures: one real embedded stack (broker, services, gateway) on free loopback ports."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from labkit import Delivered, Settings, Stack, watch


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings().with_free_ports(state_dir=tmp_path_factory.mktemp("stack"))
    with Stack(settings) as running:
        yield running


@pytest.fixture
def event_type() -> str:
    """A type no other test uses, so watchers can filter on it."""
    return f"t-{uuid.uuid4().hex[:10]}"


class Collector:
    """A watcher task that gathers events until told how many to expect."""

    def __init__(self, settings: Settings, **options: object) -> None:
        self.events: list[Delivered] = []
        self.opened = asyncio.Event()
        self.task = asyncio.create_task(self._run(settings, options))

    async def _run(self, settings: Settings, options: dict) -> None:
        async for event in watch(settings=settings, opened=self.opened, **options):
            self.events.append(event)

    async def until(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        async def enough() -> None:
            while len(self.events) < count:
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"watcher stopped after {len(self.events)} of {count} events")
                await asyncio.sleep(0.01)

        await asyncio.wait_for(enough(), timeout)
        return self.events

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def collectors() -> AsyncIterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for collector in made:
        await collector.stop()


@pytest.fixture
def collect(collectors: list[Collector], stack: Stack):
    async def start(**options: object) -> Collector:
        collector = Collector(stack.settings, **options)
        collectors.append(collector)
        await asyncio.wait_for(collector.opened.wait(), 10)
        return collector

    return start
