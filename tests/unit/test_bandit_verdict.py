"""When to stop, wired to the strategies and the fold: posterior draws, the verdict, the
derived WinnerDeclared, and the uplift over the holdout."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from bandit_core.adaptive import observe
from bandit_core.decision_ids import holdout_decision_id, make_decision_id
from bandit_core.fold import fold_into
from bandit_core.state import ArmStats, ExperimentState
from bandit_core.stopping import stopping_summary
from bandit_core.strategies import STRATEGIES, get_strategy, params_for
from bandit_core.verdict import (
    BINARY_LOSS,
    CHECK_INTERVAL,
    is_check,
    loss_threshold,
    samples_for,
    verdict,
)
from schemas.events import AnyEvent, ExperimentConfig, ExperimentCreated, RewardObserved
from services.reward_consumer.processor import winner_event
from tests.fixtures.events import config_of

pytestmark = pytest.mark.unit

ARMS = ("a", "b", "c")


def _config(**settings: Any) -> ExperimentConfig:
    return config_of("shop", ARMS, ts=1.0, **settings)


def _rewards(rates: tuple[float, ...], n: int, seed: int, holdout: float = 0.0) -> list[AnyEvent]:
    """``n`` rewards with decision ids, round robin over the arms, Bernoulli(rate); with
    ``holdout``, that share of them are marked holdout decisions of arm 0."""
    rng = random.Random(seed)
    out: list[AnyEvent] = []
    for i in range(n):
        held = rng.random() < holdout
        index = 0 if held else i % len(ARMS)
        did = make_decision_id(index)
        out.append(
            RewardObserved(
                experiment_id="shop",
                arm_id=ARMS[index],
                reward=float(rng.random() < rates[index]),
                decision_id=holdout_decision_id(did) if held else did,
                ts=1000.0 + i,
            )
        )
    return out


@pytest.mark.parametrize(
    "name", ["thompson", "discounted_thompson", "revenue_thompson", "gaussian_thompson"]
)
def test_samplers_draw_their_posterior_and_the_summary_follows_the_data(name: str) -> None:
    """Arm "c" is clearly best on 400 rewards each: every sampler's draws say so."""
    stats = [ArmStats() for _ in ARMS]
    for stat, conversions in zip(stats, (40, 60, 160), strict=True):
        for i in range(400):
            observe(stat, float(i < conversions), 1000.0 + i)
    strategy = get_strategy(name)
    draws = strategy.posterior_draws(stats, params_for(name, {}), random.Random(1), 1400.0, 3000)
    assert draws is not None
    assert draws.shape == (3000, 3)
    summary = stopping_summary(draws)
    assert summary.leader == 2
    assert summary.p_best[2] > 0.99
    assert summary.expected_loss[2] < 0.001 < summary.expected_loss[0]


def test_index_policies_declare_no_posterior() -> None:
    stats = [ArmStats(pulls=10, reward_sum=5.0) for _ in ARMS]
    for name in ("ucb1", "epsilon_greedy"):
        assert name in STRATEGIES
        assert (
            get_strategy(name).posterior_draws(
                stats, params_for(name, {}), random.Random(), 0.0, 10
            )
            is None
        )


def test_beta_draws_are_reproducible_from_the_seed() -> None:
    stats = [ArmStats(pulls=10, reward_sum=3.0) for _ in ARMS]
    strategy, params = get_strategy("thompson"), params_for("thompson", {})
    one = strategy.posterior_draws(stats, params, random.Random("x"), 0.0, 100)
    two = strategy.posterior_draws(stats, params, random.Random("x"), 0.0, 100)
    assert one is not None
    assert two is not None
    assert np.array_equal(one, two)


def test_default_thresholds() -> None:
    assert loss_threshold(_config(), 0.3) == BINARY_LOSS
    assert loss_threshold(_config(stop_expected_loss=0.02), 0.3) == 0.02
    continuous = _config(strategy="revenue_thompson", reward_type="continuous")
    assert loss_threshold(continuous, 50.0) == pytest.approx(0.5)


def _fold_in_chunks(
    events: list[AnyEvent], sizes: list[int], config: ExperimentConfig
) -> tuple[ExperimentState, list[Any]]:
    state = ExperimentState(experiment_id="shop")
    fold_into(state, [ExperimentCreated(experiment_id="shop", config=config, ts=1.0)])
    winners = []
    start = 0
    for size in sizes:
        result = fold_into(state, events[start : start + size])
        if result.winner is not None:
            winners.append(result.winner)
        start += size
    return state, winners


