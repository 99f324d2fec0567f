"""The duplicate probe through the real stack: a duplicate is the same (partition, offset) delivered twice.

Two events with the same id are two events, for raw watchers and for ``watch()``.
A raw watcher that resumes while events flow (the consumer reads back what it
missed while live events queue up) must see every record after its resume point
once. Each check ends with markers, not a sleep: see ``Collector.settle``.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import websockets

from conftest import Collector, repeated_deliveries
from labkit import Stack
from labkit.client import lab_api_key
from labkit.events import now_ms
from streaming import Stream

RESUMES = 4  # watchers resuming one after another while the stream flows
RESUME_BACK = 30  # each resumes from where the stream was this many acks ago
BETWEEN_RESUMES = 20  # acks between one resume and the next
# A batch on every partition this often, well under the read-back's 0.3 s idle cut: the read-back
# usually reaches the end of a partition before the next live frame, and reads that frame too.
STREAM_PAUSE_S = 0.15


async def test_two_events_with_the_same_id_are_two_events(stack: Stack, collect, event_type):
    raw = await collect(types=[event_type])
    deduplicated = await collect(types=[event_type], raw=False)
    headers = {"apikey": lab_api_key(stack.settings)}
    acks = []
    async with websockets.connect(stack.settings.produce_url, additional_headers=headers) as ws:
        for value in (1, 2):
            await ws.send(json.dumps({"type": event_type, "value": value, "id": "twice", "key": "one-key"}))
            acks.append(json.loads(await ws.recv()))
    assert [ack.get("ack") for ack in acks] == ["twice", "twice"], acks
    assert acks[0]["partition"] == acks[1]["partition"] and acks[0]["offset"] < acks[1]["offset"]
    expected = [("twice", value, ack["offset"]) for value, ack in zip((1, 2), acks)]
    for watcher in (raw, deduplicated):
        events = await watcher.settle(event_type, {acks[0]["partition"]})
        assert [(e.id, e.value, e.offset) for e in events] == expected


def resume_query(positions: dict[int, int], since_ms: float) -> str:
    resume = ",".join(f"{partition}:{offset}" for partition, offset in sorted(positions.items()))
    return urlencode({"resume": resume, "since": f"{since_ms:.0f}"}, safe=",:")


async def test_a_raw_watcher_resuming_while_events_flow_never_sees_a_record_twice(stack: Stack, collectors, event_type):
    since_ms = now_ms() - 1000  # partitions a watcher has no position on are read back from here
    stream = Stream(stack.settings.produce_url, stack.settings, event_type, pause_s=STREAM_PAUSE_S)
    resumed: list[tuple[Collector, dict[int, int]]] = []
    try:
        await stream.grows_by(RESUME_BACK + 50, "the stream did not start")
        for _ in range(RESUMES):
            positions: dict[int, int] = {}
            for ack in stream.acks[:-RESUME_BACK]:
                positions[ack.partition] = max(ack.offset, positions.get(ack.partition, -1))
            url = f"{stack.settings.consume_url}?{resume_query(positions, since_ms)}"
            watcher = Collector(stack.settings, url=url, types=[event_type])
            collectors.append(watcher)
            await watcher.connected()
            resumed.append((watcher, positions))
            await stream.grows_by(BETWEEN_RESUMES, "the stream stopped while watchers resumed")
        await stream.finish()
    finally:
        await stream.abandon()
    partitions = {ack.partition for ack in stream.acks}
    for watcher, positions in resumed:
        expected = {(a.partition, a.offset) for a in stream.acks if a.offset > positions.get(a.partition, -1)}
        await watcher.until_ids([a.ack for a in stream.acks if (a.partition, a.offset) in expected], timeout=60)
        events = await watcher.settle(event_type, partitions)
        repeated = repeated_deliveries(events)
        assert not repeated, f"records delivered twice on a resumed connection: {sorted(repeated)[:10]}"
        delivered = {(e.partition, e.offset) for e in events}
        assert delivered == expected, (
            f"{len(expected - delivered)} missing, {len(delivered - expected)} from before the resume point"
        )
