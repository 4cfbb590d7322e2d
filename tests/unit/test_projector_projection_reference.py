"""``project`` (minute-slot aggregation) against a naive per-event reference.

The fast projection counts events per minute index and derives the hour and minute
buckets afterwards; this checks that it gives exactly what bucketing every event on its
own (the original formulation) gives, including expired, late, far-future, duplicate
and rejected events.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Sequence

import pytest

from bandit_core.fold import dedupe_keys, reward_rejection
from schemas.events import AnyEvent, DecisionMade, RewardObserved
from schemas.redis_keys import BUCKET_SECONDS, bucket_field
from services.projector.projection import Retention, micro_units, project
from tests.fixtures.events import config_of, decision_of

pytestmark = pytest.mark.unit

ARMS = ("a", "b", "c")
H0 = 1_800_000_000 - 1_800_000_000 % 3600
NOW = H0 + 10 * 3600
RET = Retention(hour_s=90 * 86400, minute_s=2 * 86400)
CFG = config_of("e", ARMS, ts=0)


def reference(
    items: Sequence[AnyEvent], seen: Collection[str], now: float
) -> tuple[dict[tuple[str, int], Counter[str]], int, int, int, list[str]]:
    """Per-event bucketing, written plainly: buckets, applied, duplicates, expired, rejects."""
    buckets: dict[tuple[str, int], Counter[str]] = {}
    local_seen = set(seen)
    applied = duplicates = expired = 0
    rejects: list[str] = []
    for ev in items:
        if isinstance(ev, DecisionMade):
            if ev.arm_id not in ARMS:
                rejects.append("unknown_arm")
                continue
            incs = [(bucket_field(ev.arm_id, "d"), 1)]
        else:
            assert isinstance(ev, RewardObserved)
            reason = reward_rejection(CFG, ev)
            if reason is not None:
                rejects.append(reason)
                continue
            keys = dedupe_keys(ev)
            if any(k in local_seen for k in keys):
                duplicates += 1
                continue
            local_seen.update(keys)
            incs = [(bucket_field(ev.arm_id, "r"), 1)]
            if micro_units(ev.reward):
                incs.append((bucket_field(ev.arm_id, "s"), micro_units(ev.reward)))
        stored = False
        for kind, keep in (("hour", RET.hour_s), ("minute", RET.minute_s)):
            width = BUCKET_SECONDS[kind]  # type: ignore[index]
            start = int(ev.ts // width) * width
            if start <= now - keep:
                continue
            stored = True
            for f, n in incs:
                buckets.setdefault((kind, start), Counter())[f] += n
        applied += stored
        expired += not stored
    return buckets, applied, duplicates, expired, rejects


@pytest.mark.parametrize("seed", range(6))
def test_project_matches_per_event_reference(seed: int) -> None:
    rng = random.Random(seed)
    events: list[AnyEvent] = []
    for _ in range(1500):
        arm = rng.choice((*ARMS, "zz")) if rng.random() < 0.02 else rng.choice(ARMS)
        pick = rng.random()
        if pick < 0.1:  # older than minute retention, some older than hour retention
            ts = NOW - rng.uniform(1.5, 120) * 86400
        elif pick < 0.12:  # far future, beyond the fast path's exact range
            ts = rng.choice([2.0**51, 1e300, 2.0**50 - 0.5, float(2**50)])
        elif pick < 0.2:  # exactly on minute / hour boundaries
            ts = float(H0 + rng.randrange(-600, 600) * 60)
        else:
            ts = H0 + rng.uniform(-3 * 86400, 10 * 3600)
        idx = ARMS.index(arm) if arm in ARMS else 0
        d = decision_of("e", arm, idx, ts)
        events.append(d)
        if rng.random() < 0.7 and arm in ARMS:
            events.append(
                RewardObserved(
                    experiment_id="e",
                    arm_id=arm if rng.random() < 0.97 else rng.choice(ARMS),
                    reward=rng.choice([0.0, 1.0, round(rng.random(), 4)]),
                    ts=ts + rng.uniform(0, 90),
                    decision_id=d.decision_id if rng.random() < 0.9 else None,
                )
            )
        if rng.random() < 0.05:
            events.append(events[-1])
    items = events
    seen = {k for ev in items[:50] if isinstance(ev, RewardObserved) for k in dedupe_keys(ev)}
    got = project(items, CFG, seen, RET, NOW)
    buckets, applied, duplicates, expired, rejects = reference(items, seen, NOW)
    assert got.buckets == buckets
    assert (got.applied, got.duplicates, got.expired) == (applied, duplicates, expired)
    assert [r.reason for r in got.rejects] == rejects
    assert all(n for c in got.buckets.values() for n in c.values())  # no zero fields
