"""``labkit bench brokers``: the lab's brokers side by side in one run, each on fresh stacks.

Per broker, on one stack: the time from ``up`` to the first ack; each after the same unmeasured warm-up (a JVM
compiles its hot paths in its first seconds of work), the full path and the Kafka-only baseline at a few rates
(p50, p99 and CPU per event per component, from the one benchmark runner); then idle CPU and memory per
component. On a fresh stack: how many acked events a ``kill -9`` of the broker loses. Events for the
crash are sent and read back with plain ``websockets`` and ``confluent_kafka``, not labkit's client.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import websockets

from labkit.bench.config import BASELINE, FULL, BenchConfig
from labkit.bench.resources import stack_processes
from labkit.bench.runner import BenchRunner, fresh_stacks, run_idle, the_running_stack
from labkit.bench.stats import find_phase
from labkit.discovery import lab_api_key
from labkit.events import decode_reply
from labkit.kafka import read_everything
from labkit.ops.stack import Stack
from labkit.procstats import rss
from labkit.settings import Settings

__all__ = ["BrokerFigures", "measure_broker"]

CRASH_ACKS = 500
SETTLE_S = 5.0  # after the last phase, before idle CPU is measured
WARM_UP_S = 5.0


@dataclass
class BrokerFigures:
    broker: str
    up_s: float = 0.0  # `up` called to its return: the probe event has gone end to end
    first_ack_ms: float = 0.0  # the probe's round trip, part of up_s
    idle_cores: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    paths: list[dict[str, Any]] = field(default_factory=list)  # per path and rate: p50, p99, µs of CPU per event
    crash_acked: int = 0
    crash_lost: int = 0
    crash_reused: int = 0  # acked (partition, offset) pairs now holding another event


async def _crash(stack: Stack, figures: BrokerFigures) -> None:
    """Acked events through the gateway, ``kill -9`` of the broker (a cluster: partition 0's leader), up again."""
    settings, key = stack.settings, lab_api_key(stack.settings)
    acked: dict[tuple[int, int], str] = {}
    async with websockets.connect(settings.produce_url, additional_headers={"apikey": key} if key else None) as sender:
        for i in range(CRASH_ACKS):
            await sender.send(json.dumps({"type": "crash", "value": i, "id": f"c-{i}"}))
        for _ in range(CRASH_ACKS):
            ack = decode_reply(await asyncio.wait_for(sender.recv(), 60))
            if ack.ok and ack.partition is not None and ack.offset is not None:
                acked[(ack.partition, ack.offset)] = str(ack.ack)
    victim = "broker" if settings.kafka_nodes == 1 else f"broker-{stack.partitions()[0]['leader']}"
    await asyncio.to_thread(stack.kill_component, victim)
    await asyncio.to_thread(Stack(settings).up)
    records = await asyncio.to_thread(read_everything, settings.kafka_config(), settings.topic, timeout_s=60)
    stored = {where: json.loads(value).get("id") for where, value in records.items()}
    figures.crash_acked = len(acked)
    figures.crash_lost = sum(1 for where, event in acked.items() if stored.get(where) != event)
    figures.crash_reused = sum(1 for where, event in acked.items() if stored.get(where) not in (None, event))


async def measure_broker(broker: str, rates: tuple[float, ...], duration_s: float, idle_s: float) -> BrokerFigures:
    """Every figure for one broker (``kafka:3``: a three-node Apache Kafka cluster, replication factor 3): one stack
    for up, the paths and idle (warmed first), a fresh one for the crash."""
    kind, _, nodes = broker.partition(":")
    stacks, figures = fresh_stacks(Settings(broker=kind, kafka_nodes=int(nodes or 1))), BrokerFigures(broker)
    began = time.monotonic()
    async with stacks() as stack:
        figures.up_s, figures.first_ack_ms = round(time.monotonic() - began, 2), round(stack.ready_ms or 0.0, 1)
        # Both brokers get the same unmeasured warm-up before each phase (a JVM compiles in its first seconds).
        config = BenchConfig(rates=rates, duration_s=duration_s, paths=(BASELINE, FULL), ramp=False, fanout=(),
                             warm_up_s=WARM_UP_S)
        runner = BenchRunner(config, the_running_stack(stack))
        await runner.run()
        for rate in rates:
            for path in (BASELINE, FULL):
                if (phase := find_phase(runner.phases, path, "fixed", rate)) is not None:
                    figures.paths.append({"path": path, "rate": rate, "p50_ms": phase.latency.p50,
                                          "p99_ms": phase.latency.p99, "lost": phase.lost,
                                          "cpu_us_per_event": phase.cpu_us_per_delivery()})
        await asyncio.sleep(SETTLE_S)  # pacing a measurement: the last phase's work drains first
        figures.idle_cores = await asyncio.to_thread(run_idle, stack, idle_s)
        figures.rss_mb = {name: round(rss(procs) / 1e6, 1) for name, procs in stack_processes(stack).items()}
    async with stacks() as stack:
        await _crash(stack, figures)
    return figures
