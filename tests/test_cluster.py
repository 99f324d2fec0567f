"""A three-node Apache Kafka cluster with two consumer replicas: nodes and replicas killed while events flow.

One stack for the module (three JVMs take a while): ``--broker kafka --nodes 3
--consumers 2``, replication factor 3 and ``min.insync.replicas=2``. The stream goes
through the gateway at about 300 events a second; the watchers are plain websockets
clients that resume (``plain.PlainWatcher``), so labkit's own client hides nothing.
Each test leaves the cluster whole again (``up`` starts what was killed).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator

import pytest
import websockets
from conftest import stored
from plain import PlainWatcher, kill_9, lab_key
from waiting import health, wait_until

from labkit import Settings, Stack
from labkit.event_stream import EventStream

# Events waiting for a partition's new leader, or for a second in-sync replica, get Kafka's
# verdict after this: short enough for the two-nodes-down test, long enough for an election.
MESSAGE_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(broker="kafka", kafka_nodes=3, consumers=2,
                        kafka_properties={"message.timeout.ms": str(MESSAGE_TIMEOUT_MS)})
    with Stack(settings.with_free_ports(state_dir=tmp_path_factory.mktemp("cluster"))) as stack:
        yield stack


def partition_rows(stack: Stack) -> dict[int, dict]:
    return {row["partition"]: row for row in stack.partitions()}


async def whole_again(stack: Stack) -> None:
    """Start whatever was killed, and wait until every partition has its three replicas in sync."""
    await asyncio.to_thread(Stack(stack.settings).up)
    def whole() -> bool:
        rows = partition_rows(stack)
        return len(rows) == 3 and all(len(r["in_sync"]) == 3 for r in rows.values())

    await wait_until(whole, 60, lambda: f"the cluster is not whole again: {partition_rows(stack)}")


def test_the_topic_has_three_replicas_all_in_sync(cluster: Stack):
    rows = partition_rows(cluster)
    assert sorted(rows) == [0, 1, 2]
    for row in rows.values():
        assert sorted(row["replicas"]) == [1, 2, 3] and sorted(row["in_sync"]) == [1, 2, 3], row
    assert len({row["leader"] for row in rows.values()}) == 3, "each node leads one partition"
    listing = subprocess.run(["kcat", "-b", cluster.settings.bootstrap_servers, "-L", "-t", cluster.settings.topic],
                             capture_output=True, text=True, timeout=30)
    assert "3 brokers:" in listing.stdout and listing.stdout.count("isrs: ") == 3, listing.stdout
    names = [row["component"] for row in cluster.status()]
    assert names[:3] == ["broker-1", "broker-2", "broker-3"] and {"consumer-1", "consumer-2"} <= set(names), names


async def test_the_leader_then_a_consumer_replica_killed_every_acked_event_reaches_each_watcher_once(cluster: Stack,
                                                                                                     event_type):
    s = cluster.settings
    watchers = [PlainWatcher(s.consume_url, event_type) for _ in range(2)]
    stream = None
    try:
        for watcher in watchers:
            await wait_until(watcher.opened.is_set, 15, "a plain watcher did not connect")
        stream = EventStream(s, event_type, url=s.produce_url, keys=5, pause_s=0.01)
        await stream.grows_by(300, "the stream did not start")

        leader = partition_rows(cluster)[0]["leader"]
        last_before = max((offset for _, partition, offset in map(stored, stream.acks) if partition == 0), default=-1)
        killed_at = time.monotonic()
        kill_9(cluster, f"broker-{leader}")

        # Acks the dead leader sent just before the kill may still be on their way: wait for the new
        # leader first, then for an ack on partition 0 that came after it.
        await wait_until(lambda: partition_rows(cluster)[0]["leader"] not in (leader, -1), 60,
                         f"no new leader for partition 0 after broker-{leader} died")
        new_leader = partition_rows(cluster)[0]["leader"]
        acks_at_election = len(stream.acks)

        def partition_0_acked_again() -> bool:
            return any(partition == 0 and offset > last_before
                       for _, partition, offset in map(stored, stream.acks[acks_at_election:]))

        await wait_until(partition_0_acked_again, 60,
                         f"no ack on partition 0 after its new leader, broker-{new_leader}")
        election_s = time.monotonic() - killed_at

        async def down_in_health() -> bool:
            seen = await health(cluster, "producer")
            return leader not in seen["brokers_up"] and bool(seen["under_replicated"])

        await wait_until(down_in_health, 30, "the producer's /healthz does not show the node down")
        states = {row["component"]: row["state"] for row in cluster.status()}
        assert states[f"broker-{leader}"] == "stopped", states
        assert all(row["under_replicated"] for row in partition_rows(cluster).values())

        await stream.grows_by(300, "the stream did not go on after the election")
        kill_9(cluster, "consumer-1")
        await stream.grows_by(300, "the stream did not go on after the consumer replica died")
        await stream.finish()

        acked = {(partition, offset): event_id for event_id, partition, offset in map(stored, stream.acks)}
        for watcher in watchers:
            await watcher.got_each_once(acked, 60)
            assert all(resume == {"recovered": True} for resume in watcher.resumes), watcher.resumes
        print(f"\nleader broker-{leader} of partition 0 killed: acks on partition 0 again after {election_s:.1f} s "
              f"(new leader broker-{new_leader}); {len(acked)} acked, 0 lost, 0 twice")
    finally:
        if stream is not None:
            await stream.stop()
        for watcher in watchers:
            await watcher.stop()
    await whole_again(cluster)
    states = {row["component"]: row["state"] for row in cluster.status()}
    assert set(states.values()) == {"running"}, states


async def send_plain(settings: Settings, events: int, event_type: str) -> tuple[list[dict], float]:
    """Events from a plain websockets sender, one per frame; every reply, and the seconds until the last came."""
    key = lab_key(settings)
    began = time.monotonic()
    async with websockets.connect(settings.produce_url, additional_headers={"apikey": key} if key else None) as sender:
        for i in range(events):
            await sender.send(json.dumps({"type": event_type, "value": i, "key": f"k{i}"}))
        replies = [json.loads(await asyncio.wait_for(sender.recv(),
                                                     MESSAGE_TIMEOUT_MS / 1000 + 30)) for _ in range(events)]
    return replies, time.monotonic() - began


async def test_two_nodes_down_every_event_gets_an_error_never_an_ack_and_it_recovers(cluster: Stack, event_type):
    survivor = partition_rows(cluster)[0]["leader"]
    for node in {1, 2, 3} - {survivor}:
        kill_9(cluster, f"broker-{node}")
    try:
        replies, answered_s = await send_plain(cluster.settings, 30, event_type)
        acked = [r for r in replies if "ack" in r]
        assert not acked, f"{len(acked)} events acked with one node of three (min.insync.replicas=2): {acked[:2]}"
        assert all(r.get("error") == "kafka_error" for r in replies), replies[:3]
        print(f"\ntwo nodes down: 30 of 30 events refused ({replies[0].get('detail')}), the last after "
              f"{answered_s:.1f} s")
    finally:
        await whole_again(cluster)
    replies, _ = await send_plain(cluster.settings, 30, event_type)
    assert all("ack" in r for r in replies), [r for r in replies if "ack" not in r][:3]
