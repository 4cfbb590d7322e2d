"""The engine's cache with the reward consumer's fold: it skips the read, never the checks.

Engine-level (hand-made records, no broker), over both state stores (the real Redis
whose Lua scripts make the checks here, the memory store in
tests/unit/test_runtime_engine.py): each scenario makes the cache
stale the way production can (another consumer wrote, a duplicate record, a new arm,
the other topic's partition owned by another consumer) and checks that the fold stays
exactly-once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from bandit_core.state import ExperimentState
from schemas.codec import encode
from schemas.events import ExperimentConfig
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.processor import Loaded
from stream_runtime.state_store import LoadRequest, StateStore, Write
from tests.fixtures.engines import Stores, fold_engine
from tests.fixtures.events import decision_of

pytestmark = pytest.mark.integration

TS_MS = 1_700_000_000_000


class CountingStore:
    """A store, counting read round trips."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.loads = 0

    async def load(self, requests: Mapping[str, LoadRequest]) -> dict[str, Loaded]:
        self.loads += 1
        return await self.store.load(requests)

    async def write(self, writes: Sequence[Write], now: float) -> list[str]:
        return await self.store.write(writes, now)


def config_of(exp: str, arms: Sequence[str] = ("a", "b"), version: int = 1) -> ExperimentConfig:
    return ExperimentConfig(
        experiment_id=exp,
        arm_ids=tuple(arms),
        strategy="thompson",
        version=version,
        created_ts=0,
        updated_ts=time.time(),
    )


def rewards(
    topic: str, exp: str, offsets: range, arm: str = "a", event_id: str | None = None
) -> list[KafkaRecord]:
    body: dict[str, Any] = {"experiment_id": exp, "arm_id": arm, "reward": 1}
    if event_id is not None:
        body["event_id"] = event_id
    return [KafkaRecord(topic, 0, o, TS_MS + o, orjson.dumps(body)) for o in offsets]


async def setup(stores: Stores, ns: str, exp: str) -> tuple[TopicNames, RedisKeys]:
    keys = RedisKeys(ns)
    await stores.put(keys.experiment(exp).config, config_of(exp).model_dump_json())
    return TopicNames.with_prefix(ns), keys


async def pulls(stores: Stores, keys: RedisKeys, exp: str) -> dict[str, int]:
    state = ExperimentState.from_snapshot(await stores.get(keys.experiment(exp).snapshot), exp)
    return {arm: stats.pulls for arm, stats in state.arms.items()}


async def test_steady_state_skips_the_read_and_stores_what_a_read_would(
    stores: Stores, ns: str
) -> None:
    """Scenario: one consumer folds three batches of an experiment, another (cache off)
    the same records into a second namespace.
    We expect: after the first batch no read round trip, and the same snapshot bytes and
    dedupe keys in both namespaces."""
    exp = "shop-c"
    names, keys = await setup(stores, ns, exp)
    other = RedisKeys(ns + "nocache-")
    config = await stores.get(keys.experiment(exp).config)
    assert config is not None
    await stores.put(other.experiment(exp).config, config)
    store = CountingStore(stores.store())
    cached = fold_engine(store, ns)
    plain = fold_engine(stores.store(), ns, cache_bytes=0, keys=other)
    hits = misses = 0
    for i in range(3):
        batch = rewards(names.rewards, exp, range(i * 10, i * 10 + 5))
        batch += rewards(names.rewards, exp, range(i * 10 + 5, i * 10 + 10), arm="b")
        a = await cached.handle(batch)
        b = await plain.handle(batch)
        assert (a.applied, b.applied) == (10, 10)
        hits, misses = hits + a.cache_hits, misses + a.cache_misses
    assert store.loads == 1
    assert (hits, misses) == (2, 0)
    mine, theirs = keys.experiment(exp), other.experiment(exp)
    assert await stores.get(mine.snapshot) == await stores.get(theirs.snapshot)
    assert await stores.zset(mine.seen) == await stores.zset(theirs.seen)
    assert await stores.hash(mine.offsets) == await stores.hash(theirs.offsets)


async def test_another_consumer_wrote_the_experiment(stores: Stores, ns: str) -> None:
    """Scenario: consumer A folded offsets 0-4 (and cached the result); the partition
    moved to B, which folded 0-11; A, a zombie with a stale cache, then polls 5-14.
    We expect: A's cached write is refused, A re-reads, drops 5-11 as applied and
    applies 12-14 once: 15 pulls in all."""
    exp = "shop-z"
    names, keys = await setup(stores, ns, exp)
    a, b = fold_engine(stores.store(), ns), fold_engine(stores.store(), ns)
    await a.handle(rewards(names.rewards, exp, range(5)))
    await b.handle(rewards(names.rewards, exp, range(12)))
    report = await a.handle(rewards(names.rewards, exp, range(5, 15)))
    assert (report.cache_hits, report.cache_misses) == (0, 1)
    assert (report.applied, report.redelivered) == (3, 7)
    assert await pulls(stores, keys, exp) == {"a": 15}
    # The re-read refreshed the cache: A's next batch is folded without a read again.
    report = await a.handle(rewards(names.rewards, exp, range(15, 20)))
    assert (report.cache_hits, report.applied) == (1, 5)
    assert await pulls(stores, keys, exp) == {"a": 20}


