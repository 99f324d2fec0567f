"""``labkit bench brokers``: the lab's brokers side by side in one run, each on fresh stacks.

Per broker, on one stack: the time from ``up`` to the first ack; after a warm-up
phase (a JVM compiles its hot paths in its first seconds of work), the full path and
the Kafka-only baseline at a few rates (p50, p99 and CPU per event per component,
from the one benchmark runner); then idle CPU and memory per component. On a fresh
stack: how many acked events a ``kill -9`` of the broker loses. Events for the crash are sent and read
back with plain ``websockets`` and ``confluent_kafka``, not labkit's client.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from labkit.bench.config import BASELINE, FULL, BenchConfig
from labkit.bench.goals import find_phase
from labkit.discovery import lab_api_key
from labkit.events import decode_reply
from labkit.kafka import read_everything
from labkit.ops.stack import Stack
from labkit.procstats import cpu_cores, rss_bytes
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


def _by_kind(figures: dict[str, float]) -> dict[str, float]:
    """Replicas and nodes added up under their kind: broker-1..3 as broker, consumer-1..2 as consumer."""
    summed: dict[str, float] = {}
    for name, value in figures.items():
        kind = name.rpartition("-")[0] if name.rpartition("-")[2].isdigit() else name
        summed[kind] = round(summed.get(kind, 0.0) + value, 4)
    return summed


def _fresh(broker: str, name: str) -> Settings:
    """``kafka:3`` is a three-node Apache Kafka cluster (replication factor 3); a bare name, one broker."""
    kind, _, nodes = broker.partition(":")
    return Settings(broker=kind, kafka_nodes=int(nodes or 1)).with_free_ports(
        state_dir=Path(tempfile.mkdtemp(prefix=f"labkit-{name}-{kind}{nodes}-")))


async def _send_acked(settings: Settings, count: int) -> dict[tuple[int, int], str]:
    key = lab_api_key(settings)
    acked: dict[tuple[int, int], str] = {}
    async with websockets.connect(settings.produce_url, additional_headers={"apikey": key} if key else None) as sender:
        for i in range(count):
            await sender.send(json.dumps({"type": "crash", "value": i, "id": f"c-{i}"}))
        for _ in range(count):
            ack = decode_reply(await asyncio.wait_for(sender.recv(), 60))
            if ack.ok and ack.partition is not None and ack.offset is not None:
                acked[(ack.partition, ack.offset)] = str(ack.ack)
    return acked


def _crash(broker: str, figures: BrokerFigures) -> None:
    settings = _fresh(broker, "crash")
    stack = Stack(settings).up()
    try:
        acked = asyncio.run(_send_acked(settings, CRASH_ACKS))
        # One broker: it; a cluster: the node leading partition 0.
        victim = "broker" if settings.kafka_nodes == 1 else f"broker-{stack.partitions()[0]['leader']}"
        stack.kill_component(victim)
        Stack(settings).up()
        stored = {where: json.loads(value).get("id") for where, value in
                  read_everything(settings.kafka_config(), settings.topic, timeout_s=60).items()}
        figures.crash_acked = len(acked)
        figures.crash_lost = sum(1 for where, event in acked.items() if stored.get(where) != event)
        figures.crash_reused = sum(1 for where, event in acked.items() if stored.get(where) not in (None, event))
    finally:
        Stack(settings).down()


def measure_broker(broker: str, rates: tuple[float, ...], duration_s: float, idle_s: float) -> BrokerFigures:
    """Every figure for one broker: one stack for up, the paths and idle (warmed first), a fresh one for the crash."""
    from labkit.bench import run_bench

    figures = BrokerFigures(broker)
    began = time.monotonic()
    stack = Stack(_fresh(broker, "up")).up()
    try:
        figures.up_s = round(time.monotonic() - began, 2)
        figures.first_ack_ms = round(stack.ready_ms or 0.0, 1)

        def paths(offered: tuple[float, ...], seconds: float) -> Any:
            config = BenchConfig(rates=offered, duration_s=seconds, paths=(BASELINE, FULL), ramp=False, fanout=(),
                                 out_dir=Path(tempfile.mkdtemp(prefix="labkit-bench-brokers-")), png=False)
            return run_bench(config, settings=stack.settings, use_running=True)[0]

        paths((1000.0,), WARM_UP_S)  # a JVM compiles its hot paths in its first seconds of work: not measured
        result = paths(rates, duration_s)
        for rate in rates:
            for path in (BASELINE, FULL):
                phase = find_phase(result.phases, path, "fixed", rate)
                if phase is not None:
                    figures.paths.append({"path": path, "rate": rate, "p50_ms": phase.latency.p50,
                                          "p99_ms": phase.latency.p99, "lost": phase.lost,
                                          "cpu_us_per_event": _by_kind(phase.cpu_us_per_delivery())})
        pids = {row["component"]: row["pid"] for row in stack.status() if row["pid"]}
        time.sleep(SETTLE_S)  # pacing a measurement: the last phase's work drains first
        figures.idle_cores = _by_kind({name: round(cores, 4) for name, cores in cpu_cores(pids, idle_s).items()})
        figures.rss_mb = _by_kind({name: round(rss_bytes(pid) / 1e6, 1) for name, pid in pids.items()})
    finally:
        stack.down()
    _crash(broker, figures)
    return figures
