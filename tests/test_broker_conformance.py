"""Broker conformance: real Kafka clients against every broker labkit can run on.

Each broker kind labkit starts (Apache Kafka, noida, tansu) runs as a real process
on free ports: Apache Kafka once for the module (a JVM takes seconds to start), the
others once per check. With LABKIT_KAFKA_BOOTSTRAP set, the same checks also run
against that cluster. Every check uses a topic of its own:

- confluent-kafka: an idempotent producer (acks=all) read back in order; a consumer
  group of two splitting three partitions, then rebalancing when one leaves;
  offsets_for_times; watermarks after single and batched produce; DeleteRecords;
  fetch long polling (an idle consumer's fetch waits at the broker);
- kafka-python and aiokafka: produce and consume; aiokafka's idempotent producer;
- kcat (Debian's, librdkafka 2.0.2): -L list, -P produce, -C consume.

A check a broker is known to fail is marked for that broker with the reason, as a
strict xfail: a check that starts passing fails the suite until its mark goes.

Apache Kafka is the reference: no check is marked for it. Against compose mode's
Kafka (`labkit up --mode compose`), or any cluster:

    LABKIT_KAFKA_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python -m pytest tests/test_broker_conformance.py
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiokafka.errors
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition as AIOTopicPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from waiting import wait_until_blocking

from labkit.ops.brokers import BROKERS
from labkit.settings import Settings

with warnings.catch_warnings():  # kafka-python 3.0 loads its protocol schemas with deprecated importlib calls
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka

EXTERNAL_BOOTSTRAP = os.environ.get("LABKIT_KAFKA_BOOTSTRAP")
BROKER_KINDS = ["kafka", "noida", "tansu"] + (["external"] if EXTERNAL_BOOTSTRAP else [])
KCAT = shutil.which("kcat") or "/usr/bin/kcat"
TIMEOUT_S = 15.0  # for any one thing the broker should do: start, create a topic, deliver, rebalance
MESSAGES = 20


def on_every_broker(raises: type[BaseException] | None = None, **known_to_fail: str) -> pytest.MarkDecorator:
    """Run a check on every broker kind; name the kinds known to fail it, with the reason (a strict xfail).

    raises: how the known failure shows; failing any other way fails the suite.
    """
    return pytest.mark.parametrize("bootstrap", [
        pytest.param(kind, id=kind, marks=[pytest.mark.xfail(strict=True, raises=raises, reason=known_to_fail[kind])]
                     if kind in known_to_fail else [])
        for kind in BROKER_KINDS
    ], indirect=True)


def wait_until_broker_answers(bootstrap: str, process: subprocess.Popen, log: Path) -> None:
    """A Kafka metadata request that names at least one broker, or the broker's exit status and log."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 100})

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the broker exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return bool(admin.list_topics(timeout=0.5).brokers)
        except KafkaException:
            return False

    wait_until_blocking(answers, TIMEOUT_S, f"the broker on {bootstrap} answering a metadata request")


def started_broker(kind_name: str, folder: Path) -> Iterator[str]:
    kind = BROKERS[kind_name]
    settings = Settings(broker=kind.name, kafka_bootstrap=None, state_dir=folder).with_free_ports()
    log = folder / "broker.log"
    command = kind.command(settings)
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_broker_answers(settings.bootstrap_servers, process, log)
        yield settings.bootstrap_servers
    finally:
        process.terminate()
        try:
            process.wait(10)  # Tansu waits for clients still connected (a failed check's); Kafka shuts down in order
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from started_broker("kafka", tmp_path_factory.mktemp("kafka"))


