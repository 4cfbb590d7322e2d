"""Fault injection: Redis loses everything; ``mab replay --rebuild`` restores it from the log."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from deploy.local_stack import create_topics
from schemas.topics import TopicNames, topic_specs
from tests.faults.conftest import StackFactory
from tests.fixtures.faults import (
    REPO,
    ServiceProcess,
    committed_offsets,
    dump_namespace,
    read_topics,
    service_env,
    start_decider,
    wait_ready,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

VISITS = 1_500
SEED = 31


async def traffic(client: httpx.AsyncClient, rng: random.Random) -> int:
    """Two experiments through the API: decisions, joined and seed-style rewards, rewards
    sent twice, and mid-way an added arm and a strategy hot-swap. Returns the 200 rewards."""
    for body in (
        {"experiment_id": "wipe-a", "arm_ids": ["red", "green", "blue"], "strategy": "thompson"},
        {
            "experiment_id": "wipe-b",
            "arm_ids": ["x", "y"],
            "strategy": "epsilon_greedy",
            "strategy_params": {"epsilon": 0.2, "seed": 3},
        },
    ):
        r = await client.post("/experiments", json=body)
        assert r.status_code == 201, r.text
    acked = 0
    for i in range(VISITS):
        if i == VISITS // 2:
            r = await client.post("/experiments/wipe-a/arms", json={"arm_ids": ["purple"]})
            assert r.status_code == 200, r.text
            r = await client.post("/config", json={"experiment_id": "wipe-b", "strategy": "ucb1"})
            assert r.status_code == 200, r.text
        exp = "wipe-a" if i % 3 else "wipe-b"
        d = await client.get("/decision", params={"experiment_id": exp})
        assert d.status_code == 200, d.text
        decision = d.json()
        roll = rng.random()
        if roll < 0.5:
            body = {
                "experiment_id": exp,
                "arm_id": decision["arm_id"],
                "reward": float(rng.random() < 0.3),
                "decision_id": decision["decision_id"],
            }
            for _ in range(2 if roll < 0.05 else 1):  # some sent twice: counted once
                r = await client.post("/reward", json=body)
                assert r.status_code == 200, r.text
                acked += 1
        elif roll < 0.6:  # seed style: no decision id
            body = {"experiment_id": exp, "arm_id": decision["arm_id"], "reward": 0.5}
            r = await client.post("/reward", json=body)
            assert r.status_code == 200, r.text
            acked += 1
    return acked


def normal(key: bytes, value: object) -> object:
    """A key's value as compared: snapshots as parsed JSON (as ``mab replay --verify``
    does), because the order of arms in the blob follows the order in which the fold first
    saw each arm, which depends on how polls interleave the decisions and rewards topics;
    the arms' statistics must be equal, not their position in the text."""
    if key.endswith(b":snap") and isinstance(value, bytes):
        return orjson.loads(value)
    return value


@pytest.fixture
async def redis_of(private_stack: StackFactory) -> AsyncIterator[tuple[str, Redis]]:
    stack = private_stack(False)
    await asyncio.to_thread(stack.start_redis)
    client = Redis.from_url(stack.redis_url)
    yield stack.redis_url, client
    await client.aclose()


