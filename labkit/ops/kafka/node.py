"""One Apache Kafka node as the lab runs it: its ports, files, storage format and JVM command.

Every node has combined roles (broker and controller, KRaft) and a static quorum
(``controller.quorum.voters``), so one node and three are set up the same way:
each node's storage is formatted once with the stack's cluster id before its first
start, and a folder formatted for another cluster is refused, never re-formatted.

Files, under ``<state_dir>/broker/kafka/`` (one node) or ``.../kafka/node-<id>/``:
``server.properties``, ``log4j2.xml`` and ``data/`` (the log). The cluster id is
in ``<state_dir>/broker/kafka/cluster.id``.
"""

from __future__ import annotations

import base64
import shlex
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabkitError
from labkit.ops.kafka.dist import KafkaJars
from labkit.ops.kafka.java import Java

__all__ = ["KafkaNode", "DataFromAnotherCluster", "cluster_id", "write_config", "format_storage", "jvm_command"]

FORMAT_TIMEOUT_S = 120
# From kafka-run-class.sh; the heap is the lab's (the scripts' default is 1 GB).
_GC_FLAGS = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
             "-XX:+ExplicitGCInvokesConcurrent"]

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by labkit: the broker logs to stdout, which labkit keeps in logs/<component>.log. -->
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.server.metrics" level="WARN"/>
  </Loggers>
</Configuration>
"""


class DataFromAnotherCluster(LabkitError):
    """A node's data folder was formatted for another cluster id."""


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    host: str
    port: int  # clients and other brokers
    controller_port: int
    folder: Path  # server.properties, log4j2.xml, data/
    voters: str  # controller.quorum.voters: id@host:port for every node
    replication: int  # for the internal topics: 1 on one node, else 3
    partitions: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def properties(self) -> Path:
        return self.folder / "server.properties"


def cluster_id(kafka_dir: Path) -> str:
    """The stack's cluster id, made once (as ``StorageTool random-uuid`` does: 16 random bytes, base64url)."""
    path = kafka_dir / "cluster.id"
    if path.exists():
        return path.read_text().strip()
    while True:
        made = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not made.startswith("-"):  # Kafka's own rule: an id must not read as a command-line flag
            break
    kafka_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n")
    return made


def write_config(node: KafkaNode) -> None:
    min_isr = 2 if node.replication >= 3 else 1
    lines = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": node.voters,
        "listeners": f"PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.data.resolve()),
        "num.partitions": node.partitions,
        "default.replication.factor": node.replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": node.replication,
        "transaction.state.log.replication.factor": node.replication,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": node.replication,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": 0,
        # Its 128 MiB default is allocated on the heap at start; a lab topic needs far less.
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        # A lab broker serves a handful of clients: one thread of each kind wakes less when idle
        # (measured: 1.12 to 1.20 % of a core against 1.19 to 1.45 with two of each and Kafka's 4 coordinator threads).
        "num.network.threads": 1,
        "num.io.threads": 1,
        "background.threads": 1,
        "group.coordinator.threads": 1,
        "share.coordinator.threads": 1,
        "num.recovery.threads.per.data.dir": 1,
        # The active controller writes a no-op record this often so that brokers see it is alive; 500 ms
        # by default, four wake-ups of every node a second on an idle lab.
        "metadata.max.idle.interval.ms": 2000,
        "unclean.leader.election.enable": "false",
    }
    if node.replication >= 3:
        lines.update({
            # A node killed with kill -9 is fenced after this long, and its partitions get new leaders
            # (Kafka's defaults, 2 s and 9 s, suit a data centre; the lab wants to watch it happen).
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 3000,
            "replica.lag.time.max.ms": 10000,
        })
    node.folder.mkdir(parents=True, exist_ok=True)
    text = "# Written by labkit (labkit/ops/kafka/node.py) at each start.\n"
    node.properties.write_text(text + "".join(f"{key}={value}\n" for key, value in lines.items()))
    (node.folder / "log4j2.xml").write_text(_LOG4J2)


def _formatted_for(data: Path) -> str | None:
    meta = data / "meta.properties"
    if not meta.exists():
        return None
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return ""


def format_storage(node: KafkaNode, cluster: str, java: Java, jars: KafkaJars, say: Callable[[str], None]) -> bool:
    """Format the node's storage for ``cluster`` unless it already is; returns whether it formatted."""
    found = _formatted_for(node.data)
    if found == cluster:
        return False
    if found is not None:
        raise DataFromAnotherCluster(
            f"{node.data} holds Kafka data of cluster {found!r}, not this stack's {cluster!r} "
            f"({node.folder.parent / 'cluster.id'}): move or delete that folder (its events are lost to this stack), "
            "or use another state folder (LABKIT_STATE_DIR / --state-dir)"
        )
    say(f"formatting broker-{node.node_id}'s storage (first start)")
    # A tool that runs for a second: C1 and the serial collector start it in half the time of the defaults.
    quick = ["-Xms64m", "-Xmx64m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]
    command = [str(java.path), *quick, "-cp", jars.classpath,
               "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(node.properties)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_S)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise LabkitError(f"formatting {node.data} failed (exit {done.returncode}):\n{tail}")
    return True


def _jvm_flags(node: KafkaNode, heap_mb: int) -> list[str]:
    return [f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", *_GC_FLAGS, "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node.folder / 'log4j2.xml'}", f"-Dkafka.logs.dir={node.folder}"]


def jvm_command(node: KafkaNode, java: Java, jars: KafkaJars, heap_mb: int, options: str = "") -> list[str]:
    """The broker's command line: ``java ... -cp <jars>/* kafka.Kafka server.properties``.

    The classpath is Kafka's jars alone, so every library (Jackson above all) is Kafka's own version.
    """
    return [str(java.path), *_jvm_flags(node, heap_mb), *shlex.split(options), "-cp", jars.classpath,
            "kafka.Kafka", str(node.properties)]
