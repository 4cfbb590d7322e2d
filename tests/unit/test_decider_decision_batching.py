"""Pre-drawn Thompson choices, pooled random ids and lock-free request metrics: the
decision hot path's shortcuts serve the same policy, ids and exposition as before."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections import Counter

import pytest
from prometheus_client import generate_latest

from bandit_core.rng import make_rng
from bandit_core.state import ArmStats, ExperimentState
from bandit_core.strategies import EpsilonGreedyParams, get_strategy, params_for
from schemas.events import ExperimentConfig
from schemas.ids import random_hex
from services.decider.decisions import OFF_LOOP_DRAWS, REFRESH_TIME_SHARE, DecisionCache
from services.decider.metrics import DeciderMetrics
from tests.fixtures.decisions import offline_cache

pytestmark = pytest.mark.unit

ARMS = ["a", "b", "c"]
#: Clearly different posteriors: Beta(31, 71), Beta(21, 81), Beta(2, 100).
STATS = [
    ArmStats(pulls=100, reward_sum=30.0, decisions=100),
    ArmStats(pulls=100, reward_sum=20.0, decisions=100),
    ArmStats(pulls=100, reward_sum=1.0, decisions=100),
]


def test_thompson_batch_has_the_per_request_choice_distribution() -> None:
    """20,000 choices drawn in batches of 500 and 20,000 drawn one by one agree with each
    other and with the Monte Carlo propensities within sampling error."""
    thompson = get_strategy("thompson")
    defaults = params_for("thompson", {})
    n = 20_000
    batched: Counter[int] = Counter()
    rng = random.Random(1)
    for _ in range(n // 500):
        batch = thompson.choose_batch(ARMS, STATS, defaults, rng, 0.0, 500)
        assert batch is not None
        assert len(batch) == 500
        batched.update(batch)
    one_rng = random.Random(2)
    single = Counter(thompson.choose(ARMS, STATS, defaults, one_rng, 0.0) for _ in range(n))
    props = thompson.propensities(ARMS, STATS, defaults, random.Random(3), 0.0, samples=50_000)
    for i in range(len(ARMS)):
        # 4 standard errors of a proportion near 0.5 over 20,000 draws: ~0.014
        assert abs(batched[i] / n - props[i]) < 0.02, (i, batched, props)
        assert abs(batched[i] / n - single[i] / n) < 0.025, (i, batched, single)
    assert batched[2] < n * 0.01  # the clearly worst arm is almost never served


def test_seeded_batches_are_reproducible_and_not_frozen() -> None:
    thompson = get_strategy("thompson")
    defaults = params_for("thompson", {})
    uniform = [ArmStats(), ArmStats(), ArmStats()]
    first = thompson.choose_batch(ARMS, uniform, defaults, random.Random(42), 0.0, 300)
    again = thompson.choose_batch(ARMS, uniform, defaults, random.Random(42), 0.0, 300)
    assert first == again
    assert first is not None
    assert set(first) == {0, 1, 2}


def test_strategies_without_batching_say_so() -> None:
    defaults = params_for("ucb1", {})
    assert (
        get_strategy("ucb1").choose_batch(ARMS, STATS, defaults, random.Random(), 0.0, 10) is None
    )


def _cache(max_staleness_s: float = 60.0) -> DecisionCache:
    return offline_cache(200, max_staleness_s)


def _config(strategy: str, arms: list[str] = ARMS, params: dict[str, float] | None = None) -> bytes:
    return (
        ExperimentConfig(
            experiment_id="shop",
            arm_ids=tuple(arms),
            strategy=strategy,
            strategy_params=params or {},
            version=1,
            created_ts=1.0,
            updated_ts=1.0,
        )
        .model_dump_json()
        .encode()
    )


def test_cache_serves_one_pre_drawn_choice_per_decision_and_restarts_on_a_new_snapshot() -> None:
    cache = _cache()
    entry = cache._build("shop", _config("thompson"), None, None)
    rows = DecisionCache._rows(entry)
    assert entry.queued is not None
    assert len(entry.queued) == rows  # the first batch is drawn with the entry
    index, propensity = cache.decide(entry, 0.0)
    assert 0 <= index < 3
    assert propensity == pytest.approx(1 / 3)
    for expected_left in range(rows - 2, rows - 12, -1):
        cache.decide(entry, 0.0)
        assert len(entry.queued) == expected_left
    # A new snapshot is a new entry: its choices come from its own posteriors.
    state = ExperimentState.from_snapshot(None, "shop")
    state.version = 2
    refreshed = cache._build("shop", _config("thompson"), state.snapshot_bytes(), entry)
    assert refreshed is not entry
    assert refreshed.queued is not None
    assert len(refreshed.queued) == rows
    # Outside the service (no event loop) an emptied batch is drawn on demand.
    entry.queued = []
    cache.decide(entry, 0.0)
    assert len(entry.queued) == rows - 1


async def test_pre_drawn_choices_are_refilled_off_the_event_loop() -> None:
    """Scenario: a 1,000-arm Thompson entry serves decisions on the event loop.
    We expect: its first choices come with the entry (built off the loop); once fewer
    than one off-loop batch is left, the next batch is drawn in a worker thread and
    queued behind what is left, so the loop only pops."""
    cache = _cache()
    catalogue = [f"arm-{i}" for i in range(1000)]
    entry = cache._build("shop", _config("thompson", catalogue), None, None)
    batch = OFF_LOOP_DRAWS // 1000
    assert entry.queued is not None
    assert len(entry.queued) == batch
    sampler = entry.sampler
    assert sampler is not None
    calls: list[bool] = []

    def watched(rng: random.Random, n: int) -> list[int]:
        calls.append(threading.current_thread() is threading.main_thread())
        return sampler(rng, n)

    entry.sampler = watched
    served = [cache.decide(entry, 0.0)[0]]
    assert entry.refilling
    async with asyncio.timeout(10):
        while entry.refilling:  # noqa: ASYNC110 - the flag is the cache's own state
            await asyncio.sleep(0.001)
    assert calls == [False]  # drawn once, in a worker thread
    assert len(entry.queued) == 2 * batch - 1
    served += [cache.decide(entry, 0.0)[0] for _ in range(batch)]
    assert all(0 <= i < 1000 for i in served)
    assert True not in calls  # the event loop never drew a batch itself


def test_cache_calls_choose_for_strategies_without_batches() -> None:
    cache = _cache()
    entry = cache._build("shop", _config("ucb1"), None, None)
    served = Counter(cache.decide(entry, 0.0)[0] for _ in range(300))
    assert entry.queued is None
    assert set(served) == {0, 1, 2}  # untried arms tie: random tie-breaks reach all


def test_entries_build_typed_params_once_per_policy() -> None:
    """Scenario: an ε-greedy experiment with a seed is cached, its snapshot refreshed,
    then its params changed.
    We expect: the entry holds the strategy's params model and a generator seeded from
    it; a new snapshot keeps both (the same objects: nothing is re-validated); new
    params build new ones."""
    cache = _cache()
    seeded = _config("epsilon_greedy", params={"epsilon": 0.3, "seed": 5})
    entry = cache._build("shop", seeded, None, None)
    assert entry.params == EpsilonGreedyParams(epsilon=0.3, seed=5)
    assert entry.rng.random() == make_rng(5).random()
    state = ExperimentState.from_snapshot(None, "shop")
    state.version = 2
    refreshed = cache._build("shop", seeded, state.snapshot_bytes(), entry)
    assert refreshed is not entry
    assert refreshed.params is entry.params
    assert refreshed.rng is entry.rng
    changed = cache._build("shop", _config("epsilon_greedy", params={"epsilon": 0.5}), None, entry)
    assert changed.params == EpsilonGreedyParams(epsilon=0.5)
    assert changed.rng is not entry.rng


def test_entries_carry_their_propensities_and_slow_builds_are_refreshed_less_often() -> None:
    """An entry is built with its propensities (in a worker thread, off the event loop);
    one that took long to build (thousands of arms) is re-read less often, so refreshes
    stay under REFRESH_TIME_SHARE of the time, and a quick one keeps the configured bound."""
    cache = _cache(max_staleness_s=0.25)
    entry = cache._build("shop", _config("thompson"), None, None)
    assert entry.propensities == pytest.approx([1 / 3] * 3)
    assert 0 < entry.build_s < 1
    entry.build_s = 0.0001
    assert cache.staleness_s(entry) == 0.25
    entry.build_s = 0.06  # ~1,000 arms: a 60 ms build
    assert cache.staleness_s(entry) == pytest.approx(2 * 0.06 / REFRESH_TIME_SHARE)
    always = _cache(max_staleness_s=0.0)
    entry.build_s = 0.0001
    assert always.staleness_s(entry) == 0.0  # "always re-read" stays so for small builds


def test_random_hex_ids_are_unique_and_not_shared_with_a_forked_child() -> None:
    ids = {random_hex() for _ in range(5_000)}
    assert len(ids) == 5_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    random_hex()  # the pool now holds ids a fork would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        os.write(write, "".join(random_hex() for _ in range(300)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        child = f.read()
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {random_hex() for _ in range(300)}
    assert len(child_ids) == 300
    assert not child_ids & parent_ids


def test_request_metrics_expose_the_histogram_and_counters() -> None:
    metrics = DeciderMetrics()
    for seconds in (0.0004, 0.0005, 0.003, 20.0):
        metrics.request("/decision", "GET", 200, seconds)
    metrics.request("/decision", "GET", 401, 0.0001)
    metrics.decision("thompson")
    metrics.reward("accepted")
    metrics.reward("accepted")
    lines = generate_latest(metrics.registry).decode().splitlines()
    hist = "mab_http_request_duration_seconds"
    assert f'{hist}_bucket{{le="0.0005",method="GET",route="/decision"}} 3.0' in lines
    assert f'{hist}_bucket{{le="0.005",method="GET",route="/decision"}} 4.0' in lines
    assert f'{hist}_bucket{{le="10.0",method="GET",route="/decision"}} 4.0' in lines
    assert f'{hist}_bucket{{le="+Inf",method="GET",route="/decision"}} 5.0' in lines
    assert f'{hist}_count{{method="GET",route="/decision"}} 5.0' in lines
    assert 'mab_http_requests_total{method="GET",route="/decision",status="200"} 4.0' in lines
    assert 'mab_http_requests_total{method="GET",route="/decision",status="401"} 1.0' in lines
    assert 'mab_decisions_total{strategy="thompson"} 1.0' in lines
    assert 'mab_rewards_total{outcome="accepted"} 2.0' in lines