async def test_redis_wiped_and_rebuilt_by_replay(
    redis_of: tuple[str, Redis], kafka_bootstrap: str, ns: str, tmp_path: Path
) -> None:
    """Scenario: the decider, the reward consumer and the projector run as processes on a
    private Redis (the shared one is never wiped). Two experiments get 1,500 visits
    through the API (decisions, rewards joined to them, seed-style rewards, rewards sent
    twice, an arm added and a strategy hot-swapped mid-way); the processors catch up and
    everything is stopped. Then Redis loses everything (FLUSHALL), and ``mab replay
    --rebuild`` runs as its own process against the topics.
    We expect: every key of the namespace (configs, experiment index, snapshots, applied
    offsets, dedupe sets, hour and minute buckets, change points) identical to before the
    wipe; the services started again on the rebuilt Redis answer the same stats, and new
    traffic after the rebuild is added exactly once on top."""
    redis_url, redis = redis_of
    create_topics(kafka_bootstrap, topic_specs(ns))
    names = TopicNames.with_prefix(ns)
    env = service_env(kafka_bootstrap, redis_url, ns)
    decider, url = start_decider(env, tmp_path / "decider.log")
    consumer = ServiceProcess("services.reward_consumer", env, tmp_path / "consumer.log")
    projector = ServiceProcess("services.projector", env, tmp_path / "projector.log")
    consumer.start()
    projector.start()
    all_topics = [names.experiments, names.decisions, names.rewards]

    async def caught_up() -> bool:
        ends: dict[tuple[str, int], int] = {}
        for r in await asyncio.to_thread(read_topics, kafka_bootstrap, all_topics):
            ends[(r.topic, r.partition)] = r.offset + 1
        mine = {tp: n for tp, n in ends.items() if tp[0] != names.experiments}
        for group, want in ((ns + "reward-consumer", mine), (ns + "projector", ends)):
            got = await asyncio.to_thread(committed_offsets, kafka_bootstrap, group, list(want))
            if got != want:
                return False
        return True

    async def stats(client: httpx.AsyncClient) -> dict[str, list[tuple[str, int, float, int]]]:
        out: dict[str, list[tuple[str, int, float, int]]] = {}
        for exp in ("wipe-a", "wipe-b"):
            r = await client.get(f"/experiments/{exp}/stats")
            assert r.status_code == 200, r.text
            out[exp] = [
                (a["arm_id"], a["pulls"], a["reward_sum"], a["decisions"]) for a in r.json()["arms"]
            ]
        return out

    try:
        await wait_ready(decider, url)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            acked = await traffic(client, random.Random(SEED))
            await wait_until(caught_up, 120, "the processors to catch up", every=1.0)
            before_stats = await stats(client)
        for service in (decider, consumer, projector):
            assert service.terminate() == 0, service.tail()
        before = await dump_namespace(redis, ns)
        records = len(await asyncio.to_thread(read_topics, kafka_bootstrap, all_topics))

        await redis.flushall()  # a private Redis: nobody else's data
        assert await dump_namespace(redis, ns) == {}
        started = time.monotonic()
        try:
            replay = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "mab_cli.main", "replay", "--rebuild", "--json"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"mab replay hung: {exc.stderr!r}"[-3000:]) from None
        rebuild_s = time.monotonic() - started
        assert replay.returncode == 0, replay.stdout + replay.stderr
        after = await dump_namespace(redis, ns)
        only = sorted(set(before) ^ set(after))
        assert not only, f"keys only before or only after: {only[:10]}"
        differ = sorted(k for k in before if normal(k, before[k]) != normal(k, after[k]))
        assert not differ, [(k, before[k], after[k]) for k in differ[:3]]

        # The services go on from the rebuilt state: same stats, new traffic once.
        decider, url = start_decider(env, tmp_path / "decider2.log")
        consumer.start()
        projector.start()
        await wait_ready(decider, url)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert await stats(client) == before_stats
            more = 50
            for i in range(more):
                r = await client.post(
                    "/reward", json={"experiment_id": "wipe-b", "arm_id": "x", "reward": i % 2}
                )
                assert r.status_code == 200, r.text
            await wait_until(caught_up, 60, "the processors to fold the new rewards", every=1.0)
            after_stats = await stats(client)
        for service in (decider, consumer, projector):
            assert service.terminate() == 0, service.tail()
    finally:
        for service in (decider, consumer, projector):
            service.stop_quietly()

    def pulls(s: dict[str, list[tuple[str, int, float, int]]]) -> int:
        return sum(arm[1] for rows in s.values() for arm in rows)

    assert pulls(after_stats) == pulls(before_stats) + more
    print(
        f"\nrecords in the topics: {records} ({acked} rewards acked, some twice on purpose)"
        f"\nkeys before the wipe: {len(before)}; after mab replay --rebuild: {len(after)}, "
        f"all identical (snapshots compared as JSON); rebuild took {rebuild_s:.1f}s "
        "(process start included)"
        f"\nstats after restart identical; {more} new rewards added once "
        f"({pulls(before_stats)} -> {pulls(after_stats)} pulls)"
    )
