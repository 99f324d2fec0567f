"""Apache Kafka as a broker of the lab: one JVM per node, KRaft, jars from Maven Central.

``prepare_node`` does everything a node needs before its JVM starts (Java found,
jars fetched, config written, storage formatted on first start) and returns the
command that runs it. ``why_not`` says why Kafka cannot run here, for the broker
choice that falls back to noida-db.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from labkit.errors import LabkitError
from labkit.ops.kafka.dist import KafkaJars, cache_root, find_jars, kafka_version
from labkit.ops.kafka.java import find_java
from labkit.ops.kafka.node import KafkaNode, cluster_id, format_storage, jvm_command, write_config
from labkit.settings import Settings

__all__ = ["kafka_dir", "nodes", "prepare_node", "describe", "why_not", "kafka_version", "find_java", "find_jars"]


def kafka_dir(settings: Settings) -> Path:
    return settings.state_dir / "broker" / "kafka"


def nodes(settings: Settings) -> list[KafkaNode]:
    """The stack's Kafka nodes, numbered by node.id from 1; ports step by 2 from the two base ports."""
    count = settings.kafka_nodes
    ports = settings.kafka_node_ports
    voters = ",".join(f"{i}@{settings.host}:{cport}" for i, _, cport in ports)
    base = kafka_dir(settings)
    return [
        KafkaNode(i, settings.host, port, cport, base if count == 1 else base / f"node-{i}", voters,
                  replication=1 if count == 1 else 3, partitions=settings.partitions)
        for i, port, cport in ports
    ]


def _jars(settings: Settings, say: Callable[[str], None] | None = None) -> KafkaJars:
    return find_jars(settings.kafka_home, settings.kafka_mirror, say)


def prepare_node(settings: Settings, node_id: int, say: Callable[[str], None]) -> tuple[list[str], bool]:
    """Java, jars, config and storage for one node; returns its JVM command and whether storage was formatted now."""
    java = find_java()
    jars = _jars(settings, say)
    node = nodes(settings)[node_id - 1]
    write_config(node)
    formatted = format_storage(node, cluster_id(kafka_dir(settings)), java, jars, say)
    say(f"starting broker-{node_id}'s JVM (Apache Kafka {jars.version}, {java.describe()})")
    return jvm_command(node, java, jars, settings.kafka_heap_mb, settings.kafka_jvm_options), formatted


def describe(settings: Settings) -> str:
    """"Apache Kafka 4.3.1 (Java 17 at ...)", without fetching anything."""
    try:
        java = find_java().describe()
    except LabkitError:
        java = "no Java 17+"
    version = settings.kafka_home.name if settings.kafka_home else kafka_version()
    return f"Apache Kafka {version} ({java})"


def why_not(settings: Settings) -> str | None:
    """Why Apache Kafka cannot run here (no Java 17+, or no way to its jars), or None when it can."""
    try:
        find_java()
    except LabkitError:
        return "no Java 17+ found"
    if settings.kafka_home is not None:
        return None
    cached = cache_root() / f"kafka-{kafka_version()}" / ".complete"
    if cached.exists() or shutil.which("mvn"):
        return None
    return ("Java 17+ found, but no Maven and no cached Kafka jars: install Maven, "
            "or choose --broker kafka to download Apache's distribution")
