"""A lab session on the default broker: ready means ready, idle costs little yet delivers, the topic stays bounded,
and `up` on a partly running stack starts only what is missing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import pytest
import websockets
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import stored
from plain import lab_key
from waiting import wait_until

from labkit import Sender, Settings, Stack
from labkit.client import Watch
from labkit.events import PROBE_TYPE
from labkit.kafka import TailReader, Writer, read_everything
from labkit.ops.brokers import BROKERS
from labkit.services.retention import trim_points
from labkit.settings import free_port


def consumer_health(stack: Stack) -> dict:
    url = stack.settings.url(stack.settings.consumer_port, "/healthz", "http")
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_trim_points_keep_the_newest_events_and_what_is_young_enough():
    ends = {0: (0, 1000), 1: (0, 50), 2: (900, 1000)}
    assert trim_points(ends, retain_events=100) == {0: 900}  # 1 holds less, 2 is already trimmed
    assert trim_points(ends, retain_events=0) == {}
    # by time: partition 1's records from offset 40 on are young enough; every record of 0 is too old (-1)
    assert trim_points(ends, retain_events=0, by_time={0: -1, 1: 40, 2: 950}) == {0: 1000, 1: 40, 2: 950}
    assert trim_points(ends, retain_events=100, by_time={0: 10}) == {0: 900}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A bare noida-db broker, for a reader of our own."""
    import subprocess

    settings = Settings(broker="noida", kafka_port=free_port(), state_dir=tmp_path_factory.mktemp("broker"))
    process = subprocess.Popen(BROKERS["noida"].command(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    deadline = time.monotonic() + 20
    while True:
        try:
            admin.list_topics(timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
    yield settings.bootstrap_servers
    process.terminate()
    process.wait(10)


def test_the_idle_reader_pauses_and_still_delivers_every_record(broker):
    topic = f"idle-{time.time_ns()}"
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(10)
    reader = TailReader({"bootstrap.servers": broker, "group.id": "idle-test"})
    reader.assign(topic, {p: 0 for p in range(3)})
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 0})
    try:
        for round_ in range(20):
            # Let the reader go idle: every partition read to its end, paused, woken again at least once.
            cycles = reader.idle_cycles
            deadline = time.monotonic() + 10
            while reader.idle_cycles < cycles + 2:
                assert not reader.read(0.05), "a record arrived that nobody sent"
                assert time.monotonic() < deadline, "the reader never paused: it would spin on an idle topic"
            producer.produce(topic, f"r{round_}".encode(), partition=round_ % 3)
            producer.flush(5)
            sent = time.monotonic()
            got = []
            while not got:
                got = [m for m in reader.read(0.05) if m.error() is None]
                # Not a speed target: librdkafka left to wake by itself takes up to a second; the reader must wake it.
                assert time.monotonic() - sent < 0.5, f"round {round_}: a record sent to an idle reader did not come"
            assert [m.value() for m in got] == [f"r{round_}".encode()]
    finally:
        reader.close()


async def test_the_writer_hands_each_report_to_the_loop_once_and_the_feed_every_record(broker):
    """labkit.kafka's two hand-offs: delivery reports, and read batches, reach the event loop's thread."""
    import threading

    loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()
    topic = f"writer-{time.time_ns()}"
    admin = AdminClient({"bootstrap.servers": broker})  # held: a client collected early fails its futures
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(10)
    reports: list = []
    read: list = []

    def on_reports(batch: list) -> None:
        assert threading.get_ident() == loop_thread
        reports.extend(batch)

    def on_batch(batch: list) -> None:
        assert threading.get_ident() == loop_thread
        read.extend(m.value() for m in batch if m.error() is None)

    reader = TailReader({"bootstrap.servers": broker, "group.id": "feed-test"})
    reader.assign(topic, {p: 0 for p in range(3)})
    stopped = threading.Event()
    feeding = threading.Thread(target=reader.feed, args=(loop, on_batch, stopped))
    feeding.start()
    writer = Writer({"bootstrap.servers": broker}, on_reports)
    writer.start()
    try:
        for n in range(300):
            writer.produce(topic, b"%d" % n, b"k%d" % (n % 7), n)
        await wait_until(lambda: len(reports) == 300, 10, "every event's delivery report")
        assert sorted(report.tag for report in reports) == list(range(300))
        assert all(report.error is None and report.offset >= 0 for report in reports)
        await wait_until(lambda: len(read) == 300, 10, "every record read back")
        assert sorted(read, key=int) == [b"%d" % n for n in range(300)]
    finally:
        assert await writer.close(5) == 0
        stopped.set()
        await asyncio.to_thread(feeding.join, 5)
        reader.close()


async def test_the_probe_event_is_not_shown_to_watchers_nor_replayed(stack: Stack, collect, event_type):
    everything = await collect()
    async with Sender(settings=stack.settings) as sender:
        await sender.send({"type": PROBE_TYPE, "value": 0})
        await sender.send({"type": event_type, "value": 1})
    await everything.until(1)
    key = lab_key(stack.settings)
    url = f"{stack.settings.consume_url}?replay=100"
    async with websockets.connect(url, additional_headers={"apikey": key}) as ws:
        replayed: list[str | bytes] = []
        while not any(event_type in frame for frame in replayed):
            replayed.append(await asyncio.wait_for(ws.recv(), 10))
    assert not any(PROBE_TYPE in frame for frame in replayed)
    assert all(e.type != PROBE_TYPE for e in everything.events)


@pytest.fixture
def small_retention_stack(tmp_path):
    settings = Settings(retain_events=50).with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        yield stack


async def test_the_topic_stays_bounded_and_a_late_resume_gets_what_remains(small_retention_stack: Stack, event_type):
    stack = small_retention_stack
    async with Sender(settings=stack.settings) as sender:
        acks = await sender.send_many([{"type": event_type, "value": i, "key": "one"} for i in range(300)], batch=50)
    _, partition, first_offset = stored(acks[0])
    _, _, last_offset = stored(acks[-1])
    watermarks = Consumer({"bootstrap.servers": stack.settings.bootstrap_servers, "group.id": "w"})

    def low() -> int:
        return watermarks.get_watermark_offsets(TopicPartition(stack.settings.topic, partition), timeout=5,
                                                cached=False)[0]

    await wait_until(lambda: low() >= last_offset + 1 - 50, 30, "the consumer did not trim the topic to 50 events")
    # The broker moves its low watermark before its answer reaches the consumer, which then records it.
    await wait_until(lambda: consumer_health(stack)["kept_from"].get(str(partition), -1) >= last_offset + 1 - 50, 10,
                   "the consumer's health does not say where the topic now starts")
    # A plain client resuming from the very first offset gets the 50 that remain, in order.
    key = lab_key(stack.settings)
    url = f"{stack.settings.consume_url}?types={event_type}&resume={partition}:{first_offset}&since=0"
    async with websockets.connect(url, additional_headers={"apikey": key}) as ws:
        recovery = json.loads(await asyncio.wait_for(ws.recv(), 10))
        values: list[int] = []
        while len(values) < 50:
            values.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["value"])
    assert values == list(range(250, 300))
    assert recovery["recovered"] is False and "trimmed" in recovery["reason"]
    watermarks.close()


