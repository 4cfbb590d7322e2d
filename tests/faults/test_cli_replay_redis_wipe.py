"""Fault injection: Redis loses everything; ``mab replay --rebuild`` restores it from the log,
and refuses to while the processors still run."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from deploy.stack.topics import create_topics
from mab_cli.replay_guard import EXIT_PROCESSORS_RUNNING
from schemas.codec import encode
from schemas.dead_letter import dedupe
from schemas.events import RewardObserved
from schemas.topics import TopicNames, partition_key, topic_specs
from stream_runtime.dead_letter import read_dead_letters
from tests.faults.conftest import StackFactory
from tests.fixtures.faults import (
    Outgoing,
    ServiceProcess,
    committed_offsets,
    dump_namespace,
    read_topics,
    service_env,
    start_decider,
    stream_records,
    wait_ready,
    wait_until,
)
from tests.fixtures.streams import run_replay

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

VISITS = 1_500
SEED = 31


async def traffic(client: httpx.AsyncClient, rng: random.Random, visits: int = VISITS) -> int:
    """Two experiments through the API: decisions, joined rewards and rewards without a
    decision id, rewards sent twice, and mid-way an added arm and a strategy hot-swap.
    Returns the 200 rewards."""
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
    for i in range(visits):
        if i == visits // 2:
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
        elif roll < 0.6:  # the original API's shape: no decision id
            body = {"experiment_id": exp, "arm_id": decision["arm_id"], "reward": 0.5}
            r = await client.post("/reward", json=body)
            assert r.status_code == 200, r.text
            acked += 1
    return acked


#: Per experiment: (arm, pulls, reward sum, decisions) of each arm, from ``/stats``.
Stats = dict[str, list[tuple[str, int, float, int]]]


async def stats(client: httpx.AsyncClient) -> Stats:
    out: Stats = {}
    for exp in ("wipe-a", "wipe-b"):
        r = await client.get(f"/experiments/{exp}/stats")
        assert r.status_code == 200, r.text
        out[exp] = [
            (a["arm_id"], a["pulls"], a["reward_sum"], a["decisions"]) for a in r.json()["arms"]
        ]
    return out


async def more_rewards(
    client: httpx.AsyncClient, n: int, caught_up: Callable[[], Awaitable[bool]]
) -> Stats:
    """``n`` new rewards without a decision id through the API, folded; the stats afterwards."""
    for i in range(n):
        r = await client.post(
            "/reward", json={"experiment_id": "wipe-b", "arm_id": "x", "reward": i % 2}
        )
        assert r.status_code == 200, r.text
    await wait_until(caught_up, 60, "the processors to fold the new rewards", every=1.0)
    return await stats(client)


def pulls(s: Stats) -> int:
    return sum(arm[1] for rows in s.values() for arm in rows)


async def processors_caught_up(kafka_bootstrap: str, ns: str) -> bool:
    """Both processor groups (of :func:`service_env`) committed the end of their topics."""
    names = TopicNames.with_prefix(ns)
    all_topics = [names.experiments, names.decisions, names.rewards]
    ends: dict[tuple[str, int], int] = {}
    for r in await asyncio.to_thread(read_topics, kafka_bootstrap, all_topics):
        ends[(r.topic, r.partition)] = r.offset + 1
    mine = {tp: n for tp, n in ends.items() if tp[0] != names.experiments}
    for group, want in ((ns + "reward-consumer", mine), (ns + "projector", ends)):
        got = await asyncio.to_thread(committed_offsets, kafka_bootstrap, group, list(want))
        if got != want:
            return False
    return True


def start_services(
    kafka_bootstrap: str, redis_url: str, ns: str, logs: Path
) -> tuple[dict[str, str], ServiceProcess, str, ServiceProcess, ServiceProcess]:
    """The topics of ``ns``, then the decider, the reward consumer and the projector as
    processes; returns their environment, the decider and its URL, and the processors."""
    create_topics(kafka_bootstrap, topic_specs(ns))
    env = service_env(kafka_bootstrap, redis_url, ns)
    decider, url = start_decider(env, logs / "decider.log")
    consumer = ServiceProcess("services.reward_consumer", env, logs / "consumer.log")
    projector = ServiceProcess("services.projector", env, logs / "projector.log")
    consumer.start()
    projector.start()
    return env, decider, url, consumer, projector


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
    through the API (decisions, rewards joined to them, rewards without a decision id, rewards sent
    twice, an arm added and a strategy hot-swapped mid-way); the processors catch up and
    everything is stopped. Then Redis loses everything (FLUSHALL), and ``mab replay
    --rebuild`` runs as its own process against the topics.
    We expect: every key of the namespace (configs, experiment index, snapshots, applied
    offsets, dedupe sets, hour and minute buckets, change points) identical to before the
    wipe; the services started again on the rebuilt Redis answer the same stats, and new
    traffic after the rebuild is added exactly once on top."""
    redis_url, redis = redis_of
    names = TopicNames.with_prefix(ns)
    env, decider, url, consumer, projector = start_services(
        kafka_bootstrap, redis_url, ns, tmp_path
    )
    all_topics = [names.experiments, names.decisions, names.rewards]

    async def caught_up() -> bool:
        return await processors_caught_up(kafka_bootstrap, ns)

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
        replay = await asyncio.to_thread(run_replay, env, "--rebuild", "--json")
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
            after_stats = await more_rewards(client, more, caught_up)
        for service in (decider, consumer, projector):
            assert service.terminate() == 0, service.tail()
    finally:
        for service in (decider, consumer, projector):
            service.stop_quietly()

    assert pulls(after_stats) == pulls(before_stats) + more
    print(
        f"\nrecords in the topics: {records} ({acked} rewards acked, some twice on purpose)"
        f"\nkeys before the wipe: {len(before)}; after mab replay --rebuild: {len(after)}, "
        f"all identical (snapshots compared as JSON); rebuild took {rebuild_s:.1f}s "
        "(process start included)"
        f"\nstats after restart identical; {more} new rewards added once "
        f"({pulls(before_stats)} -> {pulls(after_stats)} pulls)"
    )


