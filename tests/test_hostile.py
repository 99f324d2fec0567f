"""Hostile input: random bytes, floods, idle and half-open connections, odd JSON.

After each, the service still serves a well-behaved client and delivers its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import urllib.request

import pytest
import websockets
from conftest import Collector, repeated_deliveries
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from waiting import health, wait_until
from websockets.frames import CloseCode
from websockets.typing import Origin

from labkit import Sender, Settings, Stack
from labkit.events import Event, EventError, FrameError, parse_frame

MAX_BATCH = 50

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
events = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=30), "value": st.integers(-10**15, 10**15) | st.floats(allow_nan=False,
                                                                                                 allow_infinity=False)},
    optional={
        "id": st.text(min_size=1, max_size=40),
        "key": st.text(min_size=1, max_size=40),
        "data": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "sent_at": st.floats(0, 2e12),
    },
)


@given(st.binary(max_size=300))
def test_parser_answers_any_bytes_with_events_or_named_errors(data: bytes):
    try:
        items = parse_frame(data, MAX_BATCH)
    except FrameError as exc:
        assert exc.error.code in {"invalid_json", "invalid_frame", "empty_batch", "batch_too_large", "too_deep"}
        assert exc.error.detail
        return
    except UnicodeDecodeError:
        return  # invalid UTF-8: the WebSocket layer closes with 1007 before the parser sees it
    for item in items:
        assert isinstance(item, Event | EventError)


@given(json_values)
def test_parser_answers_any_json(value):
    frame = json.dumps(value)
    try:
        items = parse_frame(frame, MAX_BATCH)
    except FrameError as exc:
        assert exc.error.detail
        return
    for item in items:
        assert isinstance(item, Event) or (item.code == "invalid_event" and "`$" in item.detail)


@given(st.lists(events, min_size=1, max_size=MAX_BATCH))
@hypothesis_settings(max_examples=200)
def test_valid_events_are_read_back_unchanged(batch):
    items = parse_frame(json.dumps(batch), MAX_BATCH)
    assert all(isinstance(item, Event) for item in items)
    for item, original in zip(items, batch, strict=True):
        assert item.type == original["type"] and item.value == original["value"]
        assert getattr(item, "data", None) == original.get("data", getattr(item, "data", None))


@given(events, st.sampled_from(["type", "value"]), json_values)
def test_a_wrong_type_for_a_required_field_is_named(event, field, wrong):
    if field == "type" and isinstance(wrong, str) and wrong:
        return
    if field == "value" and isinstance(wrong, int | float) and not isinstance(wrong, bool):
        return
    items = parse_frame(json.dumps({**event, field: wrong}), MAX_BATCH)
    assert isinstance(items[0], EventError) and f"$.{field}" in items[0].detail


async def still_serves(stack: Stack, collect, event_type: str) -> None:
    # A type of its own: an event acked just before this watcher opened may still be on its way to it.
    fresh_type = f"{event_type}-after"
    watcher = await collect(types=[fresh_type])
    async with Sender(settings=stack.settings) as sender:
        ack = await sender.send({"type": fresh_type, "value": 1})
    assert [e.id for e in await watcher.until(1)] == [ack.ack]


async def test_random_frames_and_raw_garbage(stack: Stack, collect, event_type):
    rng = random.Random(7)
    producer = stack.settings.url(stack.settings.producer_port)
    async with websockets.connect(producer) as ws:
        for _ in range(50):
            await ws.send(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
            assert json.loads(await ws.recv())["error"] == "binary_frame"
            await ws.send("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 200))))
            assert "error" in json.loads(await ws.recv())
        # Deeply nested JSON within the size limit: refused by name, the connection goes on.
        await ws.send('{"type": "a", "value": 1, "data": {"x": ' + "[" * 5000 + "]" * 5000 + "}}")
        assert json.loads(await ws.recv())["error"] == "too_deep"
        await ws.send(json.dumps({"type": event_type, "value": 0}))
        assert "ack" in json.loads(await ws.recv())
    for port in (stack.settings.producer_port, stack.settings.consumer_port, stack.settings.gateway_port):
        with socket.create_connection((stack.settings.host, port), timeout=5) as raw:
            raw.sendall(os.urandom(2000) + b"\r\n\r\n")
            raw.settimeout(5)
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                raw.recv(1000)  # an HTTP error or a close; either way, not a hang
    await still_serves(stack, collect, event_type)


async def test_consumer_refuses_bad_query_parameters(stack: Stack):
    for query in ("replay=-1", "replay=abc", "types=", "resume=x", "since=soon", "colour=red"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(stack.settings.url(stack.settings.consumer_port, f"/?{query}")):
                pass
        assert refused.value.response.status_code == 400
        assert json.loads(refused.value.response.body)["error"] == "bad_query"


async def test_foreign_origin_is_refused_by_the_services_too(stack: Stack):
    for port in (stack.settings.producer_port, stack.settings.consumer_port):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(stack.settings.url(port), origin=Origin("https://evil.example")):
                pass
        assert refused.value.response.status_code == 403
        async with websockets.connect(stack.settings.url(port), origin=Origin("http://localhost:8888")):
            pass


@pytest.fixture
def strict_stack(tmp_path):
    settings = Settings(max_connections=20, ping_interval_s=0.5, ping_timeout_s=0.5,
                        handshake_timeout_s=1).with_free_ports(
        state_dir=tmp_path
    )
    with Stack(settings) as stack:
        yield stack


async def test_connection_flood_idle_and_half_open(strict_stack: Stack, collectors, event_type):
    settings = strict_stack.settings
    producer = settings.url(settings.producer_port)
    # A flood: past the limit, connections are closed with 1013 (try again later).
    flood = [await websockets.connect(producer) for _ in range(25)]

    async def senders_are(count: int) -> bool:
        return (await health(strict_stack, "producer"))["senders"] == count

    def closed() -> int:
        return sum(ws.close_code is not None for ws in flood)

    await wait_until(lambda: closed() >= 5, 10, lambda: f"{closed()} of 25 connections were closed, not 5")
    await wait_until(lambda: senders_are(20), 10, "the producer's health did not count 20 senders")
    codes = [ws.close_code for ws in flood]
    assert codes.count(CloseCode.TRY_AGAIN_LATER) == 5 and codes.count(None) == 20
    for ws in flood:
        await ws.close()
    await wait_until(lambda: senders_are(0), 10, "the producer's health still counts the closed connections")
    # Idle but answering pings: stays open well past the ping timeout.
    idle = await websockets.connect(producer)
    # Half-open: a peer that stops answering (no pings answered) is dropped.
    silent = await websockets.connect(producer, ping_interval=None)
    silent.transport.pause_reading()
    # A handshake that never finishes is dropped too.
    stalled = socket.create_connection((settings.host, settings.producer_port))
    stalled.settimeout(10)
    assert await asyncio.to_thread(stalled.recv, 100) == b"", "the service did not drop a stalled handshake"
    stalled.close()
    # The silent peer is dropped once it misses a ping; the idle one, as old, answered the same pings.
    await wait_until(lambda: senders_are(1), 10, "the producer did not drop the peer that stopped answering pings")
    assert idle.state is websockets.State.OPEN
    await idle.close()
    silent.transport.abort()
    watcher = Collector(settings, types=[event_type])
    collectors.append(watcher)
    await watcher.connected()
    async with Sender(settings=settings) as sender:
        ack = await sender.send({"type": event_type, "value": 1})
    assert [e.id for e in await watcher.until(1)] == [ack.ack]


async def test_a_slow_watcher_is_cut_off_without_delaying_the_others(tmp_path, collectors, event_type):
    settings = Settings(watcher_queue=1000).with_free_ports(state_dir=tmp_path)
    with Stack(settings):
        slow = await websockets.connect(settings.url(settings.consumer_port, f"/?types={event_type}"), max_size=None)
        slow.transport.pause_reading()  # a client that stops reading: its queue fills up
        fast = Collector(settings, types=[event_type])
        collectors.append(fast)
        await fast.connected()
        padding = "x" * 4000

        def overflows() -> float:
            metrics = urllib.request.urlopen(settings.url(settings.consumer_port, "/metrics", "http")).read().decode()
            overflows = next(line for line in metrics.splitlines() if line.startswith("labkit_queue_overflows_total"))
            return float(overflows.split()[1])

        acks = []
        async with Sender(settings=settings) as sender:
            # Until the kernel's socket buffers are full and the slow watcher's queue overflows.
            for _ in range(20):
                acks += await sender.send_many(
                    [{"type": event_type, "value": i, "data": {"pad": padding}} for i in range(1000)], batch=10
                )
                if await asyncio.to_thread(overflows) >= 1:
                    break
        assert await asyncio.to_thread(overflows) >= 1
        # The watcher that keeps reading got everything, once (had it been cut off too, it resumed).
        await fast.until_ids([a.ack for a in acks], timeout=60)
        events = await fast.settle(event_type, {a.partition for a in acks})
        assert not repeated_deliveries(events), "a record was delivered twice to the watcher that kept reading"
        assert sorted(e.id for e in events) == sorted(a.ack for a in acks)
        slow.transport.resume_reading()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await slow.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.TRY_AGAIN_LATER
