"""Pure projector logic (bucketing, reward rules, dedupe, batch-split invariance) and the
time-series read model (points, winner changes, time ranges)."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from bandit_core.decision_ids import make_decision_id
from mab_client.models import TimeseriesPoint
from schemas.codec import encode
from schemas.events import (
    AnyEvent,
    ChangePointDetected,
    DecisionMade,
    ExperimentCreated,
    RewardObserved,
)
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.decider.timeseries import (
    TimeRangeError,
    build_points,
    parse_time,
    resolve_range,
    winner_changes,
)
from services.projector.processor import BucketProjection
from services.projector.projection import Retention, bucket_start, micro_units, project
from stream_runtime.batch import Group, decode_batch, offset_field
from stream_runtime.engine import fresh_records
from stream_runtime.kafka_consumer import KafkaRecord as Rec
from stream_runtime.processor import Loaded
from stream_runtime.redis_store import write_args
from stream_runtime.state_store import Write
from tests.fixtures.events import config_of, decision_of

pytestmark = pytest.mark.unit

ARMS = ("a", "b", "c")
H0 = 1_800_000_000 - 1_800_000_000 % 3600  # an hour start
NOW = H0 + 10 * 3600
RET = Retention(hour_s=90 * 86400, minute_s=2 * 86400)
CFG = config_of("e", ARMS, ts=0)


def dec(arm: str, ts: float) -> DecisionMade:
    return decision_of("e", arm, ARMS.index(arm), ts)


def rew(arm: str, r: float, ts: float, decision_id: str | None = None) -> RewardObserved:
    return RewardObserved(experiment_id="e", arm_id=arm, reward=r, ts=ts, decision_id=decision_id)


def grouped(events: list[AnyEvent]) -> Group:
    """The events as the engine groups them, at offsets 0, 1, ... of partition t:0."""
    group = Group()
    for i, ev in enumerate(events):
        group.add(Rec("t", 0, i, 0, b""), ev, offset_field("t", 0))
    return group


def test_bucket_start_and_micro_units() -> None:
    assert bucket_start(H0 + 3599.999, 3600) == H0
    assert bucket_start(H0 + 3600, 3600) == H0 + 3600
    assert bucket_start(H0 + 61.5, 60) == H0 + 60
    assert micro_units(0.1) + micro_units(0.2) == micro_units(0.3)  # unlike floats
    assert micro_units(1.0) == 1_000_000


def test_project_buckets_by_event_time_with_rules_and_dedupe() -> None:
    d1 = dec("a", H0 + 7300)
    events: list[AnyEvent] = [
        d1,
        dec("b", H0 + 10),  # out of order: an earlier hour after a later one
        rew("a", 1.0, H0 + 7301, d1.decision_id),
        rew("a", 0.25, H0 + 7302, d1.decision_id),  # second reward, same decision: dup
        rew("b", 0.5, H0 + 20),
        rew("zz", 1.0, H0 + 20),  # unknown arm
        rew("b", 1.0, H0 + 20, make_decision_id(0)),  # arm mismatch
        ChangePointDetected(experiment_id="e", arm_id="a", detector="cusum", ts=H0 + 7303),
        dec("c", NOW - 3 * 86400),  # late, beyond minute retention, inside hour retention
    ]
    group = grouped(events)
    p = project(group.events, CFG, {}, RET, NOW)
    assert p.applied == 6
    assert p.duplicates == 1
    assert sorted(r.reason for r in p.rejects) == ["arm_mismatch", "unknown_arm"]
    assert p.buckets[("hour", H0 + 7200)] == Counter({"a|d": 1, "a|r": 1, "a|s": 1_000_000})
    assert p.buckets[("hour", H0)] == Counter({"b|d": 1, "b|r": 1, "b|s": 500_000})
    assert p.buckets[("minute", H0 + 7260)] == Counter({"a|d": 1, "a|r": 1, "a|s": 1_000_000})
    assert p.buckets[("minute", H0)] == Counter({"b|d": 1, "b|r": 1, "b|s": 500_000})
    late = bucket_start(NOW - 3 * 86400, 3600)
    assert p.buckets[("hour", late)] == Counter({"c|d": 1})
    assert not any(k == "minute" and s < NOW - 2 * 86400 for k, s in p.buckets)
    assert len(p.change_points) == 1
    assert group.last == {"t:0": len(events) - 1}  # every record moves the offsets


def test_project_respects_seen_from_redis_and_expires_old_events() -> None:
    r = rew("a", 1.0, H0 + 5)
    p = project([r], CFG, {"e:" + r.event_id: r.ts}, RET, NOW)
    assert p.duplicates == 1
    assert not p.buckets
    group = grouped([dec("a", NOW - 100 * 86400)])
    old = project(group.events, CFG, {}, RET, NOW)
    assert old.expired == 1
    assert not old.buckets
    assert group.last == {"t:0": 0}


def test_any_batch_split_gives_identical_buckets() -> None:
    rng = random.Random(5)
    events: list[AnyEvent] = []
    for _ in range(2000):
        arm = rng.choice(ARMS)
        ts = H0 + rng.uniform(0, 8 * 3600)
        d = dec(arm, ts)
        events.append(d)
        if rng.random() < 0.7:
            events.append(
                rew(arm, round(rng.random(), 3), ts + rng.uniform(-50, 50), d.decision_id)
            )
        if rng.random() < 0.1:
            events.append(events[-1])  # redelivered/duplicated record content
    items = events
    whole = project(items, CFG, {}, RET, NOW)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(items)), 7))
        total: dict[tuple[str, int], Counter[str]] = {}
        seen: dict[str, float] = {}
        for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
            part = project(items[lo:hi], CFG, seen, RET, NOW)
            seen.update(part.new_seen)
            for k, c in part.buckets.items():
                total.setdefault(k, Counter()).update(c)
        assert total == whole.buckets


def test_decode_batch_groups_skips_and_ignores() -> None:
    t = TopicNames.with_prefix("x-")
    created = ExperimentCreated(experiment_id="e", config=CFG)
    cp = ChangePointDetected(experiment_id="e", arm_id="a", detector="cusum")
    recs = [
        Rec(t.decisions, 0, 0, 0, encode(dec("a", H0))),
        Rec(t.rewards, 0, 0, 1_800_000_000_000, b'{"experiment_id":"e","arm_id":"a","reward":1}'),
        Rec(t.rewards, 0, 1, 0, b"\x00garbage"),
        Rec(t.decisions, 0, 1, 0, encode(rew("a", 1, H0))),
        Rec(t.experiments, 0, 0, 0, encode(created)),
        Rec(t.experiments, 0, 1, 0, encode(cp)),
        Rec(t.rewards, 0, 2, 0, None),
    ]
    out = decode_batch(recs, BucketProjection(t, RedisKeys("x-"), RET).decoders)
    assert out.ignored == 1
    assert sorted(r.reason for r in out.rejected) == ["bad_json", "empty", "wrong_event_type"]
    items = out.groups["e"]
    assert len(items) == 3
    minimal = items.events[1]
    assert isinstance(minimal, RewardObserved)
    assert minimal.event_id == f"{t.rewards}:0:0"  # same fallback id as the reward consumer
    assert minimal.ts == 1_800_000_000.0
    fresh, dropped = fresh_records(items, {f"{t.decisions}:0": 0})
    assert dropped == 1
    assert len(fresh) == 2


def test_write_layout() -> None:
    """One decision: its hour and minute buckets' increments and expiry, the projector's
    own offsets and dedupe set, every key in the experiment's hash tag."""
    keys = RedisKeys("p-")
    group = grouped([dec("a", H0 + 1)])
    processor = BucketProjection(TopicNames.with_prefix("p-"), keys, RET)
    k = keys.experiment("e")
    applied = processor.apply(
        "e", group.events, Loaded({}, {k.config: CFG.model_dump_json().encode()}), NOW
    )
    assert applied.changes is not None
    guard = processor.guard("e")
    w = Write("e", guard.offsets, {}, group.last, guard.seen, applied.new_seen, applied.changes)
    redis_keys, args = write_args(w, NOW)
    assert redis_keys == [
        k.projector_offsets,
        k.projector_seen,
        k.hour_bucket(H0),
        k.minute_bucket(H0),
    ]
    assert all("{e}" in key for key in redis_keys)
    table = orjson.loads(args[0])
    assert (table["expected"], table["new"]) == ({}, {"t:0": "0"})
    assert table["hincr"] == [
        [k.hour_bucket(H0), ["a|d", "1"], str(H0 + RET.hour_s)],
        [k.minute_bucket(H0), ["a|d", "1"], str(H0 + RET.minute_s)],
    ]


