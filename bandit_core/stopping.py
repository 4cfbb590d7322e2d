"""When to stop: the posterior's verdict on each arm, and anytime-valid intervals.

Two questions a team asks of a running bandit, answered from two different sources:

* **Which arm is best, and what would stopping now cost?** From the strategy's
  posterior: given a matrix of joint posterior draws of the arms' values (one row per
  draw), :func:`stopping_summary` reports each arm's probability of being the best
  (``P(best)``) and its *expected loss*, ``E[max_j theta_j - theta_a]``: the value per
  visitor that serving arm ``a`` for good would leave on the table, in the objective's
  unit (the "value remaining" of Google's multi-armed bandit experiments, Scott 2015).
  Stopping when the leader's ``P(best) >= stop_probability`` *and* its expected loss
  ``<= stop_expected_loss`` (:func:`declared_winner`) needs both: a high ``P(best)``
  between two nearly equal arms can take forever, a small loss alone says nothing when
  the posterior is still wide.
* **What is each arm's mean, with an error bar that stays valid however often it is
  looked at?** A fixed-sample confidence interval checked after every batch is wrong far
  more often than its level says. :class:`ConfidenceSequence` is the predictable plug-in
  empirical-Bernstein confidence sequence of Waudby-Smith & Ramdas (2023, "Estimating
  means of bounded random variables by betting", JRSS-B, Theorem 2): with probability
  ``1 - alpha`` it covers the mean *at every step at once*. Under a bandit's adaptive
  sampling an arm's rewards are not i.i.d. draws of its mean, but the inverse-propensity
  terms ``1{served a} * reward / propensity`` of *every* decision are, conditionally on
  the past, unbiased for it (:func:`ipw_term`); they are bounded by
  ``reward bound / smallest propensity``, so a traffic floor (``min_arm_share``) is what
  keeps the sequence narrow (Waudby-Smith et al. 2022, "Anytime-valid off-policy
  inference for contextual bandits").

Pure and dependency-light (numpy for the draws), so the fold, replay, the simulator and
the API compute the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

#: The truncation of the betting fraction (``c`` of the paper's Theorem 2; 1/2 or 3/4
#: are its suggestions): a larger one adapts faster to a low variance, a smaller one is
#: steadier early on.
LAMBDA_MAX: Final = 0.5


@dataclass(frozen=True, slots=True)
class StoppingSummary:
    """The posterior's verdict: per arm ``P(best)`` and expected loss, and the leader
    (the arm with the highest ``P(best)``; ties go to the lower index)."""

    p_best: tuple[float, ...]
    expected_loss: tuple[float, ...]
    leader: int
    draws: int


def stopping_summary(draws: npt.ArrayLike) -> StoppingSummary:
    """``P(best)`` and expected loss per arm from joint posterior draws.

    ``draws`` has one row per posterior draw and one column per arm (at least one of
    each, all finite). A row's best arm is its first maximum, so exact ties (e.g. two
    arms at a bounded posterior's edge) are counted once, never twice.
    """
    values = np.asarray(draws, dtype=float)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"draws must be a (draws x arms) matrix, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("draws must be finite")
    samples, arms = values.shape
    best = values.argmax(axis=1)
    wins = np.bincount(best, minlength=arms)
    p_best = tuple(float(w) / samples for w in wins)
    row_max = values.max(axis=1, keepdims=True)
    loss = (row_max - values).mean(axis=0)
    leader = int(np.argmax(wins))
    return StoppingSummary(p_best, tuple(float(x) for x in loss), leader, samples)


def declared_winner(
    summary: StoppingSummary, stop_probability: float, stop_expected_loss: float
) -> int | None:
    """The leader's index when it is both likely best and cheap to stop on, else ``None``."""
    if not 0.5 <= stop_probability <= 1.0:
        raise ValueError(f"stop_probability must be in [0.5, 1], got {stop_probability!r}")
    if not stop_expected_loss >= 0.0 or math.isinf(stop_expected_loss):
        raise ValueError(
            f"stop_expected_loss must be a finite number >= 0, got {stop_expected_loss!r}"
        )
    leader = summary.leader
    if (
        summary.p_best[leader] >= stop_probability
        and summary.expected_loss[leader] <= stop_expected_loss
    ):
        return leader
    return None


def ipw_term(served: bool, reward: float, propensity: float) -> float:
    """One decision's inverse-propensity term for an arm: ``reward / propensity`` when the
    arm was served (with that propensity), else 0. Its conditional mean given the past is
    the arm's mean reward, whatever the policy did."""
    if not 0.0 < propensity <= 1.0:
        raise ValueError(f"propensity must be in (0, 1], got {propensity!r}")
    return reward / propensity if served else 0.0


@dataclass(slots=True)
class ConfidenceSequence:
    """A running anytime-valid confidence sequence for the mean of observations in
    ``[low, high]`` (see the module docstring), updated in O(1) per observation.

    ``alpha`` is fixed at the start: the betting fractions depend on it. The range may
    include negatives: a difference of two arms' inverse-propensity terms lies in
    ``[-1/p_control, 1/p_arm]``, which is how a guardrail compares an arm with its
    control. The state is six numbers, so it can live in a snapshot and be rebuilt by
    replay.
    """

    alpha: float = 0.05
    high: float = 1.0
    low: float = 0.0
    n: int = 0
    #: Running sums for the plug-in mean and variance (with the paper's priors 1/2, 1/4).
    sum_x: float = 0.0
    sum_sq_dev: float = 0.0
    #: The betting sums: sum of lambda_i, of lambda_i * x_i, and of v_i * psi(lambda_i).
    sum_lambda: float = 0.0
    sum_lambda_x: float = 0.0
    sum_penalty: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not -math.inf < self.low < self.high < math.inf:
            raise ValueError(
                f"the range must be finite with low < high, got [{self.low!r}, {self.high!r}]"
            )

    def update(self, x: float) -> None:
        """Fold one observation (in ``[low, high]``; raises otherwise: a value outside
        the range would void the guarantee)."""
        if not self.low <= x <= self.high:
            raise ValueError(f"observation {x!r} outside [{self.low!r}, {self.high!r}]")
        y = (x - self.low) / (self.high - self.low)
        i = self.n + 1
        # Predictable: mean and variance of the observations before this one.
        mean_before = (0.5 + self.sum_x) / i
        var_before = (0.25 + self.sum_sq_dev) / i
        lam = min(
            math.sqrt(2.0 * math.log(2.0 / self.alpha) / (var_before * i * math.log(1.0 + i))),
            LAMBDA_MAX,
        )
        psi = (-math.log(1.0 - lam) - lam) / 4.0
        self.sum_penalty += 4.0 * (y - mean_before) ** 2 * psi
        self.sum_lambda += lam
        self.sum_lambda_x += lam * y
        self.n = i
        self.sum_x += y
        mean_now = (0.5 + self.sum_x) / (i + 1)
        self.sum_sq_dev += (y - mean_now) ** 2

    def update_all(self, xs: Sequence[float]) -> None:
        for x in xs:
            self.update(x)

    def interval(self) -> tuple[float, float]:
        """The current ``(low, high)`` for the mean, within the range; the whole range
        before any observation."""
        if self.n == 0:
            return self.low, self.high
        centre = self.sum_lambda_x / self.sum_lambda
        half = (math.log(2.0 / self.alpha) + self.sum_penalty) / self.sum_lambda
        width = self.high - self.low
        return (
            self.low + max(0.0, centre - half) * width,
            self.low + min(1.0, centre + half) * width,
        )
