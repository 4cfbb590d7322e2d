"""The time-series read model served by ``GET /experiments/{id}/timeseries``.

Pure functions over the projector's bucket hashes (layout in :mod:`schemas.redis_keys`)
plus the response schemas; the route in :mod:`services.decider.app` only does the
Redis round trip. Kept pure so the dashboard contract (``docs/timeseries-api.md``) is
unit-tested without Redis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson

from mab_client.models import ChangePointPublic, TimeseriesPoint, WinnerChange
from schemas.redis_keys import (
    BUCKET_SECONDS,
    FIELD_DECISIONS,
    FIELD_REWARD_SUM,
    FIELD_REWARDS,
    REWARD_SUM_SCALE,
    BucketKind,
    parse_bucket_field,
)

#: An arm must have this many rewards in a bucket to be its winner.
MIN_WINNER_REWARDS: Final = 20
#: Default and maximum span of a query, per bucket kind (seconds).
DEFAULT_SPAN_S: Final[dict[BucketKind, int]] = {"hour": 48 * 3600, "minute": 3600}
MAX_SPAN_S: Final[dict[BucketKind, int]] = {"hour": 31 * 86400, "minute": 86400}


class TimeRangeError(ValueError):
    """A ``from``/``to`` the API answers with 422."""


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (naive = UTC) -> unix seconds; ``None`` stays ``None``."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    try:
        ts = float(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise TimeRangeError(
                f"{name}: {value!r} is neither unix seconds nor ISO 8601"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    if not math.isfinite(ts) or ts < 0:
        raise TimeRangeError(f"{name}: {value!r} is not a non-negative finite time")
    return ts


def resolve_range(
    kind: BucketKind, start: float | None, end: float | None, now: float
) -> tuple[int, int]:
    """The aligned half-open range ``[from, to)`` of bucket starts to return.

    ``from`` is rounded down and ``to`` up to the bucket width, so every bucket that
    overlaps the requested interval is included (the default ``to`` = now includes the
    bucket in progress).
    """
    width = BUCKET_SECONDS[kind]
    end_ts = now if end is None else end
    start_ts = end_ts - DEFAULT_SPAN_S[kind] if start is None else start
    if start_ts >= end_ts:
        raise TimeRangeError("from must be before to")
    if end_ts - start_ts > MAX_SPAN_S[kind]:
        raise TimeRangeError(
            f"from and to are more than {MAX_SPAN_S[kind] // 3600} hours apart for bucket={kind}"
        )
    lo = int(start_ts // width) * width
    hi = math.ceil(end_ts / width) * width
    return lo, max(hi, lo + width)


@dataclass(frozen=True, slots=True)
class _Counts:
    decisions: int
    rewards: int
    reward_micro: int


def _decode_bucket(
    raw: Mapping[bytes, bytes] | Mapping[str, str], names: dict[str, tuple[str, str] | None]
) -> dict[str, _Counts]:
    """``{"<encoded arm>|d": n, ...}`` -> arm -> counts. ``names`` memoises the parsed
    fields across buckets (an experiment repeats its few field names in every bucket, and
    decoding one costs microseconds: 1,000 arms over 48 hours are 144,000 fields)."""
    per_arm: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        text = k.decode() if isinstance(k, bytes) else k
        try:
            parsed = names[text]
        except KeyError:
            parsed = names[text] = parse_bucket_field(text)
        if parsed is None:
            continue
        arm, kind = parsed
        per_arm.setdefault(arm, {})[kind] = int(v)
    return {
        arm: _Counts(f.get(FIELD_DECISIONS, 0), f.get(FIELD_REWARDS, 0), f.get(FIELD_REWARD_SUM, 0))
        for arm, f in per_arm.items()
    }


def build_points(
    arm_ids: Sequence[str],
    buckets: Iterable[tuple[int, Mapping[bytes, bytes] | Mapping[str, str]]],
) -> list[TimeseriesPoint]:
    """Points sorted by bucket start, then arm order (unknown arms last, by name)."""
    order = {a: i for i, a in enumerate(arm_ids)}
    names: dict[str, tuple[str, str] | None] = {}
    points: list[TimeseriesPoint] = []
    for start, raw in sorted(buckets, key=lambda b: b[0]):
        counts = _decode_bucket(raw, names)
        total = sum(c.decisions for c in counts.values())
        for arm in sorted(counts, key=lambda a: (order.get(a, len(order)), a)):
            c = counts[arm]
            if c.decisions == 0 and c.rewards == 0:
                continue
            reward_sum = c.reward_micro / REWARD_SUM_SCALE
            points.append(
                TimeseriesPoint(
                    bucket_start=start,
                    arm_id=arm,
                    decisions=c.decisions,
                    rewards=c.rewards,
                    reward_sum=reward_sum,
                    conversion_rate=reward_sum / c.rewards if c.rewards else None,
                    traffic_share=c.decisions / total if total else None,
                )
            )
    return points


def winner_changes(
    points: Sequence[TimeseriesPoint], min_rewards: int = MIN_WINNER_REWARDS
) -> list[WinnerChange]:
    """Buckets whose winner differs from the previous winner.

    A bucket's winner is the arm with the highest conversion rate among arms with at
    least ``min_rewards`` rewards in it (ties: the earlier arm in ``points`` order, i.e.
    arm order). A bucket without such an arm has no winner and changes nothing; the
    next winner is compared with the last one seen, so a quiet hour is not a "change".
    """
    best: dict[int, tuple[float, str]] = {}
    for p in points:
        if p.rewards < min_rewards or p.conversion_rate is None:
            continue
        cur = best.get(p.bucket_start)
        if cur is None or p.conversion_rate > cur[0]:
            best[p.bucket_start] = (p.conversion_rate, p.arm_id)
    out: list[WinnerChange] = []
    previous: str | None = None
    for start in sorted(best):
        arm = best[start][1]
        if previous is not None and arm != previous:
            out.append(WinnerChange(bucket_start=start, from_arm=previous, to_arm=arm))
        previous = arm
    return out


def parse_change_points(members: Iterable[tuple[bytes | str, float]]) -> list[ChangePointPublic]:
    """Zset ``(member, score)`` pairs (member = JSON ``[event_id, arm_id, detector]``)."""
    out: list[ChangePointPublic] = []
    for member, score in members:
        try:
            _event_id, arm_id, detector = orjson.loads(member)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            continue
        out.append(ChangePointPublic(ts=float(score), arm_id=str(arm_id), detector=str(detector)))
    return out