# ------------------------------------------------------------------ read model


def point(start: int, arm: str, rewards: int, rate: float) -> TimeseriesPoint:
    return TimeseriesPoint(
        bucket_start=start,
        arm_id=arm,
        decisions=rewards,
        rewards=rewards,
        reward_sum=rewards * rate,
        conversion_rate=rate,
        traffic_share=None,
    )


def test_build_points_order_rates_and_shares() -> None:
    raw = {b"b|d": b"3", b"a|d": b"1", b"a|r": b"4", b"a|s": b"1500000", b"zz|d": b"0"}
    pts = build_points(["a", "b"], [(H0 + 3600, {b"a|d": b"2"}), (H0, raw)])
    assert [(p.bucket_start, p.arm_id) for p in pts] == [(H0, "a"), (H0, "b"), (H0 + 3600, "a")]
    a = pts[0]
    assert (a.decisions, a.rewards, a.reward_sum) == (1, 4, 1.5)
    assert a.conversion_rate == pytest.approx(0.375)
    assert a.traffic_share == pytest.approx(0.25)
    assert pts[1].conversion_rate is None
    assert pts[1].traffic_share == pytest.approx(0.75)
    assert pts[2].traffic_share == 1.0


def test_winner_changes() -> None:
    pts = [
        point(H0, "a", 30, 0.15),
        point(H0, "b", 30, 0.10),
        point(H0 + 3600, "a", 30, 0.15),
        point(H0 + 3600, "b", 19, 0.90),  # too few rewards to win
        point(H0 + 7200, "a", 5, 0.1),  # no qualifying arm: no winner, no change
        point(H0 + 10800, "b", 25, 0.2),
        point(H0 + 10800, "a", 25, 0.1),
        point(H0 + 14400, "a", 20, 0.3),
        point(H0 + 14400, "b", 20, 0.3),  # tie: the earlier arm wins
    ]
    changes = winner_changes(pts)
    assert [(c.bucket_start, c.from_arm, c.to_arm) for c in changes] == [
        (H0 + 10800, "a", "b"),
        (H0 + 14400, "b", "a"),
    ]
    assert winner_changes([]) == []


def test_time_parsing_and_ranges() -> None:
    assert parse_time("1800000000", "from") == 1_800_000_000
    assert parse_time("2027-01-15T08:00:00Z", "from") == parse_time("2027-01-15T08:00:00", "x")
    assert parse_time(None, "from") is None
    with pytest.raises(TimeRangeError):
        parse_time("yesterday", "from")
    with pytest.raises(TimeRangeError):
        parse_time("nan", "from")
    assert resolve_range("hour", None, None, H0 + 10) == (H0 - 48 * 3600, H0 + 3600)
    assert resolve_range("hour", H0 + 1, H0 + 3600, 0) == (H0, H0 + 3600)
    assert resolve_range("minute", None, H0 + 30, 0) == (H0 - 3600, H0 + 60)
    with pytest.raises(TimeRangeError):
        resolve_range("hour", H0, H0 - 1, 0)
    with pytest.raises(TimeRangeError):
        resolve_range("hour", H0, H0 + 32 * 86400, 0)
    with pytest.raises(TimeRangeError):
        resolve_range("minute", H0, H0 + 25 * 3600, 0)
