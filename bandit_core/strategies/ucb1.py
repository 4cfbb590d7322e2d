"""UCB1: serve the arm with the highest ``mean + c * sqrt(ln N / n)``.

``n`` is the arm's observed rewards (``pulls``) and ``N`` their total. Arms without a
reward yet come first, picked at random among themselves (the original
mab-ecommerce-optimizer always took the first one). UCB1 is deterministic given the state,
so its propensities are closed form: uniform over the untried set, else over the tied best
scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from bandit_core.state import ArmStats
from bandit_core.strategies._index import IndexPolicy
from bandit_core.strategies.base import NonNegative, StrategyParams, argmax_set


class Ucb1Params(StrategyParams):
    c: NonNegative = math.sqrt(2.0)


class Ucb1(IndexPolicy[Ucb1Params]):
    name: ClassVar[str] = "ucb1"
    params_model = Ucb1Params

    def candidates(self, stats: Sequence[ArmStats], params: Ucb1Params, now: float) -> list[int]:
        untried = [i for i, s in enumerate(stats) if s.pulls <= 0]
        if untried:
            return untried
        c = params.c
        log_total = math.log(sum(s.pulls for s in stats))
        return argmax_set(
            [s.reward_sum / s.pulls + c * math.sqrt(log_total / s.pulls) for s in stats]
        )
