"""Scenario: rewards of one arm drop abruptly. We expect the reward consumer to publish a
ChangePointDetected event with a deterministic id to the experiments topic."""

from __future__ import annotations

import random
import time

import pytest
from redis.asyncio import Redis

from schemas.codec import decode, encode
from schemas.events import ChangePointDetected, RewardObserved
from schemas.topics import TopicNames
from services.reward_consumer.consumer import RewardConsumer
from tests.fixtures.in_process import consumer_settings, wait_for
from tests.fixtures.streams import put_config, topic_reader
from tests.integration.test_reward_consumer import ARMS, produce

pytestmark = pytest.mark.integration


async def test_abrupt_change_is_published_as_an_event(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    names = TopicNames.with_prefix(ns)
    exp = "cp-shop"
    await put_config(redis, ns, exp, ARMS)
    rng = random.Random(11)
    t0 = time.time() - 10_000
    records = []
    for i in range(3000):
        p = 0.5 if i < 1500 else 0.05
        ev = RewardObserved(
            experiment_id=exp,
            event_id=f"r{i}",
            arm_id="a",
            reward=float(rng.random() < p),
            ts=t0 + i,
        )
        records.append((names.rewards, exp, encode(ev)))
    await produce(kafka_bootstrap, records)

    consumer = RewardConsumer(consumer_settings(kafka_bootstrap, redis_url, ns, ns + "cp"))
    await consumer.start()
    try:
        await wait_for(lambda: consumer.stats.applied >= 3000, 60.0, "all rewards folded")
    finally:
        await consumer.stop()
    assert consumer.stats.change_points >= 1

    found: list[ChangePointDetected] = []
    async with topic_reader(kafka_bootstrap, names.experiments) as reader:
        deadline = time.monotonic() + 20.0
        while not found and time.monotonic() < deadline:
            polled = await reader.getmany(timeout_ms=500)
            for recs in polled.values():
                for r in recs:
                    decoded = decode(r.value)
                    if isinstance(decoded, ChangePointDetected):
                        assert r.key == exp.encode()
                        found.append(decoded)
    assert found, "no ChangePointDetected on the experiments topic"
    first = found[0]
    assert first.experiment_id == exp
    assert first.arm_id == "a"
    assert first.event_id == f"cp-{exp}-a-1"
    assert first.detector == "bernoulli_glr"
    assert first.statistic > 0.0
    assert first.ts > t0 + 1500