async def test_a_watch_keeps_every_gap_its_resumes_had(small_retention_stack: Stack, event_type):
    """A resume that could not get everything back (trimmed) stays in ``Watch.gaps`` after a later whole one."""
    stack = small_retention_stack
    opened = asyncio.Event()
    watch = Watch(types=[event_type], settings=stack.settings, opened=opened, report_gap=False)
    received: list[float] = []

    async def read() -> None:
        async for event in watch:
            received.append(event.value)

    reader = asyncio.ensure_future(read())
    try:
        await wait_until(opened.is_set, 10, "the watch did not connect")
        async with Sender(settings=stack.settings) as sender:
            await sender.send({"type": event_type, "value": -1, "key": "one"})
        await wait_until(lambda: received == [-1], 10, "the first event did not arrive")

        async def cut_off_and_back(while_away: int) -> None:
            resumes = watch.resumes
            await asyncio.to_thread(stack.stop_component, "gateway")
            await wait_until(lambda: not opened.is_set(), 10, "the watch did not notice the gateway stopped")
            if while_away:  # straight to the producer (the gateway is down), more than the topic keeps
                direct = f"ws://{stack.settings.host}:{stack.settings.producer_port}/"
                async with Sender(direct, settings=stack.settings) as sender:
                    acks = await sender.send_many(
                        [{"type": event_type, "value": i, "key": "one"} for i in range(while_away)], batch=50)
                _, partition, last_offset = stored(acks[-1])
                kept_from = last_offset + 1 - stack.settings.retain_events
                await wait_until(lambda: consumer_health(stack)["kept_from"].get(str(partition), -1) >= kept_from, 30,
                                 "the consumer did not trim the topic")
            await asyncio.to_thread(stack.start_component, "gateway")
            await wait_until(lambda: watch.resumes == resumes + 1, 30, "the watch did not resume")

        await cut_off_and_back(300)
        assert watch.recovered is False and len(watch.gaps) == 1 and "trimmed" in watch.gaps[0], watch.gaps
        await wait_until(lambda: received[-1] == 299, 30, "what the topic kept did not arrive")
        assert received[1:] == list(range(300 - stack.settings.retain_events, 300)), received
        await cut_off_and_back(0)
        assert watch.recovered is True  # the last resume was whole...
        assert len(watch.gaps) == 1 and watch.resumes == 2, watch.gaps  # ...and the earlier gap is still told
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_up_on_a_partly_running_stack_starts_only_what_is_missing(tmp_path, event_type):
    settings = Settings().with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        broker_pid = {r["component"]: r["pid"] for r in stack.status()}["broker"]
        stack.stop_component("consumer")
        # Acknowledged while no consumer runs: they must still reach a watcher after `up`.
        async with Sender(settings=settings) as sender:
            acks = await sender.send_many([{"type": event_type, "value": i} for i in range(20)])
        again = Stack(settings).up()
        assert "started consumer" in again.actions and "started broker" not in again.actions
        assert {r["component"]: r["pid"] for r in again.status()}["broker"] == broker_pid
        key = lab_key(settings)
        url = f"{settings.consume_url}?types={event_type}&replay=20"
        async with websockets.connect(url, additional_headers={"apikey": key}) as ws:
            ids = {json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] for _ in range(20)}
        assert ids == {a.ack for a in acks}


