"""Discounted Thompson sampling: Beta posteriors on exponentially time-decayed counts.

Raj & Kalyani, "Taming non-stationary bandits: a Bayesian approach" (2017), discount
every arm's (successes, failures) by ``gamma`` per step; here the discount is by
*elapsed time* with a ``half_life`` (simulator: steps; service: unix seconds), read from
the fixed ladder of decayed sums the fold keeps (:mod:`bandit_core.adaptive`), so a
half-life change applies instantly to the whole history. An arm that is not pulled keeps
decaying towards the prior, which is what makes it be re-explored after a change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from bandit_core.adaptive import decayed
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import BetaThompson, beta_posteriors
from bandit_core.strategies.base import BetaPrior, HalfLife, StrategyParams


class DiscountedThompsonParams(StrategyParams):
    half_life: HalfLife = 512.0
    prior_alpha: BetaPrior = 1.0
    prior_beta: BetaPrior = 1.0


class DiscountedThompson(BetaThompson[DiscountedThompsonParams]):
    name: ClassVar[str] = "discounted_thompson"
    params_model = DiscountedThompsonParams

    def posteriors(
        self, stats: Sequence[ArmStats], params: DiscountedThompsonParams, now: float
    ) -> tuple[list[float], list[float]]:
        """Beta ``(alphas, betas)`` of each arm from its decayed counts at ``now``."""
        h = params.half_life
        counts = (decayed(s, h, now) for s in stats)
        return beta_posteriors(params.prior_alpha, params.prior_beta, counts)
