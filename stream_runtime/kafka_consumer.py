"""The librdkafka consumer pieces of the engine: fetch sizing, records, polls, rebalances.

Shared by the Kafka loop (:mod:`stream_runtime.kafka_loop`) and the group-less
partition reader (:mod:`stream_runtime.partition_reader`), so both fetch and copy
records the same way.

Why librdkafka (``confluent-kafka``) and not aiokafka: fetching and iterating records
with aiokafka costs ~15 µs per record in Python (its fetcher, record-batch parsing and
``ConsumerRecord`` objects), which alone caps a process at ~65,000 records/s before any
decoding or folding. librdkafka fetches and parses on its own C threads and hands out a
whole batch in one call, so the Python cost per record drops to building one small named
tuple. Its blocking calls (``consume``, ``close``) run in a worker thread
(``asyncio.to_thread``), so the event loop stays free for Redis I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition


@dataclass(frozen=True, slots=True)
class FetchSizing:
    """Fetch sizes of the consumer (librdkafka defaults: 1 MiB per partition, 50 MiB per
    fetch, min 1 byte, 500 ms wait)."""

    max_partition_fetch_bytes: int
    fetch_max_bytes: int
    fetch_min_bytes: int
    fetch_max_wait_ms: int


#: Tuned for catch-up throughput (measured in the projector first). A poll batch is a few
#: thousand records of ~200-400 bytes, i.e. ~1-2 MiB: with 4 MiB per partition one fetch
#: response of a backlogged partition fills a whole batch, so a poll rarely waits on a
#: second round trip mid-catch-up. 32 MiB per fetch bounds the memory of a fetch across
#: many partitions (a handful of batches buffered, not fifty MiB per broker).
#: ``fetch_min_bytes`` 64 KiB with a 100 ms wait lets the broker gather a few hundred
#: records per response at low rates instead of answering every few records (each
#: response costs a round trip and Python overhead); it adds at most 100 ms of latency
#: to a quiet partition, which is fine for snapshots and for buckets of a minute or hour.
#: The prefetch queue is bounded to a few batches (:func:`group_consumer_config`);
#: :data:`FETCH_QUEUE_BACKOFF_MS` says what happens at the bound.
TUNED_FETCH: Final = FetchSizing(
    max_partition_fetch_bytes=4 * 1024 * 1024,
    fetch_max_bytes=32 * 1024 * 1024,
    fetch_min_bytes=64 * 1024,
    fetch_max_wait_ms=100,
)


#: How long librdkafka waits before fetching a partition again once its prefetch queue
#: reached the bound (``fetch.queue.backoff.ms``, 1,000 ms by default). A processor
#: catching up keeps the queue at the bound, so with the default it fetched, filled the
#: queue, and then let it run dry for up to a second: reading 200,000 queued records
#: with nothing else to do took 2.1 s (95,000/s, every poll a wait) against 0.14 s
#: with 10 ms; the reward consumer and the projector spent a fifth and almost half of
#: their time waiting in polls.
FETCH_QUEUE_BACKOFF_MS: Final = 10


class KafkaRecord(NamedTuple):
    """One consumed record as the handlers see it (:class:`RecordLike`).

    librdkafka's ``Message`` exposes methods, not attributes; copying the five fields
    into a named tuple once costs less than a wrapper object's property calls later.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch (producer's create time or broker's log time)
    value: bytes | None
    key: bytes | None = None  # kept for dead letters (the record's own bytes)
    headers: list[tuple[str, str | bytes | None]] | None = None  # re-drive markers


#: ``tuple.__new__`` called directly: the named tuple's generated ``__new__`` is a
#: Python-level call per consumed record. Every field is passed, in field order.
_new_record: Final = tuple.__new__


def take_queued(consumer: Consumer, max_records: int, timeout_s: float) -> list[Message]:
    """What is queued now, up to ``max_records``; else wait up to ``timeout_s`` for one.

    ``consume(n, timeout)`` alone waits until ``n`` records *or* the timeout, never less,
    even once every partition has reached its end: at low traffic that would hold every
    record for the whole timeout. Draining the queue without waiting, and blocking on a
    single ``poll`` only when it is empty, returns as soon as anything arrives (then
    takes what arrived with it). The live loop and replay's reader both fetch this way.
    """
    messages = consumer.consume(max_records, 0)
    if messages:
        return messages
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)]


