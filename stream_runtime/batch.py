"""What the engine knows of a poll batch: records, their decoding by topic, rejects, offsets.

No I/O here. A batch is decoded once into per-experiment *columns* (:class:`Group`: the
records, their events, and the lowest and highest offset per partition) rather than one
object per record, because this runs for every event: the offset guard of
:mod:`stream_runtime.engine` then needs one comparison per partition, not per record, in
the common case where nothing in the batch was applied before.

The decoders of the two topics every processor reads (rewards, decisions) live here, so
the reward consumer, the projector, replay and the off-policy reader derive the same
event (and the same fallback event id and time) from the same record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, Self

import orjson

from schemas.codec import DecodeError, decode, decode_reward
from schemas.dead_letter import redriven_position
from schemas.events import AnyEvent, DecisionMade, RewardObserved
from schemas.rejections import Rejection

#: A compare-and-set conflict means another consumer wrote the same experiment in
#: between; after a reload our records are usually already applied. More conflicts in a
#: row than this means something is badly wrong: fail the batch (it is retried).
MAX_CAS_ATTEMPTS: Final = 5


class RecordLike(Protocol):
    """What the engine uses of a consumed record (tests pass plain dataclasses)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


#: A topic's decoder: the record's event, ``None`` for a record the processor does not
#: process (counted as ignored), or :class:`~schemas.codec.DecodeError` (a reject).
Decoder = Callable[[RecordLike], AnyEvent | None]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record we skip (and dead-letter) with its machine-readable reason and a short
    human-readable detail (both go into the dead letter's headers)."""

    record: RecordLike
    reason: Rejection
    detail: str = ""


#: Where rejected records go: the reward consumer's DLQ producer
#: (:class:`stream_runtime.dead_letter.DeadLetterProducer`) or, in handler tests, a list.
#: Called with all of a step's rejects at once, it returns once they are durable.
DeadLetterSink = Callable[[Sequence[Rejected]], Awaitable[None]]


def offset_field(topic: str, partition: int) -> str:
    """Field of an experiment's offsets hash. Kafka topic names cannot contain ``:``."""
    return f"{topic}:{partition}"


class Group:
    """One experiment's records of a batch as columns, in log order per partition.

    ``first`` and ``last`` hold the lowest and highest offset per offset field
    (:func:`offset_field`): what the offset guard compares and what the write stores.
    """

    __slots__ = ("events", "first", "last", "records")

    def __init__(self) -> None:
        self.records: list[RecordLike] = []
        self.events: list[AnyEvent] = []
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: RecordLike, event: AnyEvent, name: str) -> None:
        """Append one record (``name``: its offset field)."""
        self.records.append(record)
        self.events.append(event)
        offset = record.offset
        low = self.first.get(name)
        if low is None:
            self.first[name] = self.last[name] = offset
        elif offset < low:
            self.first[name] = offset
        elif offset > self.last[name]:
            self.last[name] = offset


@dataclass(slots=True)
class DecodedBatch:
    """A poll batch split into per-experiment groups, rejects and ignored records."""

    groups: dict[str, Group] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: int = 0  # records the processor does not process (decoder returned None)
    newest: float = 0.0  # the newest event time of the batch (0.0: no event)


def unknown_topic(record: RecordLike) -> DecodeError:
    return DecodeError(Rejection.UNKNOWN_TOPIC, f"record from unsubscribed topic {record.topic!r}")


def decode_batch(records: Iterable[RecordLike], decoders: Mapping[str, Decoder]) -> DecodedBatch:
    """Decode every record with its topic's decoder; group the events by experiment.

    A record of a topic without a decoder is rejected (``unknown_topic``). A decoder
    that raises anything but :class:`DecodeError` rejects the record too (``invalid``):
    decoding is a pure function of the record's bytes, so that error would recur on
    every retry of the batch and stall the partition (a poison pill). The loop keeps its
    lookups in locals (this runs per event).
    """
    out = DecodedBatch()
    groups = out.groups
    rejected = out.rejected
    # offset_field memo by topic then partition: a batch names a handful of partitions,
    # so a record costs two dict hits instead of a format call.
    names: dict[str, dict[int, str]] = {}
    ignored = 0
    newest = 0.0
    for record in records:
        topic = record.topic
        decoder = decoders.get(topic)
        try:
            if decoder is None:
                raise unknown_topic(record)
            event = decoder(record)
        except DecodeError as exc:
            rejected.append(Rejected(record, exc.reason, exc.detail))
            continue
        except Exception as exc:
            rejected.append(Rejected(record, Rejection.INVALID, f"decoder error: {exc!r}"[:300]))
            continue
        if event is None:
            ignored += 1
            continue
        group = groups.get(event.experiment_id)
        if group is None:
            group = groups[event.experiment_id] = Group()
        partition = record.partition
        parts = names.get(topic)
        if parts is None:
            parts = names[topic] = {}
        name = parts.get(partition)
        if name is None:
            name = parts[partition] = offset_field(topic, partition)
        # Group.add, inlined (per record)
        group.records.append(record)
        group.events.append(event)
        offset = record.offset
        first = group.first
        low = first.get(name)
        if low is None:
            first[name] = group.last[name] = offset
        elif offset < low:
            first[name] = offset
        elif offset > group.last[name]:
            group.last[name] = offset
        if event.ts > newest:
            newest = event.ts
    out.ignored = ignored
    out.newest = newest
    return out


