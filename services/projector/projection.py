"""Pure logic of the projector: one experiment's events become bucket increments.

No I/O here, so what makes the buckets exact (event-time bucketing, integer reward sums,
the reward rules and dedupe shared with the reward consumer) is unit-tested without
Kafka or Redis. :mod:`services.projector.processor` turns a projection into the state
changes the engine writes in one Lua step with the new offsets.

Why the buckets are bit-identical under any batch split, redelivery or replay:

* a bucket is chosen by the event's own ``ts`` (never arrival time), so a late or
  replayed event lands in the hour (and minute) it happened;
* every stored number is an integer (counts, and reward sums in micro-units), and
  integer addition is associative: the order and grouping of events do not matter;
* a record at or below the offset stored with the buckets is dropped by the engine (it
  was applied before a crash), and a reward counts at most once per dedupe key, exactly
  like :func:`bandit_core.fold.fold_batch` (``reward_rejection`` + ``dedupe_keys``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import orjson

from bandit_core.fold import dedupe_keys, reward_rejection
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
from schemas.rejections import Rejection
from stream_runtime.processor import Skip

APPLIED: Final = "applied"
DUPLICATE: Final = "duplicate"
EXPIRED: Final = "expired"  # older than every bucket's retention: nothing to store


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


@dataclass(slots=True)
class Projection:
    """What one experiment's fresh records change (the processor makes it state changes).

    ``buckets`` maps (kind, bucket start) -> field -> integer increment.
    """

    buckets: dict[tuple[BucketKind, int], Counter[str]] = field(default_factory=dict)
    new_seen: dict[str, float] = field(default_factory=dict)
    change_points: dict[bytes, float] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    expired: int = 0
    rejects: list[Skip] = field(default_factory=list)  # by index among the events


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each bucket kind is kept, in seconds after the bucket's start."""

    hour_s: int
    minute_s: int

    def of(self, kind: BucketKind) -> int:
        return self.hour_s if kind == "hour" else self.minute_s

    def expires_at(self, kind: BucketKind, start: int) -> int:
        """The bucket's ``EXPIREAT`` (unix seconds), at most :data:`MAX_EXPIREAT`."""
        return min(start + self.of(kind), MAX_EXPIREAT)


#: The latest time EXPIREAT takes (Redis refuses seconds whose milliseconds overflow a
#: signed 64-bit integer). A bucket of a valid but absurd ``ts`` (beyond year ~292
#: million) expires then: a larger argument failed the projector's write script, and
#: the batch with it, on every retry (and replay's bulk load of the buckets).
MAX_EXPIREAT: Final = (2**63 - 1) // 1000
_HOUR: Final = BUCKET_SECONDS["hour"]
_MINUTE: Final = BUCKET_SECONDS["minute"]
_PER_HOUR: Final = _HOUR // _MINUTE
assert _PER_HOUR * _MINUTE == _HOUR  # each minute bucket lies inside one hour bucket
#: Above this ``ts`` (year ~35 million) ``int(ts // 60) // 60`` might differ from the
#: float ``int(ts // 3600)`` by rounding, so such (absurd but valid) events take the
#: slow path that uses the original formulas; below it both are exact integer floors.
_FAST_TS_MAX: Final = float(2**50)


