"""End to end: the seed document's workflow over HTTP against real processes.

The decider (``python -m services.decider``) and the reward consumer run as subprocesses
against the real Kafka broker and Redis; nothing is faked. Each test talks HTTP only, exactly like a
storefront would.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Services

pytestmark = pytest.mark.e2e

SEED_ARMS = ["lifestyle-photo", "white-background", "in-use-photo"]


async def _wait_stats(
    client: httpx.AsyncClient, exp: str, pred: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the stats until ``pred`` holds (the fold is asynchronous by design)."""
    body: dict[str, Any] = {}
    try:
        async with asyncio.timeout(20):
            while True:
                r = await client.get(f"/experiments/{exp}/stats")
                assert r.status_code == 200, r.text
                body = r.json()
                if pred(body):
                    return body
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"stats never satisfied the condition: {body}") from None


def _pulls_are(arm_id: str, n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda body: bool(_arm(body, arm_id)["pulls"] == n)


def _arm(body: dict[str, Any], arm_id: str) -> dict[str, Any]:
    return next(a for a in body["arms"] if a["arm_id"] == arm_id)


async def test_seed_complete_example_workflow(services: Services) -> None:
    """Scenario: the seed README's "Complete Example Workflow", step by step.
    We expect: every status code and field the seed names, plus our additive ids."""
    exp = f"{services.ns}product-image-test"
    async with httpx.AsyncClient(base_url=services.api_url, timeout=10) as c:
        assert (await c.get("/health")).json() == {"status": "ok"}

        r = await c.post(
            "/experiments",
            json={"experiment_id": exp, "arm_ids": SEED_ARMS, "strategy": "thompson"},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["experiment_id"] == exp
        assert body["arm_ids"] == SEED_ARMS
        assert body["strategy"] == "thompson"
        assert body["strategy_params"] == {}

        r = await c.get("/decision", params={"experiment_id": exp})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["experiment_id"] == exp
        assert d["arm_id"] in SEED_ARMS
        assert d["strategy"] == "thompson"
        assert d["metadata"] == {"arms": SEED_ARMS}
        assert d["decision_id"]
        assert 0 < d["propensity"] <= 1

        r = await c.post(
            "/reward", json={"experiment_id": exp, "arm_id": "lifestyle-photo", "reward": 1.0}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok"
        assert r.json()["experiment_id"] == exp
        assert r.json()["arm_id"] == "lifestyle-photo"
        assert r.json()["strategy"] == "thompson"

        r = await c.post(
            "/reward", json={"experiment_id": exp, "arm_id": "white-background", "reward": 0.0}
        )
        assert r.status_code == 200, r.text

        r = await c.get(f"/experiments/{exp}")
        assert r.status_code == 200
        assert r.json()["arm_ids"] == SEED_ARMS

        r = await c.post(
            f"/experiments/{exp}/arms", json={"arm_ids": ["orange-button", "purple-button"]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["arm_ids"] == [*SEED_ARMS, "orange-button", "purple-button"]

        r = await c.post("/config", json={"experiment_id": exp, "strategy": "ucb1"})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "experiment_id": exp,
            "strategy": "ucb1",
            "strategy_params": {},
            **{
                k: v
                for k, v in r.json().items()
                if k not in {"experiment_id", "strategy", "strategy_params"}
            },
        }

        # The two rewards were folded by the consumer, and survived the hot-swap.
        stats = await _wait_stats(c, exp, lambda b: sum(a["pulls"] for a in b["arms"]) == 2)
        assert _arm(stats, "lifestyle-photo")["reward_sum"] == 1.0
        assert _arm(stats, "white-background")["pulls"] == 1
        assert stats["strategy"] == "ucb1"

        # Seed error statuses.
        assert (await c.get("/experiments/nope-does-not-exist")).status_code == 404
        assert (await c.get("/decision", params={"experiment_id": "nope-x"})).status_code == 404
        r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
        assert r.status_code == 409


async def test_reward_lag_is_bounded(services: Services) -> None:
    """Scenario: N rewards posted one after another; after each, poll the stats.
    We expect: stats reflect exactly N, and we report the fold lag p50/p99."""
    exp = f"{services.ns}lag"
    n = 200
    async with httpx.AsyncClient(base_url=services.api_url, timeout=10) as c:
        r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
        assert r.status_code == 201
        lags: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = await c.post("/reward", json={"experiment_id": exp, "arm_id": "a", "reward": 1})
            assert r.status_code == 200
            await _wait_stats(c, exp, _pulls_are("a", i + 1))
            lags.append(time.perf_counter() - t0)
        final = await _wait_stats(c, exp, lambda b: _arm(b, "a")["pulls"] == n)
        assert _arm(final, "a")["reward_sum"] == n
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
    async with httpx.AsyncClient(
        base_url=services.api_url, timeout=10, limits=httpx.Limits(max_connections=32)
    ) as c:
        r = await c.post(
            "/experiments",
            json={"experiment_id": exp, "arm_ids": ["low", "high"], "strategy": strategy},
        )
        assert r.status_code == 201, r.text
        counter = iter(range(total))

        async def visitor() -> None:
            for _ in counter:
                d = (await c.get("/decision", params={"experiment_id": exp})).json()
                served.append(d["arm_id"])
                reward = 1.0 if rng.random() < rates[d["arm_id"]] else 0.0
                r = await c.post(
                    "/reward",
                    json={
                        "experiment_id": exp,
                        "arm_id": d["arm_id"],
                        "reward": reward,
                        "decision_id": d["decision_id"],
                    },
                )
                assert r.status_code == 200, r.text

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
    async with httpx.AsyncClient(base_url=services.api_url, timeout=10) as c:
        r = await c.post(
            "/experiments",
            json={
                "experiment_id": exp,
                "arm_ids": ["x", "y", "z"],
                "strategy": "thompson",
                "strategy_params": {"seed": 42},
            },
        )
        assert r.status_code == 201
        arms = [
            (await c.get("/decision", params={"experiment_id": exp})).json()["arm_id"]
            for _ in range(200)
        ]
        assert set(arms) == {"x", "y", "z"}
        for arm, reward in [("x", 1.0), ("x", 0.0), ("y", 1.0)]:
            r = await c.post(
                "/reward", json={"experiment_id": exp, "arm_id": arm, "reward": reward}
            )
            assert r.status_code == 200
        before = await _wait_stats(c, exp, lambda b: sum(a["pulls"] for a in b["arms"]) == 3)
        r = await c.post("/config", json={"experiment_id": exp, "strategy": "ucb1"})
        assert r.status_code == 200
        after = (await c.get(f"/experiments/{exp}/stats")).json()
        for arm in ("x", "y", "z"):
            assert _arm(after, arm)["pulls"] == _arm(before, arm)["pulls"]
            assert _arm(after, arm)["mean"] == _arm(before, arm)["mean"]
        assert after["strategy"] == "ucb1"