async def test_a_duplicate_record_is_caught_by_the_write(stores: Stores, ns: str) -> None:
    """Scenario: a producer retried a reward: the same event id at offset 0 and again at
    offset 3, the second in a batch folded from the cache.
    We expect: the write is refused (the dedupe key exists), the re-read fold counts the
    record once and the other two of the batch once each."""
    exp = "shop-d"
    names, keys = await setup(stores, ns, exp)
    handler = fold_engine(stores.store(), ns)
    await handler.handle(rewards(names.rewards, exp, range(1), event_id="retried"))
    batch = rewards(names.rewards, exp, range(1, 3)) + rewards(
        names.rewards, exp, range(3, 4), event_id="retried"
    )
    report = await handler.handle(batch)
    assert (report.cache_misses, report.applied, report.duplicates) == (1, 2, 1)
    assert await pulls(stores, keys, exp) == {"a": 3}


async def test_an_arm_added_after_the_cache_was_filled(stores: Stores, ns: str) -> None:
    """Scenario: the decider adds arm "c" (a new config key) after the consumer cached
    the experiment; the next batch rewards "c", then one rewards "a" only.
    We expect: the reward for "c" is applied, not dead-lettered as an unknown arm, and a
    batch that does not name "c" is not folded with the old config either."""
    exp = "shop-n"
    names, keys = await setup(stores, ns, exp)
    dead: list[str] = []

    async def sink(rejects: Sequence[Any]) -> None:
        dead.extend(r.reason for r in rejects)

    handler = fold_engine(stores.store(), ns, sink)
    await handler.handle(rewards(names.rewards, exp, range(2)))
    config = config_of(exp, ("a", "b", "c"), version=2)
    await stores.put(keys.experiment(exp).config, config.model_dump_json())
    report = await handler.handle(rewards(names.rewards, exp, range(2, 3), arm="c"))
    assert (report.applied, dead) == (1, [])
    await stores.put(
        keys.experiment(exp).config, config_of(exp, ("a", "b", "c"), 3).model_dump_json()
    )
    report = await handler.handle(rewards(names.rewards, exp, range(3, 4)))
    assert (report.cache_misses, report.applied) == (1, 1)
    assert await pulls(stores, keys, exp) == {"a": 3, "c": 1}


async def test_decisions_and_rewards_folded_by_two_consumers_lose_nothing(
    stores: Stores, ns: str
) -> None:
    """Scenario: during a rebalance the experiment's rewards partition and decisions
    partition belong to different consumers; the decisions consumer reads, the rewards
    consumer writes, then the decisions consumer writes.
    We expect: the second write is refused (the offsets hash changed, even though not in
    the decisions field) and re-folded: the snapshot holds both batches."""
    exp = "shop-x"
    names, keys = await setup(stores, ns, exp)
    decisions = [
        KafkaRecord(
            names.decisions,
            0,
            o,
            TS_MS,
            encode(decision_of(exp, "b", 1)),
        )
        for o in range(4)
    ]
    rewards_owner = fold_engine(stores.store(), ns)
    store = CountingStore(stores.store())
    decisions_owner = fold_engine(store, ns)
    real_write = store.write
    raced = False

    async def racing_write(writes: Sequence[Write], now: float) -> list[str]:
        nonlocal raced
        if not raced:
            raced = True
            await rewards_owner.handle(rewards(names.rewards, exp, range(6)))
        return await real_write(writes, now)

    store.write = racing_write  # type: ignore[method-assign]
    report = await decisions_owner.handle(decisions)
    assert report.conflicts == 1
    state = ExperimentState.from_snapshot(await stores.get(keys.experiment(exp).snapshot), exp)
    assert state.arms["a"].pulls == 6
    assert state.arms["b"].decisions == 4


async def test_the_cache_keeps_to_its_byte_budget(stores: Stores, ns: str) -> None:
    """Scenario: a cache with room for about one experiment; batches of two experiments
    alternate.
    We expect: the least recently written experiment is dropped (its next batch reads
    Redis), the cache never holds more than its budget, and every reward counts once."""
    names, keys = await setup(stores, ns, "one")
    await stores.put(keys.experiment("two").config, config_of("two").model_dump_json())
    store = CountingStore(stores.store())
    probe = fold_engine(stores.store(), ns)
    await probe.handle(rewards(names.rewards, "one", range(1)))
    budget = next(iter(probe._cache.values())).size * 3 // 2
    await stores.delete(
        *(getattr(keys.experiment("one"), k) for k in ("snapshot", "offsets", "seen"))
    )
    handler = fold_engine(store, ns, cache_bytes=budget)
    for i in range(3):
        await handler.handle(rewards(names.rewards, "one", range(i, i + 1)))
        await handler.handle(rewards(names.rewards, "two", range(i, i + 1)))
        assert list(handler._cache) == ["two"]
        assert handler._cached_bytes <= budget
    assert store.loads == 6  # "one" was always evicted by "two" before its next batch
    assert await pulls(stores, keys, "one") == {"a": 3}
    assert await pulls(stores, keys, "two") == {"a": 3}
