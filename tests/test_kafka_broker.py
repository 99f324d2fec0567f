"""Apache Kafka as the lab's broker (``--broker kafka``): a real JVM started by labkit, checked with clients
labkit did not write.

Each stack here runs Kafka 4.3 in KRaft mode from the jars Maven put in the user's
cache. Events are sent and read with plain ``websockets``, ``confluent_kafka`` and
Debian's ``kcat``, never with labkit's own client (which resumes and deduplicates).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator

import psutil
import pytest
import websockets
from plain import lab_key

from labkit import Settings, Stack
from labkit.events import decode_delivered, decode_reply
from labkit.kafka import read_everything

ACKS_BEFORE_KILL = 500


@pytest.fixture(scope="module")
def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(broker="kafka").with_free_ports(state_dir=tmp_path_factory.mktemp("kafka-stack"))
    with Stack(settings) as stack:
        yield stack


def broker_process(stack: Stack) -> psutil.Process:
    record = json.loads(stack.record_path.read_text())
    return psutil.Process(record["components"]["broker"]["pid"])


def headers(settings: Settings) -> dict[str, str]:
    key = lab_key(settings)
    return {"apikey": key} if key else {}


def test_the_broker_is_a_jvm_running_kafka_Kafka_and_kcat_lists_it(kafka_stack: Stack):
    command = broker_process(kafka_stack).cmdline()
    assert os.path.basename(command[0]) == "java" and "kafka.Kafka" in command, command
    listing = subprocess.run(["kcat", "-b", kafka_stack.settings.bootstrap_servers, "-L"],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert "1 brokers:" in listing.stdout
    assert f'topic "{kafka_stack.settings.topic}" with 3 partitions' in listing.stdout
    assert "Apache Kafka 4.3.1 (Java" in kafka_stack.status()[0]["detail"]


async def test_a_plain_websockets_clients_events_go_end_to_end(kafka_stack: Stack):
    s = kafka_stack.settings
    kind = f"t-{uuid.uuid4().hex[:8]}"
    ids = [f"e-{i}" for i in range(50)]
    async with websockets.connect(f"{s.consume_url}?types={kind}", additional_headers=headers(s)) as watcher, \
            websockets.connect(s.produce_url, additional_headers=headers(s)) as sender:
        for event_id in ids:
            await sender.send(json.dumps({"type": kind, "value": 1, "id": event_id}))
        acks = [decode_reply(await asyncio.wait_for(sender.recv(), 30)) for _ in ids]
        assert all(ack.ok for ack in acks), [a for a in acks if not a.ok][:3]
        delivered = [decode_delivered(await asyncio.wait_for(watcher.recv(), 30)) for _ in ids]
    got = [event.id for event in delivered if isinstance(event.id, str)]  # one without an id fails the check below
    assert sorted(got) == sorted(ids)


async def test_kill_9_of_the_broker_right_after_500_acks_loses_none(tmp_path):
    settings = Settings(broker="kafka").with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        acked: dict[tuple[int, int], str] = {}
        async with websockets.connect(settings.produce_url, additional_headers=headers(settings)) as sender:
            for i in range(ACKS_BEFORE_KILL):
                await sender.send(json.dumps({"type": "durable", "value": i, "id": f"d-{i}", "key": f"k{i % 7}"}))
            for _ in range(ACKS_BEFORE_KILL):
                ack = decode_reply(await asyncio.wait_for(sender.recv(), 30))
                assert ack.ok, ack
                acked[(ack.partition, ack.offset)] = ack.ack
        broker = broker_process(stack)
        broker.send_signal(signal.SIGKILL)
        broker.wait(10)

        again = Stack(settings).up()
        assert "started broker" in again.actions, again.actions
        assert not any("started producer" in a for a in again.actions), again.actions
        records = await asyncio.to_thread(read_everything, settings.kafka_config(), settings.topic, 60.0)
        stored = {where: json.loads(value).get("id") for where, value in records.items()}
        missing = {where: event for where, event in acked.items() if stored.get(where) != event}
        assert len(acked) == ACKS_BEFORE_KILL and not missing, \
            f"{len(missing)} acked events not stored: {list(missing.items())[:5]}"
