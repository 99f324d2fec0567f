"""More consumer processes beside a stack's own, for "N consumers against 1".

The consumer service reads every partition with ``assign()`` and no group, so each
replica sees every event. An extra one is ``labkit serve consumer`` with the stack's
settings on another free port; the bench spreads its watchers over the consumers'
own ports, since the gateway routes ``/consume-events`` to one consumer.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from labkit.ops.stack import _settings_env as settings_env  # how the stack hands its services their settings
from labkit.settings import Settings, free_port

__all__ = ["extra_consumers"]

READY_TIMEOUT_S = 30.0


def _healthy(url: str) -> None:
    with urllib.request.urlopen(url, timeout=1) as response:
        if response.status != 200:
            raise OSError(f"{url} answered {response.status}")


@asynccontextmanager
async def extra_consumers(settings: Settings, count: int, log_dir: Path) -> AsyncIterator[list[tuple[int, str]]]:
    """``count`` more consumers, started and answering /healthz; yields (pid, WebSocket URL) of each."""
    children: list[asyncio.subprocess.Process] = []
    started: list[tuple[int, str]] = []
    try:
        for index in range(count):
            own = settings.replace(consumer_port=free_port(settings.host))
            env = {**os.environ, **settings_env(own)}
            with (log_dir / f"bench-consumer-{index + 2}.log").open("ab") as log:
                child = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "labkit", "serve", "consumer", stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT, env=env,
                )
            children.append(child)
            health = own.url(own.consumer_port, "/healthz", "http")
            async for attempt in AsyncRetrying(stop=stop_after_delay(READY_TIMEOUT_S), wait=wait_fixed(0.1),
                                               retry=retry_if_exception_type(OSError), reraise=True):
                with attempt:
                    if child.returncode is not None:
                        raise RuntimeError(f"an extra consumer exited at start; see {log_dir}")
                    await asyncio.to_thread(_healthy, health)
            started.append((child.pid, own.url(own.consumer_port)))
        yield started
    finally:
        for child in children:
            if child.returncode is None:
                child.terminate()
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
