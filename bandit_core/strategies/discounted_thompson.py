"""Discounted Thompson sampling: Beta posteriors on exponentially time-decayed counts.

Raj & Kalyani, "Taming non-stationary bandits: a Bayesian approach" (2017), discount
every arm's (successes, failures) by ``gamma`` per step; here the discount is by
*elapsed time* with a ``half_life`` (simulator: steps; service: unix seconds), read from
the fixed ladder of decayed sums the fold keeps (:mod:`bandit_core.adaptive`), so a
half-life change applies instantly to the whole history. An arm that is not pulled keeps
decaying towards the prior, which is what makes it be re-explored after a change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from pydantic import Field

from bandit_core.adaptive import MAX_HALF_LIFE, MIN_HALF_LIFE, decayed
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import BetaThompson
from bandit_core.strategies.base import StrategyParams

DEFAULT_HALF_LIFE: Final = 512.0
DEFAULT_PRIOR: Final = 1.0


class DiscountedThompsonParams(StrategyParams):
    RULES: ClassVar[dict[str, str]] = {
        **StrategyParams.RULES,
        "half_life": f"a number between {MIN_HALF_LIFE:g} and {MAX_HALF_LIFE:g} (time units)",
        "prior_alpha": "a number > 0",
        "prior_beta": "a number > 0",
    }

    half_life: float = Field(
        default=DEFAULT_HALF_LIFE, ge=MIN_HALF_LIFE, le=MAX_HALF_LIFE, allow_inf_nan=False
    )
    prior_alpha: float = Field(default=DEFAULT_PRIOR, gt=0.0, allow_inf_nan=False)
    prior_beta: float = Field(default=DEFAULT_PRIOR, gt=0.0, allow_inf_nan=False)


def discounted_posteriors(
    stats: Sequence[ArmStats], params: Mapping[str, Any], now: float
) -> tuple[list[float], list[float]]:
    """Beta ``(alphas, betas)`` of each arm from its decayed counts at ``now``."""
    h = float(params.get("half_life", DEFAULT_HALF_LIFE))
    a0 = float(params.get("prior_alpha", DEFAULT_PRIOR))
    b0 = float(params.get("prior_beta", DEFAULT_PRIOR))
    alphas: list[float] = []
    betas: list[float] = []
    for s in stats:
        n, r = decayed(s, h, now)
        alphas.append(a0 + max(r, 0.0))
        betas.append(b0 + max(n - r, 0.0))
    return alphas, betas


class DiscountedThompson(BetaThompson):
    name: ClassVar[str] = "discounted_thompson"
    params_model: ClassVar[type[StrategyParams]] = DiscountedThompsonParams

    def posteriors(
        self, stats: Sequence[ArmStats], params: Mapping[str, Any], now: float
    ) -> tuple[list[float], list[float]]:
        return discounted_posteriors(stats, params, now)
