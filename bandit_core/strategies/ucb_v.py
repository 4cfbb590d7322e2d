"""UCB-V: an upper confidence bound that uses each arm's empirical variance.

Audibert, Munos & Szepesvari, "Exploration-exploitation tradeoff using variance
estimates in multi-armed bandits" (TCS 2009): serve the arm with the highest

    ``mean + sqrt(2 V zeta ln t / n) + 3 b zeta ln t / n``

(``n`` the arm's rewards, ``V`` their empirical variance, ``t`` all rewards, ``b`` the
range of the rewards, ``zeta > 1`` in their bound, 1.2 in their experiments). Revenue
per visitor has a small variance compared with its range when conversions are rare,
which is where the variance term beats UCB1's range-only bonus. An order value has no
known range, so ``b`` is ``scale`` times the pooled standard deviation of all rewards:
scale-free, and ``scale`` trades exploration for exploitation. Deterministic given the
state: closed-form propensities, untried arms first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from bandit_core.state import ArmStats
from bandit_core.strategies._index import IndexPolicy
from bandit_core.strategies.base import NonNegative, StrategyParams, argmax_set


class UcbVParams(StrategyParams):
    zeta: float = Field(
        default=1.2, gt=0.0, le=100.0, allow_inf_nan=False, description="a number > 0 and <= 100"
    )
    scale: NonNegative = 1.0


class UcbV(IndexPolicy[UcbVParams]):
    name: ClassVar[str] = "ucb_v"
    params_model = UcbVParams
    reward_types = frozenset({"continuous"})

    def candidates(self, stats: Sequence[ArmStats], params: UcbVParams, now: float) -> list[int]:
        untried = [i for i, s in enumerate(stats) if s.pulls <= 0]
        if untried:
            return untried
        total = sum(s.pulls for s in stats)
        mean = sum(s.reward_sum for s in stats) / total
        var = max(sum(s.reward_sq_sum for s in stats) / total - mean * mean, 0.0)
        b = params.scale * math.sqrt(var)
        e = params.zeta * math.log(total)
        scores: list[float] = []
        for s in stats:
            n = s.pulls
            m = s.reward_sum / n
            v = max(s.reward_sq_sum / n - m * m, 0.0)
            scores.append(m + math.sqrt(2.0 * v * e / n) + 3.0 * b * e / n)
        return argmax_set(scores)
