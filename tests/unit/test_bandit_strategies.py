"""Strategies: valid choices, honest propensities, random ties, reproducible seeds, learning."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bandit_core.adaptive import observe
from bandit_core.state import ArmStats
from bandit_core.strategies import (
    STRATEGIES,
    EpsilonGreedyParams,
    GlrUcbParams,
    InvalidParamsError,
    Ucb1Params,
    UnknownStrategyError,
    get_strategy,
    make_rng,
    normalize_strategy_name,
    params_for,
    validate_params,
)

pytestmark = pytest.mark.unit

NAMES = sorted(STRATEGIES)
#: The original API's three stationary strategies (adaptive ones are tested in their own module).
CORE = ["epsilon_greedy", "thompson", "ucb1"]


def arms(k: int) -> list[str]:
    return [f"arm-{i}" for i in range(k)]


@st.composite
def arm_stats(draw: st.DrawFn) -> ArmStats:
    pulls = draw(st.integers(0, 10_000))
    frac = draw(st.floats(0.0, 1.0))
    return ArmStats(pulls=pulls, reward_sum=pulls * frac, decisions=pulls)


# --- registry and names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("typedname", "expected"),
    [
        ("thompson", "thompson"),
        ("THOMPSON", "thompson"),
        ("UCB1", "ucb1"),
        ("EPSILON_GREEDY", "epsilon_greedy"),
        ("Epsilon-Greedy", "epsilon_greedy"),
    ],
)
def test_normalize_strategy_name(typedname: str, expected: str) -> None:
    assert normalize_strategy_name(typedname) == expected
    assert get_strategy(typedname).name == expected


def test_core_strategies_registered() -> None:
    assert set(CORE) <= set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        get_strategy("softmax")
    assert isinstance(info.value, ValueError)
    for name in NAMES:
        assert name in str(info.value)


# --- params -------------------------------------------------------------------------


def test_validate_params_keeps_only_typedkeys() -> None:
    assert validate_params("thompson", {}) == {}
    assert validate_params("thompson", None) == {}
    assert validate_params("epsilon_greedy", {"epsilon": 1}) == {"epsilon": 1.0}
    assert validate_params("EPSILON_GREEDY", {"epsilon": 0.2, "seed": 42}) == {
        "epsilon": 0.2,
        "seed": 42,
    }
    assert validate_params("ucb1", {"c": 0}) == {"c": 0.0}
    assert validate_params("thompson", {"prior_alpha": 2, "prior_beta": 0.5}) == {
        "prior_alpha": 2.0,
        "prior_beta": 0.5,
    }


def test_params_for_builds_the_frozen_model_with_its_defaults() -> None:
    typed = params_for("EPSILON_GREEDY", {"epsilon": 1, "seed": 3})
    assert isinstance(typed, EpsilonGreedyParams)
    assert (typed.epsilon, typed.seed) == (1.0, 3)
    assert isinstance(typed.epsilon, float)
    with pytest.raises(ValidationError):
        typed.epsilon = 0.5  # type: ignore[misc]
    # what a config stores: only the given keys, as validate_params returns them
    assert typed.as_given() == validate_params("epsilon_greedy", {"epsilon": 1, "seed": 3})
    assert params_for("epsilon_greedy", None) == params_for("epsilon_greedy", {})
    assert params_for("epsilon_greedy", None).as_given() == {}
    # defaults come from the model, including the ones derived from other constants
    ucb = params_for("ucb1", {})
    assert isinstance(ucb, Ucb1Params)
    assert ucb.c == math.sqrt(2.0)
    glr = params_for("glr_ucb", {})
    assert isinstance(glr, GlrUcbParams)
    assert (glr.c, glr.d, glr.restart_pulls, glr.half_life, glr.alpha) == (
        0.25,
        0.1,
        48,
        1024.0,
        0.01,
    )


@pytest.mark.parametrize(
    ("name", "params", "needles"),
    [
        ("epsilon_greedy", {"foo": 1}, ["strategy_params.foo", "unknown parameter", "epsilon"]),
        ("epsilon_greedy", {"epsilon": 1.5}, ["strategy_params.epsilon", "between 0 and 1", "1.5"]),
        ("epsilon_greedy", {"epsilon": -0.1}, ["strategy_params.epsilon", "between 0 and 1"]),
        ("epsilon_greedy", {"epsilon": "abc"}, ["strategy_params.epsilon", "'abc'"]),
        ("epsilon_greedy", {"epsilon": float("nan")}, ["strategy_params.epsilon"]),
        ("epsilon_greedy", {"epsilon": True}, ["strategy_params.epsilon"]),
        ("thompson", {"seed": -1}, ["strategy_params.seed", "0 <= seed", "-1"]),
        ("thompson", {"seed": 2**63}, ["strategy_params.seed"]),
        ("thompson", {"seed": "42"}, ["strategy_params.seed"]),
        ("thompson", {"seed": 1.5}, ["strategy_params.seed"]),
        ("thompson", {"epsilon": 0.1}, ["strategy_params.epsilon", "unknown parameter"]),
        ("thompson", {"prior_alpha": 0}, ["strategy_params.prior_alpha", "> 0"]),
        ("ucb1", {"c": -1}, ["strategy_params.c", ">= 0"]),
    ],
)
def test_invalid_params_name_the_field(
    name: str, params: dict[str, object], needles: list[str]
) -> None:
    with pytest.raises(InvalidParamsError) as info:
        validate_params(name, params)
    message = str(info.value)
    for needle in needles:
        assert needle in message
    assert info.value.errors
    with pytest.raises(InvalidParamsError) as typed:
        params_for(name, params)
    assert typed.value.errors == info.value.errors


def test_params_not_an_object() -> None:
    with pytest.raises(InvalidParamsError, match="strategy_params: must be an object"):
        validate_params("ucb1", [1, 2])  # type: ignore[arg-type]


def test_params_error_message_example() -> None:
    with pytest.raises(InvalidParamsError) as info:
        validate_params("epsilon_greedy", {"foo": 1})
    assert str(info.value) == (
        "strategy_params.foo: unknown parameter for epsilon_greedy (allowed: epsilon, seed)"
    )


# --- the interface: valid picks and propensities ------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    stats=st.lists(arm_stats(), min_size=1, max_size=40),
    seed=st.integers(0, 2**32),
    epsilon=st.floats(0.0, 1.0),
)
def test_choice_in_range_and_propensities_sum_to_one(
    name: str, stats: list[ArmStats], seed: int, epsilon: float
) -> None:
    strategy = get_strategy(name)
    params = params_for(name, {"epsilon": epsilon} if name == "epsilon_greedy" else {})
    rng = random.Random(seed)
    ids = arms(len(stats))
    for _ in range(3):
        index = strategy.choose(ids, stats, params, rng, 0.0)
        assert 0 <= index < len(ids)
    probs = strategy.propensities(ids, stats, params, rng, 0.0, samples=200)
    assert len(probs) == len(ids)
    assert abs(sum(probs) - 1.0) < 1e-9
    assert all(0.0 <= p <= 1.0 for p in probs)
    index, p = strategy.choose_with_propensity(ids, stats, params, rng, 0.0)
    assert 0 <= index < len(ids)
    assert 0.0 < p <= 1.0
    if name == "thompson":
        assert all(p > 0.0 for p in probs)


def test_empty_or_misaligned_arms_is_a_bug() -> None:
    for name in NAMES:
        with pytest.raises(ValueError):
            get_strategy(name).choose([], [], params_for(name, {}), random.Random(1), 0.0)
        with pytest.raises(ValueError):
            get_strategy(name).choose(["a"], [], params_for(name, {}), random.Random(1), 0.0)


def chi_square_uniform(counts: Counter[int], k: int, n: int) -> float:
    expected = n / k
    return sum((counts.get(i, 0) - expected) ** 2 / expected for i in range(k))


def test_epsilon_greedy_ties_spread_over_tied_arms() -> None:
    strategy = get_strategy("epsilon_greedy")
    # arms 0, 2, 3 tie on the best mean; arm 1 is worse.
    stats = [ArmStats(10, 5.0), ArmStats(10, 1.0), ArmStats(10, 5.0), ArmStats(20, 10.0)]
    params = params_for("epsilon_greedy", {"epsilon": 0.0})
    rng = make_rng(7)
    n = 3000
    counts = Counter(strategy.choose(arms(4), stats, params, rng, 0.0) for _ in range(n))
    assert counts[1] == 0
    tied = Counter({0: counts[0], 1: counts[2], 2: counts[3]})
    assert chi_square_uniform(tied, 3, n) < 13.8  # chi2(df=2) at p=0.001
    probs = strategy.propensities(arms(4), stats, params, rng, 0.0)
    assert probs == pytest.approx([1 / 3, 0.0, 1 / 3, 1 / 3])


def test_epsilon_greedy_propensity_closed_form() -> None:
    strategy = get_strategy("epsilon_greedy")
    stats = [ArmStats(10, 5.0), ArmStats(10, 1.0), ArmStats(10, 5.0)]
    params = params_for("epsilon_greedy", {"epsilon": 0.3})
    probs = strategy.propensities(arms(3), stats, params, random.Random(1), 0.0)
    assert probs == pytest.approx([0.1 + 0.35, 0.1, 0.1 + 0.35])
    # and the empirical frequencies agree with it
    rng = random.Random(3)
    n = 6000
    counts = Counter(strategy.choose(arms(3), stats, params, rng, 0.0) for _ in range(n))
    for i in range(3):
        assert abs(counts[i] / n - probs[i]) < 0.03


def test_ucb1_tries_untried_arms_first_at_random() -> None:
    strategy = get_strategy("ucb1")
    defaults = params_for("ucb1", {})
    stats = [ArmStats(100, 90.0), ArmStats(0), ArmStats(5, 5.0), ArmStats(0), ArmStats(0)]
    rng = make_rng(1)
    n = 3000
    counts = Counter(strategy.choose(arms(5), stats, defaults, rng, 0.0) for _ in range(n))
    assert set(counts) == {1, 3, 4}
    tied = Counter({0: counts[1], 1: counts[3], 2: counts[4]})
    assert chi_square_uniform(tied, 3, n) < 13.8
    assert strategy.propensities(arms(5), stats, defaults, rng, 0.0) == pytest.approx(
        [0.0, 1 / 3, 0.0, 1 / 3, 1 / 3]
    )


def test_ucb1_scores_and_ties() -> None:
    strategy = get_strategy("ucb1")
    defaults = params_for("ucb1", {})
    rng = random.Random(5)
    # equal means, the less-pulled arm has the larger bonus
    stats = [ArmStats(100, 50.0), ArmStats(10, 5.0)]
    assert strategy.choose(arms(2), stats, defaults, rng, 0.0) == 1
    assert strategy.propensities(arms(2), stats, defaults, rng, 0.0) == [0.0, 1.0]
    # c = 0 is greedy
    greedy = params_for("ucb1", {"c": 0.0})
    assert strategy.choose(arms(2), stats, greedy, rng, 0.0) in (0, 1)
    assert strategy.propensities(arms(2), stats, greedy, rng, 0.0) == [0.5, 0.5]
    same = [ArmStats(10, 3.0)] * 3
    counts = Counter(strategy.choose(arms(3), same, defaults, rng, 0.0) for _ in range(300))
    assert set(counts) == {0, 1, 2}


def test_seeded_thompson_spreads_over_untouched_arms() -> None:
    """The original project's bug: a re-seeded generator served the same arm on every request."""
    strategy = get_strategy("thompson")
    params = params_for("thompson", {"seed": 42})
    rng = make_rng(params.seed)
    stats = [ArmStats(), ArmStats(), ArmStats()]
    counts = Counter(strategy.choose(arms(3), stats, params, rng, 0.0) for _ in range(200))
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 30


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [3, 40])
def test_same_seed_same_sequence(name: str, k: int) -> None:
    strategy = get_strategy(name)
    defaults = params_for(name, {})
    stats = [ArmStats(i + 1, (i + 1) * 0.3) for i in range(k)]
    stats[0] = ArmStats(0)

    def run(seed: int) -> list[tuple[int, float]]:
        rng = make_rng(seed)
        return [
            strategy.choose_with_propensity(arms(k), stats, defaults, rng, 0.0) for _ in range(50)
        ]

    assert run(11) == run(11)
    if name == "thompson":
        assert run(11) != run(12)


