"""Fault injection: the reward consumer and the projector are SIGKILLed three times each
while 200,000 rewards stream in; nothing is lost and nothing is counted twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from bandit_core.fold import fold_batch
from bandit_core.state import ExperimentState
from schemas.codec import encode
from schemas.events import AnyEvent, ExperimentConfig, RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames, partition_key
from services.projector.projection import Retention, project
from stream_runtime.batch import decode_reward_or_decision
from tests.fixtures.events import decision_of
from tests.fixtures.faults import (
    Outgoing,
    ServiceProcess,
    applied_records,
    committed_offsets,
    kill_at_progress,
    kill_points,
    stream_records,
    wait_until,
)
from tests.fixtures.streams import LiveNamespace, put_config

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

REWARDS = 200_000
EXP = "kill-shop"
ARMS = ("a", "b", "c", "d")
#: The stream is paced to last about this long (about what the two processes, restarts
#: included, keep up with on two shared cores), so the kills fall while it flows.
STREAM_S = 60.0
KILLS = 3
SEED = 8


def workload(names: TopicNames) -> list[Outgoing]:
    """200,000 rewards in log order, and a decision before each reward that names one:

    * 1 in 10 rewards answers a decision (``decision_id``), whose ``DecisionMade`` is on
      the decisions topic: 20,000 decisions;
    * 1 in 50 is a producer retry of the last full reward (same event id: counts once);
    * 1 in 97 is a second reward for an already rewarded decision (counts once);
    * the rest are minimal bulk records (event id = log position, ts = record time).
    """
    key = partition_key(EXP)
    out: list[Outgoing] = []
    last_full: bytes | None = None
    last_decision: tuple[str, int] | None = None
    for i in range(REWARDS):
        idx = (i * 7 + i // 13) % len(ARMS)
        reward = (i * 7919 % 1000) / 1000
        if i % 10 == 3:
            decision = decision_of(EXP, ARMS[idx], idx, propensity=0.25)
            last_decision = (decision.decision_id, idx)
            out.append(Outgoing(names.decisions, key, encode(decision)))
            full = RewardObserved(
                experiment_id=EXP, arm_id=ARMS[idx], reward=reward, decision_id=decision.decision_id
            )
            last_full = encode(full)
            out.append(Outgoing(names.rewards, key, last_full))
        elif i % 50 == 7 and last_full is not None:
            out.append(Outgoing(names.rewards, key, last_full))
        elif i % 97 == 11 and last_decision is not None:
            again = RewardObserved(
                experiment_id=EXP,
                arm_id=ARMS[last_decision[1]],
                reward=reward,
                decision_id=last_decision[0],
            )
            out.append(Outgoing(names.rewards, key, encode(again)))
        else:
            minimal = {"experiment_id": EXP, "arm_id": ARMS[idx], "reward": reward}
            out.append(Outgoing(names.rewards, key, orjson.dumps(minimal)))
    return out


def bucket_dump_of_projection(
    items: list[AnyEvent], config: ExperimentConfig, now: float
) -> dict[str, dict[str, int]]:
    """The projector's pure projection of every record, applied once, as Redis stores it."""
    retention = Retention(hour_s=90 * 86_400, minute_s=2 * 86_400)
    projection = project(items, config, set(), retention, now)
    assert projection.expired == 0
    assert not projection.rejects
    return {
        f"{kind[0]}:{start}": dict(fields) for (kind, start), fields in projection.buckets.items()
    }


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def stored_buckets(redis: Redis, bucket_base: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    async for key in redis.scan_iter(match=bucket_base + "*", count=1000):
        raw = await redis.hgetall(key)
        out[_s(key)[len(bucket_base) :]] = {_s(k): int(v) for k, v in raw.items()}
    return out


async def test_consumer_and_projector_sigkilled_three_times_while_200k_rewards_stream_in(
    live: LiveNamespace,
    tmp_path: Path,
) -> None:
    """Scenario: 200,000 rewards (minimal bulk records, rewards joined to one of 20,000
    decisions, producer retries, second rewards for a decision) stream into Kafka over
    about 40 s. The reward consumer and the projector run as real processes on that
    stream, and each is SIGKILLed three times at seeded random moments of the stream
    (after it applied something, plus a random jitter inside its read -> write -> commit
    cycle) and restarted at once. When the stream has ended and both caught up, both
    are stopped with SIGTERM.
    We expect: the consumer's snapshot equals the pure fold of every record applied
    once, and the projector's hour and minute buckets equal the pure projection of every
    record applied once (0 lost, 0 doubled); both exit 0 on SIGTERM, and both groups'
    committed offsets are the end of the log."""
    keys = RedisKeys(live.ns).experiment(EXP)
    config = await put_config(live.redis, live.ns, EXP, ARMS)
    started = time.monotonic()
    items = workload(live.names)
    print(f"\nworkload built in {time.monotonic() - started:.1f}s")
    env = live.env(
        MAB_MAX_BATCH_RECORDS="1000",
        MAB_PROJECTOR_MAX_BATCH_RECORDS="1000",
        MAB_POLL_TIMEOUT_MS="100",
        MAB_PROJECTOR_POLL_TIMEOUT_MS="100",
        # The broker's minimum: a killed member's partitions are reassigned sooner.
        MAB_SESSION_TIMEOUT_MS="6000",
        MAB_PROJECTOR_SESSION_TIMEOUT_MS="6000",
    )
    consumer = ServiceProcess("services.reward_consumer", env, tmp_path / "consumer.log")
    projector = ServiceProcess("services.projector", env, tmp_path / "projector.log")
    consumer.start()
    projector.start()
    try:
        t0 = time.monotonic()
        stream = asyncio.create_task(
            asyncio.to_thread(
                stream_records, live.kafka_bootstrap, items, rate_per_s=len(items) / STREAM_S
            )
        )
        # Kills at seeded random points between 10% and 85% of the records, >= 15% apart.
        total = len(items)
        consumer_kills, projector_kills = await asyncio.gather(
            kill_at_progress(
                consumer,
                lambda: applied_records(live.redis, keys.offsets),
                kill_points(SEED, KILLS, total, 0.10, 0.85, 0.15),
                t0,
                SEED,
            ),
            kill_at_progress(
                projector,
                lambda: applied_records(live.redis, keys.projector_offsets),
                kill_points(SEED + 1, KILLS, total, 0.10, 0.85, 0.15),
                t0,
                SEED + 1,
            ),
        )
        landed = await stream
        streamed_s = time.monotonic() - t0
        ends: dict[str, int] = {}
        for r in landed:
            ends[f"{r.topic}:{r.partition}"] = max(
                ends.get(f"{r.topic}:{r.partition}", -1), r.offset
            )

        async def caught_up(offsets_key: str) -> bool:
            raw = await live.redis.hgetall(offsets_key)
            got = {_s(k): int(v) for k, v in raw.items()}
            return all(got.get(tp) == last for tp, last in ends.items())

        await wait_until(lambda: caught_up(keys.offsets), 150, "the consumer to catch up")
        await wait_until(
            lambda: caught_up(keys.projector_offsets), 150, "the projector to catch up"
        )
        done_s = time.monotonic() - t0
        await asyncio.sleep(1.0)  # a doubled record would show up now
        assert consumer.terminate() == 0, consumer.tail()
        assert projector.terminate() == 0, projector.tail()
    finally:
        consumer.stop_quietly()
        projector.stop_quietly()

    started = time.monotonic()
    # The consumer's snapshot against the pure fold of every record, once.
    rewards = [r for r in landed if r.topic == live.names.rewards]
    decisions = [r for r in landed if r.topic == live.names.decisions]
    decoded = {}
    for r in landed:
        event = decode_reward_or_decision(r, live.names.rewards, live.names.decisions)
        assert event is not None
        decoded[(r.topic, r.offset)] = event
    events = [decoded[(r.topic, r.offset)] for r in (*rewards, *decisions)]
    want = fold_batch(ExperimentState(experiment_id=EXP, config=config), events).state
    got = ExperimentState.from_snapshot(await live.redis.get(keys.snapshot), EXP)
    want_pulls = sum(a.pulls for a in want.arms.values())
    got_pulls = sum(a.pulls for a in got.arms.values())
    assert want.duplicates > 0
    assert want_pulls + want.duplicates == len(rewards)
    assert (got_pulls, got.duplicates, got.version) == (
        want_pulls,
        want.duplicates,
        want.version,
    )
    assert got.arms == want.arms

    # The projector's buckets against the pure projection of every record, once.
    want_buckets = bucket_dump_of_projection(list(decoded.values()), config, time.time())
    got_buckets = await stored_buckets(live.redis, keys.bucket_base)
    assert got_buckets == want_buckets
    hour_events = sum(
        n
        for k, fields in got_buckets.items()
        if k.startswith("h:")
        for f, n in fields.items()
        if f.endswith(("|d", "|r"))
    )

    # Both groups committed the end of the log on their clean shutdown.
    tps = [(r.topic, r.partition) for r in (rewards[-1], decisions[-1])]
    for group in (live.ns + "reward-consumer", live.ns + "projector"):
        committed = await asyncio.to_thread(committed_offsets, live.kafka_bootstrap, group, tps)
        assert committed == {
            (rewards[-1].topic, rewards[-1].partition): rewards[-1].offset + 1,
            (decisions[-1].topic, decisions[-1].partition): decisions[-1].offset + 1,
        }, group

    print(
        f"references computed and compared in {time.monotonic() - started:.1f}s"
        f"\nrecords sent: {len(landed)} ({len(rewards)} rewards, {len(decisions)} decisions)"
        f" in {streamed_s:.1f}s; caught up at {done_s:.1f}s"
        f"\nconsumer SIGKILLs (s, records applied): "
        f"{[(k.at_s, k.progress) for k in consumer_kills]}"
        f"\nprojector SIGKILLs (s, records applied): "
        f"{[(k.at_s, k.progress) for k in projector_kills]}"
        f"\nconsumer accounted for: {got_pulls} pulls + {got.duplicates} duplicates = "
        f"{got_pulls + got.duplicates} of {len(rewards)} rewards; "
        f"{sum(a.decisions for a in got.arms.values())} of {len(decisions)} decisions; "
        f"lost 0, doubled 0 (snapshot == pure fold)"
        f"\nprojector accounted for: {hour_events} events in hour buckets "
        f"(= pure projection: {want_pulls} rewards + {len(decisions)} decisions), "
        f"{len(got_buckets)} buckets identical"
    )
