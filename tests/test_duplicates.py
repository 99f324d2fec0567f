"""The duplicate probe through the real stack: a duplicate is the same (partition, offset) delivered twice.

Two events with the same id are two events, for raw watchers and for ``watch()``.
A raw watcher that resumes while events flow (the consumer reads back what it
missed while live events queue up), or resumes with a replay, must see every
record after its resume point once. Each check ends with markers, not a sleep:
see ``Collector.settle``.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import websockets
from conftest import Collector, repeated_deliveries, stored
from plain import lab_key

from labkit import Ack, Sender, Stack
from labkit.event_stream import EventStream
from labkit.events import now_ms

RESUMES = 8  # watchers resuming one after another while the stream flows
BETWEEN_RESUMES = 100  # acks between one resume and the next
STREAM_PAUSE_S = 0.002  # a fast stream: the consumer's live reader is often just behind the newest ack


async def test_two_events_with_the_same_id_are_two_events(stack: Stack, collect, event_type):
    raw = await collect(types=[event_type])
    deduplicated = await collect(types=[event_type], raw=False)
    headers = {"apikey": lab_key(stack.settings)}
    acks = []
    async with websockets.connect(stack.settings.produce_url, additional_headers=headers) as ws:
        for value in (1, 2):
            await ws.send(json.dumps({"type": event_type, "value": value, "id": "twice", "key": "one-key"}))
            acks.append(json.loads(await ws.recv()))
    assert [ack.get("ack") for ack in acks] == ["twice", "twice"], acks
    assert acks[0]["partition"] == acks[1]["partition"] and acks[0]["offset"] < acks[1]["offset"]
    expected = [("twice", value, ack["offset"]) for value, ack in zip((1, 2), acks, strict=True)]
    for watcher in (raw, deduplicated):
        events = await watcher.settle(event_type, {acks[0]["partition"]})
        assert [(e.id, e.value, e.offset) for e in events] == expected


def resume_query(positions: dict[int, int], since_ms: float) -> str:
    resume = ",".join(f"{partition}:{offset}" for partition, offset in sorted(positions.items()))
    return urlencode({"resume": resume, "since": f"{since_ms:.0f}"}, safe=",:")


def newest(acks: list[Ack]) -> dict[int, int]:
    """The highest acked offset per partition."""
    positions: dict[int, int] = {}
    for _, partition, offset in map(stored, acks):
        positions[partition] = max(offset, positions.get(partition, -1))
    return positions


async def check_once_each(watcher: Collector, positions: dict[int, int], acks: list[Ack], event_type: str) -> None:
    """Every acked record after the resume point arrived, none twice, none from before it."""
    placed = [stored(ack) for ack in acks]
    expected = {(partition, offset) for _, partition, offset in placed if offset > positions.get(partition, -1)}
    await watcher.until_ids([event_id for event_id, partition, offset in placed if (partition, offset) in expected],
                            timeout=60)
    events = await watcher.settle(event_type, {partition for _, partition, _ in placed})
    repeated = repeated_deliveries(events)
    assert not repeated, f"records delivered twice on a resumed connection: {sorted(repeated)[:10]}"
    delivered = {(e.partition, e.offset) for e in events}
    assert delivered == expected, \
        f"{len(expected - delivered)} missing, {len(delivered - expected)} from before the resume point"


async def test_raw_watchers_resuming_while_events_flow_never_see_a_record_twice(stack: Stack, collectors, event_type):
    # Resuming from the newest acks, the consumer's read-back and its live queue both hold the
    # next records: the watcher's rule (skip what was sent until a live frame passes it) decides.
    since_ms = now_ms() - 1000  # partitions a watcher has no position on are read back from here
    stream = EventStream(stack.settings, event_type, url=stack.settings.produce_url, keys=5, pause_s=STREAM_PAUSE_S)
    resumed: list[tuple[Collector, dict[int, int]]] = []
    try:
        await stream.grows_by(BETWEEN_RESUMES, "the stream did not start")
        for _ in range(RESUMES):
            positions = newest(stream.acks)
            url = f"{stack.settings.consume_url}?{resume_query(positions, since_ms)}"
            watcher = Collector(stack.settings, url=url, types=[event_type])
            collectors.append(watcher)
            await watcher.connected()
            resumed.append((watcher, positions))
            await stream.grows_by(BETWEEN_RESUMES, "the stream stopped while watchers resumed")
        await stream.finish()
    finally:
        await stream.stop()
    for watcher, positions in resumed:
        await check_once_each(watcher, positions, stream.acks, event_type)


async def test_a_watcher_resuming_with_a_replay_sees_each_record_once(stack: Stack, collectors, event_type):
    # replay=N queues the consumer's recent frames ahead of the live ones; the read-back from
    # Kafka covers the same offsets, every time: only the watcher's rule keeps them single.
    async with Sender(settings=stack.settings) as sender:
        acks = await sender.send_many([{"type": event_type, "value": i, "key": f"k{i % 5}"} for i in range(200)],
                                      batch=20)
    positions = newest(acks[:100])
    query = f"replay=200&{resume_query(positions, now_ms() - 60_000)}"
    watcher = Collector(stack.settings, url=f"{stack.settings.consume_url}?{query}", types=[event_type])
    collectors.append(watcher)
    await watcher.connected()
    await check_once_each(watcher, positions, acks, event_type)