def test_unseeded_rngs_differ() -> None:
    a, b = make_rng(None), make_rng(None)
    assert [a.random() for _ in range(4)] != [b.random() for _ in range(4)]


def test_thompson_propensity_estimate() -> None:
    strategy = get_strategy("thompson")
    defaults = params_for("thompson", {})
    rng = random.Random(9)
    fresh = [ArmStats()] * 4
    assert strategy.propensities(arms(4), fresh, defaults, rng, 0.0) == [0.25] * 4
    assert strategy.choose_with_propensity(arms(4), fresh, defaults, rng, 0.0)[1] == 0.25
    # clearly separated arms: the floor keeps the loser positive but tiny
    stats = [ArmStats(1000, 100.0), ArmStats(1000, 500.0)]
    probs = strategy.propensities(arms(2), stats, defaults, rng, 0.0, samples=1000)
    assert 0.0 < probs[0] < 0.001
    assert probs[1] > 0.999
    # symmetric pair with different history: close to 1/2, matching choose()
    stats = [ArmStats(10, 5.0), ArmStats(30, 15.0)]
    probs = strategy.propensities(arms(2), stats, defaults, rng, 0.0, samples=4000)
    assert probs[0] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError):
        strategy.propensities(arms(2), stats, defaults, rng, 0.0, samples=0)


