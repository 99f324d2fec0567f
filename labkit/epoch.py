"""The epoch of the events log: an identity that changes when the broker's log restarts.

Offsets only mean something within one log. An in-memory broker that restarts
starts the topic again at offset 0, and Kafka's own identities do not show it:
noida-db keeps its cluster id across restarts and answers a zero topic id. So
labkit keeps the identity in the broker itself: a one-record topic beside the
events topic (``<topic>.epoch``) holding a random id. It is written once, by
whoever finds it empty; a broker that loses its log loses that record too (noida-db
keeps the topic and drops its records), and the next reader writes a new one. Watchers resume with
``epoch=`` (Centrifugo's epoch, Ably's resume serial are the models): a different epoch means their
offsets belong to an older log.

A log can also lose only its tail (noida-db saves about a second after changes, so
a ``kill -9`` loses the last acked records and gives their offsets to new ones).
The consumer then appends a step to the same topic: a JSON record naming the new
epoch, the one it follows and, per partition, the first offset that changed and
the old end (Kafka's leader epochs, KIP-101 and KIP-320, answer the same problem).
The current epoch is the end of the chain from the first record; a step that does
not follow the epoch current when it is read lost a race and is ignored, so
consumers that notice the same loss agree on one epoch.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from labkit.settings import Settings

__all__ = ["epoch_topic", "log_epoch", "epoch_is_kept", "log_epochs", "EpochStep", "epoch_chain", "Truncation",
           "new_epoch", "losses_since"]


def epoch_topic(settings: Settings) -> str:
    return f"{settings.topic}.epoch"


def _records(settings: Settings, topic: str, timeout: float) -> list[str]:
    """Every record of the one-partition epoch topic, in order."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"labkit-epoch-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    found: list[str] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            error, value = msg.error(), msg.value()
            if error is None:
                if value is not None:  # a record without a value names no epoch
                    found.append(value.decode())
            elif error.code() == KafkaError._PARTITION_EOF:
                return found
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"could not read {topic}"))
    finally:
        consumer.close()


class Truncation(NamedTuple):
    """One partition's lost tail: records from ``offset`` to ``old_end - 1`` are gone; new ones take those offsets."""

    offset: int
    old_end: int


class EpochStep(NamedTuple):
    epoch: str
    after: str | None
    truncated: dict[int, Truncation]


def _step(value: str) -> EpochStep:
    if not value.startswith("{"):
        return EpochStep(value, None, {})  # a log's first epoch: a bare id
    body = json.loads(value)
    return EpochStep(body["epoch"], body["after"], {int(p): Truncation(*t) for p, t in body["truncated"].items()})


def epoch_chain(records: list[str]) -> list[EpochStep]:
    """The steps from the log's first epoch to the current one (the last step's epoch)."""
    chain: list[EpochStep] = []
    for step in map(_step, records):
        if (not chain and step.after is None) or (chain and step.after == chain[-1].epoch):
            chain.append(step)
    return chain


def losses_since(chain: list[EpochStep], epoch: str) -> dict[int, Truncation] | None:
    """What was lost since ``epoch`` per partition (earliest offset, latest end); None when it is not in the chain."""
    names = [step.epoch for step in chain]
    if epoch not in names:
        return None
    lost: dict[int, Truncation] = {}
    for step in chain[names.index(epoch) + 1:]:
        for p, cut in step.truncated.items():
            before = lost.get(p)
            lost[p] = cut if before is None else Truncation(min(before.offset, cut.offset),
                                                            max(before.old_end, cut.old_end))
    return lost


def new_epoch(settings: Settings, after: str, truncated: Mapping[int, Truncation],
              timeout: float = 10.0) -> list[EpochStep]:
    """Append a step after ``after`` for a log that lost these tails; returns the chain as it now stands.

    Nothing is appended when ``after`` is no longer current: another consumer noticed first, or the
    broker lost the whole log (and the epoch record with it), which starts a chain of its own.
    """
    chain = log_epochs(settings, timeout)
    if chain[-1].epoch != after:
        return chain
    topic = epoch_topic(settings)
    step = {"epoch": uuid.uuid4().hex[:16], "after": after,
            "truncated": {str(p): list(t) for p, t in truncated.items()}}
    producer = Producer(settings.kafka_config(acks="all"))
    producer.produce(topic, json.dumps(step).encode())
    producer.flush(timeout)
    return epoch_chain(_records(settings, topic, timeout))


def epoch_is_kept(admin: AdminClient, settings: Settings, timeout: float = 5.0) -> bool:
    """Whether the broker still holds the epoch record.

    A restarted in-memory broker may keep the topic, not its records.
    """
    from confluent_kafka.admin import OffsetSpec

    where = TopicPartition(epoch_topic(settings), 0)
    try:
        end = admin.list_offsets({where: OffsetSpec.latest()}, request_timeout=timeout)[where].result()
    except KafkaException:
        return False
    return end.offset > 0


def log_epoch(settings: Settings, timeout: float = 10.0) -> str:
    """The current epoch of the events log, writing a new one where none is kept."""
    return log_epochs(settings, timeout)[-1].epoch


def log_epochs(settings: Settings, timeout: float = 10.0) -> list[EpochStep]:
    """The epoch chain of the events log (the current epoch last), starting one where none is kept."""
    topic = epoch_topic(settings)
    admin = AdminClient(settings.kafka_config())
    if topic not in admin.list_topics(timeout=timeout).topics:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    chain = epoch_chain(_records(settings, topic, timeout))
    if chain:
        return chain
    producer = Producer(settings.kafka_config(acks="all"))
    producer.produce(topic, uuid.uuid4().hex[:16].encode())
    producer.flush(timeout)
    # Two writers may race: the first record is the epoch for everyone.
    chain = epoch_chain(_records(settings, topic, timeout))
    if not chain:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"could not write an epoch to {topic}"))
    return chain
