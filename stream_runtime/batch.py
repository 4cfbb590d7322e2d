"""Pure per-batch helpers shared by the stream processors (reward consumer, projector).

No I/O here. What makes a redelivery a no-op in both processors lives in these few
functions: decode a poll batch and group it by experiment in log order, drop records at
or below the offset stored with the experiment's state (:func:`filter_applied`), compute
the offsets the write stores (:func:`new_offsets`) and the Kafka offsets to commit or to
seek back to (:func:`commit_offsets`, :func:`first_offsets`). Each service keeps its own
decoding rules for the topics only it reads, and its own fold/projection.

Per-record work is kept small on purpose (this runs for every event): a named tuple per
record instead of a frozen dataclass, memoised offset-field names instead of a format
call per record, and the cyclic collector held off while a batch is handled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol, Self

import orjson
from pydantic import ValidationError

from bandit_core.fold import dedupe_keys
from schemas.codec import DecodeError, decode, decode_reward
from schemas.dead_letter import redriven_position
from schemas.events import AnyEvent, DecisionMade, ExperimentConfig, RewardObserved
from schemas.rejections import Rejection

#: A compare-and-set conflict means another consumer wrote the same experiment in
#: between; after a reload our records are usually already applied. More conflicts in a
#: row than this means something is badly wrong: fail the batch (it is retried).
MAX_CAS_ATTEMPTS: Final = 5


class RecordLike(Protocol):
    """What we use of an ``aiokafka.ConsumerRecord`` (tests pass plain dataclasses)."""

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


#: Where rejected records go: the reward consumer's DLQ producer
#: (:class:`stream_runtime.dead_letter.DeadLetterProducer`) or, in handler tests, a list.
#: Called with all of a step's rejects at once, it returns once they are durable.
DeadLetterSink = Callable[[Sequence["Rejected"]], Awaitable[None]]


def offset_field(topic: str, partition: int) -> str:
    """Field of an experiment's offsets hash. Kafka topic names cannot contain ``:``."""
    return f"{topic}:{partition}"


