"""Bulk producers writing straight into Kafka: 100,000 rewards, duplicates, malformed ones.

Scenario: an external aiokafka producer (not the decider) writes 100,000 records into the
rewards topic: valid rewards in the minimal contract, with ``event_id`` and with
``decision_id``; duplicates by event id (a retried send) and by decision id (a second
reward for one decision); and records broken in every way the DLQ has a reason for.
The real reward consumer folds them.
We expect: each experiment's snapshot equals the pure fold of the valid records and its
pulls equal the number of *distinct* valid rewards we sent (counted here, independently
of the fold's dedupe); the DLQ holds exactly the malformed records, one per source
position, each with the reason we broke it for, its original bytes and its position.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from bandit_core.decision_ids import make_decision_id
from bandit_core.fold import fold_batch
from bandit_core.state import ExperimentState
from schemas.codec import MAX_RECORD_BYTES, decode_reward
from schemas.dead_letter import dedupe, position_id
from schemas.events import RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.reward_consumer.consumer import RewardConsumer
from stream_runtime.dead_letter import read_dead_letters
from tests.fixtures.events import config_of
from tests.fixtures.in_process import consumer_settings
from tests.fixtures.streams import send_stamped

pytestmark = pytest.mark.integration

TOTAL = 100_000
EXPERIMENTS = ("bulk-a", "bulk-b", "bulk-c", "bulk-d")
ARMS = ("red", "green", "blue")


#: Changes to a valid minimal record that break it for the DLQ reason (``None``: drop).
_BREAK: dict[str, dict[str, object]] = {
    "reward_out_of_range": {"reward": 1.5},
    "wrong_type": {"reward": "one"},
    "missing_field": {"arm_id": None},
    "unknown_field": {"coupon": "x"},
    "bad_id": {"arm_id": "a\tb"},  # a control character ("a:b" is a valid id)
    "bad_user_context": {"user_context": ["not", "an", "object"]},
    "unknown_experiment": {"experiment_id": "ghost"},
    "unknown_arm": {"arm_id": "purple"},
    "wrong_event_type": {"type": "decision_made"},
}
MALFORMED = (*_BREAK, "bad_json", "non_finite_reward", "not_an_object", "arm_mismatch")


def broken(reason: str, exp: str, arm: str) -> bytes:
    """A record the consumer must dead-letter with ``reason``."""
    base: dict[str, object] = {"experiment_id": exp, "arm_id": arm, "reward": 1.0}
    if reason == "bad_json":
        return orjson.dumps(base)[:-7]
    if reason == "non_finite_reward":  # what json.dumps(float("nan")) writes
        return orjson.dumps(base).replace(b"1.0", b"NaN")
    if reason == "not_an_object":
        return orjson.dumps([base])
    if reason == "arm_mismatch":  # the decision served the next arm
        base["decision_id"] = make_decision_id((ARMS.index(arm) + 1) % len(ARMS))
        return orjson.dumps(base)
    merged = {**base, **_BREAK[reason]}
    return orjson.dumps({k: v for k, v in merged.items() if v is not None})


@dataclass
class Bulk:
    """What we send, and what we know about each record before Kafka sees it."""

    records: list[tuple[str, bytes | None]] = field(default_factory=list)  # (key, value)
    reasons: dict[int, str] = field(default_factory=dict)  # index -> intended DLQ reason
    valid: set[int] = field(default_factory=set)  # indexes of valid records (dups included)
    distinct: Counter[tuple[str, str]] = field(default_factory=Counter)  # (exp, arm) -> n


def bulk(now: float, seed: int = 11) -> Bulk:
    """100,000 records: ~78% valid, ~10% duplicates, ~12% malformed (13 kinds)."""
    rng = random.Random(seed)
    out = Bulk()
    with_ids: list[dict[str, object]] = []
    with_decisions: list[dict[str, object]] = []

    def valid(exp: str, obj: dict[str, object], *, new: bool) -> None:
        out.valid.add(len(out.records))
        out.records.append((exp, orjson.dumps(obj)))
        if new:
            out.distinct[(exp, str(obj["arm_id"]))] += 1

    def bad(reason: str, key: str, value: bytes | None) -> None:
        out.reasons[len(out.records)] = reason
        out.records.append((key, value))

    for i in range(TOTAL):
        exp = EXPERIMENTS[i % len(EXPERIMENTS)]
        arm = ARMS[rng.randrange(3)]
        r = rng.random()
        if r < 0.12:
            reason = rng.choice(MALFORMED)
            bad(
                reason, "ghost" if reason == "unknown_experiment" else exp, broken(reason, exp, arm)
            )
        elif r < 0.16 and with_ids:
            # a producer retrying a send: the very same record (same event id) again
            prev = rng.choice(with_ids)
            valid(str(prev["experiment_id"]), prev, new=False)
        elif r < 0.22 and with_decisions:
            # a second reward for a decision already rewarded (new event id): counts once
            prev = rng.choice(with_decisions)
            again = {**prev, "event_id": f"again-{i}", "reward": 0.0}
            valid(str(prev["experiment_id"]), again, new=False)
        elif r < 0.55:
            # the minimal contract: no event id, no timestamp
            obj: dict[str, object] = {"experiment_id": exp, "arm_id": arm, "reward": r}
            valid(exp, obj, new=True)
        else:
            obj = {
                "experiment_id": exp,
                "arm_id": arm,
                "reward": round(rng.random(), 3),
                "event_id": f"ev-{i}",
                "ts": now - rng.random() * 3600,
                "source": "bulk-test",
            }
            with_ids.append(obj)
            if r < 0.8:
                obj["decision_id"] = make_decision_id(ARMS.index(arm))
                with_decisions.append(obj)
            valid(exp, obj, new=True)
    # A handful of the rarer shapes (fixed count, so each kind is surely present).
    for n in range(5):
        exp = EXPERIMENTS[n % len(EXPERIMENTS)]
        bad("oversize", exp, b'{"pad":"' + b"x" * (MAX_RECORD_BYTES + 100 * n) + b'"}')
        bad("empty", exp, None)
    return out


@dataclass(frozen=True)
class Position:
    partition: int
    offset: int
    timestamp: int


async def produce_bulk(bootstrap: str, topic: str, data: Bulk) -> list[Position]:
    """The external producer: plain aiokafka, acks=all, idempotent, keyed by experiment."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,
    )
    landed = await send_stamped(producer, ((topic, key, value) for key, value in data.records))
    return [Position(m.partition, m.offset, ts) for m, ts in landed]


