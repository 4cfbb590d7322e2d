"""Fault injection: the reward consumer process is SIGKILLed mid-stream, twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from bandit_core.decision_ids import make_decision_id
from bandit_core.fold import fold_batch
from bandit_core.state import ExperimentState
from schemas.codec import decode_reward, encode
from schemas.events import RewardObserved
from schemas.redis_keys import RedisKeys
from tests.fixtures.streams import LiveNamespace, Outgoing, produce, put_config, start_processor

pytestmark = pytest.mark.faults

N = 50_000
EXP = "crash-shop"
ARMS = ("a", "b", "c", "d")


def records(topic: str) -> list[bytes]:
    """Mostly minimal bulk records (their event id is their log position), some full events
    with decision ids, and some producer retries of the same event (dedupe by event id)."""
    out: list[bytes] = []
    full: list[bytes] = []
    for i in range(N):
        idx = i % len(ARMS)
        r = (i * 7919 % 1000) / 1000
        if i % 10 == 3:
            ev = RewardObserved(
                experiment_id=EXP, arm_id=ARMS[idx], reward=r, decision_id=make_decision_id(idx)
            )
            full.append(encode(ev))
            out.append(full[-1])
        elif i % 50 == 7 and full:
            out.append(full[-1])  # a retry: same event id, must count once
        else:
            out.append(orjson.dumps({"experiment_id": EXP, "arm_id": ARMS[idx], "reward": r}))
    return out


async def pulls(redis: Redis, ns: str) -> int:
    raw = await redis.get(RedisKeys(ns).experiment(EXP).snapshot)
    state = ExperimentState.from_snapshot(raw, EXP)
    return sum(a.pulls for a in state.arms.values())


async def wait_pulls(redis: Redis, ns: str, lo: int, within: float) -> int:
    deadline = time.monotonic() + within
    while (n := await pulls(redis, ns)) < lo:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {n} pulls after {within}s, wanted >= {lo}")
        await asyncio.sleep(0.02)
    return n


async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    live: LiveNamespace,
    tmp_path: Path,
) -> None:
    """Scenario: 50,000 rewards (minimal records, full events, producer retries) are in the
    rewards topic. The consumer runs as a real process and is SIGKILLed once a fifth of
    the rewards is folded and again past half, each time at an arbitrary point of its
    read -> fold -> write -> commit cycle; then it is restarted and left to catch up,
    and finally stopped with SIGTERM.
    We expect: the snapshot equals the pure fold of every record exactly once (0 lost,
    0 doubled), the clean SIGTERM exits 0, and the group's committed offset is the end of
    the log (the last batch was committed on shutdown)."""
    config = await put_config(live.redis, live.ns, EXP, ARMS)
    t0 = time.monotonic()
    sent = await produce(
        live.kafka_bootstrap,
        [Outgoing(live.names.rewards, EXP, v) for v in records(live.names.rewards)],
    )
    print(f"\nproduced {len(sent)} in {time.monotonic() - t0:.1f}s")
    events = [
        decode_reward(
            s.value,
            fallback_event_id=f"{s.topic}:{s.partition}:{s.offset}",
            fallback_ts=s.timestamp / 1000,
        )
        for s in sorted(sent, key=lambda s: s.offset)
    ]
    want = fold_batch(ExperimentState(experiment_id=EXP, config=config), events).state
    want_pulls = sum(a.pulls for a in want.arms.values())
    assert want.duplicates > 0

    env = live.env(
        MAB_CONSUMER_GROUP_ID=live.ns + "crash",
        MAB_MAX_BATCH_RECORDS="500",  # many write/commit cycles to land a kill in
        MAB_POLL_TIMEOUT_MS="100",
        # The broker's minimum: the killed member's partitions are reassigned sooner.
        MAB_SESSION_TIMEOUT_MS="6000",
    )
    log = tmp_path / "consumer.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        for fraction in (0.2, 0.55):
            proc = start_processor("services.reward_consumer", env, log)
            seen = await wait_pulls(live.redis, live.ns, int(want_pulls * fraction), within=40)
            print(f"SIGKILL at {seen} pulls, t={time.monotonic() - t0:.1f}s")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert seen < want_pulls, "caught up before the kill: make N bigger"
        proc = start_processor("services.reward_consumer", env, log)
        await wait_pulls(live.redis, live.ns, want_pulls, within=40)
        print(f"caught up at t={time.monotonic() - t0:.1f}s")
        await asyncio.sleep(0.5)  # any doubled record would show up as extra pulls now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    raw = await live.redis.get(RedisKeys(live.ns).experiment(EXP).snapshot)
    got = ExperimentState.from_snapshot(raw, EXP)
    assert (got.arms, got.version, got.duplicates) == (want.arms, want.version, want.duplicates)

    admin = AIOKafkaAdminClient(bootstrap_servers=live.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(live.ns + "crash")
    finally:
        await admin.close()
    partition = sent[0].partition
    assert committed[TopicPartition(live.names.rewards, partition)].offset == sent[-1].offset + 1