class Positioned(NamedTuple):
    """A decoded event with the log position it came from.

    A named tuple rather than a frozen dataclass: one is built per record, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs several times more.
    """

    record: RecordLike
    event: AnyEvent

    @property
    def field(self) -> str:
        return offset_field(self.record.topic, self.record.partition)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record we skip (and dead-letter) with its machine-readable reason and a short
    human-readable detail (both go into the dead letter's headers)."""

    record: RecordLike
    reason: str
    detail: str = ""


@dataclass(slots=True)
class DecodedBatch:
    """A poll batch split into events by experiment, rejects and ignored records."""

    by_experiment: dict[str, list[Positioned]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: int = 0  # records the processor does not project (decoder returned None)


def decode_reward_or_decision(
    record: RecordLike, rewards_topic: str, decisions_topic: str
) -> AnyEvent | None:
    """Decode a record of the rewards or decisions topic; ``None`` for any other topic.

    Rewards accept the minimal bulk-producer contract. Their fallback event id is the
    record's log position (for a record re-driven from the DLQ, its original position)
    and their fallback time the broker timestamp: both are deterministic, so a
    redelivered, replayed or re-driven record folds (and dedupes) identically, and every
    processor derives the same dedupe keys and event times from the same record.
    Raises :class:`DecodeError` for a tombstone or an unreadable record.
    """
    raw = record.value
    if raw is None:
        raise DecodeError(Rejection.EMPTY, "record without a value (tombstone)")
    topic = record.topic
    if topic == rewards_topic:
        # A record re-driven from the DLQ names its original position in headers: the
        # fallback id is then that original one, so re-driving twice counts once.
        headers = getattr(record, "headers", None)
        return decode_reward(
            raw,
            fallback_event_id=redriven_position(headers) if headers else None,
            fallback_ts=record.timestamp / 1000.0,
            fallback_position=(topic, record.partition, record.offset),
        )
    if topic == decisions_topic:
        event = decode(raw)
        if not isinstance(event, DecisionMade):
            raise DecodeError(
                Rejection.WRONG_EVENT_TYPE, f"type {event.type!r} on the decisions topic"
            )
        return event
    return None


def unknown_topic(record: RecordLike) -> DecodeError:
    return DecodeError(Rejection.UNKNOWN_TOPIC, f"record from unsubscribed topic {record.topic!r}")


def group_by_experiment(
    records: Iterable[RecordLike], decode_one: Callable[[RecordLike], AnyEvent | None]
) -> DecodedBatch:
    """Decode every record; group valid ones by experiment in log order per partition.

    ``decode_one`` raises :class:`DecodeError` (a reject) or returns ``None`` (ignored).
    The loop keeps its lookups in locals and skips ``setdefault``'s per-record list
    allocation (this runs per event).
    """
    out = DecodedBatch()
    by_experiment = out.by_experiment
    rejected = out.rejected
    ignored = 0
    for record in records:
        try:
            event = decode_one(record)
        except DecodeError as exc:
            rejected.append(Rejected(record, exc.reason, exc.detail))
            continue
        except Exception as exc:
            # Decoding is a pure function of the record's bytes: any other error would
            # recur on every retry of the batch and stall the partition (a poison pill).
            # So it is a reject too, never a batch failure.
            rejected.append(Rejected(record, Rejection.INVALID, f"decoder error: {exc!r}"[:300]))
            continue
        if event is None:
            ignored += 1
            continue
        group = by_experiment.get(event.experiment_id)
        if group is None:
            group = by_experiment[event.experiment_id] = []
        group.append(Positioned(record, event))
    out.ignored = ignored
    return out


class _OffsetFields:
    """``offset_field`` memo keyed by topic then partition: a batch names a handful of
    partitions, so the per-record cost is two dict hits instead of a format call (and no
    key tuple is built)."""

    __slots__ = ("_by_topic",)

    def __init__(self) -> None:
        self._by_topic: dict[str, dict[int, str]] = {}

    def of(self, record: RecordLike) -> str:
        topic = record.topic
        parts = self._by_topic.get(topic)
        if parts is None:
            parts = self._by_topic[topic] = {}
        partition = record.partition
        name = parts.get(partition)
        if name is None:
            name = parts[partition] = offset_field(topic, partition)
        return name


def filter_applied(
    items: Sequence[Positioned], applied: Mapping[str, int]
) -> tuple[list[Positioned], int]:
    """Drop records at or below the last applied offset of their (topic, partition).

    ``applied`` is the experiment's offsets hash as stored *with* its state (snapshot or
    buckets). A record at or below it was applied to that state already (we crashed or
    lost the partition after the Redis write but before the Kafka commit), so applying
    it again would double-count. Returns the fresh records and how many were dropped.
    """
    fields = _OffsetFields()
    floors: dict[str, int] = {}  # offset field -> applied offset (-1: none)
    fresh: list[Positioned] = []
    for p in items:
        record = p.record
        f = fields.of(record)
        floor = floors.get(f)
        if floor is None:
            floor = floors[f] = applied.get(f, -1)
        if record.offset > floor:
            fresh.append(p)
    return fresh, len(items) - len(fresh)


def new_offsets(items: Iterable[Positioned]) -> dict[str, int]:
    """The highest offset per (topic, partition) among ``items``: what the write stores.

    Every record that reached the fold counts, including duplicates and rejections:
    the outcome of a record is decided once, so its redelivery must not be re-judged
    against a newer config (an arm added later would otherwise flip a rejection).
    """
    fields = _OffsetFields()
    out: dict[str, int] = {}
    for p in items:
        record = p.record
        f = fields.of(record)
        if record.offset > out.get(f, -1):
            out[f] = record.offset
    return out


def batch_dedupe_keys(items: Iterable[Positioned]) -> list[str]:
    """Dedupe keys (``d:``/``e:``) of the rewards among ``items``, without repeats."""
    keys: dict[str, None] = {}
    for p in items:
        if isinstance(p.event, RewardObserved):
            for k in dedupe_keys(p.event):
                keys[k] = None
    return list(keys)


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


def parse_config(raw: bytes | None, log: logging.Logger) -> ExperimentConfig | None:
    """The experiment's config key, or ``None`` if missing or unreadable (logged)."""
    if raw is None:
        return None
    try:
        return ExperimentConfig.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError):
        log.exception("unreadable config key; treating experiment as unknown")
        return None


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


def dead_letter_logger(log: logging.Logger, message: str) -> DeadLetterSink:
    """A dead-letter sink that only logs (handler tests and tools without a DLQ)."""

    async def log_dead_letter(rejects: Sequence[Rejected]) -> None:
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

    return log_dead_letter


class CasConflictError(RuntimeError):
    """An experiment kept changing under us; the batch is retried from the log."""


async def write_until_settled(
    pending: dict[str, list[Positioned]],
    attempt: Callable[[dict[str, list[Positioned]]], Awaitable[set[str]]],
    log: logging.Logger,
) -> int:
    """Run ``attempt`` (read -> plan -> compare-and-set write) until no experiment conflicts.

    ``attempt`` keeps the outcome of every experiment whose write landed (or needed none)
    and returns the conflicted ones; only those are re-read and re-planned on the next
    attempt. Returns the number of conflicts; raises :class:`CasConflictError` after
    :data:`MAX_CAS_ATTEMPTS` rounds that still conflicted (the batch is then retried).
    """
    conflicts = 0
    for _attempt in range(MAX_CAS_ATTEMPTS):
        if not pending:
            break
        conflicted = await attempt(pending)
        if conflicted:
            conflicts += len(conflicted)
            log.warning(
                "offset compare-and-set conflict, reloading",
                extra={"experiments": sorted(conflicted)},
            )
        pending = {exp: pending[exp] for exp in conflicted}
    if pending:
        raise CasConflictError(f"experiments kept conflicting: {sorted(pending)}")
    return conflicts


@contextlib.contextmanager
def gc_deferred() -> Iterator[None]:
    """Hold the cyclic garbage collector off while one batch is handled.

    Decoding a batch keeps thousands of fresh container objects (models, their field
    sets, :class:`Positioned`) alive at once; with the default thresholds that triggers
    dozens of young-generation passes per batch, which promote the batch into the old
    generation and set off full collections over the whole heap (measured in the
    projector: ~20% of the handler's time, then still ~8% when only the synchronous
    steps were covered, since the first pass after them scans the live batch). None of
    it is cyclic garbage: it is freed by reference counting when the batch is done,
    which is why the collector is re-enabled only after that (wrap the call that owns
    the batch's frame, not the steps inside it). Other tasks of the loop (aiokafka's
    fetcher) may run during the batch's awaits; they merely allocate without triggering
    a pass for those few milliseconds, and anything cyclic is collected on the next
    pass. The collector is re-enabled on the way out (even on error) unless it was off
    already.
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
