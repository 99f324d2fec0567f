"""Resuming watchers and foreign records, checked with plain websockets and confluent_kafka clients.

Each case was found by an independent tester: a resume point from an older log
stalled a watcher, a slow read-back was cut short, ``resume=`` without ``since=``
crashed the read-back, and a deeply nested record written straight to Kafka took
the records around it down with it.
"""

from __future__ import annotations

import asyncio
import json

import websockets
from confluent_kafka import Producer

from labkit import Sender, Stack
from labkit.client import lab_api_key


async def frames(stack: Stack, query: str, count: int, timeout: float = 30) -> list[dict]:
    """``count`` frames from a plain websockets watcher through the gateway."""
    key = lab_api_key(stack.settings)
    async with websockets.connect(f"{stack.settings.consume_url}?{query}", additional_headers={"apikey": key},
                                  max_size=None) as ws:
        got = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got.append(json.loads(await ws.recv()))
        return got


async def send(stack: Stack, event_type: str, count: int, key: str = "one", batch: int = 100):
    async with Sender(settings=stack.settings) as sender:
        return await sender.send_many([{"type": event_type, "value": i, "key": key} for i in range(count)], batch=batch)


async def test_a_resume_point_past_the_log_end_does_not_stall_the_watcher(stack: Stack, event_type):
    # 2**63 - 1: the largest offset a query may name; a log restarted from 0 is the same case.
    acks_before = await send(stack, event_type, 1)
    partition = acks_before[0].partition
    query = f"types={event_type}&resume={partition}:{2**63 - 1}&since=0"
    watcher = asyncio.create_task(frames(stack, query, 3))
    acks = await send(stack, event_type, 3)
    got = await watcher
    assert {f["id"] for f in got} <= {a.ack for a in acks_before + acks}
    assert len(got) == 3, "new events were skipped as already sent"


async def test_a_long_read_back_is_read_whole(stack: Stack, event_type):
    acks = await send(stack, event_type, 6000, batch=500)
    partition = acks[0].partition
    for wanted in (1000, 3000, 5000):
        start = acks[-wanted - 1].offset  # resume after this offset: the last `wanted` events
        got = await frames(stack, f"types={event_type}&resume={partition}:{start}&since=0", wanted, timeout=60)
        assert [f["value"] for f in got] == list(range(6000 - wanted, 6000)), wanted


async def test_resume_without_since_reads_back_the_named_partitions(stack: Stack, event_type):
    acks = await send(stack, event_type, 10)
    partition = acks[0].partition
    got = await frames(stack, f"types={event_type}&resume={partition}:{acks[4].offset}", 5)
    assert [f["value"] for f in got] == [5, 6, 7, 8, 9]


async def test_a_deeply_nested_foreign_record_costs_only_itself(stack: Stack, collect, event_type):
    live = await collect(types=[event_type])
    producer = Producer({"bootstrap.servers": stack.settings.bootstrap_servers, "linger.ms": 50})
    valid = [json.dumps({"type": event_type, "value": i, "id": f"{event_type}-{i}", "received_at": 1}) for i in range(51)]
    deep = '{"type": "%s", "value": 0, "data": {"k": %s}}' % (event_type, "[" * 2000 + "]" * 2000)
    values = valid[:25] + [deep] + valid[25:]
    for value in values:  # one linger window: they go to Kafka, and come back, in one batch
        producer.produce(stack.settings.topic, value.encode(), key=b"same")
    assert producer.flush(10) == 0
    events = await live.until(51)
    assert sorted(e.value for e in events) == list(range(51))
    replayed = await frames(stack, f"types={event_type}&replay=51", 51)
    assert sorted(f["value"] for f in replayed) == list(range(51))
