"""End to end: the original mab-ecommerce-optimizer API's workflow over HTTP against real processes.

The decider (``python -m services.decider``) and the reward consumer run as subprocesses
against the real Kafka broker and Redis; nothing is faked. Each test talks to the API
through the SDK (``mab_client``), exactly like a storefront back end would.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable

import httpx
import pytest

from mab_client import (
    AsyncMabClient,
    ConflictError,
    NotFoundError,
    Stats,
)
from tests.e2e.conftest import Services

pytestmark = pytest.mark.e2e

ORIGINAL_ARMS = ["lifestyle-photo", "white-background", "in-use-photo"]


async def _wait_stats(mab: AsyncMabClient, exp: str, pred: Callable[[Stats], bool]) -> Stats:
    """Poll the stats until ``pred`` holds (the fold is asynchronous by design)."""
    stats: Stats | None = None
    try:
        async with asyncio.timeout(20):
            while True:
                stats = await mab.stats(exp)
                if pred(stats):
                    return stats
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"stats never satisfied the condition: {stats}") from None


def _pulls_are(arm_id: str, n: int) -> Callable[[Stats], bool]:
    return lambda stats: stats.arm(arm_id).pulls == n


async def test_original_api_complete_example_workflow(services: Services) -> None:
    """Scenario: the original project README's "Complete Example Workflow", step by step.
    We expect: every status code and field the original API names, plus our additive ids."""
    exp = f"{services.ns}product-image-test"
    async with AsyncMabClient(services.api_url, timeout=10) as mab:
        assert await mab.health()

        created = await mab.create_experiment(exp, ORIGINAL_ARMS, strategy="thompson")
        assert created.experiment_id == exp
        assert created.arm_ids == ORIGINAL_ARMS
        assert created.strategy == "thompson"
        assert created.strategy_params == {}

        d = await mab.decide(exp)
        assert d.experiment_id == exp
        assert d.arm_id in ORIGINAL_ARMS
        assert d.strategy == "thompson"
        assert d.arms == ORIGINAL_ARMS
        assert d.decision_id
        assert 0 < d.propensity <= 1

        receipt = await mab.reward(exp, "lifestyle-photo", 1.0)
        assert receipt.status == "ok"
        assert receipt.experiment_id == exp
        assert receipt.arm_id == "lifestyle-photo"
        assert receipt.strategy == "thompson"
        await mab.reward(exp, "white-background", 0.0)

        assert (await mab.get_experiment(exp)).arm_ids == ORIGINAL_ARMS

        grown = await mab.add_arms(exp, ["orange-button", "purple-button"])
        assert grown.arm_ids == [*ORIGINAL_ARMS, "orange-button", "purple-button"]

        swapped = await mab.set_strategy(exp, "ucb1")
        assert (swapped.experiment_id, swapped.strategy, swapped.strategy_params) == (
            exp,
            "ucb1",
            {},
        )

        # The two rewards were folded by the consumer, and survived the hot-swap.
        stats = await _wait_stats(mab, exp, lambda s: s.total_pulls == 2)
        assert stats.arm("lifestyle-photo").reward_sum == 1.0
        assert stats.arm("white-background").pulls == 1
        assert stats.strategy == "ucb1"

        # The original API's error statuses.
        with pytest.raises(NotFoundError):
            await mab.get_experiment("nope-does-not-exist")
        with pytest.raises(NotFoundError):
            await mab.decide("nope-x")
        with pytest.raises(ConflictError):
            await mab.create_experiment(exp, ["a", "b"])


async def test_retried_rewards_count_once(services: Services) -> None:
    """Scenario: a storefront resends rewards after a lost answer (same event id, the SDK's
    retry), and resends a decision's reward with a new event id.
    We expect: each reward counts once (event id and decision id dedupe), bulk included."""
    exp = f"{services.ns}retried"
    async with AsyncMabClient(services.api_url, timeout=10) as mab:
        await mab.create_experiment(exp, ["a", "b"])
        first = await mab.reward(exp, "a", 1.0)
        again = await mab.reward(exp, "a", 1.0, event_id=first.event_id)
        assert again.event_id == first.event_id
        d = await mab.decide(exp)
        await mab.reward_for(d, 1.0)
        await mab.reward_for(d, 1.0)  # new event id, same decision: still one reward
        # A last reward on an arm no decision could pick: one experiment's events are
        # folded in order, so once it shows, every duplicate before it was seen.
        await mab.add_arms(exp, ["end"])
        await mab.reward(exp, "end", 0.0)
        stats = await _wait_stats(mab, exp, _pulls_are("end", 1))
        assert stats.arm("a").pulls == 1 + (d.arm_id == "a")
        assert stats.arm("b").pulls == int(d.arm_id == "b")
        assert stats.total_pulls == 3


async def test_reward_lag_is_bounded(services: Services) -> None:
    """Scenario: N rewards posted one after another; after each, poll the stats.
    We expect: stats reflect exactly N, and we report the fold lag p50/p99."""
    exp = f"{services.ns}lag"
    n = 200
    async with AsyncMabClient(services.api_url, timeout=10) as mab:
        await mab.create_experiment(exp, ["a", "b"])
        lags: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            await mab.reward(exp, "a", 1.0)
            await _wait_stats(mab, exp, _pulls_are("a", i + 1))
            lags.append(time.perf_counter() - t0)
        final = await _wait_stats(mab, exp, _pulls_are("a", n))
        assert final.arm("a").reward_sum == n
        lags.sort()
        p50 = statistics.median(lags)
        p99 = lags[int(0.99 * (len(lags) - 1))]
        print(f"\nreward->stats lag, {n} rewards: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
        assert p99 < 5.0


@pytest.mark.timeout(900)  # a learning check, not a speed check: slow machines must pass
@pytest.mark.parametrize("strategy", ["thompson", "ucb1", "epsilon_greedy"])
async def test_learning_end_to_end(services: Services, strategy: str) -> None:
    """Scenario: a simulated storefront with true conversion rates 5% vs 20%.
    We expect: >= 80% of the last 1,000 decisions go to the better arm."""
    exp = f"{services.ns}learn-{strategy.replace('_', '-')}"
    rates = {"low": 0.05, "high": 0.20}
    rng = random.Random(7)
    served: list[str] = []
    total = 3000
    async with AsyncMabClient(
        services.api_url, timeout=10, limits=httpx.Limits(max_connections=32)
    ) as mab:
        await mab.create_experiment(exp, ["low", "high"], strategy=strategy)
        counter = iter(range(total))

        async def visitor() -> None:
            for _ in counter:
                d = await mab.decide(exp)
                served.append(d.arm_id)
                await mab.reward_for(d, 1.0 if rng.random() < rates[d.arm_id] else 0.0)

        # Few visitors: httpx's pool degrades under high client concurrency and only
        # the client would get slower; the learning signal is the same.
        await asyncio.gather(*(visitor() for _ in range(8)))
    last = served[-1000:]
    share = last.count("high") / len(last)
    print(f"\n{strategy}: share of the better arm in the last 1000 decisions = {share:.3f}")
    assert share >= 0.8


async def test_seeded_thompson_spreads_and_hot_swap_keeps_data(services: Services) -> None:
    """Scenario: a seeded Thompson experiment with three untouched arms; then a hot-swap.
    We expect: 200 decisions cover all three arms (no re-seeding per request); after
    thompson -> ucb1 the pulls and means are unchanged."""
    exp = f"{services.ns}seeded"
    async with AsyncMabClient(services.api_url, timeout=10) as mab:
        await mab.create_experiment(exp, ["x", "y", "z"], "thompson", {"seed": 42})
        arms = [(await mab.decide(exp)).arm_id for _ in range(200)]
        assert set(arms) == {"x", "y", "z"}
        for arm, reward in [("x", 1.0), ("x", 0.0), ("y", 1.0)]:
            await mab.reward(exp, arm, reward)
        before = await _wait_stats(mab, exp, lambda s: s.total_pulls == 3)
        await mab.set_strategy(exp, "ucb1")
        after = await mab.stats(exp)
        for arm in ("x", "y", "z"):
            assert after.arm(arm).pulls == before.arm(arm).pulls
            assert after.arm(arm).mean == before.arm(arm).mean
        assert after.strategy == "ucb1"
