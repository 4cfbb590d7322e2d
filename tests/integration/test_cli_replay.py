"""``mab replay`` against real traffic, with a private Redis that may be wiped.

Scenario: two experiments (one gets a new arm and a strategy change mid-way) receive
decisions and rewards through the decider's HTTP API (joined rewards, unlinked
rewards, duplicates, an invalid reward); the reward consumer and the projector fold
them into a private Redis. Then Redis is wiped with FLUSHALL.
We expect: ``mab replay --rebuild`` restores every config, snapshot, offsets hash,
dedupe set and hour/minute bucket identical to before (the stats endpoint answers the
same), ``mab replay --verify`` exits 0, and exits 1 naming the key once one bucket is
corrupted.

Also: a rebuild refuses to run next to live consumers of the topics (the sequence with
the real processor processes is in tests/faults/test_cli_replay_redis_wipe.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as RdTopicPartition
from confluent_kafka.admin import AdminClient
from redis.asyncio import Redis

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack
from mab_cli.replay_guard import EXIT_PROCESSORS_RUNNING, ProcessorGroups, ProcessorsRunning
from mab_cli.replay_redis import compare, read_namespace
from mab_cli.replay_runs import ReplayTarget, run_rebuild, run_tail
from schemas.codec import encode
from schemas.events import DecisionMade, ExperimentCreated, RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames, partition_key
from services.decider import Assignment
from services.projector.projection import Retention
from stream_runtime.partition_reader import read_chunks
from tests.fixtures.in_process import in_process, wait_for
from tests.fixtures.streams import run_replay
from tests.fixtures.workload import configs_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of our own: this test wipes it, which the shared one must never see."""
    stack = LocalStack(StackConfig.throwaway(tmp_path), services=[])
    stack.start_redis()
    try:
        yield stack.redis_url
    finally:
        stack.down()


@pytest.fixture
async def redis(private_redis: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis)
    yield client
    await client.aclose()


async def traffic(
    c: httpx.AsyncClient, rounds: range = range(240), create: bool = True
) -> dict[str, int]:
    """Real traffic through the API; returns how many records each topic got."""
    sent = {"experiments": 0, "decisions": 0, "rewards": 0}
    for exp in ("cta", "hero") if create else ():
        r = await c.post(
            "/experiments",
            json={"experiment_id": exp, "arm_ids": ["a", "b"], "strategy": "thompson"},
        )
        assert r.status_code == 201, r.text
        sent["experiments"] += 1
    for i in rounds:
        exp = "cta" if i % 3 else "hero"
        if i == 120:
            r = await c.post("/experiments/cta/arms", json={"arm_ids": ["c"]})
            assert r.status_code == 200, r.text
            r = await c.post(
                "/config",
                json={
                    "experiment_id": "cta",
                    "strategy": "epsilon_greedy",
                    "strategy_params": {"epsilon": 0.2},
                },
            )
            assert r.status_code == 200, r.text
            sent["experiments"] += 2
        r = await c.get("/decision", params={"experiment_id": exp})
        assert r.status_code == 200, r.text
        d = r.json()
        sent["decisions"] += 1
        body: dict[str, Any] = {"experiment_id": exp, "arm_id": d["arm_id"]}
        if i % 4 == 0:
            body |= {"reward": 1.0, "decision_id": d["decision_id"]}
        elif i % 4 == 1:
            body |= {"reward": 0.0}  # the original API's shape: no decision id
        elif i % 4 == 2:
            body |= {"reward": 0.25, "decision_id": d["decision_id"]}
        else:
            continue
        r = await c.post("/reward", json=body)
        assert r.status_code == 200, r.text
        sent["rewards"] += 1
        if i % 10 == 0 and "decision_id" in body:  # the same decision rewarded twice
            r = await c.post("/reward", json=body | {"reward": 0.5})
            assert r.status_code == 200, r.text
            sent["rewards"] += 1
    return sent


