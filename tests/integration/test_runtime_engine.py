"""The engine with both processors, over both state stores: one suite, two backends.

Hand-made records, no broker: each test runs here on the real Redis, whose Lua scripts
make the checks, and on the memory store in tests/unit/test_runtime_engine.py, so the
memory store is held to Redis's semantics and every engine guarantee is shown on both:
exactly-once under redelivery and any batch split, the offset guard against a zombie,
the dedupe guard and its horizon, nothing written for an unknown experiment, dead
letters before the write, change points handed over after it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from bandit_core.fold import DEDUPE_HORIZON_S, fold_batch
from bandit_core.state import ExperimentState
from schemas.codec import encode
from schemas.events import ChangePointDetected, ExperimentConfig, RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.projector.projection import project
from stream_runtime.batch import Rejected, decode_batch
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.state_store import Write
from tests.fixtures.engines import RETENTION, Stores, fold_engine, projection_engine
from tests.fixtures.workload import configs_for, workload

pytestmark = pytest.mark.integration

EXPS = ("shop-a", "shop-b")


def records(ns: str, n: int) -> list[KafkaRecord]:
    """The mixed workload (decisions, minimal and joined rewards, retries, second
    rewards) at consecutive offsets of partition 0 of each topic."""
    names = TopicNames.with_prefix(ns)
    offsets: dict[str, int] = {}
    now_ms = int(time.time() * 1000)
    out = []
    for o in workload(names, EXPS, n):
        offset = offsets.get(o.topic, 0)
        offsets[o.topic] = offset + 1
        out.append(KafkaRecord(o.topic, 0, offset, now_ms + offset, o.value, o.key.encode()))
    return out


async def configure(stores: Stores, ns: str) -> dict[str, ExperimentConfig]:
    configs = configs_for(EXPS)
    for exp, config in configs.items():
        await stores.put(RedisKeys(ns).experiment(exp).config, config.model_dump_json())
    return configs


async def snapshot(stores: Stores, ns: str, exp: str) -> ExperimentState:
    return ExperimentState.from_snapshot(
        await stores.get(RedisKeys(ns).experiment(exp).snapshot), exp
    )


@pytest.mark.parametrize("batch", [1, 37, 500, 5000])
async def test_the_fold_is_the_pure_fold_under_any_batch_split(
    stores: Stores, ns: str, batch: int
) -> None:
    """Scenario: 1,500 records folded by the engine in batches of ``batch``.
    We expect: each experiment's snapshot is the pure fold of its events, once; a second
    engine (another consumer, cache cold) given everything again applies nothing."""
    configs = await configure(stores, ns)
    recs = records(ns, 1500)
    engine = fold_engine(stores.store(), ns)
    for lo in range(0, len(recs), batch):
        await engine.handle(recs[lo : lo + batch])
    names = TopicNames.with_prefix(ns)
    events = decode_batch(recs, engine.processor.decoders).groups
    for exp, config in configs.items():
        want = fold_batch(ExperimentState(exp, config=config), events[exp].events).state
        got = await snapshot(stores, ns, exp)
        assert (got.arms, got.version, got.duplicates) == (want.arms, want.version, want.duplicates)
    again = await fold_engine(stores.store(), ns).handle(recs)
    assert (again.applied, again.duplicates, again.redelivered) == (0, 0, len(recs))
    offsets = await stores.hash(RedisKeys(ns).experiment(EXPS[0]).offsets)
    assert set(offsets) <= {f"{names.rewards}:0", f"{names.decisions}:0"}


@pytest.mark.parametrize("batch", [1, 250, 5000])
async def test_the_buckets_are_the_pure_projection_under_any_batch_split(
    stores: Stores, ns: str, batch: int
) -> None:
    """Scenario: the same records projected in batches of ``batch``.
    We expect: every bucket holds what one projection of all the events gives, and a
    redelivery of everything changes nothing."""
    configs = await configure(stores, ns)
    recs = records(ns, 1500)
    engine = projection_engine(stores.store(), ns)
    now = time.time()
    for lo in range(0, len(recs), batch):
        await engine.handle(recs[lo : lo + batch], now)
    events = decode_batch(recs, engine.processor.decoders).groups
    for exp, config in configs.items():
        want = project(events[exp].events, config, set(), RETENTION, now)
        keys = RedisKeys(ns).experiment(exp)
        for (kind, start), fields in want.buckets.items():
            assert await stores.hash(keys.bucket(kind, start)) == dict(fields)
    again = await projection_engine(stores.store(), ns).handle(recs, now)
    assert (again.applied, again.redelivered) == (0, len(recs))


async def test_zombie_write_conflicts_and_reloads(stores: Stores, ns: str) -> None:
    """Scenario: a consumer (the zombie) read an experiment, then the partition's new owner
    applied a longer stretch of the same partition before the zombie wrote.
    We expect: the zombie's compare-and-set fails, it reloads, finds its records applied,
    and the snapshot holds every record exactly once."""
    names = TopicNames.with_prefix(ns)
    exp = EXPS[0]
    await configure(stores, ns)
    body = orjson.dumps({"experiment_id": exp, "arm_id": "a", "reward": 1})
    recs = [KafkaRecord(names.rewards, 0, i, 1_700_000_000_000, body) for i in range(15)]
    owner = fold_engine(stores.store(), ns)
    zombie = fold_engine(stores.store(), ns)
    real_write = zombie.store.write
    calls = 0

    async def racing_write(writes: Sequence[Write], now: float) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await owner.handle(recs)  # the new owner gets in between read and write
        return await real_write(writes, now)

    zombie.store.write = racing_write  # type: ignore[method-assign]
    report = await zombie.handle(recs[:10])
    assert report.conflicts == 1
    assert report.applied == 0
    assert report.redelivered == 10
    got = await snapshot(stores, ns, exp)
    assert got.arms["a"].pulls == 15
    assert got.version == 15


async def test_the_dedupe_guard_keeps_keys_for_the_horizon_of_event_time(
    stores: Stores, ns: str
) -> None:
    """Scenario: a reward, its producer retry (same event id) in a later batch, then a
    batch eight days later in event time, then the retry once more.
    We expect: the retry is a duplicate while its key is kept (with its event time);
    the later batch forgets keys older than seven days before its newest event, so the
    last retry is applied again (the documented bound)."""
    names = TopicNames.with_prefix(ns)
    exp = EXPS[0]
    await configure(stores, ns)
    seen = RedisKeys(ns).experiment(exp).seen
    t0 = time.time() - 10 * 86400

    def reward(offset: int, event_id: str, ts: float) -> KafkaRecord:
        ev = RewardObserved(experiment_id=exp, arm_id="a", reward=1.0, event_id=event_id, ts=ts)
        return KafkaRecord(names.rewards, 0, offset, 0, encode(ev))

    engine = fold_engine(stores.store(), ns)
    await engine.handle([reward(0, "once", t0)])
    assert await stores.zset(seen) == {"e:once": t0}
    dup = await engine.handle([reward(1, "once", t0)])
    assert (dup.applied, dup.duplicates) == (0, 1)
    later = t0 + 8 * 86400
    await engine.handle([reward(2, "later", later)])
    assert await stores.zset(seen) == {"e:later": later}
    assert later - t0 > DEDUPE_HORIZON_S
    again = await engine.handle([reward(3, "once", t0)])
    assert (again.applied, again.duplicates) == (1, 0)


async def test_an_unknown_experiment_writes_nothing(stores: Stores, ns: str) -> None:
    """Scenario: records of an experiment without a config key reach both processors,
    twice (redelivered).
    We expect: both skip them as ``unknown_experiment`` each time and no key of that
    experiment exists afterwards (a flood of made-up ids creates nothing)."""
    names = TopicNames.with_prefix(ns)
    body = orjson.dumps({"experiment_id": "ghost", "arm_id": "a", "reward": 1})
    recs = [KafkaRecord(names.rewards, 0, i, 0, body) for i in range(3)]
    dead: list[Rejected] = []

    async def sink(rejects: Sequence[Rejected]) -> None:
        dead.extend(rejects)

    for _ in range(2):
        folded = await fold_engine(stores.store(), ns, sink).handle(recs)
        projected = await projection_engine(stores.store(), ns).handle(recs)
        assert folded.rejected == projected.rejected == {"unknown_experiment": 3}
    assert [r.record.offset for r in dead] == [0, 1, 2, 0, 1, 2]
    assert await stores.names(ns) == set()


async def test_dead_letters_before_the_write_and_change_points_after_it(
    stores: Stores, ns: str
) -> None:
    """Scenario: one arm converts every time, then never; a bad record and a reward for an
    unknown arm are mixed in.
    We expect: the rejects reach the dead-letter sink before the write that stores the
    offsets past them; the detector's change points reach the output sink after every
    write of the batch landed, with deterministic ids."""
    names = TopicNames.with_prefix(ns)
    exp = EXPS[0]
    await configure(stores, ns)
    steps: list[str] = []
    points: list[ChangePointDetected] = []

    async def sink(rejects: Sequence[Rejected]) -> None:
        steps.append("dlq:" + ",".join(sorted(r.reason for r in rejects)))

    async def outputs(events: Sequence[Any]) -> None:
        steps.append("outputs")
        points.extend(events)

    store = stores.store()
    real_write = store.write

    async def write(writes: Sequence[Write], now: float) -> list[str]:
        steps.append(f"write:{len(writes)}")
        return await real_write(writes, now)

    store.write = write  # type: ignore[method-assign]
    t0 = time.time() - 3600
    events: list[bytes] = []
    for i in range(600):
        r = 1.0 if i < 300 else 0.0
        events.append(encode(RewardObserved(experiment_id=exp, arm_id="a", reward=r, ts=t0 + i)))
    events.insert(100, b"{oops")
    events.insert(200, orjson.dumps({"experiment_id": exp, "arm_id": "zz", "reward": 1}))
    recs = [KafkaRecord(names.rewards, 0, i, 0, raw) for i, raw in enumerate(events)]
    report = await fold_engine(store, ns, sink, outputs).handle(recs)
    assert steps == ["dlq:bad_json", "dlq:unknown_arm", "write:1", "outputs"]
    assert report.change_points == len(points) >= 1
    assert points[0].event_id == f"cp-{exp}-a-1"
