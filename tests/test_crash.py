"""A broker killed with ``kill -9`` while events flow: one ``labkit up``, and the loss is announced, never hidden.

noida-db, the default broker, saves its log about a second after changes, so a
``kill -9`` loses the last acked records and later gives their offsets to new
records. Checked with plain websockets watchers (which see every frame) and a
confluent_kafka reader of the topic, not with labkit's own client.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import psutil
import pytest
import websockets
from confluent_kafka import Consumer, TopicPartition
from plain import lab_key
from waiting import wait_until

from labkit import Sender, Settings, Stack
from labkit.event_stream import EventStream
from labkit.kafka import position
from labkit.lab.live import LiveChart

pytestmark = pytest.mark.timeout(240)


class RawWatcher:
    """A plain websockets watcher through the gateway: every frame it gets, in order."""

    def __init__(self, stack: Stack, query: str) -> None:
        self.frames: list[dict] = []
        self.opened = asyncio.Event()
        self.closing = asyncio.Event()
        self.task = asyncio.create_task(self._run(stack, query))

    async def _run(self, stack: Stack, query: str) -> None:
        headers = {"apikey": lab_key(stack.settings)}
        async with websockets.connect(f"{stack.settings.consume_url}?{query}", additional_headers=headers,
                                      max_size=None) as ws:
            self.opened.set()
            async for frame in ws:
                self.frames.append(json.loads(frame))
                if self.closing.is_set():
                    return

    @property
    def events(self) -> list[dict]:
        return [f for f in self.frames if "id" in f]

    async def has(self, ids: set[str], timeout: float = 60) -> None:
        def arrived() -> bool:
            if self.task.done():
                self.task.result()
                raise AssertionError("the watcher's connection ended")
            return ids <= {e["id"] for e in self.events}

        await wait_until(arrived, timeout,
                         lambda: f"{len(ids - {e['id'] for e in self.events})} of {len(ids)} never arrived")


def stored_ids(settings: Settings, event_type: str) -> dict[str, tuple[int, int]]:
    """Every event of this type the topic holds now, read whole with confluent_kafka: id -> (partition, offset)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "crash-check",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic].partitions
        consumer.assign([TopicPartition(settings.topic, p, 0) for p in partitions])
        found: dict[str, tuple[int, int]] = {}
        ended: set[int] = set()
        deadline = time.monotonic() + 30
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            where = position(msg)
            if msg.error() is not None:
                ended.add(where[0])
                continue
            record = json.loads(msg.value() or b"null") or {}
            if record.get("type") == event_type:
                found[record["id"]] = where
        assert len(ended) == len(partitions), "could not read the topic to its end"
        return found
    finally:
        consumer.close()


async def test_a_broker_killed_mid_stream_comes_back_with_one_up_and_every_watcher_hears_the_loss(tmp_path, event_type):
    with Stack(Settings(broker="noida").with_free_ports(state_dir=tmp_path)) as stack:
        settings = stack.settings
        throughout = RawWatcher(stack, f"types={event_type}")
        resumer = RawWatcher(stack, f"types={event_type}")
        await asyncio.wait_for(asyncio.gather(throughout.opened.wait(), resumer.opened.wait()), 10)
        chart = LiveChart(settings, types=[event_type])
        await chart.ready()
        stream = EventStream(settings, event_type, url=settings.produce_url, keys=5, pause_s=0.02)  # about 200 ev/s
        try:
            await stream.grows_by(400, "the stream did not start")
            # The resuming watcher leaves mid-stream, keeping where it was and its epoch.
            resumer.closing.set()
            await resumer.task
            seen_before = resumer.events
            await stream.grows_by(600, "the stream did not go on")

            broker = psutil.Process(json.loads(stack.record_path.read_text())["components"]["broker"]["pid"])
            acked_before_kill = {ack.ack: (ack.partition, ack.offset) for ack in stream.acks}
            broker.kill()  # SIGKILL: nothing saved after this
            await asyncio.to_thread(broker.wait, 10)

            up = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "labkit", "up", "--state-dir", str(settings.state_dir),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await asyncio.wait_for(up.communicate(), 120)
            assert up.returncode == 0, f"labkit up after the crash failed:\n{output.decode()[-2000:]}"
            await stream.grows_by(300, "the stream did not go on after the broker came back", timeout=60)

            last = {}
            for event in seen_before:
                last[event["partition"]] = event["offset"]
            resume = ",".join(f"{p}:{o}" for p, o in sorted(last.items()))
            resumed = RawWatcher(stack, f"types={event_type}&resume={resume}&since=0&epoch={seen_before[-1]['epoch']}")
            await stream.grows_by(100, "the stream did not go on while the watcher resumed")
        finally:
            await stream.finish()
        async with Sender(settings=settings) as sender:  # one more after the stream: everything before it is in
            closing = {ack.ack for ack in await sender.send_many([{"type": event_type, "value": -1, "key": f"end{i}"}
                                                                   for i in range(8)])}
        stored = stored_ids(settings, event_type)
        acked = {ack.ack: (ack.partition, ack.offset) for ack in stream.acks}
        kept = {i for i, place in acked.items() if stored.get(i) == place} | closing
        lost = {i for i in acked_before_kill if i not in stored}
        assert lost, "the crash lost nothing: the test did not see what it checks"
        reused = {place for i,
                  place in acked.items() if i not in acked_before_kill} & {acked_before_kill[i] for i in lost}
        assert reused, "no lost offset was given to a new event"

        for watcher, earlier in ((throughout, []), (resumed, seen_before)):
            await watcher.has(kept - {e["id"] for e in earlier})
            ids = Counter(e["id"] for e in earlier + watcher.events)
            assert not [i for i, n in ids.items() if n > 1], "an event reached a watcher twice"
            assert not kept - set(ids), "a stored acked event never reached a watcher"
        notices = [f["log_restarted"] for f in throughout.frames if "log_restarted" in f]
        assert notices, "the watcher connected throughout was not told the log restarted"
        # Every lost event it was sent lies in a range it was told of (one acked in the last
        # milliseconds before the kill may be lost before the consumer read it: nothing to take back).
        delivered_lost = {acked_before_kill[e["id"]] for e in throughout.events if e["id"] in lost}
        assert delivered_lost, "the watcher had none of the lost events: the test did not see what it checks"
        for p, o in delivered_lost:
            assert any(n["partition"] == p and n["lost"][0] <= o <= n["lost"][1] for n in notices), (p, o)
        # Each notice comes before the new records at the offsets it names.
        for notice in notices:
            at = throughout.frames.index(next(f for f in throughout.frames if f.get("log_restarted") == notice))
            later = [f for f in throughout.frames[at:] if f.get("partition") == notice["partition"] and "id" in f]
            assert not any(f["offset"] < notice["offset"] for f in later)
        # The live chart says so under the plot.
        await wait_until(lambda: "the broker's log restarted" in chart.counters.value, 10,
                         "the chart did not show the restart")
        assert {(r.partition, r.lost_from) for r in chart.restarts} == {(n["partition"], n["offset"]) for n in notices}
        await chart.aclose()
        first = resumed.frames[0]
        assert first["recovered"] is False and "lost records" in first["reason"], first
        for watcher in (throughout, resumed):
            watcher.task.cancel()
