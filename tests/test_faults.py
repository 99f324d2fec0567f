"""Faults in the middle of a stream: nothing acknowledged is lost for a resuming watcher.

Each test runs its own stack (components get killed), streams events, breaks one
component mid-stream, brings it back, and checks that every acknowledged id
reached every watcher exactly once.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from conftest import Collector, repeated_deliveries, stored
from waiting import health, wait_until

from labkit import Sender, Settings, Stack
from labkit.event_stream import EventStream
from labkit.ops.gateway import GatewayConfigError

pytestmark = pytest.mark.both_brokers  # `make test` runs this file on Apache Kafka and on noida-db


@pytest.fixture
def own_stack(tmp_path):
    with Stack(Settings().with_free_ports(state_dir=tmp_path)) as stack:
        yield stack


async def run_through_fault(stack: Stack, event_type: str, fault, sender_url: str | None = None) -> None:
    """Stream, run ``fault(stream, watchers)`` mid-stream, and check every watcher got every ack exactly once."""
    watchers = [Collector(stack.settings, types=[event_type]) for _ in range(2)]
    stream = None
    try:
        for watcher in watchers:
            await watcher.connected()
        stream = EventStream(stack.settings, event_type, url=sender_url or stack.settings.produce_url, keys=5)
        await stream.grows_by(50, "the stream did not start")
        await fault(stream, watchers)
        for watcher in watchers:
            await watcher.connected(30)
        await stream.grows_by(50, "the stream did not go on after the fault")
        await stream.finish()
        partitions = {partition for _, partition, _ in map(stored, stream.acks)}
        for watcher in watchers:
            await watcher.until_ids(stream.acked, timeout=60)
            events = await watcher.settle(event_type, partitions)
            assert not repeated_deliveries(events), "the consumer delivered a record twice to one watcher"
            ids = [e.id for e in events]
            assert len(ids) == len(set(ids)), "an acknowledged event was stored twice in Kafka"
    finally:
        if stream is not None:
            await stream.stop()
        for watcher in watchers:
            await watcher.stop()


def disconnected(watchers: list[Collector]) -> bool:
    return not any(watcher.opened.is_set() for watcher in watchers)


async def test_consumer_restart_loses_nothing(own_stack: Stack, event_type):
    async def restart_consumer(stream: EventStream, watchers: list[Collector]) -> None:
        await asyncio.to_thread(own_stack.stop_component, "consumer")
        await wait_until(lambda: disconnected(watchers), 10, "the watchers did not notice the consumer stopped")
        await stream.grows_by(20, "no event was acked while the consumer was down")  # the watchers miss these
        await asyncio.to_thread(own_stack.start_component, "consumer")

    await run_through_fault(own_stack, event_type, restart_consumer)


async def test_gateway_restart_loses_nothing(own_stack: Stack, event_type):
    async def restart_gateway(stream: EventStream, watchers: list[Collector]) -> None:
        failed = stream.failed_connections
        await asyncio.to_thread(own_stack.stop_component, "gateway")
        await wait_until(lambda: disconnected(watchers), 10, "the watchers did not notice the gateway stopped")
        await wait_until(lambda: stream.failed_connections > failed, 10, "the sender did not fail to reconnect")
        await asyncio.to_thread(own_stack.start_component, "gateway")

    # Senders reconnect through the gateway too; what they had acked must arrive.
    await run_through_fault(own_stack, event_type, restart_gateway)


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
    await watcher.connected()
    own_stack.stop_component("broker")

    async def both_see_the_broker(state: str) -> bool:
        states = [(await health(own_stack, name))["broker"] for name in ("producer", "consumer")]
        return states == [state, state]

    await wait_until(lambda: both_see_the_broker("down"), 15, "the services' health did not report the broker down")
    async with Sender(settings=settings) as sender:
        during = asyncio.create_task(sender.send_many(
            [{"type": event_type, "value": i} for i in range(5)], raise_on_error=False, timeout=45))

        async def held_by_the_producer() -> bool:
            return (await health(own_stack, "producer"))["in_flight"] >= 5

        # The five events wait in the producer for a broker; only then does the broker come back.
        await wait_until(held_by_the_producer, 15, "the producer's health never showed the 5 events in flight")
        own_stack.start_component("broker")  # the embedded broker keeps data in memory: it comes back empty
        replies = await during
        after = await sender.send_many([{"type": event_type, "value": 10 + i} for i in range(5)], raise_on_error=False)
    # Each event sent while the broker was away got an error or a (late) ack; the acked ones arrive.
    acked = [r.ack for r in replies + after if r.ack is not None]
    refused = [r for r in replies + after if not r.ok]
    assert len(acked) + len(refused) == 10
    assert all(r.error == "kafka_error" and r.id for r in refused)
    assert all(r.ok for r in after), [r.detail for r in after if not r.ok]
    try:
        await watcher.until_ids(acked, timeout=30)
    except AssertionError as missing:  # say what the consumer was doing: the next reader needs it
        state = await health(own_stack, "consumer")
        raise AssertionError(f"{missing}; consumer health: {state}; its log ends: "
                             f"{own_stack.log_tail('consumer', 8)}") from None
    assert (await health(own_stack, "producer"))["broker"] == "up"
    await watcher.stop()


async def test_gateway_reload_keeps_connections_and_refuses_a_broken_file(tmp_path, event_type):
    import yaml

    kong_path = tmp_path / "kong.yml"
    kong = yaml.safe_load(Settings().kong_config.read_text())
    kong_path.write_text(yaml.safe_dump(kong))
    settings = Settings(kong_config=kong_path).with_free_ports(state_dir=tmp_path / "state")
    with Stack(settings) as stack:
        watcher = Collector(settings, types=[event_type])
        await watcher.connected()
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


async def test_a_paused_stream_has_every_batch_answered_and_sends_again_on_resume(stack: Stack, event_type):
    """The lost-log drill pauses its stream across the broker's restart, so no batch is acked half by each log."""
    stream = EventStream(stack.settings, event_type)
    try:
        await stream.grows_by(10, "the stream did not start")
        await stream.pause()
        paused_at = len(stream.acks)
        assert paused_at % 5 == 0  # whole batches: the one in flight was answered before pause() returned
        async with Sender(settings=stack.settings) as sender:
            for _ in range(3):  # round trips through the same producer: a stream still sending would add acks
                assert (await sender.send({"type": f"{event_type}-other", "value": 1})).ok
        assert len(stream.acks) == paused_at
        stream.resume()
        await stream.grows_by(10, "the stream did not send again after resume()")
        await stream.pause()
        await asyncio.wait_for(stream.stop(), 10)  # a drill that fails while paused still stops its stream
    finally:
        await stream.stop()
