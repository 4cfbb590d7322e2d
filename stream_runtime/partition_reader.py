"""Read partitions between two offsets without a consumer group: replay, the dead-letter
topic's operators and the off-policy reader share this one reader.

Nothing is committed and no group is joined, so reading never moves a live consumer's
position. The end is fixed by the caller (offsets taken before reading), so a read
terminates while producers keep writing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition

from stream_runtime.kafka_connection import KafkaTarget, new_client, wait_until_reachable
from stream_runtime.kafka_consumer import KafkaRecord, take_queued
from stream_runtime.kafka_metadata import METADATA_TIMEOUT_S


class PartitionReadError(RuntimeError):
    """A partition ended before the expected offset, or the broker went silent."""


#: Longest wait for a record when none is queued (:func:`~stream_runtime.kafka_consumer.
#: take_queued`). A chunk is what is queued, up to ``chunk_records``: with
#: ``consume(n, 1 s)`` each reader waited a whole second after its last records (the
#: read of the 48 configs took 1.01 s), and a worker could sit idle while a chunk filled.
READ_WAIT_S: Final = 0.1


async def read_chunks(
    kafka: KafkaTarget,
    start: Mapping[str, int],
    until: Mapping[str, int],
    chunk_records: int,
    *,
    headers: bool = False,
    stall_s: float | None = None,
) -> AsyncIterator[list[KafkaRecord]]:
    """Records of the partitions named by ``until`` (``topic:partition`` -> last offset,
    inclusive), from ``start`` (default: the beginning), in chunks of log order; with
    their headers when ``headers`` (the dead-letter topic's reason lives there).

    librdkafka (as in the live loop) with partition-EOF events: a partition that ends
    before its expected last offset is an error naming it, never an endless wait; and
    with ``stall_s``, so is a broker that sends nothing for that long.

    "The beginning" is each partition's log start offset, asked for explicitly: given
    ``OFFSET_BEGINNING``, librdkafka sent its first offset request ~0.45 s after it had
    connected, so every reader (the caller's read of the configs, then each worker)
    waited that long for its first record; asked for, the first record comes ~0.1 s
    after the client is created. Should retention delete the start meanwhile, the
    fetch resets to the new earliest offset (never to the end, librdkafka's default).
    """
    remaining: dict[tuple[str, int], int] = {}
    wanted: list[tuple[str, int, int | None]] = []
    for f, last in until.items():
        topic, _, part = f.rpartition(":")
        if last < 0 or (f in start and start[f] > last):
            continue
        remaining[(topic, int(part))] = last
        wanted.append((topic, int(part), start.get(f)))
    if not remaining:
        return
    consumer, errors = new_client(
        Consumer,
        kafka,
        {
            "group.id": f"mab-reader-{uuid.uuid4().hex}",  # never joined nor committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "fetch.wait.max.ms": 50,
        },
    )

    def log_start(topic: str, part: int) -> int:
        low, _ = consumer.get_watermark_offsets(
            RdTopicPartition(topic, part), timeout=METADATA_TIMEOUT_S
        )
        return int(low)

    def assign() -> None:
        wait_until_reachable(consumer, errors)
        consumer.assign(
            [
                RdTopicPartition(t, p, log_start(t, p) if first is None else first)
                for t, p, first in wanted
            ]
        )

    try:
        await asyncio.to_thread(assign)
        heard = time.monotonic()
        while remaining:
            messages = await asyncio.to_thread(take_queued, consumer, chunk_records, READ_WAIT_S)
            if messages:
                heard = time.monotonic()
            elif stall_s is not None and time.monotonic() - heard > stall_s:
                raise PartitionReadError(
                    f"no record for {stall_s:g} s while reading "
                    + ", ".join(f"{t}:{p}" for t, p in sorted(remaining))
                )
            chunk: list[KafkaRecord] = []
            for m in messages:
                key = (m.topic() or "", m.partition() or 0)
                stop = remaining.get(key)
                if stop is None:
                    continue
                offset = m.offset() or 0
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    if offset > stop:  # the end is past our last record (e.g. a marker)
                        del remaining[key]
                        continue
                    raise PartitionReadError(
                        f"{key[0]}:{key[1]} ends at offset {offset}, before the expected "
                        f"last offset {stop} (topic deleted or truncated?)"
                    )
                if offset <= stop:
                    chunk.append(
                        KafkaRecord(
                            key[0],
                            key[1],
                            offset,
                            m.timestamp()[1],
                            m.value(),
                            m.key(),
                            m.headers() if headers else None,  # type: ignore[arg-type]
                        )
                    )
                if offset >= stop:
                    del remaining[key]
            if chunk:
                yield chunk
    finally:
        await asyncio.to_thread(consumer.close)
