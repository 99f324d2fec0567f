"""Resuming watchers and foreign records, checked with plain websockets and confluent_kafka clients.

Each case was found by an independent tester: a resume point from an older log
stalled a watcher, a slow read-back was cut short, ``resume=`` without ``since=``
crashed the read-back, and a deeply nested record written straight to Kafka took
the records around it down with it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from confluent_kafka import Producer
from plain import lab_key
from waiting import wait_until

from labkit import Sender, Stack

pytestmark = pytest.mark.both_brokers  # `make test` runs this file on Apache Kafka and on noida-db


async def frames(stack: Stack, query: str, count: int, timeout: float = 30) -> list[dict]:
    """``count`` event frames from a plain websockets watcher through the gateway (after a resume's first frame)."""
    _, got = await resumed(stack, query, count, timeout)
    return got


async def resumed(stack: Stack, query: str, count: int, timeout: float = 30) -> tuple[dict | None, list[dict]]:
    """The recovery frame (a resume's first; None without resume) and ``count`` event frames after it."""
    key = lab_key(stack.settings)
    async with websockets.connect(f"{stack.settings.consume_url}?{query}", additional_headers={"apikey": key},
                                  max_size=None) as ws:
        recovery: dict | None = None
        got: list[dict] = []
        async with asyncio.timeout(timeout):
            if "resume=" in query or "since=" in query:
                recovery = json.loads(await ws.recv())
                assert set(recovery) <= {"recovered", "reason"}, f"a resume's first frame is its recovery: {recovery}"
            while len(got) < count:
                got.append(json.loads(await ws.recv()))
        return recovery, got


async def send(stack: Stack, event_type: str, count: int, key: str = "one", batch: int = 100):
    async with Sender(settings=stack.settings) as sender:
        return await sender.send_many([{"type": event_type, "value": i, "key": key} for i in range(count)], batch=batch)


async def test_a_resume_point_past_the_log_end_does_not_stall_the_watcher(stack: Stack, event_type):
    # 2**63 - 1: the largest offset a query may name; a log restarted from 0 is the same case.
    acks_before = await send(stack, event_type, 1)
    partition = acks_before[0].partition
    query = f"types={event_type}&resume={partition}:{2**63 - 1}&since=0"
    watcher = asyncio.create_task(resumed(stack, query, 3))
    acks = await send(stack, event_type, 3)
    recovery, got = await watcher
    assert {f["id"] for f in got} <= {a.ack for a in acks_before + acks}
    assert len(got) == 3, "new events were skipped as already sent"
    assert recovery is not None and recovery["recovered"] is False and "restarted" in recovery["reason"]


async def test_a_long_read_back_is_read_whole(stack: Stack, event_type):
    acks = await send(stack, event_type, 6000, batch=500)
    partition = acks[0].partition
    for wanted in (1000, 3000, 5000):
        start = acks[-wanted - 1].offset  # resume after this offset: the last `wanted` events
        recovery, got = await resumed(stack, f"types={event_type}&resume={partition}:{start}&since=0", wanted, 60)
        assert [f["value"] for f in got] == list(range(6000 - wanted, 6000)), wanted
        assert recovery == {"recovered": True}


async def test_resume_without_since_reads_back_the_named_partitions(stack: Stack, event_type):
    acks = await send(stack, event_type, 10)
    partition = acks[0].partition
    recovery, got = await resumed(stack, f"types={event_type}&resume={partition}:{acks[4].offset}", 5)
    assert [f["value"] for f in got] == [5, 6, 7, 8, 9]
    assert recovery == {"recovered": True}


async def test_a_deeply_nested_foreign_record_costs_only_itself(stack: Stack, collect, event_type):
    live = await collect(types=[event_type])
    producer = Producer({"bootstrap.servers": stack.settings.bootstrap_servers, "linger.ms": 50})
    valid = [json.dumps({"type": event_type, "value": i, "id": f"{event_type}-{i}",
                         "received_at": 1}) for i in range(51)]
    nested = "[" * 2000 + "]" * 2000
    deep = f'{{"type": "{event_type}", "value": 0, "data": {{"k": {nested}}}}}'
    values = valid[:25] + [deep] + valid[25:]
    for value in values:  # one linger window: they go to Kafka, and come back, in one batch
        producer.produce(stack.settings.topic, value.encode(), key=b"same")
    assert producer.flush(10) == 0
    events = await live.until(51)
    assert sorted(e.value for e in events) == list(range(51))
    replayed = await frames(stack, f"types={event_type}&replay=51", 51)
    assert sorted(f["value"] for f in replayed) == list(range(51))


async def test_resumes_that_do_not_read_hold_little_memory_and_past_the_pool_are_refused(tmp_path, event_type):
    """A resume over a large topic by a client that never reads: bounded memory, and a bounded pool."""
    import psutil

    from labkit import Settings

    # 20,000 events in one partition: the retention (10,000 by default) would trim what the last resume reads.
    settings = Settings(max_resumes=2, retain_events=30_000).with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        padding = "x" * 900
        async with Sender(settings=settings) as sender:
            acks = await sender.send_many(
                [{"type": event_type, "value": i, "key": "one", "data": {"pad": padding}} for i in range(20_000)],
                batch=50,  # 50 events of 1 KB: under the 64 KiB frame limit
            )
        partition = acks[0].partition
        consumer = psutil.Process({r["component"]: r["pid"] for r in stack.status()}["consumer"])
        before = consumer.memory_info().rss
        key = lab_key(settings)
        query = f"{settings.consume_url}?types={event_type}&resume={partition}:{acks[0].offset - 1}&since=0"
        # websockets stops reading the socket once 16 frames wait unread: these two never read.
        stalled = [await websockets.connect(query, additional_headers={"apikey": key}, max_size=None) for _ in range(2)]
        try:
            async with websockets.connect(query, additional_headers={"apikey": key}) as third:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(third.recv(), 10)
            assert closed.value.rcvd.code == 1013 and "too many resumes" in closed.value.rcvd.reason
            grown_mb = (consumer.memory_info().rss - before) / 2**20
            assert grown_mb < 30, f"the consumer grew {grown_mb:.0f} MB for two stalled resumes of 20 MB each"
        finally:
            for ws in stalled:
                await ws.close()
        # With the stalled ones gone, a resume that reads gets everything.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                got = await frames(stack, query.split("?", 1)[1], 20_000, timeout=60)
                break
            except websockets.ConnectionClosed as exc:  # the pool frees a slot when the stalled read-backs notice
                assert exc.rcvd is not None and exc.rcvd.code == 1013, exc
                assert asyncio.get_running_loop().time() < deadline, "the pool never freed its slots"
        assert [f["value"] for f in got] == list(range(20_000))


async def test_a_broker_restart_changes_the_epoch_and_a_resume_from_before_says_so(tmp_path, event_type):
    import urllib.request

    from labkit import Settings

    settings = Settings().with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        await send(stack, event_type, 5)
        last = (await frames(stack, f"types={event_type}&replay=5", 5))[-1]
        old_epoch, partition, offset = last["epoch"], last["partition"], last["offset"]
        assert old_epoch
        # A consumer restart keeps the log, and so the epoch: the resume is whole.
        stack.stop_component("consumer")
        stack.start_component("consumer")
        recovery, got = await resumed(stack,
                                      f"types={event_type}&resume={partition}:{offset - 1}&since=0&epoch={old_epoch}",
                                      1)
        assert recovery == {"recovered": True} and got[0]["offset"] == offset

        # A broker that lost its log (stopped, its data folder wiped: what any Tansu restart does) starts a
        # new one: a resume from the old log says so, then gets the new events.
        import shutil

        from labkit.ops.brokers import broker_kind

        stack.stop_component("broker")
        shutil.rmtree(broker_kind(settings).data_dir(settings))
        stack.start_component("broker")
        health_url = settings.url(settings.consumer_port, "/healthz", "http")

        def epoch_now() -> str:
            with urllib.request.urlopen(health_url, timeout=5) as response:
                return json.loads(response.read())["epoch"]

        async def new_log_seen() -> bool:
            return await asyncio.to_thread(epoch_now) not in (old_epoch, "")

        await wait_until(new_log_seen, 60, "the consumer's health answer kept the old log's epoch")
        # The producer's idempotent session belongs to the old log: its first events get kafka_error until
        # it has started a new one. Each is sent again until it is stored.
        async with Sender(settings=settings) as sender, asyncio.timeout(60):
            for value in range(3):
                while not (await sender.send_many([{"type": event_type, "value": value, "key": "one"}],
                                                  raise_on_error=False))[0].ok:
                    pass
        query = f"types={event_type}&resume={partition}:{offset}&since=0&epoch={old_epoch}"
        recovery, got = await resumed(stack, query, 3)
        assert recovery is not None and recovery["recovered"] is False and "restarted" in recovery["reason"], recovery
        assert [f["value"] for f in got] == [0, 1, 2]
        assert {f["epoch"] for f in got} == {epoch_now()} != {old_epoch}


async def test_a_resume_naming_a_partition_the_topic_lacks_is_not_recovered(stack: Stack, event_type):
    acks = await send(stack, event_type, 2)
    partition = acks[0].partition
    for missing in (stack.settings.partitions, 999999):
        query = f"types={event_type}&resume={partition}:{acks[0].offset},{missing}:5&since=0"
        recovery, got = await resumed(stack, query, 1)
        assert recovery is not None, "a resume's first frame is its recovery"
        assert recovery["recovered"] is False and f"no partition {missing}" in recovery["reason"], recovery
        assert got[0]["id"] == acks[1].ack  # the partitions that exist are still read back


async def test_the_consumer_gives_read_back_memory_back(tmp_path, event_type):
    """16 whole-log read-backs, then RSS within 60 MB of its idle figure (it grew by 280 MB and kept it before)."""
    import psutil

    from labkit import Settings

    # The 4 read-backs of each round come from one address: its share of the pool raised for them.
    # noida-db answers a fetch with all it holds (it ignores fetch.max.bytes): the growth shows soonest there.
    settings = Settings(broker="noida", max_resumes_per_address=4).with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        async with Sender(settings=settings) as sender:
            acks = await sender.send_many(
                [{"type": event_type, "value": i, "key": str(i % 3),
                  "data": {"pad": "x" * 900}} for i in range(12_000)],
                batch=50,
            )
        consumer = psutil.Process({r["component"]: r["pid"] for r in stack.status()}["consumer"])
        idle_mb = consumer.memory_info().rss / 2**20
        firsts: dict[int, int] = {}
        for ack in acks:
            firsts.setdefault(ack.partition, ack.offset)
        query = f"types={event_type}&resume={','.join(f'{p}:{o - 1}' for p, o in firsts.items())}&since=0"
        for _ in range(4):
            rounds = await asyncio.gather(*(resumed(stack, query, len(acks), timeout=60) for _ in range(4)))
            assert all(recovery == {"recovered": True} and len(got) == len(acks) for recovery, got in rounds)

        def rss_mb() -> float:
            return consumer.memory_info().rss / 2**20

        await wait_until(lambda: stack.health("consumer")["resuming"] == 0 and rss_mb() <= idle_mb + 60, 20,
                         lambda: f"the consumer holds {rss_mb():.0f} MB after its read-backs, idle {idle_mb:.0f} MB")
