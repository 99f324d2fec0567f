"""External mode: the services and gateway against a Kafka cluster labkit did not start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import psutil
import websockets
from plain import lab_key
from waiting import wait_until

from labkit import Sender, Settings, Stack, watch
from labkit.ops.brokers import BROKERS
from labkit.settings import free_port


async def test_up_with_kafka_runs_against_an_existing_cluster(tmp_path):
    cluster = Settings(kafka_port=free_port(), state_dir=tmp_path / "cluster")
    broker = subprocess.Popen(  # noqa: ASYNC220 - it only starts the broker: nothing waits on it here
        BROKERS["noida"].command(cluster.replace(broker="noida")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "state"
    ports = {f"LABKIT_{name.upper()}": str(free_port()) for name in ("producer_port", "consumer_port", "gateway_port")}
    env = {**os.environ, **ports, "LABKIT_STATE_DIR": str(state), "COLUMNS": "200"}
    properties = tmp_path / "client.properties"
    properties.write_text("# a client setting passed through to librdkafka\nclient.rack=lab-rack\n")
    try:
        started = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "labkit", "up", "--kafka", cluster.bootstrap_servers, "--kafka-config",
             str(properties),
             "--topic", "external-events"],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert started.returncode == 0, started.stderr
        assert "broker external" in started.stdout and "noida" not in started.stdout  # nothing embedded started
        assert "lab-rack" not in started.stdout + started.stderr
        stack = Stack(Settings(state_dir=state))
        assert stack.adopt() and stack.settings.mode == "external"
        assert stack.settings.kafka_properties == {"client.rack": "lab-rack"}

        opened = asyncio.Event()
        received = []

        async def collect():
            async for event in watch(settings=stack.settings, opened=opened, count=3):
                received.append(event)

        task = asyncio.create_task(collect())
        await wait_until(lambda: opened.is_set() or task.done(), 10, "the watcher did not connect")
        if task.done():
            task.result()  # raises what stopped the watcher
        async with Sender(settings=stack.settings) as sender:
            acks = await sender.send_many([{"type": "ext", "value": i} for i in range(3)])
        await asyncio.wait_for(task, 20)
        assert [e.id for e in received] == [a.ack for a in acks]
        assert {e.topic for e in received} == {"external-events"}
        stack.down()
        assert broker.poll() is None  # down stops only what labkit started
        assert psutil.pid_exists(broker.pid)
    finally:
        await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "labkit", "down"], env=env, capture_output=True,
                                timeout=60)
        broker.terminate()
        broker.wait(10)


async def test_credentials_stay_out_of_logs_status_and_frames(tmp_path, event_type):
    secret = "hunter2-not-for-logs"
    properties = {"sasl.username": "lab", "sasl.password": secret}  # unused on a plaintext broker, but passed through
    settings = Settings(kafka_properties=properties).with_free_ports(state_dir=tmp_path)
    with Stack(settings) as stack:
        env = {**os.environ, "LABKIT_STATE_DIR": str(tmp_path), "COLUMNS": "200"}
        status = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "labkit", "status"],
                                         capture_output=True,
                                         text=True, env=env, timeout=60)
        assert status.returncode == 0 and secret not in status.stdout + status.stderr
        async with Sender(settings=stack.settings) as sender:
            assert (await sender.send({"type": event_type, "value": 1})).ok
        headers = {"apikey": lab_key(stack.settings)}
        async with websockets.connect(stack.settings.produce_url, additional_headers=headers) as raw:
            await raw.send('{"type": "a", "value": "x"}')  # refused: the error frame carries no setting
            error = await raw.recv()
        assert '"invalid_event"' in error and secret not in error
        assert secret not in repr(stack.settings) and secret not in str(stack.settings)
        assert oct((tmp_path / "stack.json").stat().st_mode & 0o777) == "0o600"
    logs = "".join(path.read_text(errors="replace") for path in (tmp_path / "logs").iterdir())
    assert logs and secret not in logs
    assert "lab-key" not in logs  # nor the gateway's key
