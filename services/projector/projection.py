"""Pure logic of the projector: decode a poll batch and turn events into bucket increments.

No I/O here, so what makes the buckets exact (event-time bucketing, integer reward sums,
the offset filter, the reward rules and dedupe shared with the reward consumer) is
unit-tested without Kafka or Redis. :mod:`services.projector.store` applies the
increments and the new offsets in one Lua step; :mod:`services.projector.consumer`
commits to Kafka after it.

Why the buckets are bit-identical under any batch split, redelivery or replay:

* a bucket is chosen by the event's own ``ts`` (never arrival time), so a late or
  replayed event lands in the hour (and minute) it happened;
* every stored number is an integer (counts, and reward sums in micro-units), and
  integer addition is associative: the order and grouping of events do not matter;
* a record at or below the offset stored with the buckets is dropped (it was applied
  before a crash), and a reward counts at most once per dedupe key, exactly like
  :func:`bandit_core.fold.fold_batch` (``reward_rejection`` + ``dedupe_keys``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import orjson

from bandit_core.fold import DEDUPE_HORIZON_S, dedupe_keys, reward_rejection
from schemas.codec import DecodeError, decode, decode_reward
from schemas.events import (
    AnyEvent,
    ChangePointDetected,
    DecisionMade,
    ExperimentConfig,
    RewardObserved,
)
from schemas.redis_keys import (
    BUCKET_SECONDS,
    FIELD_DECISIONS,
    FIELD_REWARD_SUM,
    FIELD_REWARDS,
    REWARD_SUM_SCALE,
    BucketKind,
    bucket_field,
)
from schemas.topics import TopicNames

APPLIED: Final = "applied"
DUPLICATE: Final = "duplicate"
EXPIRED: Final = "expired"  # older than every bucket's retention: nothing to store


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
    """Field of the projector's offsets hash. Kafka topic names cannot contain ``:``."""
    return f"{topic}:{partition}"