async def test_rebuild_refused_while_the_processors_run(
    redis_of: tuple[str, Redis], kafka_bootstrap: str, ns: str, tmp_path: Path
) -> None:
    """Scenario: the decider, the reward consumer and the projector run as processes on a
    private Redis; two experiments get 600 visits through the API and the processors
    catch up. Then Redis loses everything (FLUSHALL) while they keep running, and a bulk
    producer writes 200 rewards straight into the rewards topic: the reward consumer
    reads them against the empty Redis (no config), dead-letters and commits them. The
    operator runs ``mab replay --rebuild`` without stopping anything.
    We expect: exit 3, naming the members of both processor groups (client id, host) and
    the commands that stop them, and nothing written to Redis. With the reward consumer
    and the projector stopped (SIGTERM; the decider keeps serving), ``--rebuild`` exits 0
    and holds the 200 rewards; with them started again and 40 more rewards folded,
    ``mab replay --verify`` exits 0 ("identical") and the stats count every reward once."""
    redis_url, redis = redis_of
    names = TopicNames.with_prefix(ns)
    env, decider, url, consumer, projector = start_services(
        kafka_bootstrap, redis_url, ns, tmp_path
    )

    async def caught_up() -> bool:
        return await processors_caught_up(kafka_bootstrap, ns)

    bulk = [
        Outgoing(
            names.rewards,
            partition_key("wipe-a"),
            encode(RewardObserved(experiment_id="wipe-a", arm_id="red", reward=float(i % 2))),
        )
        for i in range(200)
    ]
    try:
        await wait_ready(decider, url)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await traffic(client, random.Random(SEED), visits=600)
            await wait_until(caught_up, 120, "the processors to catch up", every=1.0)
            before_stats = await stats(client)

            await redis.flushall()  # a private Redis: nobody else's data
            await asyncio.to_thread(stream_records, kafka_bootstrap, bulk, rate_per_s=1000)
            await wait_until(caught_up, 60, "the consumer to read the bulk rewards", every=1.0)
            letters = dedupe(await read_dead_letters(kafka_bootstrap, names.rewards_dlq))
            assert [x.reason for x in letters].count("unknown_experiment") >= len(bulk)

            refused = await asyncio.to_thread(run_replay, env, "--rebuild")
            assert refused.returncode == EXIT_PROCESSORS_RUNNING, refused.stdout + refused.stderr
            for group in ("reward-consumer", "projector"):
                # client ids are "<group>-<hex>" (stream_runtime/kafka_loop.py)
                assert f"client id '{ns}{group}-" in refused.stderr, refused.stderr
            assert "on host 127.0.0.1" in refused.stderr
            assert "mab down && mab up --no-services" in refused.stderr
            assert await dump_namespace(redis, ns) == {}, "the refused rebuild wrote keys"

            for service in (consumer, projector):
                assert service.terminate() == 0, service.tail()
            rebuilt = await asyncio.to_thread(run_replay, env, "--rebuild")
            assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
            assert await stats(client) != before_stats  # the 200 bulk rewards are in

            consumer.start()
            projector.start()
            more = 40
            after_stats = await more_rewards(client, more, caught_up)

            verified = await asyncio.to_thread(run_replay, env, "--verify")
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "identical" in verified.stdout
        for service in (decider, consumer, projector):
            assert service.terminate() == 0, service.tail()
    finally:
        for service in (decider, consumer, projector):
            service.stop_quietly()
    assert pulls(after_stats) == pulls(before_stats) + len(bulk) + more
    all_topics = [names.experiments, names.decisions, names.rewards]
    records = len(await asyncio.to_thread(read_topics, kafka_bootstrap, all_topics))
    print(
        f"\nrecords in the topics: {records}"
        f"\nrefused with exit {refused.returncode}:\n{refused.stderr}"
        f"\nrebuild after stopping the processors: exit {rebuilt.returncode}; "
        f"verify after restarting them: exit {verified.returncode}; "
        f"pulls {pulls(before_stats)} -> {pulls(after_stats)} "
        f"(+{len(bulk)} bulk rewards read against the empty Redis, +{more} new)"
    )
