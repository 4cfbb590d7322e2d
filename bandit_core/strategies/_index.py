"""The deterministic-index policies shared by the UCB family.

UCB1, sliding-window UCB and change-detection UCB differ only in *which* arms their index
ranks first (:meth:`IndexPolicy.candidates`); each then serves one of those candidates
uniformly at random, optionally after a forced uniform exploration draw. Because the
candidates are a function of the state, every propensity is closed form.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Sequence

from bandit_core.state import ArmStats
from bandit_core.strategies.base import (
    DECIDER_SAMPLES,
    ExploringStrategy,
    P,
    check_arms,
    explore_uniformly,
    mix_uniform,
    pick_tied,
    uniform_over,
)


class IndexPolicy(ExploringStrategy[P]):
    """Uniform among :meth:`candidates`, with optional forced exploration
    (:meth:`~bandit_core.strategies.base.Strategy.exploration`) mixed in closed form."""

    @abstractmethod
    def candidates(self, stats: Sequence[ArmStats], params: P, now: float) -> list[int]:
        """The arms the policy picks uniformly among (untried ones, else the tied best)."""

    def exploit(self, stats: Sequence[ArmStats], params: P, rng: random.Random, now: float) -> int:
        return pick_tied(self.candidates(stats, params, now), rng)

    def exploit_propensities(
        self, stats: Sequence[ArmStats], params: P, rng: random.Random, now: float, samples: int
    ) -> list[float]:
        """Closed form: uniform over the candidates (forced exploration then adds
        ``explore / K`` to every arm and scales these by ``1 - explore``)."""
        return uniform_over(len(stats), self.candidates(stats, params, now))

    def choose_with_propensity(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: P,
        rng: random.Random,
        now: float,
        samples: int = DECIDER_SAMPLES,
    ) -> tuple[int, float]:
        """One pass over the arms: the candidates serve both the pick and its probability
        (the same numbers :meth:`propensities` gives)."""
        k = check_arms(arm_ids, stats)
        best = self.candidates(stats, params, now)
        explore = self.exploration(params)
        explored = explore_uniformly(explore, k, rng)
        index = pick_tied(best, rng) if explored is None else explored
        p = 1.0 / len(best) if index in best else 0.0
        return index, mix_uniform(explore, k, [p])[0] if explore else p
