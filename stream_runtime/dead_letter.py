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
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from schemas.dead_letter import dead_letter_headers
from schemas.topics import DLQ_MAX_MESSAGE_BYTES
from stream_runtime.batch import Rejected


def dead_letter_producer(bootstrap_servers: str, client_id: str) -> AIOKafkaProducer:
    """A durable producer able to carry an oversize record plus its headers to the DLQ."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        max_request_size=DLQ_MAX_MESSAGE_BYTES,
    )


class DeadLetterProducer:
    """A :data:`~stream_runtime.batch.DeadLetterSink` writing to the DLQ topic.

    ``rejected_by`` names the processor (consumer group and client id) in every dead
    letter's headers. The value and key are the rejected record's own bytes, untouched.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, rejected_by: str) -> None:
        self.producer = producer
        self.topic = topic
        self.rejected_by = rejected_by
        self.sent = 0

    async def __call__(self, rejects: Sequence[Rejected]) -> None:
        """Send every reject and return once the broker acknowledged all of them."""
        if not rejects:
            return
        now_ms = int(time.time() * 1000)
        futures = []
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
            futures.append(
                await self.producer.send(
                    self.topic,
                    rec.value,
                    key=getattr(rec, "key", None),
                    headers=headers,
                )
            )
        await asyncio.gather(*futures)
        self.sent += len(rejects)
