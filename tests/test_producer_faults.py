"""The producer across a broker restart with events in flight, seen from a plain WebSocket client.

The embedded broker keeps its state in memory, so after a restart it no longer
knows the producer's idempotence id: librdkafka then fails the producer for
good. Whatever librdkafka does, every event a sender sent must get exactly one
reply (an ack or an error, never silence), /healthz must not say "ok" while
nothing can be produced, and acks must come back once the broker is back.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict

import pytest
import websockets
from waiting import wait_until

from labkit import Settings, Stack

pytestmark = pytest.mark.both_brokers  # `make test` runs this file on Apache Kafka and on noida-db

# Kafka's verdict on an event queued while the broker is away comes after message.timeout.ms:
# short, so that every event's reply arrives within the test.
MESSAGE_TIMEOUT_MS = 8000
RECOVERY_BOUND_S = 30.0


@pytest.fixture
def restartable_stack(tmp_path):
    settings = Settings(kafka_properties={"message.timeout.ms": str(MESSAGE_TIMEOUT_MS)}).with_free_ports(
        state_dir=tmp_path
    )
    with Stack(settings) as stack:
        yield stack


def producer_health(settings: Settings) -> dict:
    url = settings.url(settings.producer_port, "/healthz", "http")
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Stream:
    """One WebSocket to the producer: events with known ids sent at a steady pace, every reply kept by id."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.sent: list[str] = []
        self.replies: dict[str, list[dict]] = defaultdict(list)
        self.acked_at: dict[str, float] = {}
        self.stop = asyncio.Event()
        self.reader = asyncio.create_task(self._read())
        self.writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while not self.stop.is_set():
            event_id = f"e{len(self.sent)}"
            self.sent.append(event_id)
            await self.ws.send(json.dumps({"type": "restart", "value": len(self.sent), "id": event_id}))
            await asyncio.sleep(0.005)  # about 200 events per second, each in its own frame

    async def _read(self) -> None:
        async for frame in self.ws:
            reply = json.loads(frame)
            event_id = reply.get("ack") or reply.get("id")
            self.replies[event_id].append(reply)
            if "ack" in reply:
                self.acked_at[event_id] = time.monotonic()

    def acked_after(self, index: int) -> bool:
        return any(int(event_id[1:]) >= index for event_id in self.acked_at)

    def all_answered(self) -> bool:
        return all(event_id in self.replies for event_id in self.sent)


async def test_every_event_gets_one_reply_across_a_broker_restart_and_acks_resume(restartable_stack: Stack):
    settings = restartable_stack.settings
    async with websockets.connect(settings.url(settings.producer_port)) as ws:
        stream = Stream(ws)
        await wait_until(lambda: len(stream.acked_at) >= 50, 10, "acks before the fault")

        await asyncio.to_thread(restartable_stack.stop_component, "broker")
        # While nothing can be produced, /healthz must say so.
        await wait_until(lambda: asyncio.to_thread(lambda: producer_health(settings)["status"] != "ok"), 15,
                         "/healthz to stop saying ok")
        await asyncio.to_thread(restartable_stack.start_component, "broker")  # it comes back empty
        restarted_at, first_after = time.monotonic(), len(stream.sent)

        await wait_until(lambda: stream.acked_after(first_after), RECOVERY_BOUND_S, "acks after the restart")
        recovered_in = time.monotonic() - restarted_at
        stream.stop.set()
        await stream.writer
        await wait_until(stream.all_answered, MESSAGE_TIMEOUT_MS / 1000 + 20, "a reply to every event")
        await wait_until(lambda: asyncio.to_thread(lambda: producer_health(settings)["status"] == "ok"), 10,
                         "/healthz to say ok again")

    unanswered = [e for e in stream.sent if e not in stream.replies]
    doubled = [e for e in stream.sent if len(stream.replies[e]) > 1]
    assert not unanswered and not doubled, (len(unanswered), len(doubled))
    assert set(stream.replies) == set(stream.sent)
    errors = [r[0] for r in stream.replies.values() if "ack" not in r[0]]
    assert all(r["error"] == "kafka_error" and r["detail"] for r in errors)
    print(f"sent {len(stream.sent)}, acked {len(stream.acked_at)}, errors {len(errors)}, "
          f"acks again {recovered_in:.1f} s after the broker restarted")
