"""Topic names, their settings and the partition-key rule, in one place.

Every topic is keyed by experiment id, so all events of one experiment are totally
ordered within one partition, and co-partitioned topics (same partition count) put an
experiment in the same partition number everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final

EXPERIMENTS: Final = "mab.experiments"
DECISIONS: Final = "mab.decisions"
REWARDS: Final = "mab.rewards"
REWARDS_DLQ: Final = "mab.rewards.dlq"

#: Co-partitioned topics must share this count (the consumer relies on it).
DEFAULT_PARTITIONS: Final = 6

#: Largest record the DLQ topic (and the dead-letter producer) accepts. A record up to
#: the broker's default ``message.max.bytes`` (1 MiB + 12 bytes) can land on the rewards
#: topic although the codec rejects anything over ``MAX_RECORD_BYTES`` (64 KiB) as
#: ``oversize``; its dead letter is the same bytes plus our headers, so the DLQ topic
#: needs headroom over the source topics' limit or the oversize record could not be
#: dead-lettered with its original bytes. A broker configured with a larger
#: ``message.max.bytes`` for the source topics needs this raised to match.
DLQ_MAX_MESSAGE_BYTES: Final = 2 * 1024 * 1024

#: Locally made decisions reported straight to Kafka by an SDK or an edge worker: each
#: record is one ``POST /exposures`` item (:class:`mab_client.models.ExposureCreate`),
#: keyed by experiment id like every topic. The reward consumer's exposure judge reads
#: it (:mod:`services.reward_consumer.exposures`, docs/assignment.md).
EXPOSURES: Final = "mab.exposures"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the product needs, created idempotently by ``mab up`` and the tests."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Resolved topic names for one deployment (a prefix isolates tests and tenants)."""

    experiments: str
    decisions: str
    rewards: str
    rewards_dlq: str
    exposures: str

    @classmethod
    def with_prefix(cls, prefix: str = "") -> TopicNames:
        return cls(
            experiments=prefix + EXPERIMENTS,
            decisions=prefix + DECISIONS,
            rewards=prefix + REWARDS,
            rewards_dlq=prefix + REWARDS_DLQ,
            exposures=prefix + EXPOSURES,
        )

    @classmethod
    def from_env(cls) -> TopicNames:
        return cls.with_prefix(os.environ.get("MAB_TOPIC_PREFIX", ""))


def topic_specs(prefix: str = "", partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
    """The topics and settings the design needs.

    The log is the system of record, so nothing is deleted by time (``retention.ms=-1``);
    the DLQ keeps records 30 days, long enough to fix and re-drive them, and accepts
    records larger than the source topics do (see :data:`DLQ_MAX_MESSAGE_BYTES`).
    """
    names = TopicNames.with_prefix(prefix)
    forever = {"retention.ms": "-1", "cleanup.policy": "delete"}
    return [
        TopicSpec(names.experiments, partitions, dict(forever)),
        TopicSpec(names.decisions, partitions, dict(forever)),
        TopicSpec(names.rewards, partitions, dict(forever)),
        # Exposures are inputs, kept like the rewards: the decisions made of them are
        # derived (replay needs only the decisions topic, which has them).
        TopicSpec(names.exposures, partitions, dict(forever)),
        TopicSpec(
            names.rewards_dlq,
            1,
            {
                "retention.ms": str(30 * 24 * 3600 * 1000),
                "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES),
            },
        ),
    ]


def partition_key(experiment_id: str) -> bytes:
    """The partition key of every record: the (trimmed) experiment id as UTF-8.

    No further encoding: UTF-8 is injective and a key is opaque bytes to Kafka, and a
    bulk producer keys its records by the id it knows, so its rewards and the API's land
    in the same partition (see :mod:`schemas.ids`)."""
    return experiment_id.encode()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a record key (the Java client's ``Utils.murmur2``), which
    librdkafka's ``murmur2_random`` partitioner, our producers' setting, also uses."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length - tail
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(experiment_id: str, partitions: int) -> int:
    """The partition (of ``partitions`` numbered from 0) that the product's producers,
    and every client with Kafka's default partitioner, put ``experiment_id``'s records in."""
    return (murmur2(partition_key(experiment_id)) & 0x7FFFFFFF) % partitions
