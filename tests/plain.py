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
from urllib.parse import urlencode

import websockets

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

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
