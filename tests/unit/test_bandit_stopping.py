"""The stopping rule's numbers: P(best) and expected loss, and confidence sequences that
stay valid under continuous peeking and under a bandit's adaptive sampling."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from bandit_core.stopping import (
    ConfidenceSequence,
    StoppingSummary,
    declared_winner,
    ipw_term,
    stopping_summary,
)

pytestmark = pytest.mark.unit


def test_p_best_and_expected_loss_on_a_hand_made_matrix() -> None:
    draws = [
        [0.10, 0.20, 0.05],
        [0.30, 0.20, 0.05],
        [0.10, 0.40, 0.05],
        [0.10, 0.25, 0.05],
    ]
    s = stopping_summary(draws)
    assert s.p_best == (0.25, 0.75, 0.0)
    assert s.leader == 1
    assert s.draws == 4
    # loss of arm 1: rows' max minus arm 1 = 0, 0.1, 0, 0 -> 0.025
    assert s.expected_loss[1] == pytest.approx(0.025)
    assert s.expected_loss[0] == pytest.approx((0.1 + 0.0 + 0.3 + 0.15) / 4)
    assert s.expected_loss[2] == pytest.approx((0.15 + 0.25 + 0.35 + 0.2) / 4)


def test_a_tie_in_a_draw_counts_once_for_the_first_arm() -> None:
    s = stopping_summary([[1.0, 1.0], [0.5, 1.0]])
    assert s.p_best == (0.5, 0.5)
    assert sum(s.p_best) == 1.0
    assert s.leader == 0  # tied P(best): the lower index


def test_beta_posteriors_of_a_clear_winner_declare_it() -> None:
    rng = np.random.default_rng(7)
    # 2,000 visitors per arm: 10% vs 13% conversion.
    draws = np.column_stack(
        [rng.beta(1 + 200, 1 + 1800, 20_000), rng.beta(1 + 260, 1 + 1740, 20_000)]
    )
    s = stopping_summary(draws)
    assert s.p_best[1] > 0.99
    assert s.expected_loss[1] < 1e-4
    assert declared_winner(s, 0.95, 0.001) == 1
    # the same data with a stricter loss threshold than the posterior allows: no winner
    assert declared_winner(s, 0.95, 0.0) is None


def test_two_equal_arms_declare_nothing() -> None:
    rng = np.random.default_rng(8)
    draws = np.column_stack([rng.beta(101, 901, 20_000), rng.beta(101, 901, 20_000)])
    s = stopping_summary(draws)
    assert 0.4 < s.p_best[0] < 0.6
    assert declared_winner(s, 0.95, 1.0) is None


@pytest.mark.parametrize(
    "bad",
    [[], [[]], [1.0, 2.0], [[1.0, math.nan]], [[math.inf, 0.0]]],
)
def test_bad_draws_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="draws"):
        stopping_summary(bad)  # type: ignore[arg-type]


def test_stop_thresholds_are_checked() -> None:
    s = StoppingSummary((1.0, 0.0), (0.0, 0.5), 0, 10)
    with pytest.raises(ValueError, match="stop_probability"):
        declared_winner(s, 0.4, 0.0)
    with pytest.raises(ValueError, match="stop_expected_loss"):
        declared_winner(s, 0.95, -1.0)
    with pytest.raises(ValueError, match="stop_expected_loss"):
        declared_winner(s, 0.95, math.nan)


def test_ipw_term() -> None:
    assert ipw_term(True, 1.0, 0.25) == 4.0
    assert ipw_term(False, 1.0, 0.25) == 0.0
    with pytest.raises(ValueError, match="propensity"):
        ipw_term(True, 1.0, 0.0)


def _ever_misses(mean: float, xs: list[float]) -> bool:
    cs = ConfidenceSequence(alpha=0.05)
    for x in xs:
        cs.update(x)
        low, high = cs.interval()
        if not low <= mean <= high:
            return True
    return False


def test_confidence_sequence_covers_the_mean_at_every_step_at_once() -> None:
    """Peeking after every observation: over 200 Bernoulli(0.3) streams of 1,500 steps
    the sequence ever misses the mean in at most alpha of them (a fixed seed, so the
    outcome is one computation, not a draw), and it has narrowed by the end."""
    rng = random.Random(11)
    misses = 0
    widths = []
    for _ in range(200):
        xs = [1.0 if rng.random() < 0.3 else 0.0 for _ in range(1500)]
        misses += _ever_misses(0.3, xs)
        cs = ConfidenceSequence(alpha=0.05)
        cs.update_all(xs)
        low, high = cs.interval()
        widths.append(high - low)
    assert misses / 200 <= 0.05
    assert max(widths) < 0.12


def test_a_naive_interval_checked_every_step_misses_far_more_often() -> None:
    """The reason for the sequence: the textbook 95% interval, peeked at after every
    observation, excludes the true mean at some point in most streams."""
    rng = random.Random(12)
    misses = 0
    for _ in range(200):
        total = 0.0
        missed = False
        for t in range(1, 1501):
            total += 1.0 if rng.random() < 0.3 else 0.0
            m = total / t
            half = 1.96 * math.sqrt(max(m * (1 - m), 1e-12) / t)
            if t >= 30 and not m - half <= 0.3 <= m + half:
                missed = True
        misses += missed
    assert misses / 200 > 0.2


def test_inverse_propensity_terms_of_an_adaptive_policy_are_covered() -> None:
    """Under adaptive sampling (a greedy policy with a 20% floor per arm that shifts
    traffic to the arm that looks best), the inverse-propensity terms of every decision
    for arm 0 have conditional mean arm 0's conversion rate, and the sequence over them
    covers it at every step (bound: reward / smallest propensity = 1 / 0.2), narrowing to
    a useful width."""
    rng = random.Random(13)
    rates = (0.3, 0.5)
    floor = 0.2
    misses = 0
    widths = []
    for _ in range(100):
        pulls = [1, 1]
        wins = [0.5, 0.5]
        cs = ConfidenceSequence(alpha=0.05, high=1.0 / floor)
        missed = False
        for _t in range(1500):
            leader = 0 if wins[0] / pulls[0] >= wins[1] / pulls[1] else 1
            probs = [floor, floor]
            probs[leader] = 1.0 - floor
            arm = 0 if rng.random() < probs[0] else 1
            reward = 1.0 if rng.random() < rates[arm] else 0.0
            pulls[arm] += 1
            wins[arm] += reward
            cs.update(ipw_term(arm == 0, reward, probs[0]))
            low, high = cs.interval()
            if not low <= rates[0] <= high:
                missed = True
        misses += missed
        widths.append(high - low)
    assert misses / 100 <= 0.05
    assert max(widths) < 0.35  # informative, though the terms range over [0, 5]


def test_observations_outside_the_bound_and_bad_settings_are_refused() -> None:
    cs = ConfidenceSequence(alpha=0.1, high=2.0)
    assert cs.interval() == (0.0, 2.0)
    cs.update(2.0)
    with pytest.raises(ValueError, match="outside"):
        cs.update(2.5)
    with pytest.raises(ValueError, match="outside"):
        cs.update(-0.1)
    with pytest.raises(ValueError, match="alpha"):
        ConfidenceSequence(alpha=0.0)
    with pytest.raises(ValueError, match="range"):
        ConfidenceSequence(high=math.inf)
    with pytest.raises(ValueError, match="range"):
        ConfidenceSequence(low=1.0, high=1.0)


def test_a_difference_of_two_arms_is_covered_in_a_signed_range() -> None:
    """A guardrail's comparison: arm minus control, each served half the time, the
    difference of their inverse-propensity terms in [-2, 2]; the sequence covers the true
    difference (0.1) at every step and excludes 0 once enough data came in."""
    rng = random.Random(14)
    rates = (0.10, 0.20)  # control, arm
    misses = 0
    excluded_zero = 0
    for _ in range(60):
        cs = ConfidenceSequence(alpha=0.05, low=-2.0, high=2.0)
        missed = False
        for _t in range(6000):
            arm = 1 if rng.random() < 0.5 else 0
            reward = 1.0 if rng.random() < rates[arm] else 0.0
            cs.update(ipw_term(arm == 1, reward, 0.5) - ipw_term(arm == 0, reward, 0.5))
            low, high = cs.interval()
            if not low <= 0.1 <= high:
                missed = True
        misses += missed
        excluded_zero += low > 0.0
    assert misses / 60 <= 0.05
    assert excluded_zero >= 50
