"""The epoch of the events log: an identity that changes when the broker's log restarts.

Offsets only mean something within one log. An in-memory broker that restarts
starts the topic again at offset 0, and Kafka's own identities do not show it:
noida-db keeps its cluster id across restarts and answers a zero topic id. So
labkit keeps the identity in the broker itself: a one-record topic beside the
events topic (``<topic>.epoch``) holding a random id. It is written once, by
whoever finds it empty; a broker that loses its log loses that record too (noida-db
keeps the topic and drops its records), and the next reader writes a new one. Watchers resume with ``epoch=`` (Centrifugo's
epoch, Ably's resume serial are the models): a different epoch means their
offsets belong to an older log.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from labkit.settings import Settings

__all__ = ["epoch_topic", "log_epoch", "epoch_is_kept"]


def epoch_topic(settings: Settings) -> str:
    return f"{settings.topic}.epoch"


def _first_record(settings: Settings, topic: str, timeout: float) -> str | None:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"labkit-epoch-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            error = msg.error()
            if error is None:
                return msg.value().decode()
            if error.code() == KafkaError._PARTITION_EOF:
                return None
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"could not read {topic}"))
    finally:
        consumer.close()


def epoch_is_kept(admin: AdminClient, settings: Settings, timeout: float = 5.0) -> bool:
    """Whether the broker still holds the epoch record: a restarted in-memory broker may keep the topic, not its records."""
    from confluent_kafka.admin import OffsetSpec

    where = TopicPartition(epoch_topic(settings), 0)
    try:
        end = admin.list_offsets({where: OffsetSpec.latest()}, request_timeout=timeout)[where].result()
    except KafkaException:
        return False
    return end.offset > 0


def log_epoch(settings: Settings, timeout: float = 10.0) -> str:
    """The current epoch of the events log, writing a new one where none is kept."""
    topic = epoch_topic(settings)
    admin = AdminClient(settings.kafka_config())
    if topic not in admin.list_topics(timeout=timeout).topics:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    found = _first_record(settings, topic, timeout)
    if found is not None:
        return found
    producer = Producer(settings.kafka_config(**{"acks": "all"}))
    producer.produce(topic, uuid.uuid4().hex[:16].encode())
    producer.flush(timeout)
    # Two writers may race: the first record is the epoch for everyone.
    found = _first_record(settings, topic, timeout)
    if found is None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"could not write an epoch to {topic}"))
    return found
