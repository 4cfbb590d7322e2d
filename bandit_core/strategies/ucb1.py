"""UCB1: serve the arm with the highest ``mean + c * sqrt(ln N / n)``.

``n`` is the arm's observed rewards (``pulls``) and ``N`` their total. Arms without a
reward yet come first, picked at random among themselves (the original
mab-ecommerce-optimizer always took the first one). UCB1 is deterministic given the state,
so its propensities are closed form: uniform over the untried set, else over the tied best
scores.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import ClassVar

from bandit_core.state import ArmStats
from bandit_core.strategies.base import (
    DECIDER_SAMPLES,
    NonNegative,
    Strategy,
    StrategyParams,
    argmax_set,
    check_arms,
    uniform_over,
)


class Ucb1Params(StrategyParams):
    c: NonNegative = math.sqrt(2.0)


def _candidates(stats: Sequence[ArmStats], c: float) -> list[int]:
    """The arms :meth:`Ucb1.choose` picks uniformly among."""
    untried = [i for i, s in enumerate(stats) if s.pulls <= 0]
    if untried:
        return untried
    log_total = math.log(sum(s.pulls for s in stats))
    scores = [s.reward_sum / s.pulls + c * math.sqrt(log_total / s.pulls) for s in stats]
    return argmax_set(scores)


class Ucb1(Strategy[Ucb1Params]):
    name: ClassVar[str] = "ucb1"
    params_model = Ucb1Params

    def choose(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: Ucb1Params,
        rng: random.Random,
        now: float,
    ) -> int:
        check_arms(arm_ids, stats)
        best = _candidates(stats, params.c)
        return best[0] if len(best) == 1 else rng.choice(best)

    def propensities(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: Ucb1Params,
        rng: random.Random,
        now: float,
        samples: int = 1000,
    ) -> list[float]:
        k = check_arms(arm_ids, stats)
        return uniform_over(k, _candidates(stats, params.c))

    def choose_with_propensity(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: Ucb1Params,
        rng: random.Random,
        now: float,
        samples: int = DECIDER_SAMPLES,
    ) -> tuple[int, float]:
        """One pass over the arms: the pick is uniform over the candidates."""
        check_arms(arm_ids, stats)
        best = _candidates(stats, params.c)
        index = best[0] if len(best) == 1 else rng.choice(best)
        return index, 1.0 / len(best)
