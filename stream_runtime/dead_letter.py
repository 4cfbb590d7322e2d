"""The dead-letter producer: rejected records -> the DLQ topic, durably, before the commit.

The owning processor (the reward consumer, for the rewards and decisions topics) hands
every reject of a batch to :class:`DeadLetterProducer` and awaits it *before* the batch's
Kafka offsets are committed (and, for records the fold rejects, before the Redis write
that moves the stored offsets past them): so a rejected record is either in the DLQ or
still ahead of the committed position, never lost. The producer is ``acks=all`` and
idempotent, so an acknowledged dead letter survives a broker failover and a retried send
is not doubled. A crash after the dead-letter write but before the commit redelivers
the batch and dead-letters its rejects again: readers dedupe by source position
(:func:`schemas.dead_letter.dedupe`).

If the DLQ cannot be written, the call raises, the batch fails, and the shared loop
rewinds and retries it after its back-off: the consumer keeps its place and waits for
the DLQ instead of skipping records it could not park.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from schemas.dead_letter import (
    REDRIVEN,
    DeadLetter,
    Position,
    dead_letter_headers,
    position_id,
    redrive_headers,
)
from schemas.topics import DLQ_MAX_MESSAGE_BYTES
from stream_runtime.acked_producer import AckedProducer, OutRecord
from stream_runtime.batch import Rejected, log_rejects
from stream_runtime.kafka_connection import KafkaTarget
from stream_runtime.kafka_metadata import metadata_client, partition_count
from stream_runtime.partition_reader import read_chunks


def dead_letter_producer(
    kafka: KafkaTarget, client_id: str, log: logging.Logger | None = None
) -> AckedProducer:
    """A durable producer able to carry an oversize record plus its headers to the DLQ."""
    return AckedProducer(kafka, client_id, max_message_bytes=DLQ_MAX_MESSAGE_BYTES, log=log)


class DeadLetterProducer:
    """A :data:`~stream_runtime.batch.DeadLetterSink` writing to the DLQ topic.

    ``rejected_by`` names the processor (consumer group and client id) in every dead
    letter's headers. The value and key are the rejected record's own bytes, untouched.
    """

    def __init__(
        self,
        producer: AckedProducer,
        topic: str,
        rejected_by: str,
        log: logging.Logger | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.rejected_by = rejected_by
        self.log = log
        self.sent = 0

    async def __call__(self, rejects: Sequence[Rejected]) -> None:
        """Send every reject and return once the broker acknowledged all of them."""
        if not rejects:
            return
        now_ms = int(time.time() * 1000)
        letters = []
        for r in rejects:
            rec = r.record
            headers = dead_letter_headers(
                reason=r.reason,
                detail=r.detail,
                topic=rec.topic,
                partition=rec.partition,
                offset=rec.offset,
                timestamp=rec.timestamp,
                rejected_by=self.rejected_by,
                rejected_at_ms=now_ms,
                original=getattr(rec, "headers", None) or (),
            )
            letters.append(OutRecord(self.topic, rec.value, getattr(rec, "key", None), headers))
        await self.producer.send(letters)
        self.sent += len(rejects)
        if self.log is not None:
            log_rejects(self.log, "record dead-lettered", rejects)


# --------------------------------------------------------------------------- operators
# What ``mab dlq`` does, as functions the CLI and the tests call.


async def read_dead_letters(kafka: KafkaTarget, topic: str) -> list[DeadLetter]:
    """Every record of the DLQ topic, from the beginning up to its end at call time.

    No consumer group: reading the DLQ never moves anyone's committed position.
    """
    partitions = await asyncio.to_thread(partition_count, kafka, topic)
    if not partitions:
        raise DeadLetterError(f"topic {topic!r} does not exist")
    ends = await asyncio.to_thread(_end_offsets, kafka, topic, partitions)
    until = {f"{topic}:{p}": end - 1 for p, end in ends.items() if end > 0}
    out: list[DeadLetter] = []
    async for chunk in read_chunks(kafka, {}, until, 10_000, headers=True):
        out += [DeadLetter.parse(r.offset, r.key, r.value, _as_bytes(r.headers)) for r in chunk]
    out.sort(key=lambda d: d.dlq_offset)
    return out


def _as_bytes(headers: Sequence[tuple[str, str | bytes | None]] | None) -> list[tuple[str, bytes]]:
    """librdkafka gives a header without a value as None (and types values loosely)."""
    return [
        (name, value.encode() if isinstance(value, str) else value or b"")
        for name, value in headers or ()
    ]


def _end_offsets(kafka: KafkaTarget, topic: str, partitions: int) -> dict[int, int]:
    with metadata_client(kafka, "dlq") as consumer:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1]
            for p in range(partitions)
        }


class DeadLetterError(RuntimeError):
    """A DLQ operation that cannot proceed (missing topic, unusable fixed record)."""


@dataclass(frozen=True, slots=True)
class Redrive:
    """One record to put back: its origin, the (fixed or original) bytes and key."""

    origin: Position
    value: bytes
    key: bytes | None


async def redrive(
    kafka: KafkaTarget,
    dlq_topic: str,
    allowed_topics: Collection[str],
    items: Sequence[Redrive],
) -> int:
    """Re-produce ``items`` to their origin topics, then mark them re-driven in the DLQ.

    Each record carries ``mab.redrive.*`` headers naming its origin, so the consumers
    give a minimal reward the same fallback event id as the original record had
    (re-driving twice, or re-driving something that was applied, counts once). The
    markers are written first, so a re-driven record that is rejected again is
    dead-lettered *after* its marker and shows up again as open. If re-producing fails
    after the markers, re-run with ``--include-redriven``: it is idempotent.
    """
    for item in items:
        if item.origin[0] not in allowed_topics:
            raise DeadLetterError(
                f"{position_id(*item.origin)}: origin topic is not one of {sorted(allowed_topics)}"
            )
    producer = dead_letter_producer(kafka, "mab-dlq-redrive")
    await producer.start()
    try:
        now_ms = int(time.time() * 1000)
        markers = []
        for item in items:
            topic, partition, offset = item.origin
            headers = dead_letter_headers(
                reason=REDRIVEN,
                detail=f"re-driven to {topic}",
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp=-1,
                rejected_by="mab dlq redrive",
                rejected_at_ms=now_ms,
            )
            markers.append(OutRecord(dlq_topic, None, item.key, headers))
        await producer.send(markers)
        sent = [
            OutRecord(
                item.origin[0], item.value, item.key, redrive_headers(*item.origin, at_ms=now_ms)
            )
            for item in items
        ]
        await producer.send(sent)
        return len(sent)
    finally:
        await producer.stop()
