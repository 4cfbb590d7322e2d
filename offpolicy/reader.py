"""Read one experiment's events from the topics, from the beginning to a fixed end.

The shared partition reader (:mod:`stream_runtime.partition_reader`, as replay and the
DLQ operators): a consumer with no group (nothing is committed, no live consumer group
is touched), assigned to the experiment's partition of the experiments, decisions and
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

Each decision id is read once, at its first record: a unit's consistent-mode views
repeat their (unit, allocation version) decision id, and an exposure reported twice
repeats its decision, but the unit was assigned once with the logged propensity, so
counting the repeats would weigh a unit by how often it looked (the live fold counts
them as duplicates for the same reason). The repeats are counted, not kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from confluent_kafka import KafkaException, TopicPartition

from offpolicy.log import ConfigEvent, ExperimentLog, RejectedRecord
from schemas.codec import DecodeError, decode
from schemas.events import (
    AnyEvent,
    ArmsAdded,
    ChangePointDetected,
    DecisionMade,
    ExperimentCreated,
    GuardrailBreached,
    RewardObserved,
    StrategyChanged,
    WinnerDeclared,
)
from schemas.rejections import Rejection
from schemas.topics import TopicNames, partition_key, partition_of
from stream_runtime.batch import decode_reward_or_decision
from stream_runtime.kafka_connection import (
    KafkaConnection,
    KafkaConnectionError,
    KafkaTarget,
    as_connection,
)
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.kafka_metadata import metadata_client, partition_counts
from stream_runtime.partition_reader import PartitionReadError, read_chunks

#: Records per chunk read.
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
    return ordered[partition_of(experiment_id, len(ordered))]


async def read_experiment_log(
    kafka: KafkaTarget,
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
    :class:`LogUnavailableError` when Kafka does not answer (or refuses the connection
    settings, named in the message) or no record arrives for ``timeout_s`` seconds.
    """
    try:
        return await _read(
            as_connection(kafka),
            topics,
            experiment_id,
            on_total,
            on_records,
            max_records,
            timeout_s,
        )
    except KafkaConnectionError as exc:
        raise LogUnavailableError(str(exc)) from None
    except (KafkaException, PartitionReadError) as exc:
        raise LogUnavailableError(f"reading the log failed: {exc}") from None


def _bounds(
    kafka: KafkaConnection, tps: list[tuple[str, int]], timeout_s: float
) -> dict[str, tuple[int, int]]:
    """``topic:partition`` -> (log start, high watermark)."""
    with metadata_client(kafka, "offpolicy") as consumer:
        return {
            f"{t}:{p}": consumer.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s)
            for t, p in tps
        }


async def _read(
    kafka: KafkaConnection,
    topics: TopicNames,
    experiment_id: str,
    on_total: Callable[[int], None] | None,
    on_records: Callable[[int], None] | None,
    max_records: int | None,
    timeout_s: float,
) -> ExperimentLog:
    names = (topics.experiments, topics.decisions, topics.rewards)
    kafka = kafka.model_copy(update={"kafka_start_timeout_s": timeout_s})
    counts = await asyncio.to_thread(partition_counts, kafka, names, timeout_s)
    tps: list[tuple[str, int]] = []
    for name in names:
        if not counts[name]:
            raise LogUnavailableError(f"topic {name!r} does not exist")
        tps.append((name, experiment_partition(experiment_id, list(range(counts[name])))))
    bounds = await asyncio.to_thread(_bounds, kafka, tps, timeout_s)
    total = sum(max(0, end - begin) for begin, end in bounds.values())
    if max_records is not None and total > max_records:
        raise LogTooLargeError(total, max_records)
    if on_total is not None:
        on_total(total)

    key = partition_key(experiment_id)
    configs: list[ConfigEvent] = []
    decisions: list[DecisionMade] = []
    rewards: list[RewardObserved] = []
    rejected: list[RejectedRecord] = []
    decision_ids: set[str] = set()
    others = repeats = 0

    def take(record: KafkaRecord) -> None:
        nonlocal others, repeats
        event: AnyEvent | None
        if record.key is not None and record.key != key:
            others += 1
            return
        try:
            if record.topic == topics.experiments:
                if record.value is None:
                    raise DecodeError(Rejection.EMPTY, "record without a value (tombstone)")
                event = decode(record.value)
                if isinstance(event, ChangePointDetected | GuardrailBreached | WinnerDeclared):
                    return
                if not isinstance(event, ExperimentCreated | ArmsAdded | StrategyChanged):
                    raise DecodeError(
                        Rejection.WRONG_TYPE, f"type {event.type!r} on the experiments topic"
                    )
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
            if event.decision_id in decision_ids:
                repeats += 1
            else:
                decision_ids.add(event.decision_id)
                decisions.append(event)
        elif isinstance(event, RewardObserved):
            rewards.append(event)
        elif isinstance(event, ExperimentCreated | ArmsAdded | StrategyChanged):
            configs.append(event)

    start = {f: begin for f, (begin, _end) in bounds.items()}
    until = {f: end - 1 for f, (_begin, end) in bounds.items()}
    async for chunk in read_chunks(kafka, start, until, BATCH_RECORDS, stall_s=timeout_s):
        for record in chunk:
            take(record)
        if on_records is not None:
            on_records(len(chunk))
    return ExperimentLog(
        experiment_id=experiment_id,
        config_events=tuple(configs),
        decisions=tuple(decisions),
        rewards=tuple(rewards),
        rejected=tuple(rejected),
        other_experiments=others,
        repeated_decisions=repeats,
    )