def produce_unit_decisions(bootstrap: str, ns: str, exp: str, n: int) -> int:
    """``n`` unit decisions of ``exp`` (arms ``a``, ``b``) straight to the decisions
    topic, as the consistent mode logs them: every third one repeats an earlier decision
    id (a duplicate for the fold), over three allocation versions. Returns ``n``."""
    producer = Producer({"bootstrap.servers": bootstrap})
    topic = TopicNames.with_prefix(ns).decisions
    for i in range(n):
        unit = i - 1 if i % 3 == 2 else i
        arm = unit % 2
        event = DecisionMade(
            experiment_id=exp,
            decision_id=f"{unit:032x}.{arm}",
            arm_id="ab"[arm],
            strategy="thompson",
            propensity=0.5,
            config_version=1,
            snapshot_version=0,
            unit_id=f"visitor-{unit}",
            assignment="consistent",
            allocation_version=29_000_000 + unit % 3,
        )
        producer.produce(topic, encode(event), key=partition_key(exp))
    assert producer.flush(30) == 0
    return n


@pytest.mark.timeout(600)  # two CLI processes and two replay workers on a shared 2-core box
async def test_rebuild_after_flushall_restores_identical_state(
    kafka_bootstrap: str, private_redis: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    services = in_process(kafka_bootstrap, private_redis, ns)
    decider, consumer, projector = services.decider, services.consumer, services.projector
    async with services.serving() as c:
        sent = await traffic(c, range(160))
        n = sent["decisions"] + sent["rewards"]
        n += await asyncio.to_thread(produce_unit_decisions, kafka_bootstrap, ns, "hero", 30)
        await wait_for(lambda: consumer.stats.records >= n, 60, "reward consumer")
        await wait_for(lambda: projector.stats.records >= n + sent["experiments"], 60, "projector")
        before_stats = {e: (await c.get(f"/experiments/{e}/stats")).json() for e in ("cta", "hero")}
    assert consumer.stats.duplicates > 0  # the twice-rewarded decisions, repeated units
    # hero's requests of the traffic, plus the 20 distinct unit decisions of the 30 sent
    hero_decisions = sum(1 for i in range(160) if i % 3 == 0) + 20
    assert sum(a["decisions"] for a in before_stats["hero"]["arms"]) == hero_decisions
    before = await read_namespace(redis, ns)
    hero_srm = before.experiments["hero"]["snap"]["srm"]
    assert sum(sum(arms.values()) for arms in hero_srm["versions"].values()) == 20
    assert {"cta", "hero"} <= set(before.experiments)
    assert any(k.startswith("ts:h:") for k in before.experiments["cta"])
    assert any(k.startswith("ts:m:") for k in before.experiments["cta"])

    await redis.flushall()  # our private Redis only
    assert await redis.dbsize() == 0

    target = ReplayTarget.of(projector.settings, workers=2)  # two worker processes
    outcome = await run_rebuild(target, lambda _: None)
    # The experiments topic also holds the change points the consumer published: the
    # arms Thompson sampling picks, and so the detector's alarms, vary from run to run.
    logged = n + sent["experiments"] + consumer.stats.change_points
    assert outcome.report.records == logged
    after = await read_namespace(redis, ns)
    assert compare(before, after) == []
    assert after.experiments == before.experiments
    assert after.index == before.index
    # nothing of the scratch namespace is left behind
    assert {k.decode() async for k in redis.scan_iter()} == {
        k.decode() async for k in redis.scan_iter(match=ns + "mab:*")
    }

    async with (
        decider.api.router.lifespan_context(decider.api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=decider), base_url="http://d") as c,
    ):
        for exp, old in before_stats.items():
            new = (await c.get(f"/experiments/{exp}/stats")).json()
            for doc in (old, new):  # propensities are sampled at read time
                doc.pop("propensities")
                for arm in doc["arms"]:
                    arm.pop("propensity")
            assert new == old

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": private_redis,
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
    }
    ok = run_replay(env, "--verify", "--workers", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "identical" in ok.stdout

    bucket = next(k for k in before.experiments["cta"] if k.startswith("ts:h:"))
    await redis.hincrby(f"{ns}mab:{{cta}}:{bucket}", "a|d", 1)
    bad = run_replay(env, "--verify", "--workers", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"mab:{{cta}}:{bucket}/a|d" in bad.stdout


async def units_of(redis: Redis, pattern: str) -> dict[bytes, tuple[bytes | str, int]]:
    """Every sticky unit key of ``pattern``: its value and remaining TTL (ms)."""
    out: dict[bytes, tuple[bytes | str, int]] = {}
    async for key in redis.scan_iter(pattern):
        value = await redis.get(key)
        assert value is not None
        out[key] = (value, await redis.pttl(key))
    return out


async def test_rebuild_restores_the_sticky_table_and_verify_finds_a_changed_unit(
    kafka_bootstrap: str, private_redis: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    """Scenario: 120 units get their sticky arm through the API (a third of them asked
    twice), their keys are deleted. We expect ``mab replay --rebuild`` to bring back
    every unit with the same decision id and arm and the TTL it had, ``--verify`` to
    exit 0, then 1 naming the unit once one key holds another arm, and a unit decided
    after the log's end (an extra live key) to be no difference."""
    services = in_process(kafka_bootstrap, private_redis, ns)
    consumer = services.consumer
    units = [f"visitor-{i}" for i in range(120)]
    async with services.serving() as c:
        r = await c.post(
            "/experiments",
            json={"experiment_id": "sticky", "arm_ids": ["a", "b", "c"], "sticky_ttl_s": 7200},
        )
        assert r.status_code == 201, r.text
        served: dict[str, tuple[str, str]] = {}
        for i, unit in enumerate(units * 2):
            if i >= len(units) and i % 3:
                continue
            r = await c.get("/decision", params={"experiment_id": "sticky", "unit_id": unit})
            assert r.status_code == 200, r.text
            d = r.json()
            assert served.setdefault(unit, (d["decision_id"], d["arm_id"])) == (
                d["decision_id"],
                d["arm_id"],
            )
        await wait_for(lambda: consumer.stats.records >= len(units), 60, "reward consumer")
    pattern = RedisKeys(ns).unit_pattern("sticky")
    before = await units_of(redis, pattern)
    assert len(before) == len(units)
    assert all(7_100_000 < ttl <= 7_200_000 for _, ttl in before.values())
    await redis.delete(*before)

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": private_redis,
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
    }
    done = run_replay(env, "--rebuild", "--workers", "1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"written": 120' in done.stdout
    after = await units_of(redis, pattern)
    assert set(after) == set(before)
    for key, (value, ttl) in before.items():
        old, new = Assignment.decode(value), Assignment.decode(after[key][0])
        assert (new.decision_id, new.propensity, new.version) == (
            old.decision_id,
            old.propensity,
            old.version,
        )
        assert abs(new.assigned_ts - old.assigned_ts) < 1.0
        assert abs(after[key][1] - ttl) < 30_000  # ms: the time the rebuild took, at most
    assert {served[u][0] for u in units} == {
        Assignment.decode(v).decision_id for v, _ in after.values()
    }

    ok = run_replay(env, "--verify", "--workers", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "identical" in ok.stdout
    await redis.set(f"{pattern[:-1]}extra-unit", b"made after the log's end")

    key = next(iter(before))
    was = Assignment.decode(after[key][0])
    other = next(i for i in range(3) if i != was.arm_index)
    forged = Assignment(
        other, f"{was.decision_id[:32]}.{other}", was.propensity, was.version, was.assigned_ts
    )
    await redis.set(key, forged.encode(), keepttl=True)
    bad = run_replay(env, "--verify", "--workers", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert key.decode() in bad.stdout
    assert "extra-unit" not in bad.stdout


async def test_rebuild_from_timestamp_catches_up_a_restored_backup(
    kafka_bootstrap: str, private_redis: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    """Scenario: a backup of Redis is taken, traffic goes on, Redis is lost and restored
    from the backup. We expect ``--rebuild --from-timestamp`` (a time before the backup)
    to apply exactly the missing records: the state equals the one before the loss."""
    services = in_process(kafka_bootstrap, private_redis, ns)
    consumer, projector = services.consumer, services.projector
    async with services.serving() as c:
        first = await traffic(c, range(60))
        n1 = first["decisions"] + first["rewards"]
        await wait_for(lambda: consumer.stats.records >= n1, 60, "reward consumer")
        await wait_for(
            lambda: projector.stats.records >= n1 + first["experiments"], 60, "projector"
        )
        # A quiet second on each side of the backup: the tail starts at backup_ts - 0.5,
        # after every record of the first traffic and before any of the second.
        await asyncio.sleep(1.0)
        backup = {k: await redis.dump(k) async for k in redis.scan_iter(match=ns + "*")}
        backup_ts = time.time()
        await asyncio.sleep(1.0)
        second = await traffic(c, range(60, 120), create=False)
        n2 = n1 + second["decisions"] + second["rewards"]
        await wait_for(lambda: consumer.stats.records >= n2, 60, "reward consumer")
        await wait_for(
            lambda: projector.stats.records >= n2 + first["experiments"], 60, "projector"
        )
    before = await read_namespace(redis, ns)

    await redis.flushall()
    for key, blob in backup.items():
        assert blob is not None
        await redis.restore(key, 0, blob)
    assert compare(before, await read_namespace(redis, ns)) != []  # the backup is behind

    target = ReplayTarget.of(projector.settings, workers=1)
    outcome = await run_tail(target, lambda _: None, backup_ts - 0.5)
    assert 0 < outcome.report.records < n2 + first["experiments"]  # a tail, not everything
    assert compare(before, await read_namespace(redis, ns)) == []


async def test_reading_from_the_beginning_starts_at_the_log_start(
    kafka_bootstrap: str, ns: str, topics: dict[str, int]
) -> None:
    """Once retention has moved a partition's log start (here: DeleteRecords), "the
    beginning" is the new start: every record from there is read, none before it."""
    topic = TopicNames.with_prefix(ns).rewards

    def produce_and_truncate() -> None:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for i in range(30):
            producer.produce(topic, f"r{i}".encode(), partition=0)
        assert producer.flush(30) == 0
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_records([RdTopicPartition(topic, 0, 10)]).values():
            assert future.result(30).low_watermark == 10

    await asyncio.to_thread(produce_and_truncate)
    until = {f"{topic}:0": 29}
    read = [
        (r.offset, r.value)
        async for chunk in read_chunks(kafka_bootstrap, {}, until, 8)
        for r in chunk
    ]
    assert read == [(i, f"r{i}".encode()) for i in range(10, 30)]


def _guard_experiment(bootstrap: str, names: TopicNames) -> None:
    """Experiment ``guard`` with two rewards in the topics."""
    config = configs_for(["guard"])["guard"]
    producer = Producer({"bootstrap.servers": bootstrap})
    key = partition_key("guard")
    producer.produce(
        names.experiments, encode(ExperimentCreated(experiment_id="guard", config=config)), key
    )
    for reward in (1.0, 0.0):
        event = RewardObserved(experiment_id="guard", arm_id="a", reward=reward)
        producer.produce(names.rewards, encode(event), key)
    assert producer.flush(30) == 0


def _member(
    bootstrap: str, group: str, client_id: str, topics: list[str], protocol: str = "classic"
) -> Consumer:
    """A real member of ``group``, subscribed like the processors (which use the classic
    protocol) or with Kafka 4's consumer protocol (KIP-848)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.protocol": protocol,
            "client.id": client_id,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    return consumer


def _join(members: list[Consumer], within: float = 60) -> None:
    """Poll until every member holds an assignment (the group is stable)."""
    deadline = time.monotonic() + within
    while not all(m.assignment() for m in members):
        if time.monotonic() > deadline:
            raise AssertionError("consumers got no assignment")
        for m in members:
            m.poll(0.1)


@pytest.mark.timeout(300)
async def test_rebuild_refuses_while_consumers_of_the_topics_run(
    kafka_bootstrap: str, private_redis: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    """Scenario: an experiment with two rewards is in the topics, Redis is empty, and
    live members sit in the reward consumer's group, the projector's group (as named by
    MAB_CONSUMER_GROUP_ID / MAB_PROJECTOR_GROUP_ID), a third group reading the rewards
    topic with Kafka 4's new consumer protocol, and a fourth reading only the
    dead-letter topic.
    We expect: ``--rebuild`` and ``--rebuild --from-timestamp`` exit 3, name the three
    groups reading the rewards or decisions topics with each member's client id and
    host, give the commands that stop them, and write nothing; the dead-letter reader is
    not named. ``--force`` rebuilds anyway and names them; once they left, ``--rebuild``
    runs without ``--force``."""
    names = TopicNames.with_prefix(ns)
    snapshot_key = RedisKeys(ns).experiment("guard").snapshot
    await asyncio.to_thread(_guard_experiment, kafka_bootstrap, names)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": private_redis,
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
        "MAB_CONSUMER_GROUP_ID": ns + "reward-consumer",
        "MAB_PROJECTOR_GROUP_ID": ns + "projector",
    }
    members = [
        _member(
            kafka_bootstrap, ns + "reward-consumer", "folder-1", [names.rewards, names.decisions]
        ),
        _member(
            kafka_bootstrap,
            ns + "projector",
            "projector-1",
            [names.rewards, names.decisions, names.experiments],
        ),
        _member(kafka_bootstrap, ns + "analytics", "warehouse-sink", [names.rewards], "consumer"),
        _member(kafka_bootstrap, ns + "dlq-reader", "dlq-watch", [names.rewards_dlq]),
    ]
    try:
        await asyncio.to_thread(_join, members)
        for args in (["--rebuild"], ["--rebuild", "--from-timestamp", "0"]):
            refused = await asyncio.to_thread(run_replay, env, *args, "--workers", "1")
            assert refused.returncode == EXIT_PROCESSORS_RUNNING, refused.stdout + refused.stderr
            err = refused.stderr
            for group, client in (
                ("reward-consumer", "folder-1"),
                ("projector", "projector-1"),
                ("analytics", "warehouse-sink"),
            ):
                assert f"group '{ns}{group}'" in err, err
                assert f"client id '{client}' on host 127.0.0.1" in err, err
            assert "MAB_CONSUMER_GROUP_ID" in err
            assert "MAB_PROJECTOR_GROUP_ID" in err
            assert "dlq-watch" not in err
            assert f"{ns}dlq-reader" not in err
            assert "mab down && mab up --no-services" in err
            assert "docker compose stop reward-consumer projector" in err
            assert "--replicas=0" in err
            assert "--force" in err
            assert await redis.dbsize() == 0  # nothing written, not even scratch keys

        forced = await asyncio.to_thread(run_replay, env, "--rebuild", "--force", "--workers", "1")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "--force" in forced.stderr
        assert "warehouse-sink" in forced.stderr
        assert await redis.exists(snapshot_key)
    finally:
        for m in members:
            await asyncio.to_thread(m.close)

    await redis.flushall()
    done = await asyncio.to_thread(run_replay, env, "--rebuild", "--workers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused" not in done.stderr
    assert await redis.exists(snapshot_key)


async def test_rebuild_refuses_at_the_swap_when_a_consumer_started_meanwhile(
    kafka_bootstrap: str, private_redis: str, ns: str, topics: dict[str, int], redis: Redis
) -> None:
    """Scenario: a rebuild starts while no consumer runs; once it has read the topics'
    configs (its progress says so), a member joins the reward consumer's group.
    We expect: the rebuild refuses before the swap, naming that member, and leaves Redis
    as it was (empty: nothing swapped in, the scratch keys removed)."""
    names = TopicNames.with_prefix(ns)
    await asyncio.to_thread(_guard_experiment, kafka_bootstrap, names)
    groups = ProcessorGroups(ns + "reward-consumer", ns + "projector")
    target = ReplayTarget(
        bootstrap=kafka_bootstrap,
        redis_url=private_redis,
        topic_prefix=ns,
        redis_prefix=ns,
        retention=Retention(hour_s=86_400, minute_s=3_600),
        workers=1,
        groups=groups,
    )
    joined: list[Consumer] = []

    def progress(message: str) -> None:
        if "experiments in" in message and not joined:  # the replay has begun
            joined.append(
                _member(kafka_bootstrap, groups.reward_consumer, "late-1", [names.rewards])
            )
            _join(joined)

    try:
        with pytest.raises(ProcessorsRunning) as refused:
            await run_rebuild(target, progress)
    finally:
        for m in joined:
            await asyncio.to_thread(m.close)
    assert joined, "the replay never reported its progress"
    assert [(m.group_id, m.client_id) for m in refused.value.members] == [
        (groups.reward_consumer, "late-1")
    ]
    assert await redis.dbsize() == 0