@pytest.fixture
def bootstrap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The bootstrap servers of a running broker of the kind named by the parameter."""
    if request.param == "external":
        assert EXTERNAL_BOOTSTRAP  # the kind is only listed when it is set
        yield EXTERNAL_BOOTSTRAP
    elif request.param == "kafka":
        yield request.getfixturevalue("apache_kafka")
    else:
        yield from started_broker(request.param, tmp_path)


def create_topic(bootstrap: str, partitions: int = 1) -> str:
    """A new topic of its own for one check; returns once its metadata shows every partition with a leader."""
    topic = f"conformance-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(TIMEOUT_S)

    def has_leaders() -> bool:
        meta = admin.list_topics(timeout=TIMEOUT_S).topics.get(topic)
        leaders = [p.leader for p in meta.partitions.values()] if meta else []
        return len(leaders) == partitions and all(leader >= 0 for leader in leaders)

    wait_until_blocking(has_leaders, TIMEOUT_S, f"topic {topic} with {partitions} partitions in the metadata")
    return topic


def values(client: str, count: int = MESSAGES) -> list[bytes]:
    return [f"{client} {i}".encode() for i in range(count)]


# confluent-kafka


def produce_confluent(bootstrap: str, topic: str, messages: list[bytes], partition: int = 0,
                      timestamps: list[int] | None = None, **config: object) -> None:
    """Produce (with these timestamps, in ms, if given), flush, and fail on any delivery error."""
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for value, timestamp in zip(messages, timestamps or [0] * len(messages), strict=True):
        producer.produce(topic, value, partition=partition, timestamp=timestamp, on_delivery=delivered)
    assert producer.flush(TIMEOUT_S) == 0, f"{len(producer)} messages still undelivered after {TIMEOUT_S:.0f} s"
    assert not errors, f"delivery failed: {errors[:3]}"


def confluent_consumer(bootstrap: str, **config: object) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"conformance-{uuid.uuid4().hex[:6]}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest", **config})


def consume_confluent(consumer: Consumer, count: int) -> list[Message]:
    """Poll until count messages arrived; fails saying how many did."""
    received: list[Message] = []

    def enough() -> bool:
        message = consumer.poll(0.2)
        if message is not None:
            assert message.error() is None, f"consumer error: {message.error()}"
            received.append(message)
        return len(received) >= count

    wait_until_blocking(enough, TIMEOUT_S, lambda: f"{count} messages consumed (got {len(received)})")
    return received


def read_partition(bootstrap: str, topic: str, count: int) -> list[Message]:
    """Everything from the beginning of partition 0, by assign() (no group)."""
    consumer = confluent_consumer(bootstrap)
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        return consume_confluent(consumer, count)
    finally:
        consumer.close()


@on_every_broker()
def test_idempotent_producer_acks_all_is_read_back_in_order(bootstrap):
    topic = create_topic(bootstrap)
    sent = values("idempotent")
    produce_confluent(bootstrap, topic, sent, **{"enable.idempotence": True, "acks": "all"})
    received = read_partition(bootstrap, topic, len(sent))
    assert [m.value() for m in received] == sent
    assert [m.offset() for m in received] == list(range(len(sent)))


@on_every_broker()
def test_consumer_group_splits_three_partitions_then_one_member_takes_all(bootstrap):
    topic = create_topic(bootstrap, partitions=3)
    group = {"group.id": f"group-{topic}", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    first, second = confluent_consumer(bootstrap, **group), confluent_consumer(bootstrap, **group)

    def owned(consumer: Consumer) -> set[int]:
        return {tp.partition for tp in consumer.assignment()}

    def split() -> bool:
        for consumer in (first, second):
            assert consumer.poll(0.1) is None, "nothing was produced yet"
        mine, theirs = owned(first), owned(second)
        return bool(mine and theirs and not mine & theirs and mine | theirs == {0, 1, 2})

    try:
        first.subscribe([topic])
        second.subscribe([topic])
        wait_until_blocking(split, TIMEOUT_S, "two group members each owning some of partitions 0, 1, 2")
        second.close()
        wait_until_blocking(lambda: first.poll(0.1) is None and owned(first) == {0, 1, 2}, TIMEOUT_S,
                            "the remaining member owning all three partitions after the other left")
        for partition in range(3):
            produce_confluent(bootstrap, topic, [f"after the rebalance {partition}".encode()], partition=partition)
        received = consume_confluent(first, 3)
        assert sorted(m.partition() for m in received) == [0, 1, 2]
    finally:
        first.close()
        second.close()


@on_every_broker(raises=AssertionError,
                 tansu="answers offset 0 for every timestamp, even one after the last message")
def test_offsets_for_times_finds_the_first_message_at_or_after_a_timestamp(bootstrap):
    topic = create_topic(bootstrap)
    start_ms = int(time.time() * 1000) - 60_000
    produce_confluent(bootstrap, topic, values("one a second", 10), timestamps=[start_ms + i * 1000 for i in range(10)])
    expected = {"0 s": 0, "4.5 s": 5, "5 s": 5, "9 s": 9, "after the last": OFFSET_END}
    asked = {"0 s": start_ms, "4.5 s": start_ms + 4500, "5 s": start_ms + 5000, "9 s": start_ms + 9000,
             "after the last": start_ms + 60_000}
    consumer = confluent_consumer(bootstrap)
    try:  # one partition per request: a list names each partition once
        found = {name: consumer.offsets_for_times([TopicPartition(topic, 0, ms)], timeout=TIMEOUT_S)[0].offset
                 for name, ms in asked.items()}
    finally:
        consumer.close()
    assert found == expected


@on_every_broker(raises=AssertionError,
                 tansu="counts a batch as one message: high watermark 11 after 10 single messages and a batch of 10")
def test_high_watermark_counts_single_and_batched_messages(bootstrap):
    topic = create_topic(bootstrap)
    for value in values("single", 10):  # ten produce requests of one message each
        produce_confluent(bootstrap, topic, [value])
    produce_confluent(bootstrap, topic, values("batched", 10), **{"linger.ms": 100})  # one batch of ten
    consumer = confluent_consumer(bootstrap)
    try:
        watermarks = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT_S, cached=False)
    finally:
        consumer.close()
    assert watermarks == (0, 20)


@on_every_broker(raises=KafkaException,
                 tansu="DeleteRecords is not implemented in its memory storage: a worker panics, the connection drops")
def test_delete_records_moves_the_low_watermark_and_consumers_start_there(bootstrap):
    topic = create_topic(bootstrap)
    produce_confluent(bootstrap, topic, values("deleted", 10))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deleted = admin.delete_records([TopicPartition(topic, 0, 4)], request_timeout=TIMEOUT_S)
    result = next(iter(deleted.values())).result(TIMEOUT_S)
    assert result.low_watermark == 4
    consumer = confluent_consumer(bootstrap)
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT_S, cached=False) == (4, 10)
    finally:
        consumer.close()
    received = read_partition(bootstrap, topic, 6)
    assert [m.offset() for m in received] == list(range(4, 10))


# kafka-python


@on_every_broker()
def test_kafka_python_produces_and_consumes(bootstrap):
    topic = create_topic(bootstrap)
    sent = values("kafka-python")
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for future in [producer.send(topic, value, partition=0) for value in sent]:
            future.get(timeout=TIMEOUT_S)
    finally:
        producer.close(timeout=TIMEOUT_S)
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = kafka.TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    received: list[bytes] = []

    def enough() -> bool:
        for records in consumer.poll(timeout_ms=200).values():
            received.extend(record.value for record in records)
        return len(received) >= len(sent)

    try:
        wait_until_blocking(enough, TIMEOUT_S,
                            lambda: f"{len(sent)} messages consumed with kafka-python (got {len(received)})")
    finally:
        consumer.close()
    assert received == sent


# aiokafka


async def aiokafka_round_trip(bootstrap: str, sent: list[bytes], **producer_options: object) -> list[bytes]:
    """Produce with aiokafka (awaiting each ack), then read the partition back from the beginning."""
    topic = create_topic(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_options)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await producer.start()
            for value in sent:
                await producer.send_and_wait(topic, value, partition=0)
    except TimeoutError:
        raise AssertionError(f"aiokafka did not start and get {len(sent)} acks within {TIMEOUT_S:.0f} s") from None
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = AIOTopicPartition(topic, 0)
    received: list[bytes] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await consumer.start()
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            while len(received) < len(sent):
                batches = await consumer.getmany(timeout_ms=200)
                received.extend(record.value for records in batches.values() for record in records)
    except TimeoutError:
        raise AssertionError(
            f"{len(received)} of {len(sent)} messages consumed with aiokafka in {TIMEOUT_S:.0f} s") from None
    finally:
        await consumer.stop()
    return received


@on_every_broker()
async def test_aiokafka_produces_and_consumes(bootstrap):
    sent = values("aiokafka")
    assert await aiokafka_round_trip(bootstrap, sent) == sent


@on_every_broker(raises=aiokafka.errors.UnknownError,
                 tansu="answers aiokafka's InitProducerId with UNKNOWN_SERVER_ERROR: the producer never starts")
async def test_aiokafka_idempotent_producer_produces(bootstrap):
    sent = values("aiokafka idempotent")
    assert await aiokafka_round_trip(bootstrap, sent, enable_idempotence=True) == sent


# kcat


KCAT_ON_TANSU = "librdkafka 2.0.2 cannot read Tansu's ApiVersions answer: ApiVersionRequest failed: Read underflow"


class KcatFailed(AssertionError):
    """kcat ran and exited with an error (a missing kcat is a different failure)."""


def kcat(bootstrap: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if not Path(KCAT).exists():
        pytest.fail(f"kcat is missing at {KCAT}: apt-get install kcat (make test installs it)")
    done = subprocess.run([KCAT, "-b", bootstrap, *args], input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise KcatFailed(f"kcat {' '.join(args)} exited with {done.returncode}: {done.stderr[-1000:]}")
    return done


@on_every_broker(raises=KcatFailed, tansu=KCAT_ON_TANSU)
def test_kcat_lists_brokers_and_topics(bootstrap):
    topic = create_topic(bootstrap)
    listing = kcat(bootstrap, "-L", "-m", "5").stdout
    assert re.search(r"^ \d+ brokers:\n  broker \d+ at ", listing, re.MULTILINE), listing
    assert f'topic "{topic}" with 1 partitions' in listing, listing


@on_every_broker(raises=KcatFailed, tansu=KCAT_ON_TANSU)
def test_kcat_produces(bootstrap):
    topic = create_topic(bootstrap)
    sent = values("kcat", 5)
    kcat(bootstrap, "-P", "-t", topic, "-p", "0", stdin="".join(f"{v.decode()}\n" for v in sent))
    assert [m.value() for m in read_partition(bootstrap, topic, len(sent))] == sent


@on_every_broker(raises=KcatFailed, tansu=KCAT_ON_TANSU)
def test_kcat_consumes(bootstrap):
    topic = create_topic(bootstrap)
    sent = values("kcat", 5)
    produce_confluent(bootstrap, topic, sent)
    consumed = kcat(bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-c", str(len(sent)), "-q").stdout
    assert consumed.splitlines() == [v.decode() for v in sent]


def fetch_requests_while_idle(bootstrap: str, seconds: float = 2.0) -> int:
    """Fetch requests an idle consumer sends in ``seconds`` with librdkafka's 500 ms fetch wait (its statistics)."""
    topic = create_topic(bootstrap)
    stats: list[dict] = []
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                         "fetch.wait.max.ms": 500,
                         "statistics.interval.ms": 500, "stats_cb": lambda text: stats.append(json.loads(text))})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        wait_until_blocking(lambda: consumer.poll(0.1) is None and len(stats) >= 2, TIMEOUT_S,
                            "statistics from the idle consumer")
        first = len(stats)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or len(stats) < first + 2:
            consumer.poll(0.1)
    finally:
        consumer.close()

    def fetches(report: dict) -> int:
        return sum(b.get("req", {}).get("Fetch", 0) for b in report["brokers"].values())

    return fetches(stats[-1]) - fetches(stats[first - 1])


@on_every_broker(raises=AssertionError,
                 noida="ignores fetch.wait.max.ms: answers an empty fetch at once, so an idle consumer spins")
def test_an_idle_consumers_fetch_waits_at_the_broker(bootstrap):
    # About 2 fetches a second at a 500 ms wait (the span between two statistics reports is about 2.5 s).
    count = fetch_requests_while_idle(bootstrap)
    assert count <= 15, f"an idle consumer sent {count} fetch requests in about 2.5 s: the broker does not long-poll"
