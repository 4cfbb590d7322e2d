"""The reward consumer against a real Kafka + Redis: exactly-once fold, redelivery no-op."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from bandit_core.decision_ids import make_decision_id
from bandit_core.fold import fold_batch
from bandit_core.state import ExperimentState
from schemas.codec import DecodeError, decode, decode_reward, encode
from schemas.events import AnyEvent, ExperimentConfig, RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.reward_consumer import FoldReport
from services.reward_consumer.consumer import RewardConsumer
from stream_runtime.batch import DecodedBatch, RecordLike
from tests.fixtures.events import config_of, decision_of
from tests.fixtures.in_process import consumer_settings, wait_for
from tests.fixtures.streams import Sent, put_config, send_stamped

pytestmark = pytest.mark.integration

ARMS = ("a", "b", "c")


async def produce(bootstrap: str, records: Sequence[tuple[str, str, bytes]]) -> list[Sent]:
    """Produce ``(topic, key, value)`` records; return them with their broker positions
    and the create time each was sent with (:func:`send_stamped`)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    landed = await send_stamped(producer, records)
    return [
        Sent(m.topic, m.partition, m.offset, ts, v)
        for (m, ts), (_, _, v) in zip(landed, records, strict=True)
    ]


def expected_states(
    sent: Sequence[Sent], topics: TopicNames, configs: dict[str, ExperimentConfig]
) -> dict[str, ExperimentState]:
    """The reference: the pure fold of every decodable record, in log order per partition."""
    events: dict[str, list[AnyEvent]] = {}
    for s in sorted(sent, key=lambda s: (s.topic, s.partition, s.offset)):
        try:
            ev: AnyEvent = (
                decode_reward(
                    s.value,
                    fallback_event_id=f"{s.topic}:{s.partition}:{s.offset}",
                    fallback_ts=s.timestamp / 1000,
                )
                if s.topic == topics.rewards
                else decode(s.value)
            )
        except DecodeError:
            continue
        events.setdefault(ev.experiment_id, []).append(ev)
    out = {}
    for exp, cfg in configs.items():
        start = ExperimentState(experiment_id=exp, config=cfg)
        out[exp] = fold_batch(start, events.get(exp, [])).state
    return out


async def stored(redis: Redis, ns: str, exp: str) -> ExperimentState:
    return ExperimentState.from_snapshot(
        await redis.get(RedisKeys(ns).experiment(exp).snapshot), exp
    )


def diff(a: ExperimentState, b: ExperimentState) -> str:
    lines = [f"version {a.version} vs {b.version}, duplicates {a.duplicates} vs {b.duplicates}"]
    for arm in sorted(set(a.arms) | set(b.arms)):
        x, y = a.arms.get(arm), b.arms.get(arm)
        if x != y:
            lines.append(f"{arm}: {x} != {y}")
    return "\n".join(lines)


def same(a: ExperimentState, b: ExperimentState) -> bool:
    return (a.arms, a.version, a.duplicates) == (b.arms, b.version, b.duplicates)


def workload(
    topics: TopicNames, n: int, seed: int = 7
) -> tuple[list[tuple[str, str, bytes]], dict[str, int]]:
    """Rewards and decisions for two experiments, with every kind of bad input mixed in.

    Returns the records and how many of each rejection reason we expect.
    """
    rng = random.Random(seed)
    out: list[tuple[str, str, bytes]] = []
    expect = {"bad_json": 0, "unknown_arm": 0, "arm_mismatch": 0, "unknown_experiment": 0}
    emitted: list[RewardObserved] = []
    for i in range(n):
        exp = "shop-a" if i % 3 else "shop-b"
        idx = rng.randrange(len(ARMS))
        arm = ARMS[idx]
        kind = rng.random()
        if kind < 0.25:
            out.append(
                (
                    topics.decisions,
                    exp,
                    encode(decision_of(exp, arm, idx)),
                )
            )
            continue
        if kind < 0.27:
            out.append((topics.rewards, exp, b"\x00not json"))
            expect["bad_json"] += 1
            continue
        if kind < 0.29:
            out.append(
                (
                    topics.rewards,
                    exp,
                    orjson.dumps({"experiment_id": exp, "arm_id": "zz", "reward": 1}),
                )
            )
            expect["unknown_arm"] += 1
            continue
        if kind < 0.30:
            bad = make_decision_id((idx + 1) % len(ARMS))
            ev = RewardObserved(experiment_id=exp, arm_id=arm, reward=1.0, decision_id=bad)
            out.append((topics.rewards, exp, encode(ev)))
            expect["arm_mismatch"] += 1
            continue
        if kind < 0.31:
            out.append(
                (
                    topics.rewards,
                    "ghost",
                    orjson.dumps({"experiment_id": "ghost", "arm_id": "a", "reward": 1}),
                )
            )
            expect["unknown_experiment"] += 1
            continue
        if kind < 0.36 and emitted:
            # A duplicate: same decision id (new event id) or same event id (a retry).
            prev = rng.choice([e for e in emitted if e.experiment_id == exp] or emitted)
            dup = (
                prev.model_copy(update={"event_id": f"x{i}"})
                if prev.decision_id and rng.random() < 0.5
                else prev
            )
            out.append((topics.rewards, dup.experiment_id, encode(dup)))
            continue
        r = round(rng.random(), 3)
        if kind < 0.55:
            # The minimal bulk-producer contract: no event id, no ts, no type.
            out.append(
                (
                    topics.rewards,
                    exp,
                    orjson.dumps({"experiment_id": exp, "arm_id": arm, "reward": r}),
                )
            )
            continue
        did = make_decision_id(idx) if kind < 0.8 else None
        ev = RewardObserved(experiment_id=exp, arm_id=arm, reward=r, decision_id=did)
        emitted.append(ev)
        out.append((topics.rewards, exp, encode(ev)))
    return out, expect


