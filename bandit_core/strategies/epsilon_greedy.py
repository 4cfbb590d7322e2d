"""ε-greedy: explore a uniformly random arm with probability ε, else exploit the best mean.

The original mab-ecommerce-optimizer broke mean ties in favour of the first arm (so a
fresh experiment served arm 0 to 1-ε+ε/K of the traffic); ties are broken uniformly at
random here. Untried arms have mean 0, the textbook choice; exploration reaches them.

Not an :class:`~bandit_core.strategies._index.IndexPolicy` although it looks like one:
it draws its exploration coin even at ε = 0 and spreads ``(1-ε)/|argmax|`` rather than
``(1-ε) * (1/|argmax|)``; joining would change seeded runs and propensities in the
last bit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from bandit_core.state import ArmStats
from bandit_core.strategies.base import (
    DECIDER_SAMPLES,
    Strategy,
    StrategyParams,
    argmax_set,
    check_arms,
    pick_tied,
)


class EpsilonGreedyParams(StrategyParams):
    epsilon: float = Field(
        default=0.1, ge=0.0, le=1.0, allow_inf_nan=False, description="a number between 0 and 1"
    )


def _means(stats: Sequence[ArmStats]) -> list[float]:
    return [s.reward_sum / s.pulls if s.pulls else 0.0 for s in stats]


class EpsilonGreedy(Strategy[EpsilonGreedyParams]):
    name: ClassVar[str] = "epsilon_greedy"
    params_model = EpsilonGreedyParams
    #: It only compares means, which are as meaningful for order values as for rates
    #: (a reward's scale changes no choice), so it serves continuous experiments too.
    reward_types = frozenset({"binary", "continuous"})

    def exploration(self, params: EpsilonGreedyParams) -> float:
        return params.epsilon

    def choose(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: EpsilonGreedyParams,
        rng: random.Random,
        now: float,
    ) -> int:
        """Draws the exploration coin even when ε = 0 (unlike
        :meth:`~bandit_core.strategies.base.Strategy.choose`): the draws of seeded runs
        stay what they have always been."""
        k = check_arms(arm_ids, stats)
        if rng.random() < params.epsilon:
            return rng.randrange(k)
        return self.exploit(stats, params, rng, now)

    def exploit(
        self, stats: Sequence[ArmStats], params: EpsilonGreedyParams, rng: random.Random, now: float
    ) -> int:
        return pick_tied(argmax_set(_means(stats)), rng)

    def propensities(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: EpsilonGreedyParams,
        rng: random.Random,
        now: float,
        samples: int = 1000,
    ) -> list[float]:
        """Closed form: ε/K for every arm plus (1-ε)/|argmax| for each tied best arm."""
        k = check_arms(arm_ids, stats)
        epsilon = params.epsilon
        best = argmax_set(_means(stats))
        out = [epsilon / k] * k
        share = (1.0 - epsilon) / len(best)
        for i in best:
            out[i] += share
        return out

    def choose_with_propensity(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: EpsilonGreedyParams,
        rng: random.Random,
        now: float,
        samples: int = DECIDER_SAMPLES,
    ) -> tuple[int, float]:
        """The choice and its closed-form probability, with one pass over the arms."""
        k = check_arms(arm_ids, stats)
        epsilon = params.epsilon
        best = argmax_set(_means(stats))
        index = rng.randrange(k) if rng.random() < epsilon else pick_tied(best, rng)
        p = epsilon / k
        if index in best:
            p += (1.0 - epsilon) / len(best)
        return index, p
