"""Service replicas behind the gateway: components of their own, and a replica killed mid-stream.

Each test runs its own stack with two producers or two consumers (``Settings.producers`` /
``consumers``) behind the embedded gateway's nginx upstreams. Watchers are raw: labkit's
``Collector`` (every frame, duplicates included) and a resuming watcher written on plain
websockets, so the resume protocol is checked without labkit's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys

import pytest
import websockets
from conftest import Collector, repeated_deliveries, stored
from plain import PlainWatcher, kill_9, lab_key
from waiting import health, wait_until

from labkit import Ack, Sender, Settings, Stack
from labkit.errors import PortInUse
from labkit.event_stream import EventStream
from labkit.events import decode_reply, new_id


def replica_stack(tmp_path, **counts: int) -> Stack:
    return Stack(Settings().with_free_ports(state_dir=tmp_path, **counts))


@pytest.fixture
def two_consumers(tmp_path):
    with replica_stack(tmp_path, consumers=2) as stack:
        yield stack


@pytest.fixture
def two_producers(tmp_path):
    # No per-connection message limit: the burst below is one sender's 400 frames at once.
    with replica_stack(tmp_path, producers=2, sender_rate_limit=0) as stack:
        yield stack


# -- components ----------------------------------------------------------------------------


def test_each_replica_is_a_component_and_up_starts_only_the_missing_one(tmp_path):
    with replica_stack(tmp_path / "a", producers=2, consumers=2) as stack:
        s = stack.settings
        rows = {row["component"]: row for row in stack.status()}
        assert list(rows) == ["broker", "producer-1", "producer-2", "consumer-1", "consumer-2", "gateway"]
        assert all(row["state"] == "running" and row["pid"] for row in rows.values())
        assert rows["consumer-2"]["url"] == s.url(s.consumer_port - 1)
        assert rows["producer-2"]["url"] == s.url(s.producer_port + 1)
        # Every replica answers on its own port, with the one epoch of the log.
        assert len({stack.health(name)["epoch"] for name in ("consumer-1", "consumer-2")}) == 1

        kill_9(stack, "consumer-2")
        assert {row["component"]: row["state"] for row in stack.status()}["consumer-2"] == "stopped"
        again = Stack(state_dir=s.state_dir).up()  # a partly running stack: only the missing replica starts
        kept = [f"kept {name} (running, pid {row['pid']})" for name, row in rows.items() if name != "consumer-2"]
        assert again.actions == [*kept, "started consumer-2"]
        after = {row["component"]: row for row in stack.status()}
        assert after["consumer-2"]["state"] == "running" and after["consumer-2"]["pid"] != rows["consumer-2"]["pid"]

        # Another stack whose consumer range runs into this one's: the error names the port and the setting.
        other = Settings(consumers=3).with_free_ports(state_dir=tmp_path / "b")
        other = other.replace(consumer_port=s.consumer_port + 1)
        with pytest.raises(PortInUse,
                           match=rf"port {s.consumer_port} \(consumer-2\).*LABKIT_CONSUMER_PORT.*--consumer-port"
                                            rf".*consumer replicas use ports {s.consumer_port + 1} to "
                                            rf"{s.consumer_port - 1}"):
            Stack(other).up()


def test_zero_replicas_and_overlapping_ranges_are_usage_errors(tmp_path):
    def up(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "labkit", "up", "--state-dir", str(tmp_path), *flags],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})

    zero = up("--consumers", "0")
    assert zero.returncode == 2 and "consumers must be 1 or more" in zero.stderr and "--consumers N" in zero.stderr
    clash = up("--consumers", "2", "--consumer-port", "7000", "--producer-port", "6999")
    assert clash.returncode == 2
    assert "consumer-2 would listen on port 6999, which producer" in clash.stderr and "--consumer-port" in clash.stderr
    assert not (tmp_path / "stack.json").exists()


# -- faults --------------------------------------------------------------------------------


async def test_consumer_replica_killed_mid_stream_its_watchers_resume_on_the_other(two_consumers: Stack, event_type):
    stack, s = two_consumers, two_consumers.settings
    collectors = [Collector(s, types=[event_type]) for _ in range(2)]
    plain = [PlainWatcher(s.consume_url, event_type) for _ in range(2)]
    everyone: list[Collector | PlainWatcher] = [*collectors, *plain]
    stream = None
    try:
        for watcher in everyone:
            await (watcher.connected() if isinstance(watcher, Collector) else
                   wait_until(watcher.opened.is_set, 10, "a plain watcher did not connect"))
        # least-connections spreads the four watchers over both replicas.
        counts = {name: (await health(stack, name))["watchers"] for name in ("consumer-1", "consumer-2")}
        assert counts == {"consumer-1": 2, "consumer-2": 2}, counts

        stream = EventStream(s, event_type, url=s.produce_url, keys=5, pause_s=0.01)  # about 300 to 400 events a second
        await stream.grows_by(300, "the stream did not start")
        gateway_log = stack.log_path("gateway")
        before = gateway_log.stat().st_size
        kill_9(stack, "consumer-1")
        # Its watchers reconnect through the gateway, which routes around the dead replica.
        await wait_until(lambda: sum(w.connections for w in plain) >= 3 or all(w.connections == 1 for w in plain), 10,
                         "no plain watcher reconnected")

        async def all_on_the_survivor() -> bool:
            return (await health(stack, "consumer-2"))["watchers"] == 4

        await wait_until(all_on_the_survivor, 30, "the killed replica's watchers did not move to consumer-2")
        # New connections never meet the dead replica: nginx skips it (max_fails) or tries the next one.
        for _ in range(6):
            async with websockets.connect(s.consume_url):
                pass
        # Nobody saw the dead replica: a refused upgrade went on to the other replica inside nginx.
        answers = gateway_log.read_text()[before:]
        assert '"GET /consume-events" 101' in answers and '" 502 ' not in answers, answers
        await stream.grows_by(300, "the stream did not go on after the kill")
        await stream.finish()
        assert stream.failed_connections == 0, "senders are not affected by a consumer replica"

        acked = {(partition, offset): event_id for event_id, partition, offset in map(stored, stream.acks)}
        for collector in collectors:
            await collector.until_ids(acked.values(), timeout=60)
            events = await collector.settle(event_type, {p for p, _ in acked})
            assert not repeated_deliveries(events), "a record was delivered twice to one watcher"
            assert {(e.partition, e.offset): e.id for e in events if (e.partition, e.offset) in acked} == acked
        moved = [w for w in plain if w.connections > 1]
        assert moved, "no plain watcher was on the killed replica"
        for watcher in plain:
            await watcher.got_each_once(acked, 60)
            # The epoch is the log's, so the other replica resumes it: no gap.
            assert all(resume == {"recovered": True} for resume in watcher.resumes), watcher.resumes
        assert {f["epoch"] for w in plain for f in w.frames} == {(await health(stack, "consumer-2"))["epoch"]}
    finally:
        if stream is not None:
            await stream.stop()
        for watcher in everyone:
            await watcher.stop()
        stack.up()  # brings consumer-1 back for a clean `down`


async def test_producer_replica_killed_in_flight_events_are_resent_with_their_ids(two_producers: Stack, event_type):
    """What a sender sees when the producer replica it talks to dies (kill -9) mid-burst.

    - acked before the kill: stored once, never resent;
    - sent and not acked (in flight): the connection closes and each gets SendError. The first
      attempt may or may not be in the log (Kafka may have stored it before the process died,
      its ack never sent). The sender reconnects through the gateway, lands on the other replica
      and resends them with the same ids: each is then in the log once or twice. Twice means two
      records, same id and partition (same key), the resend at a later offset: a watcher tells a
      resent copy by an id it has already seen, at a new (partition, offset).
    """
    stack, s = two_producers, two_producers.settings
    watcher = Collector(s, types=[event_type])
    other = None
    try:
        await watcher.connected()
        events = [{"type": event_type, "value": i, "key": f"k{i % 5}", "id": new_id()} for i in range(10_000)]
        # A plain websockets sender, its frames encoded beforehand: it sends faster than the producer
        # acknowledges, so the kill lands while the producer still works through the burst.
        frames = [json.dumps(events[start:start + 50]) for start in range(0, len(events), 50)]
        first: dict[str, Ack] = {}
        async with websockets.connect(s.produce_url, additional_headers={"apikey": lab_key(s)}, max_size=None) as burst:
            (victim,) = [n for n in ("producer-1", "producer-2") if (await health(stack, n))["senders"] == 1]
            survivor = "producer-2" if victim == "producer-1" else "producer-1"
            other = EventStream(s, event_type, url=s.produce_url, keys=5)  # least-connections: on the survivor
            await other.grows_by(20, "the other sender did not start")
            assert (await health(stack, survivor))["senders"] == 1
            sent, half = 0, len(frames) // 2
            for frame in frames[:half]:
                await burst.send(frame)
                sent += 50
            # Half the burst is written; once one event is acked (Kafka's first ack can take a while),
            # the replica dies and the rest follows at once.
            reply = decode_reply(await asyncio.wait_for(burst.recv(), 30))
            first[stored(reply)[0]] = reply
            kill_9(stack, victim)
            with contextlib.suppress(websockets.ConnectionClosed):
                for frame in frames[half:]:
                    await burst.send(frame)
                    sent += 50
            with contextlib.suppress(websockets.ConnectionClosed):
                async for text in burst:
                    reply = decode_reply(text)
                    first[stored(reply)[0]] = reply  # an error reply would be a refusal, not a death
        # The connection closed with them unanswered: each may or may not be in Kafka.
        in_flight = [e for e in events[:sent] if e["id"] not in first]
        assert in_flight, "the whole burst was acknowledged before the kill"
        assert first, "nothing was acknowledged before the kill"

        async with Sender(settings=s) as again:  # reconnects through the gateway: only the survivor answers
            resent = {stored(ack)[0]: ack for ack in await again.send_many(in_flight, batch=50)}
        assert set(resent) == {e["id"] for e in in_flight}
        await other.finish()
        assert other.failed_connections == 0, "the other replica's sender was disturbed"

        every = {**{stored(a)[0]: a for a in other.acks}, **first}
        delivered = await watcher.until_ids([*every, *resent], timeout=60)
        delivered = await watcher.settle(event_type, {stored(a)[1] for a in [*every.values(), *resent.values()]})
        assert not repeated_deliveries(delivered), "a record was delivered twice"
        copies: dict[str, list] = {}
        for event in delivered:
            assert isinstance(event.id, str), event  # every event here was sent by labkit's Sender, with an id
            copies.setdefault(event.id, []).append(event)
        for event_id, ack in every.items():
            assert [(e.partition, e.offset) for e in copies[event_id]] == [(ack.partition, ack.offset)], \
                "an acked event is not stored exactly once"
        stored_twice = 0
        for event_id, ack in resent.items():
            places = sorted((e.partition, e.offset) for e in copies[event_id])
            assert places[-1] == (ack.partition, ack.offset), "the resend is not the later copy"
            assert len(places) in (1, 2) and {p for p, _ in places} == {ack.partition}
            stored_twice += len(places) == 2
        print(f"\nproducer replica killed: {len(first)} acked before, {len(in_flight)} in flight and resent, "
              f"{stored_twice} of them stored twice (first attempt kept by Kafka, ack lost), "
              f"{len(in_flight) - stored_twice} stored once (only the resend)")
    finally:
        if other is not None:
            await other.stop()
        await watcher.stop()
        stack.up()