async def test_fold_is_exactly_once_and_redelivery_is_a_noop(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    names = TopicNames.with_prefix(ns)
    configs = {e: config_of(e, ARMS) for e in ("shop-a", "shop-b")}
    for exp, cfg in configs.items():
        await redis.set(RedisKeys(ns).experiment(exp).config, cfg.model_dump_json())
    records, expect = workload(names, 6000)
    sent = await produce(kafka_bootstrap, records)
    want = expected_states(sent, names, configs)
    assert want["shop-a"].duplicates > 0
    assert sum(a.decisions for a in want["shop-a"].arms.values()) > 0

    first = RewardConsumer(consumer_settings(kafka_bootstrap, redis_url, ns, ns + "g1"))
    started = time.perf_counter()
    await first.start()
    try:
        await wait_for(lambda: first.stats.records >= len(sent), 60, "first catch-up")
    finally:
        await first.stop()
    elapsed = time.perf_counter() - started
    print(
        f"\nfolded {len(sent)} records in {elapsed:.2f}s wall "
        f"({len(sent) / elapsed:.0f}/s incl. group join; "
        f"{first.stats.records / first.fold_seconds:.0f}/s inside the handler, "
        f"{first.batches} batches)"
    )
    for exp in configs:
        got = await stored(redis, ns, exp)
        assert same(got, want[exp]), diff(got, want[exp])
    assert dict(first.stats.rejected) == {k: v for k, v in expect.items() if v}
    assert first.stats.redelivered == 0

    # Everything again, from offset 0, under a new group id: Kafka redelivers it all,
    # the stored offsets make every record a no-op.
    second = RewardConsumer(consumer_settings(kafka_bootstrap, redis_url, ns, ns + "g2"))
    await second.start()
    try:
        await wait_for(lambda: second.stats.records >= len(sent), 60, "second catch-up")
    finally:
        await second.stop()
    for exp in configs:
        assert same(await stored(redis, ns, exp), want[exp]), exp
    assert second.stats.applied == 0
    assert second.stats.duplicates == 0
    assert second.stats.redelivered == sum(1 for s in sent if _folded(s, names))
    # Offsets stored with the snapshot point at the last record of each partition.
    offsets = await redis.hgetall(RedisKeys(ns).experiment("shop-a").offsets)
    last = max(s.offset for s in sent if s.topic == names.rewards and _key_exp(s) == "shop-a")
    assert (
        int(offsets[f"{names.rewards}:{sent_partition(sent, names.rewards, 'shop-a')}".encode()])
        == last
    )


def _key_exp(s: Sent) -> str | None:
    try:
        return str(orjson.loads(s.value)["experiment_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _folded(s: Sent, names: TopicNames) -> bool:
    """Records that reach the fold of a known experiment (and so get an offset stored)."""
    return _key_exp(s) in ("shop-a", "shop-b") and not s.value.startswith(b"\x00")


def sent_partition(sent: Sequence[Sent], topic: str, exp: str) -> int:
    return next(s.partition for s in sent if s.topic == topic and _key_exp(s) == exp)


async def test_failed_batch_is_rewound_not_skipped(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    """Scenario: the Redis write of a batch fails once (Redis blip).
    We expect: no commit, a seek back, the batch retried: every record applied once."""
    names = TopicNames.with_prefix(ns)
    exp = "shop-f"
    await put_config(redis, ns, exp, ARMS)
    records = [
        (names.rewards, exp, orjson.dumps({"experiment_id": exp, "arm_id": "b", "reward": 0.5}))
        for _ in range(500)
    ]
    await produce(kafka_bootstrap, records)
    settings = consumer_settings(kafka_bootstrap, redis_url, ns, ns + "g").model_copy(
        update={"mab_max_batch_records": 100, "mab_retry_backoff_s": 0.05}
    )
    consumer = RewardConsumer(settings)
    await consumer.start()
    assert consumer.engine is not None
    handler = consumer.engine
    real = handler.handle
    failed = 0

    async def flaky(
        records: Sequence[RecordLike],
        now: float | None = None,
        *,
        decoded: DecodedBatch | None = None,
    ) -> FoldReport:
        nonlocal failed
        if failed == 0:
            failed += 1
            raise ConnectionError("redis blip")
        return await real(records, now, decoded=decoded)

    handler.handle = flaky  # type: ignore[method-assign]
    try:
        await wait_for(lambda: consumer.stats.applied >= 500, 30, "catch-up after a failure")
    finally:
        await consumer.stop()
    assert failed == 1
    got = await stored(redis, ns, exp)
    assert got.arms["b"].pulls == 500