def to_records(messages: list[Message], log: logging.Logger) -> list[KafkaRecord]:
    """Turn a poll's messages into records, logging (and skipping) error events.

    Error events carry no record (a partition EOF, an unknown topic): librdkafka retries
    those by itself; a fatal error raises so the process restarts cleanly. (Client-wide
    errors, such as a broker going away, go to the consumer's ``error_cb`` instead:
    :class:`~stream_runtime.kafka_connection.ClientErrors`.)
    """
    out: list[KafkaRecord] = []
    append = out.append
    for m in messages:
        err = m.error()
        if err is None:
            # A message without error always has its topic, partition and offset (the
            # stubs type them optional for error events); consumed headers are a list.
            append(
                _new_record(
                    KafkaRecord,
                    (
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.timestamp()[1],
                        m.value(),
                        m.key(),
                        m.headers(),
                    ),
                )
            )
        elif err.fatal():
            raise KafkaException(err)
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error event", extra={"error": str(err)})
    return out


class RebalanceLogger:
    """Logs partition moves and tells the loop
    (:meth:`~stream_runtime.kafka_loop.KafkaBatchProcessor._rebalanced`).

    Correctness across a rebalance does not depend on this listener: a batch that was
    in flight while we lost its partition either fails its compare-and-set (the new
    owner wrote first) or lands before the new owner reads; its Kafka commit then fails,
    which we tolerate, and the new owner's redelivery is dropped by the offset check.
    A processor's caches are checked by its writes too; dropping them here only keeps
    them to the partitions the process owns.
    """

    def __init__(self, log: logging.Logger, moved: Callable[[], None] = lambda: None) -> None:
        self.log = log
        self.moved = moved

    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.log.info("partitions assigned", extra={"partitions": _names(partitions)})
        self.moved()

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.log.info("partitions revoked", extra={"partitions": _names(partitions)})
        self.moved()


def _names(partitions: list[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)


def group_consumer_config(
    group_id: str,
    client_id: str,
    session_timeout_ms: int,
    fetch: FetchSizing,
    on_commit: Callable[[KafkaError | None, list[TopicPartition]], None],
) -> dict[str, Any]:
    """librdkafka settings of a stream processor's group consumer, on top of the
    connection's (docs/operations.md explains each choice)."""
    return {
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,  # the loop commits explicitly, after the Redis write
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # a new group starts from the system of record
        "isolation.level": "read_committed",
        "max.partition.fetch.bytes": fetch.max_partition_fetch_bytes,
        "fetch.max.bytes": fetch.fetch_max_bytes,
        "fetch.min.bytes": fetch.fetch_min_bytes,
        "fetch.wait.max.ms": fetch.fetch_max_wait_ms,
        # Prefetch bound per partition: a few batches, not librdkafka's 64 MiB default.
        "queued.max.messages.kbytes": max(1024, fetch.max_partition_fetch_bytes // 512),
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(1000, session_timeout_ms // 4),
        "on_commit": on_commit,
    }


def partition_lag(consumer: Consumer) -> dict[tuple[str, int], int]:
    """Records left per assigned partition (high watermark - position), from the
    consumer's cached statistics (no broker round trip); what it could read so far when
    the client errs."""
    out: dict[tuple[str, int], int] = {}
    try:
        for tp in consumer.position(consumer.assignment()):
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    except KafkaException:
        return out
    return out


def seek_back(
    consumer: Consumer, offsets: Mapping[tuple[str, int], int], log: logging.Logger
) -> None:
    """Seek each (topic, partition) back to its offset: a failed batch is read again."""
    for (topic, partition), offset in offsets.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException:
            # No longer ours (rebalanced away): its new owner starts from the committed
            # offset, which is before the batch.
            log.info("partition lost before rewind", extra={"topic": topic, "partition": partition})
