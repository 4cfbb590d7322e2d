"""The projector against a real Kafka + Redis: exact event-time buckets, replay, redelivery.

Scenario: decisions, rewards and a change point spread over several hours, produced out
of order, with late events, duplicates and invalid records.
We expect: exactly the buckets a hand-written reference computes; a second group over
the same log (keys kept) changes nothing; wiping the projector's keys and replaying from
offset 0 under a new group rebuilds bit-identical buckets.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from bandit_core.decision_ids import make_decision_id
from schemas.codec import encode
from schemas.events import (
    AnyEvent,
    ChangePointDetected,
    RewardObserved,
)
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.projector import Projector, ProjectorSettings
from services.projector.projection import MAX_EXPIREAT
from stream_runtime.kafka_consumer import KafkaRecord as Rec
from stream_runtime.redis_store import RedisStateStore
from stream_runtime.state_store import MemoryStateStore
from tests.fixtures.engines import projection_engine
from tests.fixtures.events import config_of, decision_of
from tests.fixtures.in_process import projector_settings, wait_for
from tests.fixtures.streams import put_config

pytestmark = pytest.mark.integration

ARMS = ("blue", "green", "red")
EXP = "shop-p"


def settings_for(kafka: str, redis_url: str, ns: str, group: str) -> ProjectorSettings:
    # several batches, so splits are exercised
    return projector_settings(kafka, redis_url, ns, group, mab_projector_max_batch_records=300)


async def produce(bootstrap: str, records: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=EXP.encode()) for t, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Workload:
    records: list[tuple[str, bytes]]
    expected: dict[str, dict[str, int]]  # "h:<start>" / "m:<start>" -> field -> value
    valid: int  # records that reach the projection (everything but undecodable ones)
    bad: int


def workload(names: TopicNames, now: float, seed: int = 3) -> Workload:
    """Events over the last 6 hours (plus 3-day-late ones), shuffled, with duplicates.

    The expectation is computed here by hand (not with the projector's code).
    """
    rng = random.Random(seed)
    events: list[tuple[str, AnyEvent]] = []
    expected: dict[str, Counter[str]] = {}

    def count(ts: float, fld: str, n: int, minute: bool = True) -> None:
        if n == 0:  # a 0.0 reward adds nothing to the sum field (it is never written)
            return
        expected.setdefault(f"h:{int(ts // 3600) * 3600}", Counter())[fld] += n
        if minute:
            expected.setdefault(f"m:{int(ts // 60) * 60}", Counter())[fld] += n

    for i in range(900):
        idx = rng.randrange(3)
        arm = ARMS[idx]
        late = i % 50 == 0  # 3 days old: hour bucket only (minute retention is 2 days)
        ts = now - (3 * 86400 + rng.uniform(0, 3600) if late else rng.uniform(0, 6 * 3600))
        d = decision_of(EXP, arm, idx, ts)
        events.append((names.decisions, d))
        count(ts, f"{arm}|d", 1, minute=not late)
        if rng.random() < 0.6:
            r = RewardObserved(
                experiment_id=EXP,
                arm_id=arm,
                reward=round(rng.random(), 3),
                decision_id=d.decision_id,
                ts=ts + rng.uniform(0, 30),
            )
            events.append((names.rewards, r))
            count(r.ts, f"{arm}|r", 1, minute=not late)
            count(r.ts, f"{arm}|s", round(r.reward * 1_000_000), minute=not late)
            if rng.random() < 0.1:  # same decision rewarded again (new event id): counts once
                again = r.model_copy(update={"event_id": f"again{i}"})
                events.append((names.rewards, again))
            if rng.random() < 0.1:  # the very same record sent twice: dropped
                events.append((names.rewards, r))
    cp = ChangePointDetected(
        event_id=f"{EXP}-cp", experiment_id=EXP, arm_id="red", detector="cusum", ts=now - 3000
    )
    events.append((names.experiments, cp))
    rng.shuffle(events)  # out of order in event time
    records = [(t, encode(e)) for t, e in events]
    # Invalid ones: not JSON, an unknown arm, a decision on the rewards topic.
    bad_records = [
        (names.rewards, b"\x00not json"),
        (names.decisions, b'{"type":"decision_made"}'),
    ]
    unknown_arm = orjson.dumps({"experiment_id": EXP, "arm_id": "zz", "reward": 1, "ts": now})
    records += [*bad_records, (names.rewards, unknown_arm)]
    valid = len(events) + 1
    return Workload(
        records, {k: dict(v) for k, v in expected.items()}, valid=valid, bad=len(bad_records)
    )


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def buckets(redis: Redis, ns: str, exp: str) -> dict[str, dict[str, int]]:
    keys = RedisKeys(ns).experiment(exp)
    out: dict[str, dict[str, int]] = {}
    async for key in redis.scan_iter(match=keys.bucket_base + "*", count=1000):
        text = _s(key)
        raw = await redis.hgetall(key)
        out[text[len(keys.bucket_base) :]] = {_s(k): int(v) for k, v in raw.items()}
    return out


async def run_group(kafka: str, redis_url: str, ns: str, group: str, want: int) -> Projector:
    proj = Projector(settings_for(kafka, redis_url, ns, group))
    await proj.start()
    try:
        await wait_for(lambda: proj.stats.records >= want, 60, f"{group} catch-up")
    finally:
        await proj.stop()
    return proj


async def test_buckets_are_exact_and_replay_is_identical(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    names = TopicNames.with_prefix(ns)
    keys = RedisKeys(ns).experiment(EXP)
    await put_config(redis, ns, EXP, ARMS)
    now = time.time()
    w = workload(names, now)
    await produce(kafka_bootstrap, w.records)
    total = len(w.records)

    first = await run_group(kafka_bootstrap, redis_url, ns, ns + "g1", total)
    got = await buckets(redis, ns, EXP)
    assert got == w.expected
    assert first.stats.rejected == Counter({"bad_json": 1, "missing_field": 1, "unknown_arm": 1}), (
        first.stats.rejected
    )
    assert first.stats.duplicates > 0
    assert first.stats.redelivered == 0
    cps = await redis.zrange(keys.change_points, 0, -1, withscores=True)
    assert [(orjson.loads(_s(c[0])), c[1]) for c in cps] == [  # type: ignore[arg-type]
        ([f"{EXP}-cp", "red", "cusum"], now - 3000)
    ]
    # Hour buckets expire 90 days after their start, minute buckets after 2 days.
    newest_hour = max(k for k in got if k.startswith("h:"))
    ttl_h = await redis.ttl(keys.bucket_base + newest_hour)
    assert 90 * 86400 - 3700 < ttl_h <= 90 * 86400
    newest_minute = max(k for k in got if k.startswith("m:"))
    ttl_m = await redis.ttl(keys.bucket_base + newest_minute)
    assert 2 * 86400 - 120 < ttl_m <= 2 * 86400

    # Redelivery: a new group reads everything again; stored offsets make it a no-op.
    second = await run_group(kafka_bootstrap, redis_url, ns, ns + "g2", total)
    assert await buckets(redis, ns, EXP) == got
    assert second.stats.applied == 0
    assert second.stats.duplicates == 0
    assert second.stats.redelivered == w.valid

    # Replay from offset 0 into wiped projector keys: bit-identical buckets.
    wipe = [keys.projector_offsets, keys.projector_seen, keys.change_points]
    wipe += [k async for k in redis.scan_iter(match=keys.bucket_base + "*")]
    await redis.delete(*wipe)
    assert await buckets(redis, ns, EXP) == {}
    third = await run_group(kafka_bootstrap, redis_url, ns, ns + "g3", total)
    assert await buckets(redis, ns, EXP) == got
    assert third.stats.applied == first.stats.applied


async def test_unknown_experiment_writes_nothing(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    names = TopicNames.with_prefix(ns)
    ghost = orjson.dumps({"experiment_id": "ghost", "arm_id": "a", "reward": 1})
    await produce(kafka_bootstrap, [(names.rewards, ghost)])
    proj = await run_group(kafka_bootstrap, redis_url, ns, ns + "g", 1)
    assert proj.stats.rejected == Counter({"unknown_experiment": 1})
    assert [k async for k in redis.scan_iter(match=f"{ns}*ghost*")] == []


async def test_fold_rate(redis_url: str, ns: str, redis: Redis) -> None:
    """Events/s through the handler (decode + Redis read + projection + Lua write), in
    batches of 5,000 over 4 experiments. Prints the figure; the goal is >= 50,000/s."""
    names = TopicNames.with_prefix(ns)
    exps = [f"bench-{i}" for i in range(4)]
    for e in exps:
        await put_config(redis, ns, e, ARMS)
    rng = random.Random(1)
    now = time.time()
    recs: list[Rec] = []
    offsets = Counter[str]()
    for i in range(100_000):
        exp = exps[i % 4]
        idx = rng.randrange(3)
        ts = now - rng.uniform(0, 6 * 3600)
        if i % 2 == 0:
            ev: AnyEvent = decision_of(exp, ARMS[idx], idx, ts)
            topic = names.decisions
        else:
            ev = RewardObserved(
                experiment_id=exp,
                arm_id=ARMS[idx],
                reward=float(i % 3 == 0),
                decision_id=make_decision_id(idx),
            )
            topic = names.rewards
        part = i % 4
        recs.append(Rec(topic, part, offsets[f"{topic}{part}"], 0, encode(ev)))
        offsets[f"{topic}{part}"] += 1
    settings = settings_for("unused:9092", redis_url, ns, "bench")
    handler = projection_engine(RedisStateStore(redis), ns, settings.retention)
    started = time.perf_counter()
    applied = 0
    for lo in range(0, len(recs), 5000):
        applied += (await handler.handle(recs[lo : lo + 5000])).applied
    elapsed = time.perf_counter() - started
    assert applied == len(recs)
    print(f"\nprojector fold rate: {len(recs) / elapsed:,.0f} events/s ({elapsed:.2f}s)")


async def test_far_future_events_are_bucketed_live_and_by_replay(
    redis_url: str, ns: str, redis: Redis
) -> None:
    """A valid but absurd ``ts`` (1e16 s) gives buckets whose expiry Redis would refuse
    (its milliseconds overflow 64 bits): the projector's write script and replay's bulk
    write both used to fail on it, the live one on every retry. Both cap it now."""
    names = TopicNames.with_prefix(ns)
    await put_config(redis, ns, EXP, ARMS)
    reward = RewardObserved(experiment_id=EXP, arm_id=ARMS[0], reward=1.0, ts=1e16)
    settings = settings_for("unused:9092", redis_url, ns, "far")
    handler = projection_engine(RedisStateStore(redis), ns, settings.retention)
    record = Rec(names.rewards, 0, 0, 0, encode(reward))
    report = await handler.handle([record])
    assert report.applied == 1
    hour = 10**16 // 3600 * 3600
    key = settings.keys.experiment(EXP).bucket("hour", hour)
    assert await redis.hgetall(key) == {b"blue|r": b"1", b"blue|s": b"1000000"}
    assert await redis.expiretime(key) == MAX_EXPIREAT

    # Replay: applied in memory, then bulk-written to an empty namespace.
    scratch = ns + "replay-"
    memory = MemoryStateStore(prune=False)
    memory.strings[RedisKeys(scratch).experiment(EXP).config] = (
        config_of(EXP, ARMS).model_dump_json().encode()
    )
    await projection_engine(memory, scratch, settings.retention).handle(
        [record._replace(topic=TopicNames.with_prefix(scratch).rewards)]
    )
    written = [k for k in (*memory.hashes, *memory.zsets) if "replay-" in k]
    await RedisStateStore(redis).restore(EXP, memory, written, time.time())
    bucket = RedisKeys(scratch).experiment(EXP).bucket("hour", hour)
    assert await redis.hgetall(bucket) == {b"blue|r": b"1", b"blue|s": b"1000000"}
    assert await redis.expiretime(bucket) == MAX_EXPIREAT