async def test_bulk_producer_100k_rewards_with_duplicates_and_malformed_records(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    names = TopicNames.with_prefix(ns)
    keys = RedisKeys(ns)
    configs = {exp: config_of(exp, ARMS) for exp in EXPERIMENTS}
    for exp, cfg in configs.items():
        await redis.set(keys.experiment(exp).config, cfg.model_dump_json())
    data = bulk(time.time())
    assert len(data.records) == TOTAL + 10
    assert set(data.reasons.values()) >= {"bad_json", "oversize", "arm_mismatch", "empty"}
    positions = await produce_bulk(kafka_bootstrap, names.rewards, data)

    # The reference: the pure fold of the valid records, per experiment in log order.
    events: dict[str, list[RewardObserved]] = {exp: [] for exp in EXPERIMENTS}
    for i in sorted(data.valid, key=lambda i: (positions[i].partition, positions[i].offset)):
        raw = data.records[i][1]
        assert raw is not None
        p = positions[i]
        ev = decode_reward(
            raw,
            fallback_event_id=position_id(names.rewards, p.partition, p.offset),
            fallback_ts=p.timestamp / 1000,
        )
        events[ev.experiment_id].append(ev)
    want = {
        exp: fold_batch(ExperimentState(experiment_id=exp, config=cfg), events[exp]).state
        for exp, cfg in configs.items()
    }

    consumer = RewardConsumer(consumer_settings(kafka_bootstrap, redis_url, ns, ns + "bulk"))
    started = time.perf_counter()
    await consumer.start()
    try:
        deadline = time.monotonic() + 150
        while consumer.stats.records < len(data.records):
            assert time.monotonic() < deadline, f"consumer stuck at {consumer.stats.records}"
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
    print(f"\nfolded {len(data.records)} records in {time.perf_counter() - started:.1f}s")

    # Statistics: exactly the valid, de-duplicated rewards.
    for exp in EXPERIMENTS:
        got = ExperimentState.from_snapshot(await redis.get(keys.experiment(exp).snapshot), exp)
        assert got.arms == want[exp].arms, exp
        assert got.duplicates == want[exp].duplicates
        for arm in ARMS:
            assert got.arms[arm].pulls == data.distinct[(exp, arm)], (exp, arm)
    duplicates = len(data.valid) - sum(data.distinct.values())
    assert duplicates > 5000
    assert consumer.stats.applied == sum(data.distinct.values())
    assert consumer.stats.duplicates == duplicates

    # The DLQ: exactly the malformed records, each with its reason, bytes and position.
    letters = await read_dead_letters(kafka_bootstrap, names.rewards_dlq)
    current = dedupe(letters)
    assert len(current) == len(data.reasons)
    by_origin = {d.origin: d for d in current}
    for i, reason in data.reasons.items():
        p = positions[i]
        letter = by_origin[(names.rewards, p.partition, p.offset)]
        assert letter.reason == reason, (i, letter.detail)
        assert letter.value == data.records[i][1]
        assert letter.key == data.records[i][0].encode()
        assert letter.source_timestamp == p.timestamp
        assert letter.rejected_by.startswith(ns + "bulk/")
        assert letter.detail
    assert Counter(d.reason for d in current) == Counter(data.reasons.values())
    assert dict(consumer.stats.rejected) == dict(Counter(data.reasons.values()))
