"""Faults in the middle of a stream: nothing acknowledged is lost for a resuming watcher.

Each test runs its own stack (components get killed), streams events, breaks one
component mid-stream, brings it back, and checks that every acknowledged id
reached every watcher exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
import websockets

from labkit import Sender, SendError, Settings, Stack
from labkit.gateway import GatewayConfigError
from conftest import Collector


@pytest.fixture
def own_stack(tmp_path):
    with Stack(Settings().with_free_ports(state_dir=tmp_path)) as stack:
        yield stack


async def stream(sender_url: str, settings: Settings, event_type: str, stop: asyncio.Event, acked: list[str]) -> None:
    """Send small batches until told to stop; reconnect when the connection drops; keep what was acked."""
    sequence = 0
    while not stop.is_set():
        try:
            async with Sender(sender_url, settings=settings) as sender:
                while not stop.is_set():
                    batch = [{"type": event_type, "value": sequence + i, "key": f"k{(sequence + i) % 5}"} for i in range(5)]
                    sequence += 5
                    replies = await sender.send_many(batch, raise_on_error=False, timeout=40)
                    acked += [r.ack for r in replies if r.ok]
                    await asyncio.sleep(0.02)
        except (SendError, OSError):
            await asyncio.sleep(0.1)


async def run_through_fault(stack: Stack, event_type: str, fault, sender_url: str | None = None) -> None:
    watchers = [Collector(stack.settings, types=[event_type]) for _ in range(2)]
    for watcher in watchers:
        await asyncio.wait_for(watcher.opened.wait(), 10)
    stop, acked = asyncio.Event(), []
    sender = asyncio.create_task(stream(sender_url or stack.settings.produce_url, stack.settings, event_type, stop, acked))
    try:
        await asyncio.sleep(0.5)
        before = len(acked)
        await asyncio.to_thread(fault)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(sender, 60)
        assert before > 0 and len(acked) > before + 20, "the stream did not go on across the fault"
        for watcher in watchers:
            events = await watcher.until(len(acked), timeout=60)
            await asyncio.sleep(0.3)
            ids = [e.id for e in watcher.events]
            assert len(ids) == len(set(ids)), "duplicates reached the watcher"
            assert set(acked) <= set(ids), f"{len(set(acked) - set(ids))} acknowledged events were lost"
    finally:
        stop.set()
        for watcher in watchers:
            await watcher.stop()


async def test_consumer_restart_loses_nothing(own_stack: Stack, event_type):
    def restart_consumer():
        own_stack.stop_component("consumer")
        time.sleep(1.0)  # events go on being produced while no consumer runs
        own_stack.start_component("consumer")

    await run_through_fault(own_stack, event_type, restart_consumer)


async def test_gateway_restart_loses_nothing(own_stack: Stack, event_type):
    def restart_gateway():
        own_stack.stop_component("gateway")
        time.sleep(0.5)
        own_stack.start_component("gateway")

    # Senders reconnect through the gateway too; what they had acked must arrive.
    await run_through_fault(own_stack, event_type, restart_gateway)


def health(stack: Stack, name: str) -> dict:
    port = stack.settings.producer_port if name == "producer" else stack.settings.consumer_port
    with urllib.request.urlopen(stack.settings.url(port, "/healthz", "http"), timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def short_timeout_stack(tmp_path):
    # Kafka's verdict on events that wait for a broker comes after message.timeout.ms.
    settings = Settings(kafka_properties={"message.timeout.ms": "6000"}).with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        yield stack


async def test_broker_down_gives_errors_not_false_acks_and_recovers(short_timeout_stack: Stack, event_type):
    own_stack = short_timeout_stack
    settings = own_stack.settings
    watcher = Collector(settings, types=[event_type])
    await asyncio.wait_for(watcher.opened.wait(), 10)
    own_stack.stop_component("broker")
    for _ in range(100):
        if health(own_stack, "producer")["broker"] == "down" and health(own_stack, "consumer")["broker"] == "down":
            break
        await asyncio.sleep(0.1)
    assert health(own_stack, "producer")["broker"] == "down"
    assert health(own_stack, "consumer")["broker"] == "down"
    async with Sender(settings=settings) as sender:
        during = asyncio.create_task(sender.send_many(
            [{"type": event_type, "value": i} for i in range(5)], raise_on_error=False, timeout=45))
        await asyncio.sleep(1.0)
        own_stack.start_component("broker")  # Tansu keeps data in memory: it comes back empty
        replies = await during
        after = await sender.send_many([{"type": event_type, "value": 10 + i} for i in range(5)], raise_on_error=False)
    # Each event sent while the broker was away got an error or a (late) ack; the acked ones arrive.
    acked = [r.ack for r in replies + after if r.ok]
    refused = [r for r in replies + after if not r.ok]
    assert len(acked) + len(refused) == 10
    assert all(r.error == "kafka_error" and r.id for r in refused)
    assert all(r.ok for r in after), [r.detail for r in after if not r.ok]
    assert {e.id for e in await watcher.until(len(acked), timeout=30)} >= set(acked)
    assert health(own_stack, "producer")["broker"] == "up"
    await watcher.stop()


async def test_gateway_reload_keeps_connections_and_refuses_a_broken_file(tmp_path, event_type):
    import yaml

    kong_path = tmp_path / "kong.yml"
    kong = yaml.safe_load(Settings().kong_config.read_text())
    kong_path.write_text(yaml.safe_dump(kong))
    settings = Settings(kong_config=kong_path).with_free_ports(state_dir=tmp_path / "state")
    with Stack(settings) as stack:
        watcher = Collector(settings, types=[event_type])
        await asyncio.wait_for(watcher.opened.wait(), 10)
        feed_url = settings.url(settings.gateway_port, "/events-feed")

        # An edit: a second path to the consumer.
        consumer = next(s for s in kong["services"] if s["name"] == "consumer")
        consumer["routes"][0]["paths"].append("/events-feed")
        kong_path.write_text(yaml.safe_dump(kong))
        await asyncio.to_thread(stack.reload_gateway)
        async with websockets.connect(feed_url):
            pass

        # A broken edit: refused, and the configuration in force stays.
        consumer["routes"][0]["plugins"] = [{"name": "jwt"}]
        kong_path.write_text(yaml.safe_dump(kong))
        with pytest.raises(GatewayConfigError, match="jwt"):
            await asyncio.to_thread(stack.reload_gateway)
        async with websockets.connect(feed_url):
            pass

        # The watcher connected before both reloads still receives, on the same connection.
        async with Sender(settings=settings) as sender:
            acks = await sender.send_many([{"type": event_type, "value": i} for i in range(3)])
        assert [e.id for e in await watcher.until(3)] == [a.ack for a in acks]
        await watcher.stop()
