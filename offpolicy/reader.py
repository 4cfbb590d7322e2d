"""Read one experiment's events from the topics, from the beginning to a fixed end.

An own consumer with no group (nothing is committed, no live consumer group is touched),
manually assigned to the experiment's partition of the experiments, decisions and
rewards topics. Every record is keyed by experiment id (:func:`schemas.topics.partition_key`),
so one partition per topic holds all of an experiment's events; records of other
experiments sharing it are skipped and counted. A record produced with another key would
not be seen (it breaks the product's ordering contract anyway).

The end offsets are captured once, before reading: the result is a consistent snapshot
of the log at that moment, and the reader terminates even while traffic keeps flowing.
Records are decoded with the same code as the live consumers
(:func:`stream_runtime.batch.decode_reward_or_decision`, so a minimal reward gets the
same fallback event id and time); undecodable records of this experiment are listed,
never fatal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import KafkaException

from offpolicy.log import ConfigEvent, ExperimentLog, RejectedRecord
from schemas.codec import DecodeError, decode
from schemas.events import (
    AnyEvent,
    ArmsAdded,
    ChangePointDetected,
    DecisionMade,
    ExperimentCreated,
    RewardObserved,
    StrategyChanged,
)
from schemas.topics import TopicNames, partition_key
from stream_runtime.batch import decode_reward_or_decision
from stream_runtime.kafka_metadata import partition_counts

#: Records per ``getmany`` call.
BATCH_RECORDS: Final = 5000


class LogUnavailableError(RuntimeError):
    """Kafka cannot be reached, a topic is missing, or reading stalled."""


class LogTooLargeError(RuntimeError):
    """The experiment's partitions hold more records than the caller's bound."""

    def __init__(self, records: int, limit: int) -> None:
        super().__init__(
            f"the experiment's partitions hold {records:,} records, more than the limit of "
            f"{limit:,}; use `mab evaluate` / `mab audit export`, which have no limit"
        )
        self.records = records
        self.limit = limit


def experiment_partition(experiment_id: str, partitions: list[int]) -> int:
    """The partition the product's producers put ``experiment_id``'s records in."""
    ordered = sorted(partitions)
    chosen: int = DefaultPartitioner()(partition_key(experiment_id), ordered, ordered)
    return chosen


async def read_experiment_log(
    bootstrap_servers: str,
    topics: TopicNames,
    experiment_id: str,
    *,
    on_total: Callable[[int], None] | None = None,
    on_records: Callable[[int], None] | None = None,
    max_records: int | None = None,
    timeout_s: float = 30.0,
) -> ExperimentLog:
    """The experiment's log up to the end offsets at the start of the call.

    ``on_total(n)`` is called once with the number of records to scan (all experiments
    sharing the partitions), ``on_records(k)`` as they are scanned. Raises
    :class:`LogTooLargeError` when that number exceeds ``max_records``, and
    :class:`LogUnavailableError` when Kafka does not answer or no record arrives for
    ``timeout_s`` seconds.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="mab-offpolicy-reader",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise LogUnavailableError(f"cannot reach Kafka at {bootstrap_servers}: {exc!r}") from None
    try:
        return await _read(
            consumer,
            bootstrap_servers,
            topics,
            experiment_id,
            on_total,
            on_records,
            max_records,
            timeout_s,
        )
    except KafkaError as exc:
        raise LogUnavailableError(f"reading the log failed: {exc!r}") from None
    finally:
        await consumer.stop()


async def _read(
    consumer: AIOKafkaConsumer,
    bootstrap_servers: str,
    topics: TopicNames,
    experiment_id: str,
    on_total: Callable[[int], None] | None,
    on_records: Callable[[int], None] | None,
    max_records: int | None,
    timeout_s: float,
) -> ExperimentLog:
    # aiokafka offers a topic's partitions only for topics its client already tracks
    # (or through its private client), so librdkafka's public metadata call counts them.
    names = (topics.experiments, topics.decisions, topics.rewards)
    try:
        counts = await asyncio.to_thread(partition_counts, bootstrap_servers, names, timeout_s)
    except KafkaException as exc:
        raise LogUnavailableError(f"no topic metadata from Kafka: {exc}") from None
    tps: list[TopicPartition] = []
    for name in names:
        if not counts[name]:
            raise LogUnavailableError(f"topic {name!r} does not exist")
        partitions = list(range(counts[name]))
        tps.append(TopicPartition(name, experiment_partition(experiment_id, partitions)))
    consumer.assign(tps)
    async with asyncio.timeout(timeout_s):
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
    total = sum(max(0, ends[tp] - begins[tp]) for tp in tps)
    if max_records is not None and total > max_records:
        raise LogTooLargeError(total, max_records)
    if on_total is not None:
        on_total(total)

    key = partition_key(experiment_id)
    configs: list[ConfigEvent] = []
    decisions: list[DecisionMade] = []
    rewards: list[RewardObserved] = []
    rejected: list[RejectedRecord] = []
    others = 0

    def take(record: ConsumerRecord) -> None:
        nonlocal others
        event: AnyEvent | None
        if record.key is not None and record.key != key:
            others += 1
            return
        try:
            if record.topic == topics.experiments:
                if record.value is None:
                    raise DecodeError("empty", "record without a value (tombstone)")
                event = decode(record.value)
                if isinstance(event, ChangePointDetected):
                    return
                if not isinstance(event, ExperimentCreated | ArmsAdded | StrategyChanged):
                    raise DecodeError("wrong_type", f"type {event.type!r} on the experiments topic")
            else:
                event = decode_reward_or_decision(record, topics.rewards, topics.decisions)
        except DecodeError as exc:
            rejected.append(
                RejectedRecord(record.topic, record.partition, record.offset, exc.reason)
            )
            return
        if event is None or event.experiment_id != experiment_id:
            others += 1
        elif isinstance(event, DecisionMade):
            decisions.append(event)
        elif isinstance(event, RewardObserved):
            rewards.append(event)
        elif isinstance(event, ExperimentCreated | ArmsAdded | StrategyChanged):
            configs.append(event)

    pending = {tp for tp in tps if ends[tp] > begins[tp]}
    for tp in tps:
        if tp in pending:
            consumer.seek(tp, begins[tp])
        else:
            consumer.pause(tp)
    last_progress = time.monotonic()
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=500, max_records=BATCH_RECORDS)
        scanned = 0
        for tp, records in batch.items():
            end = ends[tp]
            for record in records:
                if record.offset < end:
                    take(record)
                    scanned += 1
        if scanned:
            last_progress = time.monotonic()
            if on_records is not None:
                on_records(scanned)
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
        if pending and time.monotonic() - last_progress > timeout_s:
            raise LogUnavailableError(
                f"no record for {timeout_s:g} s while reading "
                + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
            )
    return ExperimentLog(
        experiment_id=experiment_id,
        config_events=tuple(configs),
        decisions=tuple(decisions),
        rewards=tuple(rewards),
        rejected=tuple(rejected),
        other_experiments=others,
    )
