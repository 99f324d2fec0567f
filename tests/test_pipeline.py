"""End to end through the real gateway, producer, broker and consumer."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import psutil
import pytest
from conftest import repeated_deliveries

from labkit import Sender, Settings, Stack
from labkit.ops.brokers import BrokerKind

DELIVERED_FIELDS = ("id", "type", "value", "key", "sent_at", "received_at", "topic", "partition", "offset", "kafka_ts",
                    "delivered_at")


async def test_every_acknowledged_event_reaches_every_watcher_once_in_order(stack: Stack, collect, event_type: str):
    watchers = [await collect(types=[event_type]) for _ in range(3)]
    keys = [f"user-{n}" for n in range(7)]

    async def send(name: str, batch: int) -> list:
        events = [
            {"type": event_type, "value": i, "key": keys[i % len(keys)], "data": {"sender": name, "seq": i}}
            for i in range(500)
        ]
        async with Sender(settings=stack.settings) as sender:
            return await sender.send_many(events, batch=batch)

    acks_a, acks_b = await asyncio.gather(send("a", 1), send("b", 25))
    acked = {ack.ack for ack in acks_a + acks_b}
    assert len(acked) == 1000
    partitions = {ack.partition for ack in acks_a + acks_b}

    for watcher in watchers:
        await watcher.until_ids(acked)
        events = await watcher.settle(event_type, partitions)  # a duplicate would have arrived before the markers
        assert not repeated_deliveries(events), "a record was delivered twice"
        ids = [e.id for e in events]
        assert len(ids) == 1000 and set(ids) == acked
        for event in events:
            for name in DELIVERED_FIELDS:
                assert getattr(event, name) not in (None, "", -1), name
            assert event.sent_at <= event.received_at + 1 <= event.delivered_at + 1
        # Per key, events arrive in the order Kafka stored them, and each sender's sequence is kept.
        by_key = defaultdict(list)
        for event in events:
            by_key[event.key].append(event)
        for key, keyed in by_key.items():
            assert len({e.partition for e in keyed}) == 1, key
            offsets = [e.offset for e in keyed]
            assert offsets == sorted(offsets), key
            for name in ("a", "b"):
                seqs = [e.data["seq"] for e in keyed if e.data["sender"] == name]
                assert seqs == sorted(seqs), (key, name)


async def test_types_filter_and_replay(stack: Stack, collect, event_type: str):
    other = event_type + "-other"
    live = await collect(types=[event_type, other])
    async with Sender(settings=stack.settings) as sender:
        await sender.send_many([{"type": event_type, "value": i} for i in range(5)] + [{"type": other, "value": 0}])
    await live.until(6)  # the consumer holds them all now (an ack comes from Kafka, before the consumer reads)
    replayed = await collect(types=[event_type], replay=3)
    events = await replayed.until(3)
    assert [e.value for e in events] == [2, 3, 4]
    only_other = await collect(types=[other], replay=10)
    assert [e.type for e in await only_other.until(1)] == [other]


def test_a_fresh_consumer_starts_every_partition_at_a_numbered_offset(tmp_path):
    # An empty partition starts at its end offset, looked up when the consumer starts. OFFSET_END instead is
    # resolved by librdkafka at the first fetch, later, and skipped a record acked in between: a readiness
    # probe sent by a watcher that connected while a slow consumer was still starting.
    with Stack(Settings().with_free_ports(state_dir=tmp_path)) as fresh:
        positions = {int(partition): offset for partition, offset in fresh.health("consumer")["positions"].items()}
        assert sorted(positions) == list(range(fresh.settings.partitions)), positions
        assert all(offset >= 0 for offset in positions.values()), positions


def test_down_leaves_no_process_and_no_port(tmp_path):
    settings = Settings().with_free_ports(state_dir=tmp_path)
    stack = Stack(settings).up()
    pids = [row["pid"] for row in stack.status()]
    assert all(pids) and len(pids) == 4
    assert Stack(settings).up().settings == stack.settings  # a second up adopts the running stack
    stopped = stack.down()
    assert sorted(stopped) == ["broker", "consumer", "gateway", "producer"]
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    ports = {settings.producer_port, settings.consumer_port, settings.gateway_port, settings.kafka_port}
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert not ports & listening
    assert [row["state"] for row in Stack(settings).status()] == ["stopped"] * 4


def test_reading_status_changes_nothing_and_adopt_takes_the_running_settings(stack: Stack):
    reader = Stack(Settings(state_dir=stack.state_dir))  # default ports: not those the running stack uses
    before = reader.settings
    rows = {row["component"]: row for row in reader.status()}
    assert {name: row["state"] for name, row in rows.items()} == dict.fromkeys(
        ["broker", "producer", "consumer", "gateway"], "running")
    assert str(stack.settings.producer_port) in rows["producer"]["url"]  # read from the running stack's record
    assert reader.settings is before
    assert reader.adopt() and reader.settings.producer_port == stack.settings.producer_port


def test_status_describes_the_broker_as_it_started_not_the_java_found_now(stack: Stack, monkeypatch):
    """A JVM keeps the Java it started on: status shows the recorded detail, whatever JAVA_HOME says today."""
    started = {row["component"]: row["detail"] for row in stack.status()}["broker"]
    monkeypatch.setattr(BrokerKind, "describe", lambda self, settings: "Apache Kafka (Java 99 at /elsewhere)")
    assert {row["component"]: row["detail"] for row in Stack(stack.settings).status()}["broker"] == started


def test_each_component_carries_its_own_start_hooks(tmp_path):
    """The topic is made by the broker labkit starts once it answers; with an external broker, before the producer."""
    embedded = {part.name: part for part in Stack(Settings(state_dir=tmp_path)).components()}
    assert embedded["broker"].after_ready is not None and embedded["producer"].prepare is None
    assert "watchers that resume" in embedded["broker"].restarted_note
    external = {part.name: part for part in Stack(Settings(state_dir=tmp_path,
                                                           kafka_bootstrap="kafka:9092")).components()}
    assert "broker" not in external and external["producer"].prepare is not None
    assert external["consumer"].prepare is None


def test_a_cluster_named_explicitly_is_the_external_broker_whatever_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_BROKER", "kafka")  # as `LABKIT_BROKER=kafka make test` runs every test
    assert Settings(state_dir=tmp_path, kafka_bootstrap="kafka:9092").broker == "external"
    with pytest.raises(ValueError, match="names an external cluster, but broker is 'kafka'"):
        Settings(state_dir=tmp_path, kafka_bootstrap="kafka:9092", broker="kafka")  # both explicit: a contradiction
    monkeypatch.setenv("LABKIT_KAFKA_BOOTSTRAP", "kafka:9092")
    with pytest.raises(ValueError, match="drop one"):
        Settings(state_dir=tmp_path)  # both from the environment: a contradiction too