def test_thompson_many_arms_uses_vectorised_path() -> None:
    strategy = get_strategy("thompson")
    defaults = params_for("thompson", {})
    k = 100
    stats = [ArmStats(100, 5.0) for _ in range(k)]
    stats[37] = ArmStats(100, 60.0)
    rng = random.Random(4)
    picks = Counter(strategy.choose(arms(k), stats, defaults, rng, 0.0) for _ in range(50))
    assert picks == Counter({37: 50})
    index, p = strategy.choose_with_propensity(arms(k), stats, defaults, rng, 0.0)
    assert index == 37
    assert p > 0.99


def test_thompson_fractional_rewards_and_priors() -> None:
    strategy = get_strategy("thompson")
    defaults = params_for("thompson", {})
    rng = random.Random(2)
    # a strong prior towards success makes an untried arm beat a tried mediocre one
    stats = [ArmStats(), ArmStats(200, 60.0)]
    params = params_for("thompson", {"prior_alpha": 50.0, "prior_beta": 1.0})
    picks = Counter(strategy.choose(arms(2), stats, params, rng, 0.0) for _ in range(100))
    assert picks[0] > 95
    # float noise pushing reward_sum above pulls must not crash betavariate
    odd = [ArmStats(3, 3.0000000001), ArmStats(3, 0.0)]
    assert strategy.choose(arms(2), odd, defaults, rng, 0.0) in (0, 1)