@pytest.mark.both_brokers
async def test_a_broker_stopped_while_it_acks_keeps_every_record_it_acked(tmp_path):
    """labkit stops noida-db with its own "stop" before SIGTERM: on SIGTERM alone it lost the last acked record."""
    settings = Settings().with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        acked: dict[tuple[int, int], bytes] = {}
        errors: list[str] = []

        def delivered(error, message) -> None:
            if error is None:
                acked[(message.partition(), message.offset())] = message.value()
            else:
                errors.append(str(error))

        # A client labkit did not write, producing without pause while the broker stops and starts.
        producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "linger.ms": 0}))
        producing = threading.Event()
        producing.set()

        def produce() -> None:
            seq = 0
            while producing.is_set():
                producer.produce(settings.topic, value=str(seq).encode(), key=str(seq).encode(), on_delivery=delivered)
                producer.poll(0.001)
                seq += 1
            producer.flush(60)

        thread = threading.Thread(target=produce)
        thread.start()
        try:
            await wait_until(lambda: len(acked) >= 300, 30, "300 records acked before the stop")
            await asyncio.to_thread(stack.stop_component, "broker")
            at_stop = len(acked)
            await asyncio.to_thread(stack.start_component, "broker")
            await wait_until(lambda: len(acked) >= at_stop + 300, 60, "300 more records acked after the restart")
        finally:
            producing.clear()
            await asyncio.to_thread(thread.join)
        assert not errors, errors[:3]
        in_log = read_everything(settings.kafka_config(), settings.topic)
        changed = {where: (value, in_log.get(where)) for where, value in acked.items() if in_log.get(where) != value}
        assert not changed, (f"{len(changed)} acked records lost or overwritten after the restart: "
                             f"{list(changed.items())[:3]}")
