"""Discounted Thompson sampling: Beta posteriors on exponentially time-decayed counts.

Raj & Kalyani, "Taming non-stationary bandits: a Bayesian approach" (2017), discount
every arm's (successes, failures) by ``gamma`` per step; here the discount is by
*elapsed time* with a ``half_life`` (simulator: steps; service: unix seconds), read from
the fixed ladder of decayed sums the fold keeps (:mod:`bandit_core.adaptive`), so a
half-life change applies instantly to the whole history. An arm that is not pulled keeps
decaying towards the prior, which is what makes it be re-explored after a change.
"""

from __future__ import annotations

from typing import ClassVar

from bandit_core.adaptive import decayed
from bandit_core.strategies._beta import HalfLifeThompson
from bandit_core.strategies.base import BetaPrior, HalfLife, StrategyParams


class DiscountedThompsonParams(StrategyParams):
    half_life: HalfLife = 512.0
    prior_alpha: BetaPrior = 1.0
    prior_beta: BetaPrior = 1.0


class DiscountedThompson(HalfLifeThompson):
    """Beta posteriors from each arm's decayed counts at ``now``."""

    name: ClassVar[str] = "discounted_thompson"
    params_model = DiscountedThompsonParams
    arm_counts = staticmethod(decayed)