# --- learning sanity ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_learns_the_better_arm(name: str) -> None:
    strategy = get_strategy(name)
    rates = [0.05, 0.20]
    env = random.Random(1234)
    rng = make_rng(99)
    stats = [ArmStats(), ArmStats()]
    ids = arms(2)
    params = params_for(name, {"epsilon": 0.1} if name == "epsilon_greedy" else {})
    steps = 5000
    late = 0
    for t in range(steps):
        i = strategy.choose(ids, stats, params, rng, float(t))
        reward = 1.0 if env.random() < rates[i] else 0.0
        observe(stats[i], reward, float(t))  # the fold's own update
        if t >= steps - 1000 and i == 1:
            late += 1
    assert late >= 800, f"{name}: {late} of the last 1000 choices went to the better arm"


@pytest.mark.parametrize("name", ["epsilon_greedy", "ucb1"])
def test_closed_form_choose_with_propensity_matches_propensities(name: str) -> None:
    strategy = get_strategy(name)
    defaults = params_for(name, {})
    stats = [ArmStats(10, 5.0), ArmStats(10, 1.0), ArmStats(10, 5.0), ArmStats(3, 0.0)]
    rng = random.Random(8)
    probs = strategy.propensities(arms(4), stats, defaults, rng, 0.0)
    seen: Counter[int] = Counter()
    for _ in range(2000):
        index, p = strategy.choose_with_propensity(arms(4), stats, defaults, rng, 0.0)
        assert p == pytest.approx(probs[index])
        seen[index] += 1
    for i, p in enumerate(probs):
        assert abs(seen[i] / 2000 - p) < 0.04


def test_thompson_choose_with_propensity_matches_choose_distribution() -> None:
    strategy = get_strategy("thompson")
    defaults = params_for("thompson", {})
    stats = [ArmStats(20, 4.0), ArmStats(20, 6.0), ArmStats(5, 1.0)]
    rng = random.Random(10)
    exact = strategy.propensities(arms(3), stats, defaults, rng, 0.0, samples=20_000)
    n = 3000
    picks = Counter(
        strategy.choose_with_propensity(arms(3), stats, defaults, rng, 0.0)[0] for _ in range(n)
    )
    for i in range(3):
        assert abs(picks[i] / n - exact[i]) < 0.04
    estimates = [
        p
        for i, p in (
            strategy.choose_with_propensity(arms(3), stats, defaults, rng, 0.0) for _ in range(200)
        )
        if i == 1
    ]
    assert sum(estimates) / len(estimates) == pytest.approx(exact[1], abs=0.03)