def test_a_clear_winner_is_declared_once_and_replay_declares_it_alike() -> None:
    """Scenario: arm "c" converts at 30%, the others at 5%, 3,000 rewards folded in
    batches of 7 (live) or 1,000 (replay). We expect: one declaration of "c", at a
    multiple of the check interval, identical in both foldings (the same reward count,
    P(best), expected loss), P(best) >= 0.95 and loss <= 0.001; the snapshot keeps it."""
    config = _config()
    events = _rewards((0.05, 0.05, 0.3), 3000, seed=3)
    live, live_winners = _fold_in_chunks(events, [7] * 429, config)
    replayed, replay_winners = _fold_in_chunks(events, [1000] * 3, config)
    assert len(live_winners) == 1
    assert live_winners == replay_winners
    won = live_winners[0]
    assert won.arm_id == "c"
    assert won.rewards % CHECK_INTERVAL == 0
    assert won.p_best >= 0.95
    assert won.expected_loss <= won.threshold == BINARY_LOSS
    assert live.winner == replayed.winner == "c"
    assert ExperimentState.from_snapshot(live.snapshot_bytes(), "shop").winner == "c"
    event = winner_event("shop", won)
    assert event.event_id == "win-shop"
    assert (event.arm_id, event.rewards) == ("c", won.rewards)


def test_no_winner_between_equal_arms() -> None:
    _, winners = _fold_in_chunks(_rewards((0.1, 0.1, 0.1), 1500, seed=4), [500] * 3, _config())
    assert winners == []


def test_the_verdict_of_a_state_reads_the_reference_posterior() -> None:
    config = _config(strategy="ucb1")  # no posterior of its own: the reference is used
    state, _ = _fold_in_chunks(_rewards((0.05, 0.05, 0.3), 600, seed=5), [600], config)
    found = verdict(state, 2000.0, "s")
    assert found is not None
    assert found.strategy == "thompson"
    assert found.arm_ids[found.summary.leader] == "c"


def test_the_fold_splits_holdout_and_bandit_outcomes() -> None:
    """Scenario: holdout 0.3 on arm "a" (5%), the bandit's visitors round robin over
    5%, 5%, 30% (so ~13%). We expect: the uplift's two sides count their marked and
    unmarked rewards, its estimate is the difference of their means, the interval holds
    it and excludes 0 on 6,000 visitors, and the snapshot round-trips it."""
    config = _config(holdout_share=0.3, control_arm_id="a", stop_probability=1.0)
    events = _rewards((0.05, 0.05, 0.3), 6000, seed=6, holdout=0.3)
    state, _ = _fold_in_chunks(events, [6000], config)
    uplift = state.uplift
    assert uplift is not None
    held = [
        e for e in events if isinstance(e, RewardObserved) and (e.decision_id or "").endswith("h")
    ]
    assert uplift.holdout.n == len(held)
    assert uplift.bandit.n == 6000 - len(held)
    holdout_mean = sum(e.reward for e in held) / len(held)
    assert uplift.holdout_mean == pytest.approx(holdout_mean)
    assert uplift.estimate is not None
    low, high = uplift.interval()
    assert 0.0 < low <= uplift.estimate <= high
    again = ExperimentState.from_snapshot(state.snapshot_bytes(), "shop").uplift
    assert again is not None
    assert again.interval() == (low, high)
    plain, _ = _fold_in_chunks(events[:100], [100], _config())
    assert plain.uplift is None


def test_arms_without_rewards_are_not_judged() -> None:
    """Only arm "a" rewarded (always converting): no verdict, no winner; once "b" has
    rewards too, the verdict covers the two (the third, unrewarded, is left out)."""
    config = _config()
    ones: list[AnyEvent] = [
        RewardObserved(experiment_id="shop", arm_id="a", reward=1.0, ts=10.0 + i)
        for i in range(300)
    ]
    state, winners = _fold_in_chunks(ones, [300], config)
    assert winners == []
    assert verdict(state, 400.0, "s") is None
    zeros = [
        RewardObserved(experiment_id="shop", arm_id="b", reward=0.0, ts=400.0 + i)
        for i in range(100)
    ]
    fold_into(state, zeros)
    found = verdict(state, 600.0, "s")
    assert found is not None
    assert found.arm_ids == ("a", "b")
    assert state.winner == "a"


def test_checks_thin_out_as_rewards_accumulate() -> None:
    checks = [n for n in range(1, 200_001) if is_check(n)]
    assert checks[:3] == [100, 200, 300]
    assert 9_900 in checks
    assert 10_100 not in checks
    assert 11_000 in checks
    assert 101_000 not in checks
    assert 110_000 in checks
    assert len(checks) == 99 + 90 + 11


def test_few_draws_per_arm_with_many_arms() -> None:
    assert samples_for(3) == 1000
    assert samples_for(1000) == 250
