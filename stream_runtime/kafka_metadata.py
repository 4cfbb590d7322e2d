"""Topic metadata through librdkafka's public calls (no consumer group is joined).

Shared by ``mab replay`` and the off-policy reader: both need a topic's partition count
before they assign partitions by hand, which aiokafka only offers through its private
client.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Final

from confluent_kafka import Consumer

from stream_runtime.kafka_connection import KafkaTarget, new_client, wait_until_reachable

#: Seconds a metadata or offsets request may take before the caller gives up on the broker.
METADATA_TIMEOUT_S: Final = 15.0


@contextlib.contextmanager
def metadata_client(kafka: KafkaTarget, purpose: str = "metadata") -> Iterator[Consumer]:
    """A librdkafka consumer used only for metadata and offset lookups (never joins),
    once a broker answered (:class:`~stream_runtime.kafka_connection.KafkaConnectionError`
    naming the setting to fix otherwise)."""
    consumer, errors = new_client(
        Consumer,
        kafka,
        {"group.id": f"mab-{purpose}-{uuid.uuid4().hex}", "enable.auto.commit": False},
    )
    try:
        wait_until_reachable(consumer, errors)
        yield consumer
    finally:
        consumer.close()


def partition_counts(
    kafka: KafkaTarget, topics: Sequence[str], timeout_s: float = METADATA_TIMEOUT_S
) -> dict[str, int]:
    """Partitions of each of ``topics`` from one metadata request (0: no such topic).
    Raises :class:`~stream_runtime.kafka_connection.KafkaConnectionError` when no broker
    answers (or one refuses the credentials), librdkafka's ``KafkaException`` when the
    metadata request itself takes longer than ``timeout_s``."""
    with metadata_client(kafka) as consumer:
        listed = consumer.list_topics(timeout=timeout_s).topics
    counts: dict[str, int] = {}
    for topic in topics:
        found = listed.get(topic)
        counts[topic] = 0 if found is None or found.error is not None else len(found.partitions)
    return counts


def partition_count(kafka: KafkaTarget, topic: str, timeout_s: float = METADATA_TIMEOUT_S) -> int:
    """Partitions of ``topic`` (0 when it does not exist); see :func:`partition_counts`."""
    return partition_counts(kafka, [topic], timeout_s)[topic]
