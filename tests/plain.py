"""Clients labkit did not write, for tests that must not trust labkit's own (it resumes and deduplicates).

:class:`PlainWatcher` speaks the consumer's resume protocol on plain ``websockets``;
:func:`kill_9` kills a component of a running stack the hard way; :func:`lab_key` is the
API key such clients show the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping
from urllib.parse import urlencode

import websockets
from waiting import wait_until

from labkit import Settings, Stack
from labkit.discovery import lab_api_key


def lab_key(settings: Settings) -> str:
    """The lab's API key (kong/kong.yml's, or settings.api_key): every stack the tests start has one."""
    key = lab_api_key(settings)
    assert key, f"no API key in settings nor in {settings.kong_config}"
    return key


def kill_9(stack: Stack, component: str) -> None:
    (row,) = [row for row in stack.status() if row["component"] == component]
    os.kill(row["pid"], signal.SIGKILL)


class PlainWatcher:
    """A resuming watcher on plain websockets: what the consumer's protocol promises, without labkit's client."""

    def __init__(self, url: str, event_type: str) -> None:
        self.frames: list[dict] = []
        self.resumes: list[dict] = []  # the {"recovered": ...} frame of each resume
        self.connections = 0
        self.opened = asyncio.Event()
        self.task = asyncio.create_task(self._run(url, event_type))

    async def _run(self, url: str, event_type: str) -> None:
        positions: dict[int, int] = {}
        epoch: str | None = None
        since: str | None = None
        while True:
            query = {"types": event_type}
            if since is not None:
                query |= {"resume": ",".join(f"{p}:{o}" for p, o in sorted(positions.items())), "since": since}
                if epoch is not None:  # none yet: the resume names no epoch rather than "None"
                    query["epoch"] = epoch
            try:
                async with websockets.connect(f"{url}?{urlencode(query, safe=',:')}", max_size=None) as ws:
                    since = since or str(int(time.time() * 1000) - 1000)
                    self.connections += 1
                    self.opened.set()
                    async for frame in ws:
                        message = json.loads(frame)
                        if "recovered" in message:
                            self.resumes.append(message)
                            continue
                        self.frames.append(message)
                        positions[message["partition"]] = message["offset"]
                        epoch = message["epoch"]
            except (OSError, websockets.WebSocketException):
                pass
            self.opened.clear()
            await asyncio.sleep(0.05)  # reconnection backoff, not synchronisation

    def places(self) -> Counter[tuple[int, int]]:
        """How many event frames arrived at each (partition, offset)."""
        return Counter((f["partition"], f["offset"]) for f in self.frames)

    async def got_each_once(self, acked: Mapping[tuple[int, int], str], timeout: float) -> None:
        """Wait until every acked (partition, offset) arrived; then none may have come twice or with another id."""
        def misses() -> str:
            return f"a plain watcher misses {len(set(acked) - set(self.places()))} of {len(acked)} acked events"

        await wait_until(lambda: set(acked) <= set(self.places()), timeout, misses)
        assert not [p for p, n in self.places().items() if n > 1], "a record reached a plain watcher twice"
        assert {(f["partition"], f["offset"]): f["id"] for f in self.frames
                if (f["partition"], f["offset"]) in acked} == acked

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