def bucket_start(ts: float, width: int) -> int:
    """Start (unix seconds, UTC, epoch-aligned) of the bucket of width ``width`` holding ``ts``."""
    return int(ts // width) * width


def micro_units(reward: float) -> int:
    """A reward as an integer number of micro-units: sums of ints are order-independent."""
    return round(reward * REWARD_SUM_SCALE)


def change_point_member(event: ChangePointDetected) -> bytes:
    """Zset member of a change point. The event id makes it unique; a redelivered event
    yields the same bytes, so duplicates collapse (ZADD is idempotent)."""
    return orjson.dumps([event.event_id, event.arm_id, event.detector])


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
    """A poll batch split into relevant events by experiment, rejects and ignored records."""

    by_experiment: dict[str, list[Positioned]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: int = 0  # experiment events other than change points: not ours to project


def decode_record(record: RecordLike, topics: TopicNames) -> AnyEvent | None:
    """Decode one record of our three topics; ``None`` for events we do not project.

    Rewards are decoded exactly as the reward consumer does (minimal producer contract,
    fallback event id = log position, fallback ts = broker timestamp), so both derive
    the same dedupe keys and event times from the same record.
    """
    raw = record.value
    if raw is None:
        raise DecodeError("empty", "record without a value (tombstone)")
    if record.topic == topics.rewards:
        return decode_reward(
            raw,
            fallback_event_id=f"{record.topic}:{record.partition}:{record.offset}",
            fallback_ts=record.timestamp / 1000.0,
        )
    if record.topic == topics.decisions:
        event = decode(raw)
        if not isinstance(event, DecisionMade):
            raise DecodeError("wrong_type", f"type {event.type!r} on the decisions topic")
        return event
    if record.topic == topics.experiments:
        event = decode(raw)
        if isinstance(event, DecisionMade | RewardObserved):
            raise DecodeError("wrong_type", f"type {event.type!r} on the experiments topic")
        return event if isinstance(event, ChangePointDetected) else None
    raise DecodeError("unknown_topic", f"record from unsubscribed topic {record.topic!r}")


def decode_batch(records: Iterable[RecordLike], topics: TopicNames) -> DecodedBatch:
    """Decode every record; group the projected ones by experiment in log order."""
    out = DecodedBatch()
    for record in records:
        try:
            event = decode_record(record, topics)
        except DecodeError as exc:
            out.rejected.append(Rejected(record, exc.reason))
            continue
        if event is None:
            out.ignored += 1
            continue
        out.by_experiment.setdefault(event.experiment_id, []).append(Positioned(record, event))
    return out


def filter_applied(
    items: Sequence[Positioned], applied: Mapping[str, int]
) -> tuple[list[Positioned], int]:
    """Drop records at or below the offset stored with the buckets (already applied)."""
    fresh = [p for p in items if p.record.offset > applied.get(p.field, -1)]
    return fresh, len(items) - len(fresh)


def new_offsets(items: Iterable[Positioned]) -> dict[str, int]:
    """Highest offset per (topic, partition) among ``items``: stored with the increments.

    Rejected and duplicate records count too: a record's outcome is decided once, so a
    redelivery is never re-judged against a newer config.
    """
    out: dict[str, int] = {}
    for p in items:
        f = p.field
        if p.record.offset > out.get(f, -1):
            out[f] = p.record.offset
    return out


def batch_dedupe_keys(items: Iterable[Positioned]) -> list[str]:
    """Dedupe keys of the rewards among ``items`` (what the read step asks Redis about)."""
    keys: dict[str, None] = {}
    for p in items:
        if isinstance(p.event, RewardObserved):
            for k in dedupe_keys(p.event):
                keys[k] = None
    return list(keys)


@dataclass(slots=True)
class Projection:
    """What one experiment's fresh records change; the store writes it in one Lua step.

    ``buckets`` maps (kind, bucket start) -> field -> integer increment.
    """

    buckets: dict[tuple[BucketKind, int], Counter[str]] = field(default_factory=dict)
    new_seen: dict[str, float] = field(default_factory=dict)
    change_points: dict[bytes, float] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    expired: int = 0
    rejects: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each bucket kind is kept, in seconds after the bucket's start."""

    hour_s: int
    minute_s: int

    def of(self, kind: BucketKind) -> int:
        return self.hour_s if kind == "hour" else self.minute_s


def project(
    items: Sequence[Positioned],
    config: ExperimentConfig,
    seen: Collection[str],
    retention: Retention,
    now: float,
) -> Projection:
    """Turn one experiment's fresh records (log order) into bucket increments.

    ``seen`` holds the batch's dedupe keys the projector applied before; keys added by
    earlier records of the batch are visible to later ones. A bucket whose retention
    has already ended (start + retention <= ``now``) gets nothing: Redis would expire it
    at once anyway, and skipping it keeps a replay of old history cheap.
    (This loop is the hot path: field names are precomputed per arm, dicts are local.)
    """
    out = Projection(offsets=new_offsets(items))
    names = {
        a: (
            bucket_field(a, FIELD_DECISIONS),
            bucket_field(a, FIELD_REWARDS),
            bucket_field(a, FIELD_REWARD_SUM),
        )
        for a in config.arm_ids
    }
    local_seen = set(seen)
    hour_w, minute_w = BUCKET_SECONDS["hour"], BUCKET_SECONDS["minute"]
    hour_min = now - retention.hour_s  # a bucket starting at or before this has expired
    minute_min = now - retention.minute_s
    buckets = out.buckets
    kinds: tuple[tuple[BucketKind, int, float], ...] = (
        ("hour", hour_w, hour_min),
        ("minute", minute_w, minute_min),
    )
    for p in items:
        ev = p.event
        if isinstance(ev, DecisionMade):
            arm_fields = names.get(ev.arm_id)
            if arm_fields is None:  # arms are append-only: it never was in the config
                out.rejects.append(Rejected(p.record, "unknown_arm"))
                continue
            incs: tuple[tuple[str, int], ...] = ((arm_fields[0], 1),)
        elif isinstance(ev, RewardObserved):
            reason = reward_rejection(config, ev)
            if reason is not None:
                out.rejects.append(Rejected(p.record, reason))
                continue
            keys = dedupe_keys(ev)
            if any(k in local_seen for k in keys):
                out.duplicates += 1
                continue
            for k in keys:
                local_seen.add(k)
                out.new_seen[k] = ev.ts
            arm_fields = names[ev.arm_id]
            micro = micro_units(ev.reward)
            incs = ((arm_fields[1], 1), (arm_fields[2], micro)) if micro else ((arm_fields[1], 1),)
        elif isinstance(ev, ChangePointDetected):
            out.change_points[change_point_member(ev)] = ev.ts
            out.applied += 1
            continue
        else:  # pragma: no cover - decode_batch only lets the three kinds through
            continue
        ts = ev.ts
        stored = False
        for kind, width, oldest in kinds:
            start = int(ts // width) * width
            if start <= oldest:
                continue
            stored = True
            bucket = buckets.get((kind, start))
            if bucket is None:
                bucket = buckets[(kind, start)] = Counter()
            for fld, n in incs:
                bucket[fld] += n
        if stored:
            out.applied += 1
        else:
            out.expired += 1
    return out


def prune_cutoff(new_ts: Iterable[float], horizon_s: float, now: float) -> float | None:
    """Entries older than this may be forgotten (``None``: nothing new, no pruning).

    The newest event time is clamped to the wall clock, so one record with a bogus
    far-future ``ts`` cannot wipe every dedupe key (or change point) of the experiment.
    """
    newest = max(new_ts, default=None)
    if newest is None:
        return None
    return min(newest, now) - horizon_s


def seen_cutoff(new_seen: Mapping[str, float], now: float) -> float | None:
    """Prune point of the projector's dedupe set: the reward consumer's 7-day horizon."""
    return prune_cutoff(new_seen.values(), DEDUPE_HORIZON_S, now)
