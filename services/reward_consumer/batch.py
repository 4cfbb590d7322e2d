"""Pure logic of one poll batch: decode, group by experiment, drop what is already applied.

No I/O here, so the rules that make redelivery a no-op are unit-tested without Kafka
or Redis. The handler (:mod:`services.reward_consumer.handlers`) does the reads and
writes around these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bandit_core.fold import dedupe_keys
from bandit_core.state import ExperimentState
from schemas.codec import DecodeError, decode, decode_reward
from schemas.events import AnyEvent, DecisionMade, ExperimentConfig, RewardObserved


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


def offset_field(topic: str, partition: int) -> str:
    """Field of the experiment's offsets hash. Kafka topic names cannot contain ``:``."""
    return f"{topic}:{partition}"


@dataclass(frozen=True, slots=True)
class Positioned:
    """A decoded event with the log position it came from."""

    record: RecordLike
    event: AnyEvent

    @property
    def field(self) -> str:
        return offset_field(self.record.topic, self.record.partition)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record we skip (and, later, dead-letter) with its machine-readable reason."""

    record: RecordLike
    reason: str


@dataclass(slots=True)
class DecodedBatch:
    """A poll batch split into valid events grouped by experiment, and rejects."""

    by_experiment: dict[str, list[Positioned]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def decode_record(record: RecordLike, rewards_topic: str, decisions_topic: str) -> AnyEvent:
    """Decode one record of our two topics, or raise :class:`DecodeError`.

    Rewards accept the minimal bulk-producer contract. Their fallback event id is the
    record's log position and their fallback time the broker timestamp: both are
    deterministic, so a redelivered or replayed record folds (and dedupes) identically.
    """
    raw = record.value
    if raw is None:
        raise DecodeError("empty", "record without a value (tombstone)")
    if record.topic == rewards_topic:
        return decode_reward(
            raw,
            fallback_event_id=f"{record.topic}:{record.partition}:{record.offset}",
            fallback_ts=record.timestamp / 1000.0,
        )
    if record.topic == decisions_topic:
        event = decode(raw)
        if not isinstance(event, DecisionMade):
            raise DecodeError("wrong_type", f"type {event.type!r} on the decisions topic")
        return event
    raise DecodeError("unknown_topic", f"record from unsubscribed topic {record.topic!r}")


def decode_batch(
    records: Iterable[RecordLike], rewards_topic: str, decisions_topic: str
) -> DecodedBatch:
    """Decode every record; group valid ones by experiment in log order per partition."""
    out = DecodedBatch()
    for record in records:
        try:
            event = decode_record(record, rewards_topic, decisions_topic)
        except DecodeError as exc:
            out.rejected.append(Rejected(record, exc.reason))
            continue
        out.by_experiment.setdefault(event.experiment_id, []).append(Positioned(record, event))
    return out


def filter_applied(
    items: Sequence[Positioned], applied: Mapping[str, int]
) -> tuple[list[Positioned], int]:
    """Drop records at or below the last applied offset of their (topic, partition).

    ``applied`` is the experiment's offsets hash as stored *with* its snapshot. A record
    at or below it was folded into that snapshot already (we crashed or lost the
    partition after the Redis write but before the Kafka commit), so folding it again
    would double-count. Returns the fresh records and how many were dropped.
    """
    fresh = [p for p in items if p.record.offset > applied.get(p.field, -1)]
    return fresh, len(items) - len(fresh)


def new_offsets(items: Iterable[Positioned]) -> dict[str, int]:
    """The highest offset per (topic, partition) among ``items``: what the write stores.

    Every record that reached the fold counts, including duplicates and rejections:
    the outcome of a record is decided once, so its redelivery must not be re-judged
    against a newer config (an arm added later would otherwise flip a rejection).
    """
    out: dict[str, int] = {}
    for p in items:
        f = p.field
        if p.record.offset > out.get(f, -1):
            out[f] = p.record.offset
    return out


def batch_dedupe_keys(items: Iterable[Positioned]) -> list[str]:
    """Dedupe keys (``d:``/``e:``) of the rewards among ``items``, without repeats."""
    keys: dict[str, None] = {}
    for p in items:
        if isinstance(p.event, RewardObserved):
            for k in dedupe_keys(p.event):
                keys[k] = None
    return list(keys)


def parse_offsets(raw: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, int]:
    """Decode an ``HGETALL`` of the offsets hash."""
    out: dict[str, int] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        out[key] = int(v)
    return out


def build_state(
    experiment_id: str,
    config: ExperimentConfig,
    snapshot: bytes | None,
    seen: Mapping[str, float],
) -> ExperimentState:
    """The state the fold starts from: stored snapshot + config key + the dedupe view.

    ``seen`` holds only the batch's dedupe keys that Redis already knows; that view is
    enough for :func:`bandit_core.fold.fold_batch` to reject duplicates of this batch.
    """
    state = ExperimentState.from_snapshot(snapshot, experiment_id)
    state.config = config
    state.seen = dict(seen)
    return state


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