def decode_reward_record(record: RecordLike) -> RewardObserved:
    """Decode a record of the rewards topic (the minimal bulk-producer contract too).

    The fallback event id is the record's log position (for a record re-driven from the
    DLQ, its original position: re-driving twice counts once) and the fallback time the
    broker timestamp: both are deterministic, so a redelivered, replayed or re-driven
    record folds (and dedupes) identically in every processor.
    """
    raw = record.value
    if raw is None:
        raise DecodeError(Rejection.EMPTY, "record without a value (tombstone)")
    headers = getattr(record, "headers", None)
    return decode_reward(
        raw,
        fallback_event_id=redriven_position(headers) if headers else None,
        fallback_ts=record.timestamp / 1000.0,
        fallback_position=(record.topic, record.partition, record.offset),
    )


def decode_decision_record(record: RecordLike) -> DecisionMade:
    """Decode a record of the decisions topic: a :class:`DecisionMade` or a reject."""
    raw = record.value
    if raw is None:
        raise DecodeError(Rejection.EMPTY, "record without a value (tombstone)")
    event = decode(raw)
    if not isinstance(event, DecisionMade):
        raise DecodeError(Rejection.WRONG_EVENT_TYPE, f"type {event.type!r} on the decisions topic")
    return event


def decode_reward_or_decision(
    record: RecordLike, rewards_topic: str, decisions_topic: str
) -> AnyEvent | None:
    """Decode a record of the rewards or decisions topic; ``None`` for any other topic.

    Raises :class:`DecodeError` for a tombstone or an unreadable record (see
    :func:`decode_reward_record`, :func:`decode_decision_record`).
    """
    if record.topic == rewards_topic:
        return decode_reward_record(record)
    if record.topic == decisions_topic:
        return decode_decision_record(record)
    return None


def first_offsets(records: Iterable[RecordLike]) -> dict[tuple[str, int], int]:
    """Lowest offset per (topic, partition): where to seek back to when a batch fails."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        if tp not in out or r.offset < out[tp]:
            out[tp] = r.offset
    return out


def commit_offsets(records: Iterable[RecordLike]) -> dict[tuple[str, int], int]:
    """Kafka offsets to commit after a batch: the next offset to read per partition."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        if r.offset + 1 > out.get(tp, -1):
            out[tp] = r.offset + 1
    return out


def record_ids(raw: bytes | None) -> dict[str, str]:
    """``experiment_id`` / ``decision_id`` / ``event_id`` of a record, for log lines.

    Best effort on the (rare) reject path: an unreadable record has none.
    """
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v[:200]
        for k in ("experiment_id", "decision_id", "event_id")
        if isinstance(v := data.get(k), str)
    }


def log_rejects(log: logging.Logger, message: str, rejects: Sequence[Rejected]) -> None:
    """One warning per rejected record, with its position, its reason and the ids an
    operator searches for: the same line whether the record went to a DLQ or not."""
    for r in rejects:
        log.warning(
            message,
            extra={
                "topic": r.record.topic,
                "partition": r.record.partition,
                "offset": r.record.offset,
                "reason": r.reason,
                "detail": r.detail,
                **record_ids(r.record.value),
            },
        )


def dead_letter_logger(log: logging.Logger, message: str) -> DeadLetterSink:
    """A dead-letter sink that only logs (tools without a DLQ)."""

    async def log_dead_letter(rejects: Sequence[Rejected]) -> None:
        log_rejects(log, message, rejects)

    return log_dead_letter


class CasConflictError(RuntimeError):
    """An experiment kept changing under us; the batch is retried from the log."""


@contextlib.contextmanager
def gc_deferred() -> Iterator[None]:
    """Hold the cyclic garbage collector off while one batch is handled.

    Decoding a batch keeps thousands of fresh container objects (models, their field
    sets, the groups) alive at once; with the default thresholds that triggers dozens
    of young-generation passes per batch, which promote the batch into the old
    generation and set off full collections over the whole heap (measured in the
    projector: ~20% of the handler's time, then still ~8% when only the synchronous
    steps were covered, since the first pass after them scans the live batch). None of
    it is cyclic garbage: it is freed by reference counting when the batch is done,
    which is why the collector is re-enabled only after that (wrap the call that owns
    the batch's frame, not the steps inside it). Other tasks of the loop may run during
    the batch's awaits; they merely allocate without triggering a pass for those few
    milliseconds, and anything cyclic is collected on the next pass. The collector is
    re-enabled on the way out (even on error) unless it was off already.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class SummableReport:
    """Base of a processor's per-batch report (a dataclass of counters).

    Reports are summed field by field (numbers add, ``Counter`` fields merge), so a new
    counter is accounted and logged by declaring it, never by a hand-kept field list.
    """

    __slots__ = ()

    def add(self, other: Self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            mine = getattr(self, f.name)
            if isinstance(mine, Counter):
                mine.update(getattr(other, f.name))
            else:
                setattr(self, f.name, mine + getattr(other, f.name))

    def as_dict(self) -> dict[str, object]:
        return {
            f.name: dict(v) if isinstance(v := getattr(self, f.name), Counter) else v
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }


@dataclass(slots=True)
class BatchReport(SummableReport):
    """What the engine counts of every batch; a processor's report adds its outcomes.

    The field names are the ``outcome`` labels of ``mab_stream_records`` and the keys of
    the processors' stats log lines.
    """

    records: int = 0
    redelivered: int = 0  # dropped by the offset guard (already in the state)
    ignored: int = 0  # records the processor does not process (e.g. other event types)
    conflicts: int = 0  # compare-and-set writes refused, re-read and re-applied
    experiments_written: int = 0
    #: Experiment writes applied from the engine's cache (no read round trip) and those
    #: the write script refused (then re-read and re-applied in the same batch).
    cache_hits: int = 0
    cache_misses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
