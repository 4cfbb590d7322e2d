"""A librdkafka producer for asyncio code that must know its records are in the log.

The stream processors write to Kafka only where a record must not be lost: dead letters
(before the batch that rejected them is committed), change points and default rewards.
Each such write is awaited until the broker acknowledged every record of it, with
``acks=all`` and an idempotent producer, so an acknowledged record survives a broker
failover and a retried send is not doubled.

Why not aiokafka (which these call sites used before): librdkafka reports *why* it
cannot connect (a rejected password, an untrusted certificate) through its error
callback, which :mod:`stream_runtime.kafka_connection` turns into one clear start-up
error; aiokafka only logs the cause and raises "Unable to bootstrap". And every other
runtime client already is librdkafka.

How a send waits: every record is handed to librdkafka, then ``flush`` runs in a worker
thread, which serves the delivery reports; each report fails or acknowledges its own
send's record. The callers send one batch at a time (the processor's loop), so waiting
for the whole queue is waiting for that batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Final, NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from stream_runtime.kafka_connection import KafkaTarget, new_client, wait_until_reachable

#: Pause before trying again when librdkafka's local queue is full.
_QUEUE_FULL_WAIT_S: Final = 0.05


class OutRecord(NamedTuple):
    """One record to produce (``headers`` as ``(name, bytes)`` pairs)."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] | None = None


class ProduceError(RuntimeError):
    """The broker did not acknowledge a record (refused it, or not in time)."""


class AckedProducer:
    """``await start()``, ``await send(records)`` (returns once all are acknowledged),
    ``await stop()``."""

    def __init__(
        self,
        kafka: KafkaTarget,
        client_id: str,
        *,
        max_message_bytes: int = 1024 * 1024,
        delivery_timeout_s: float = 30.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.delivery_timeout_s = delivery_timeout_s
        self._producer, self._errors = new_client(
            Producer,
            kafka,
            {
                "client.id": client_id,
                "acks": "all",
                "enable.idempotence": True,
                "message.max.bytes": max_message_bytes,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "linger.ms": 5,
                # The Java client's partitioner, as every producer of the product: a
                # record keyed by experiment id lands in that experiment's partition.
                "partitioner": "murmur2_random",
            },
            log=log,
        )

    async def start(self) -> None:
        """Wait until a broker answers (:class:`~stream_runtime.kafka_connection.
        KafkaConnectionError` naming the setting when it refuses us)."""
        await asyncio.to_thread(wait_until_reachable, self._producer, self._errors)

    async def send(self, records: Sequence[OutRecord]) -> None:
        """Produce ``records`` and return once the broker acknowledged every one, else
        raise :class:`ProduceError` (some may still have been written: callers resend,
        and every reader of these topics tolerates a duplicate)."""
        if not records:
            return
        failed: list[KafkaError] = []
        for record in records:
            while True:
                try:
                    self._producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        headers=list(record.headers) if record.headers else None,
                        on_delivery=partial(_report, failed),
                    )
                    break
                except BufferError:
                    await asyncio.to_thread(self._producer.poll, _QUEUE_FULL_WAIT_S)
        # librdkafka fails a record at its message timeout: flush a little longer so
        # every record gets its own verdict (its report), not ours.
        left = await asyncio.to_thread(self._producer.flush, self.delivery_timeout_s + 5.0)
        self._errors.raise_if_fatal()
        if failed:
            raise ProduceError(f"{len(failed)} of {len(records)} records refused: {failed[0]}")
        if left:
            raise ProduceError(
                f"{left} records not acknowledged within {self.delivery_timeout_s:g} s"
            )

    async def stop(self) -> None:
        """Deliver what is still queued (bounded by the delivery timeout)."""
        await asyncio.to_thread(self._producer.flush, self.delivery_timeout_s)


def _report(failed: list[KafkaError], err: KafkaError | None, _msg: Message) -> None:
    if err is not None:
        failed.append(err)
