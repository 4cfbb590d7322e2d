"""Topic and consumer-group metadata through librdkafka's public calls (no group is joined).

Shared by ``mab replay`` and the off-policy reader: both need a topic's partition count
before they assign partitions by hand (which partition holds an experiment is
:func:`schemas.topics.partition_of`). ``mab replay --rebuild`` also asks which consumer
groups have live members (:func:`group_members`), to refuse to run next to the processors.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

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


def admin_client(kafka: KafkaTarget) -> AdminClient:
    """librdkafka's admin client (consumer-group lookups), once a broker answered. Its
    threads end when the last reference is dropped, so a caller that forks later must
    not keep it."""
    admin, errors = new_client(AdminClient, kafka)
    wait_until_reachable(admin, errors)
    return admin


@dataclass(frozen=True, slots=True, order=True)
class GroupMember:
    """A live member of a consumer group, as its group coordinator reports it."""

    group_id: str
    client_id: str
    host: str
    #: Topics of its assignment (for the new protocol also of its target assignment)
    #: among the ones asked about; empty when it holds none of them yet.
    topics: tuple[str, ...]


def group_members(
    kafka: KafkaTarget,
    groups: Iterable[str],
    reading: Iterable[str] = (),
    timeout_s: float = METADATA_TIMEOUT_S,
) -> list[GroupMember]:
    """Every live member of ``groups``, and of any other group that is assigned
    partitions of the topics ``reading``.

    Kafka 4 runs two group protocols side by side: the classic one (JoinGroup/SyncGroup;
    librdkafka's default ``group.protocol=classic``, which the processors use) and the
    new consumer protocol of KIP-848 (``group.protocol=consumer``). The classic
    DescribeGroups request alone answers ``GROUP_ID_NOT_FOUND`` (``DEAD``, no members)
    for a group of the new protocol, which is how an older admin client (aiokafka's
    among them) would miss live members. librdkafka's DescribeConsumerGroups (2.10 and
    later) asks with the new protocol's ConsumerGroupDescribe and falls back to
    DescribeGroups, so both kinds of group come back the same way: members with client
    id, host and assignment (decoded from the classic protocol's assignment bytes). A
    named group that does not exist is reported as ``DEAD`` with no members. Groups of
    the listing in ``EMPTY`` or ``DEAD`` state have no members and are not described.

    A named group that cannot be described (no ACL to describe it, coordinator
    unavailable) raises :class:`confluent_kafka.KafkaException`: the caller cannot tell
    whether it has members. Other groups that fail to describe are skipped.
    """
    named = set(groups)
    wanted = set(reading)
    admin = admin_client(kafka)
    listed = admin.list_consumer_groups(request_timeout=timeout_s).result()
    idle = {ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD}
    others = {g.group_id for g in listed.valid if g.state not in idle} if wanted else set()
    candidates = sorted(named | others)
    if not candidates:
        return []
    members: list[GroupMember] = []
    described = admin.describe_consumer_groups(candidates, request_timeout=timeout_s)
    for group_id, future in described.items():
        try:
            description = future.result()
        except KafkaException:
            if group_id in named:
                raise
            continue
        for m in description.members:
            assigned = list(m.assignment.topic_partitions if m.assignment else [])
            if m.target_assignment is not None:
                assigned += m.target_assignment.topic_partitions
            topics = tuple(sorted({tp.topic for tp in assigned} & wanted))
            if group_id in named or topics:
                host = m.host.removeprefix("/")  # the broker prints InetAddress ("/10.0.0.5")
                members.append(GroupMember(group_id, m.client_id, host, topics))
    return sorted(members)
