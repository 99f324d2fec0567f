"""A steady stream of events for tests that break or resume something mid-stream.

Small keyed batches go out until stopped; the stream reconnects when its
connection drops, and keeps every ack (with its partition and offset).
"""

from __future__ import annotations

import asyncio

import websockets

from labkit import Ack, Sender, SendError, Settings
from waiting import wait_until


class Stream:
    """Small batches sent until stopped, reconnecting when the connection drops; what was acked is kept."""

    def __init__(self, sender_url: str, settings: Settings, event_type: str, pause_s: float = 0.02) -> None:
        self.acks: list[Ack] = []
        self.failed_connections = 0
        self.last_error: BaseException | None = None
        self.pause_s = pause_s
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._run(sender_url, settings, event_type))

    @property
    def acked(self) -> list[str]:
        return [ack.ack for ack in self.acks]

    async def _run(self, sender_url: str, settings: Settings, event_type: str) -> None:
        sequence = 0
        while not self.stop.is_set():
            try:
                async with Sender(sender_url, settings=settings) as sender:
                    while not self.stop.is_set():
                        batch = [{"type": event_type, "value": sequence + i, "key": f"k{(sequence + i) % 5}"} for i in range(5)]
                        sequence += 5
                        replies = await sender.send_many(batch, raise_on_error=False, timeout=40)
                        self.acks += [r for r in replies if r.ok]
                        await asyncio.sleep(self.pause_s)  # pacing the load (5 events a pause), not synchronisation
            except (SendError, OSError, TimeoutError, websockets.WebSocketException) as exc:
                # Refused, reset, closed mid-frame, or an answer that is not a WebSocket upgrade
                # (a gateway starting up): all mean "connect again".
                self.failed_connections += 1
                self.last_error = exc
                await asyncio.sleep(0.1)  # reconnection backoff while the gateway is down, not synchronisation

    async def grows_by(self, count: int, what: str, timeout: float = 30.0) -> None:
        """Wait until ``count`` more events are acked than now."""
        target = len(self.acks) + count

        def grown() -> bool:
            if self.task.done():
                self.task.result()
                raise AssertionError(f"{what}: the stream stopped at {len(self.acks)} acks")
            return len(self.acks) >= target

        await wait_until(grown, timeout, lambda: f"{what}: {len(self.acks)} of {target} acks (last error: {self.last_error!r})")

    async def finish(self) -> None:
        """Stop, and wait until the last batch's replies are in."""
        self.stop.set()
        await asyncio.wait_for(self.task, 60)

    async def abandon(self) -> None:
        """Stop without caring how (cleanup after a failure)."""
        self.stop.set()
        await asyncio.gather(self.task, return_exceptions=True)
