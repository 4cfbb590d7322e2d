"""Revenue Thompson sampling: conversion rate times mean order value, per visitor.

A visitor's reward is 0 (no order) or an order value. The model splits it in two
independent parts (Chapelle & Li 2011 do the same for a click times its value):

* the **conversion rate** ``p``: ``Beta(prior_alpha + conversions, prior_beta +
  visitors - conversions)`` on the indicator ``reward > 0``;
* the **mean order value** given a conversion: order values are skewed (a few large
  baskets), so their logs are modelled as normal with unknown mean and variance, with the
  conjugate Normal-Inverse-Gamma posterior (:mod:`bandit_core.strategies._value`); a draw
  ``(mu, sigma2)`` gives the lognormal mean ``exp(mu + sigma2 / 2)``.

Each arm's score is ``p * exp(mu + sigma2 / 2)`` (compared as its log), the highest is
served. Why conjugate on the log values rather than a bootstrap or a normal model on the
raw values: the sufficient statistics are three numbers per arm that the fold keeps
exactly (a bootstrap needs the rewards themselves, which a snapshot cannot hold), the
lognormal's right tail matches order values, and a normal model on the raw values
understates the uncertainty of a skewed mean from a few dozen orders, exactly when the
choice is made. The price is the ``sigma2 / 2`` term: an arm with very few orders
sometimes draws a large variance and is explored again, which is what it should get.

The value prior is centred on the pooled log values of all arms (scale-free, see the
module above) with ``value_prior_strength`` pseudo orders and a log-scale spread of
``prior_log_sd``. Propensities are Monte Carlo (``samples`` draws of every posterior),
smoothed so no arm gets 0; identical posteriors give exactly ``1/K``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
from pydantic import Field

from bandit_core.rng import numpy_generator
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import check_samples
from bandit_core.strategies._value import (
    Nig,
    PriorStrength,
    ValueCounts,
    argmax_sampler,
    decayed_value_counts,
    nig_draw,
    nig_draws,
    nig_prior,
    nig_update,
    value_counts,
    win_shares,
)
from bandit_core.strategies.base import (
    BatchSampler,
    BetaPrior,
    ExploringStrategy,
    HalfLife,
    StrategyParams,
    check_arms,
)


class RevenueThompsonParams(StrategyParams):
    prior_alpha: BetaPrior = 1.0
    prior_beta: BetaPrior = 1.0
    value_prior_strength: PriorStrength = 1.0
    prior_log_sd: float = Field(
        default=1.0, gt=0.0, le=10.0, allow_inf_nan=False, description="a number > 0 and <= 10"
    )


class DiscountedRevenueThompsonParams(RevenueThompsonParams):
    half_life: HalfLife = 2048.0


#: One arm's posterior: Beta (alpha, beta) of the conversion rate, NIG of the log value.
ArmPosterior = tuple[float, float, Nig]


def revenue_scores(posts: Sequence[ArmPosterior], gen: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows of every arm's sampled log revenue per visitor (``log p + mu +
    sigma2 / 2``, ``-inf`` for a sampled rate of 0), one column per arm."""
    alphas = np.array([p[0] for p in posts])
    betas = np.array([p[1] for p in posts])
    conv = gen.beta(alphas, betas, size=(n, len(posts)))
    mu, sigma2 = nig_draws([p[2] for p in posts], gen, n)
    with np.errstate(divide="ignore"):
        scores: np.ndarray = np.log(conv) + mu + sigma2 / 2.0
    return scores


def revenue_posteriors(
    counts: Sequence[ValueCounts], params: RevenueThompsonParams
) -> list[ArmPosterior]:
    """Every arm's posterior from its value statistics, the value prior pooled over all."""
    conv = sum(c.conv for c in counts)
    pooled = sum(c.log_sum for c in counts) / conv if conv > 0.0 else 0.0
    prior = nig_prior(params.value_prior_strength, pooled, params.prior_log_sd**2)
    out: list[ArmPosterior] = []
    for c in counts:
        alpha = params.prior_alpha + max(c.conv, 0.0)
        beta = params.prior_beta + max(c.n - c.conv, 0.0)
        out.append((alpha, beta, nig_update(prior, c.conv, c.log_sum, c.log_sq_sum)))
    return out


