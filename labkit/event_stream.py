"""A steady stream of events that outlives a fault: for the lab's fault drill and for the tests that break things.

Small batches of one event type go through a :class:`~labkit.client.Sender` until stopped;
when the connection drops (a gateway or producer stopped, a refused upgrade while one
starts) the stream connects again, and counts the failed attempts. Every ack is kept,
with its partition and offset, so a caller can check that each came back to a watcher.
"""

from __future__ import annotations

import asyncio

import websockets

from labkit.client import Sender, SendError
from labkit.events import Ack
from labkit.settings import Settings
from labkit.waiting import until

__all__ = ["EventStream"]


class EventStream:
    """``batch`` events of ``event_type`` every ``pause_s`` through ``url`` (the gateway by default), until stopped.

    Keys: each event its own (``k<n>``), or ``keys`` of them in turn. Start it inside a running event loop.
    """

    def __init__(self, settings: Settings, event_type: str, *, url: str | None = None, batch: int = 5,
                 pause_s: float = 0.02, keys: int | None = None) -> None:
        self.acks: list[Ack] = []
        self.refused = 0
        self.failed_connections = 0
        self.last_error: BaseException | None = None
        self.stopping = asyncio.Event()
        self._sending = asyncio.Event()  # cleared by pause(): no batch starts
        self._sending.set()
        self._held = asyncio.Event()  # set while paused with no batch in flight
        self.task = asyncio.ensure_future(self._run(settings, url, event_type, batch, pause_s, keys))

    async def _run(self, settings: Settings, url: str | None, event_type: str, batch: int, pause_s: float,
                   keys: int | None) -> None:
        value = 0
        while not self.stopping.is_set():
            try:
                async with Sender(url, settings=settings) as sender:
                    while not self.stopping.is_set():
                        if not self._sending.is_set():
                            self._held.set()
                            await self._sending.wait()
                            self._held.clear()
                            if self.stopping.is_set():  # stopped while paused
                                break
                        events = [{"type": event_type, "value": n, "key": f"k{n % keys if keys else n}"}
                                  for n in range(value, value + batch)]
                        value += batch
                        replies = await sender.send_many(events, raise_on_error=False, timeout=40)
                        self.acks += [reply for reply in replies if reply.ok]
                        self.refused += sum(not reply.ok for reply in replies)
                        await asyncio.sleep(pause_s)  # the pace of the stream, not synchronisation
            except (SendError, OSError, TimeoutError, websockets.WebSocketException) as exc:
                # Refused, reset, closed mid-frame, or an answer that is not a WebSocket upgrade
                # (a gateway starting up): all mean "connect again".
                self.failed_connections += 1
                self.last_error = exc
                await asyncio.sleep(0.1)  # reconnection backoff while the part is down, not synchronisation

    async def pause(self, timeout: float = 30.0) -> None:
        """Start no new batch; return once the batch in flight has its answers (every ack sent so far is in)."""
        self._sending.clear()

        def held() -> bool:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the stream stopped while pausing")
            return self._held.is_set()

        await until(held, lambda: f"the stream's batch in flight got no answer (last error: {self.last_error!r})",
                    timeout)

    def resume(self) -> None:
        self._sending.set()

    @property
    def acked(self) -> set[str]:
        """The ids of the events acknowledged so far."""
        return {ack.ack for ack in self.acks if ack.ack}

    async def grows_by(self, count: int, what: str, timeout: float = 30.0) -> None:
        """Wait until ``count`` more events are acked than now; an error saying ``what`` did not happen if not."""
        target = len(self.acks) + count

        def grown() -> bool:
            if self.task.done():
                self.task.result()
                raise RuntimeError(f"{what}: the stream stopped at {len(self.acks)} acks")
            return len(self.acks) >= target

        await until(grown, lambda: f"{what}: {len(self.acks)} of {target} acks (last error: {self.last_error!r})",
                    timeout)

    async def finish(self) -> None:
        """Stop, and wait until the last batch's replies are in (its error, if the stream failed)."""
        self.stopping.set()
        self._sending.set()  # a paused stream wakes to see it is stopped
        await asyncio.wait_for(self.task, 60)

    async def stop(self) -> None:
        """Stop without caring how it ended (after a failure, or a drill's end)."""
        self.stopping.set()
        self._sending.set()  # a paused stream wakes to see it is stopped
        await asyncio.wait_for(asyncio.gather(self.task, return_exceptions=True), 60)
