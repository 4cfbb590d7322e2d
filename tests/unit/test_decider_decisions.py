"""The per-request policy's traffic floor (``min_arm_share``): every arm is served at
least ``f`` of the time and each decision logs the probability it was served with."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from bandit_core.state import ArmStats, ExperimentState
from schemas.events import ExperimentConfig
from services.decider.decisions import MIN_PROPENSITY, DecisionCache
from tests.fixtures.decisions import offline_cache

pytestmark = pytest.mark.unit

ARMS = ("a", "b", "c", "d")
#: The epsilon-greedy leader is "a": p = (1 - eps) + eps / k for it, eps / k for the rest.
STATS = [
    ArmStats(pulls=100, reward_sum=40.0, decisions=100),
    ArmStats(pulls=100, reward_sum=20.0, decisions=100),
    ArmStats(pulls=100, reward_sum=10.0, decisions=100),
    ArmStats(pulls=100, reward_sum=1.0, decisions=100),
]


def _cache() -> DecisionCache:
    return offline_cache(20_000)


def _config(strategy: str, floor: float, params: dict[str, float]) -> bytes:
    return (
        ExperimentConfig(
            experiment_id="shop",
            arm_ids=ARMS,
            strategy=strategy,
            strategy_params=params,
            version=1,
            created_ts=1.0,
            updated_ts=1.0,
            min_arm_share=floor,
        )
        .model_dump_json()
        .encode()
    )


def _snapshot() -> bytes:
    state = ExperimentState.from_snapshot(None, "shop")
    for arm, stats in zip(ARMS, STATS, strict=True):
        state.arms[arm] = stats
    state.version = 1
    return state.snapshot_bytes()


@pytest.mark.parametrize(
    ("strategy", "params"),
    [("epsilon_greedy", {"epsilon": 0.1, "seed": 7}), ("thompson", {"seed": 7})],
)
def test_floor_shares_and_logged_propensities(strategy: str, params: dict[str, float]) -> None:
    """Scenario: 4 arms, one clearly leading, ``min_arm_share`` 0.1, 40,000 decisions.
    We expect: each arm's empirical share is ``f + (1 - k f) p_i`` within 4.5 standard
    errors (so the worst arms get at least ~0.1 although the strategy alone gives them
    almost nothing), and every decision of an arm logs exactly that probability."""
    cache = _cache()
    floor = 0.1
    entry = cache._build("shop", _config(strategy, floor, params), _snapshot(), None)
    raw = entry.propensities
    expected = [floor + (1 - len(ARMS) * floor) * p for p in raw]
    assert sum(expected) == pytest.approx(1.0)
    assert raw[3] < 0.05  # without the floor the worst arm is nearly never served
    n = 40_000
    served: Counter[int] = Counter()
    logged: defaultdict[int, set[float]] = defaultdict(set)
    for _ in range(n):
        index, propensity = cache.decide(entry, 0.0)
        served[index] += 1
        logged[index].add(propensity)
    for i, want in enumerate(expected):
        se = (want * (1 - want) / n) ** 0.5
        assert abs(served[i] / n - want) < 4.5 * se, (i, served, expected)
        assert len(logged[i]) == 1
        assert logged[i].pop() == pytest.approx(max(want, MIN_PROPENSITY))
        assert served[i] / n >= floor - 4.5 * se


def test_without_floor_the_strategy_alone_decides() -> None:
    """``min_arm_share`` 0: no exploration draw, the logged propensities are the
    strategy's own (the floor costs nothing and changes nothing)."""
    cache = _cache()
    entry = cache._build(
        "shop", _config("epsilon_greedy", 0.0, {"epsilon": 0.1, "seed": 3}), _snapshot(), None
    )
    assert entry.explore == 0.0
    assert entry.logged == [max(p, MIN_PROPENSITY) for p in entry.propensities]
    assert entry.logged == pytest.approx([0.925, 0.025, 0.025, 0.025])


def test_a_floor_filling_every_share_is_uniform() -> None:
    """``k f == 1``: the floor leaves the strategy nothing; every arm is 1/k."""
    cache = _cache()
    entry = cache._build(
        "shop", _config("epsilon_greedy", 0.25, {"epsilon": 0.1}), _snapshot(), None
    )
    assert entry.explore == 1.0
    assert entry.logged == pytest.approx([0.25] * 4)
    shares = Counter(cache.decide(entry, 0.0)[0] for _ in range(8000))
    assert all(abs(shares[i] / 8000 - 0.25) < 0.025 for i in range(4))
