"""Posteriors for continuous rewards, shared by the revenue and Gaussian samplers.

Both use the conjugate Normal-Inverse-Gamma (NIG) model of a normal sample with unknown
mean and variance (Murphy, "Conjugate Bayesian analysis of the Gaussian distribution",
2007, section 6): a draw is ``sigma2 = b / Gamma(a)`` then ``mu = m + sqrt(sigma2 / kappa)
* N(0, 1)``, i.e. ``mu`` is Student-t with ``2a`` degrees of freedom. The prior is
centred on the pooled data of all arms (empirical Bayes): order values come in any
currency and scale, and a fixed prior mean would be wrong by orders of magnitude for
someone; pooling makes the prior scale-free and only ``prior_strength`` pseudo
observations strong, so it shrinks an arm with little data towards the others instead
of towards an arbitrary constant.

The samplers compare scores in log space where they multiply (conversion rate times
mean order value), so a wild early draw cannot overflow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import numpy as np
from pydantic import Field

from bandit_core.adaptive import decayed_ladders
from bandit_core.rng import numpy_generator
from bandit_core.state import ArmStats

#: Pseudo-observation count of the pooled prior (a number > 0).
PriorStrength = Annotated[
    float, Field(gt=0.0, le=1e6, allow_inf_nan=False, description="a number > 0 and <= 1e6")
]

#: Variance floor, relative to the squared mean: with no spread in the data yet (every
#: reward 0 so far) the posterior must still be a distribution, so ties break at random.
_VAR_FLOOR: Final = 1e-12


@dataclass(frozen=True, slots=True)
class ValueCounts:
    """One arm's statistics for a continuous reward: ``n`` visitors (rewards), ``conv``
    conversions (rewards > 0), ``log_sum`` / ``log_sq_sum`` over the conversions.
    Decayed counts are fractional."""

    n: float
    conv: float
    log_sum: float
    log_sq_sum: float


def value_counts(s: ArmStats) -> ValueCounts:
    """All of an arm's value statistics (implied ones for an arm with 0/1 rewards only)."""
    if s.dconv:
        return ValueCounts(float(s.pulls), float(s.conv), s.log_sum, s.log_sq_sum)
    return ValueCounts(float(s.pulls), s.reward_sum, 0.0, 0.0)


def decayed_value_counts(s: ArmStats, half_life: float, now: float) -> ValueCounts:
    """The arm's value statistics discounted with ``half_life`` as seen at ``now``."""
    if s.dconv:
        n, c, ls, lsq = decayed_ladders(s, half_life, now, (s.dpulls, s.dconv, s.dlog, s.dlog_sq))
        return ValueCounts(n, c, ls, lsq)
    n, c = decayed_ladders(s, half_life, now, (s.dpulls, s.dsum))
    return ValueCounts(n, c, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Nig:
    """A Normal-Inverse-Gamma posterior: ``mu | sigma2 ~ N(m, sigma2 / kappa)``,
    ``sigma2 ~ InvGamma(a, b)``."""

    m: float
    kappa: float
    a: float
    b: float


def nig_prior(strength: float, mean: float, var: float) -> Nig:
    """The prior worth ``strength`` observations with this ``mean`` and ``var``: shape
    ``a = 1 + strength / 2`` (> 1, so the prior variance has a finite mean, equal to
    ``var``)."""
    floor = _VAR_FLOOR * (1.0 + mean * mean)
    return Nig(mean, strength, 1.0 + strength / 2.0, strength / 2.0 * max(var, floor))


def pooled_prior(strength: float, n: float, total: float, sq_total: float) -> Nig:
    """:func:`nig_prior` at the pooled mean and variance of ``n`` observations."""
    if n <= 0.0:
        return nig_prior(strength, 0.0, 1.0)
    mean = total / n
    return nig_prior(strength, mean, sq_total / n - mean * mean)


def nig_update(prior: Nig, n: float, total: float, sq_total: float) -> Nig:
    """The posterior after ``n`` observations summing to ``total`` (squares ``sq_total``)."""
    if n <= 0.0:
        return prior
    mean = total / n
    ss = max(sq_total - total * mean, 0.0)
    kappa = prior.kappa + n
    d = mean - prior.m
    return Nig(
        (prior.kappa * prior.m + total) / kappa,
        kappa,
        prior.a + n / 2.0,
        prior.b + ss / 2.0 + prior.kappa * n * d * d / (2.0 * kappa),
    )


def nig_draw(post: Nig, rng: random.Random) -> tuple[float, float]:
    """One ``(mu, sigma2)`` draw."""
    sigma2 = post.b / rng.gammavariate(post.a, 1.0)
    return post.m + math.sqrt(sigma2 / post.kappa) * rng.gauss(0.0, 1.0), sigma2


def nig_draws(
    posts: Sequence[Nig], gen: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` rows of ``(mu, sigma2)`` draws, one column per posterior."""
    a = np.array([p.a for p in posts])
    b = np.array([p.b for p in posts])
    m = np.array([p.m for p in posts])
    kappa = np.array([p.kappa for p in posts])
    sigma2 = b / gen.gamma(a, 1.0, size=(size, len(posts)))
    mu = m + np.sqrt(sigma2 / kappa) * gen.standard_normal((size, len(posts)))
    return mu, sigma2


def argmax_sampler(
    draw_scores: Callable[[np.random.Generator, int], np.ndarray],
) -> Callable[[random.Random, int], list[int]]:
    """A batch sampler (:meth:`~bandit_core.strategies.base.Strategy.batch_sampler`)
    serving, per row of ``draw_scores(generator, n)`` (one column per arm), the arm with
    the row's largest score: one vectorised draw per batch instead of a Python draw per
    arm and decision."""

    def sample(rng: random.Random, n: int) -> list[int]:
        if n < 1:
            raise ValueError("n must be >= 1")
        choices: list[int] = draw_scores(numpy_generator(rng), n).argmax(axis=1).tolist()
        return choices

    return sample


def win_shares(scores: np.ndarray) -> list[float]:
    """Monte Carlo P(column i has the row's largest score), smoothed like
    :func:`bandit_core.strategies._beta.argmax_propensities`: ``(wins + 1/K) / (n + 1)``,
    so the served arm never gets propensity 0."""
    n, k = scores.shape
    wins = np.bincount(scores.argmax(axis=1), minlength=k)
    p = (wins + 1.0 / k) / (n + 1.0)
    p /= p.sum()
    return [float(x) for x in p]