#: Largest log value per visitor a posterior draw keeps (exp(700) is near a double's max).
MAX_LOG_VALUE: Final = 700.0


class RevenueThompson(ExploringStrategy[Any]):
    """Thompson sampling on conversion rate x mean order value (module docstring).
    Generic over ``Any``: the discounted variant's params extend this one's."""

    name: ClassVar[str] = "revenue_thompson"
    params_model: type[StrategyParams] = RevenueThompsonParams
    reward_types = frozenset({"continuous"})

    def counts(self, stats: Sequence[ArmStats], params: Any, now: float) -> list[ValueCounts]:
        """The statistics the posteriors are built from: all of them here."""
        return [value_counts(s) for s in stats]

    def posteriors(self, stats: Sequence[ArmStats], params: Any, now: float) -> list[ArmPosterior]:
        return revenue_posteriors(self.counts(stats, params, now), params)

    def exploit(
        self, stats: Sequence[ArmStats], params: Any, rng: random.Random, now: float
    ) -> int:
        best_i, best = 0, -math.inf
        for i, (alpha, beta, nig) in enumerate(self.posteriors(stats, params, now)):
            p = rng.betavariate(alpha, beta)
            mu, sigma2 = nig_draw(nig, rng)
            score = math.log(p) + mu + sigma2 / 2.0 if p > 0.0 else -math.inf
            if score > best:
                best_i, best = i, score
        return best_i

    def exploit_propensities(
        self, stats: Sequence[ArmStats], params: Any, rng: random.Random, now: float, samples: int
    ) -> list[float]:
        check_samples(samples)
        posts = self.posteriors(stats, params, now)
        k = len(posts)
        if len(set(posts)) == 1:
            return [1.0 / k] * k
        return win_shares(revenue_scores(posts, numpy_generator(rng), samples))

    def batch_sampler(
        self, arm_ids: Sequence[str], stats: Sequence[ArmStats], params: Any, now: float
    ) -> BatchSampler | None:
        """Revenue Thompson choices in batches, as Thompson's (each row an independent
        draw of every posterior, posteriors computed once per snapshot)."""
        check_arms(arm_ids, stats)
        posts = self.posteriors(stats, params, now)
        return argmax_sampler(lambda gen, n: revenue_scores(posts, gen, n))

    def posterior_draws(
        self, stats: Sequence[ArmStats], params: Any, rng: random.Random, now: float, samples: int
    ) -> npt.NDArray[np.float64]:
        """Draws of each arm's value per visitor, conversion x mean order value."""
        check_samples(samples)
        posts = self.posteriors(stats, params, now)
        logs = revenue_scores(posts, numpy_generator(rng), samples)
        # A wide order-value posterior early on can draw a log value beyond a double's
        # range; clipping keeps every draw finite (such a draw is never the one compared).
        draws: npt.NDArray[np.float64] = np.exp(np.minimum(logs, MAX_LOG_VALUE))
        return draws


class DiscountedRevenueThompson(RevenueThompson):
    """Revenue Thompson on exponentially time-decayed statistics (``half_life``, as
    :mod:`bandit_core.strategies.discounted_thompson`): an arm not served keeps
    decaying towards the prior, so it is explored again after a change."""

    name: ClassVar[str] = "discounted_revenue_thompson"
    params_model = DiscountedRevenueThompsonParams

    def counts(self, stats: Sequence[ArmStats], params: Any, now: float) -> list[ValueCounts]:
        h = params.half_life
        return [decayed_value_counts(s, h, now) for s in stats]

    def batch_sampler(
        self, arm_ids: Sequence[str], stats: Sequence[ArmStats], params: Any, now: float
    ) -> BatchSampler | None:
        """None: the decayed posteriors move with the clock, so a batch drawn for one
        snapshot would go stale (as for the other discounted strategies)."""
        return None
