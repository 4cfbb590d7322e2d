"""Gaussian Thompson sampling with unknown variance, on the reward per visitor.

Each arm's rewards are modelled as normal with unknown mean and variance; the conjugate
Normal-Inverse-Gamma posterior (:mod:`bandit_core.strategies._value`) makes the mean a
Student-t, whose heavier tails than a known-variance normal matter while an arm has few
rewards. The prior is the pooled mean and variance of all arms' rewards, worth
``prior_strength`` visitors. Unlike :mod:`bandit_core.strategies.revenue_thompson` it
needs no split into conversion and order value (so it fits any non-negative reward),
but a per-visitor revenue is far from normal (mostly zeros, a skewed rest): the normal
model only holds for its mean, by the central limit theorem, once an arm has many
visitors. This is the model GrowthBook's revenue metrics use.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from bandit_core.rng import numpy_generator
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import check_samples
from bandit_core.strategies._value import (
    Nig,
    PriorStrength,
    argmax_sampler,
    nig_draw,
    nig_draws,
    nig_update,
    pooled_prior,
    win_shares,
)
from bandit_core.strategies.base import (
    BatchSampler,
    ExploringStrategy,
    StrategyParams,
    check_arms,
)


class GaussianThompsonParams(StrategyParams):
    prior_strength: PriorStrength = 1.0


def gaussian_posteriors(stats: Sequence[ArmStats], strength: float) -> list[Nig]:
    """Every arm's posterior of its mean reward, the prior pooled over all arms."""
    prior = pooled_prior(
        strength,
        float(sum(s.pulls for s in stats)),
        sum(s.reward_sum for s in stats),
        sum(s.reward_sq_sum for s in stats),
    )
    return [nig_update(prior, float(s.pulls), s.reward_sum, s.reward_sq_sum) for s in stats]


class GaussianThompson(ExploringStrategy[GaussianThompsonParams]):
    name: ClassVar[str] = "gaussian_thompson"
    params_model = GaussianThompsonParams
    reward_types = frozenset({"continuous"})

    def exploit(
        self,
        stats: Sequence[ArmStats],
        params: GaussianThompsonParams,
        rng: random.Random,
        now: float,
    ) -> int:
        best_i, best = 0, -float("inf")
        for i, post in enumerate(gaussian_posteriors(stats, params.prior_strength)):
            mu = nig_draw(post, rng)[0]
            if mu > best:
                best_i, best = i, mu
        return best_i

    def exploit_propensities(
        self,
        stats: Sequence[ArmStats],
        params: GaussianThompsonParams,
        rng: random.Random,
        now: float,
        samples: int,
    ) -> list[float]:
        posts = gaussian_posteriors(stats, params.prior_strength)
        k = len(posts)
        if len(set(posts)) == 1:
            return [1.0 / k] * k
        return win_shares(self.posterior_draws(stats, params, rng, now, samples))

    def batch_sampler(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: GaussianThompsonParams,
        now: float,
    ) -> BatchSampler | None:
        """Choices in batches, as Thompson's (each row an independent posterior draw)."""
        check_arms(arm_ids, stats)
        posts = gaussian_posteriors(stats, params.prior_strength)
        return argmax_sampler(lambda gen, n: nig_draws(posts, gen, n)[0])

    def posterior_draws(
        self,
        stats: Sequence[ArmStats],
        params: GaussianThompsonParams,
        rng: random.Random,
        now: float,
        samples: int,
    ) -> npt.NDArray[np.float64]:
        """Draws of each arm's mean reward per visitor (the Normal-Inverse-Gamma mean)."""
        check_samples(samples)
        posts = gaussian_posteriors(stats, params.prior_strength)
        mu: npt.NDArray[np.float64] = nig_draws(posts, numpy_generator(rng), samples)[0]
        return mu