def project(
    events: Sequence[AnyEvent],
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

    This loop is the hot path, so the per-event work is one integer-keyed dict lookup
    and list-slot additions: events are first counted per *minute index*
    (``int(ts // 60)``) in a flat list ``[d, r, s] * arms + [events]``; the minute and
    hour buckets (and field names, bucket expiry, applied/expired counts) are derived
    once per minute slot afterwards. A minute lies in exactly one hour (60 | 3600), and
    integer sums are associative, so the result is what per-event bucketing gives.
    """
    out = Projection()
    arm_ids = config.arm_ids
    # Slot base of each arm in a minute's counter list (dict: last index of a repeated
    # arm id wins, like the field-name dict it replaces; the other slots stay 0).
    base = {a: 3 * i for i, a in enumerate(arm_ids)}
    width = 3 * len(arm_ids)  # index of the per-slot event count
    zero = [0] * (width + 1)
    slots: dict[int, list[int]] = {}  # minute index -> counters
    huge: dict[tuple[int, int], list[int]] = {}  # (hour start, minute start) -> counters
    local_seen = set(seen)
    new_seen = out.new_seen
    rejects = out.rejects
    duplicates = 0
    scale = REWARD_SUM_SCALE
    minute_w = _MINUTE
    fast_max = _FAST_TS_MAX
    for index, ev in enumerate(events):
        if isinstance(ev, DecisionMade):
            i = base.get(ev.arm_id)
            if i is None:  # arms are append-only: it never was in the config
                rejects.append(Skip(index, Rejection.UNKNOWN_ARM))
                continue
            micro = -1  # a decision
        elif isinstance(ev, RewardObserved):
            reason = reward_rejection(config, ev)
            if reason is not None:
                rejects.append(Skip(index, reason))
                continue
            keys = dedupe_keys(ev)
            if not local_seen.isdisjoint(keys):  # any key seen: a duplicate
                duplicates += 1
                continue
            ts = ev.ts
            for k in keys:
                local_seen.add(k)
                new_seen[k] = ts
            i = base[ev.arm_id] + 1
            micro = round(ev.reward * scale)  # micro_units(), inlined (per event)
        elif isinstance(ev, ChangePointDetected):
            out.change_points[change_point_member(ev)] = ev.ts
            out.applied += 1
            continue
        else:  # pragma: no cover - the decoders only let the three kinds through
            continue
        ts = ev.ts
        if ts < fast_max:
            m = int(ts // minute_w)
            acc = slots.get(m)
            if acc is None:
                acc = slots[m] = zero.copy()
        else:
            hm = (int(ts // _HOUR) * _HOUR, int(ts // _MINUTE) * _MINUTE)
            acc = huge.get(hm)
            if acc is None:
                acc = huge[hm] = zero.copy()
        acc[i] += 1  # decisions (i = base) or rewards (i = base + 1)
        if micro > 0:
            acc[i + 1] += micro
        acc[width] += 1
    out.duplicates = duplicates
    names = [
        bucket_field(a, kind)
        for a in arm_ids
        for kind in (FIELD_DECISIONS, FIELD_REWARDS, FIELD_REWARD_SUM)
    ]
    _fold_slots(out, names, retention, now, huge, slots)
    return out


def _fold_slots(
    out: Projection,
    names: Sequence[str],
    retention: Retention,
    now: float,
    huge: Mapping[tuple[int, int], Sequence[int]],
    slots: Mapping[int, Sequence[int]],
) -> None:
    """Add the per-minute counters to ``out``'s hour and minute buckets (non-zero fields
    only, as per-event increments would have written) and count applied/expired events:
    an event is applied when at least one of its two buckets is still retained."""
    hour_min = now - retention.hour_s  # a bucket starting at or before this has expired
    minute_min = now - retention.minute_s
    width = len(names)
    merged: dict[tuple[BucketKind, int], dict[str, int]] = {}
    starts = [((m // _PER_HOUR) * _HOUR, m * _MINUTE, acc) for m, acc in slots.items()]
    starts += [(h, m, acc) for (h, m), acc in huge.items()]
    for hour_start, minute_start, acc in starts:
        stored = False
        kinds: tuple[tuple[BucketKind, int, float], ...] = (
            ("hour", hour_start, hour_min),
            ("minute", minute_start, minute_min),
        )
        for kind, start, oldest in kinds:
            if start <= oldest:
                continue
            stored = True
            key = (kind, start)
            bucket = merged.get(key)
            if bucket is None:
                bucket = merged[key] = {}
            for j in range(width):
                n = acc[j]
                if n:
                    bucket[names[j]] = bucket.get(names[j], 0) + n
        if stored:
            out.applied += acc[width]
        else:
            out.expired += acc[width]
    out.buckets = {key: Counter(fields) for key, fields in merged.items()}
