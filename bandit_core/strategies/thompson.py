"""Thompson sampling with Beta posteriors, accepting fractional rewards in [0, 1].

Each arm's posterior is ``Beta(prior_alpha + reward_sum, prior_beta + pulls - reward_sum)``,
the standard "fractional Bernoulli" update (exact for 0/1 rewards). ``choose`` draws one
sample per arm and serves the largest.

Propensity estimator (what :meth:`Thompson.choose_with_propensity` logs for off-policy
evaluation): when every arm has the same posterior the answer is exactly ``1/K`` by
symmetry (a fresh experiment, the common case, costs nothing). Otherwise it is Monte
Carlo: ``samples`` independent draws of all posteriors (one vectorised numpy call),
``wins[i]`` counts how often arm ``i`` is the largest, and
``p[i] = (wins[i] + 1/K) / (samples + 1)``: a pseudo-count of one draw spread evenly, so
the served arm never gets propensity 0 (an IPS weight of infinity) and the vector still
sums to 1. Its standard error is about ``sqrt(p (1-p) / samples)``; the decider uses
``samples=200``, replay/OPE can afford more.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from bandit_core.rng import numpy_generator
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import (
    BetaThompson,
    beta_posteriors,
    check_samples,
    same_posteriors,
)
from bandit_core.strategies.base import (
    DECIDER_SAMPLES,
    BatchSampler,
    BetaPrior,
    StrategyParams,
    check_arms,
)


class ThompsonParams(StrategyParams):
    prior_alpha: BetaPrior = 1.0
    prior_beta: BetaPrior = 1.0


class Thompson(BetaThompson[ThompsonParams]):
    name: ClassVar[str] = "thompson"
    params_model = ThompsonParams

    def posteriors(
        self, stats: Sequence[ArmStats], params: ThompsonParams, now: float
    ) -> tuple[list[float], list[float]]:
        return beta_posteriors(
            params.prior_alpha, params.prior_beta, ((s.pulls, s.reward_sum) for s in stats)
        )

    def batch_sampler(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: ThompsonParams,
        now: float,
    ) -> BatchSampler:
        """Thompson choices in batches: each call draws ``n`` rows of posteriors in one
        vectorised call, from posteriors computed once.

        Row ``j`` is a complete, independent Thompson draw, so serving the rows one per
        request is the same policy as drawing per request; it costs one numpy call per
        batch instead of one per decision, whose fixed overhead dominated a decision
        (docs/benchmarks.md, "Costs behind design choices").
        """
        check_arms(arm_ids, stats)
        alphas, betas = self.posteriors(stats, params, now)
        a = np.asarray(alphas)
        b = np.asarray(betas)
        shape = len(alphas)

        def sample(rng: random.Random, n: int) -> list[int]:
            if n < 1:
                raise ValueError("n must be >= 1")
            choices: list[int] = (
                numpy_generator(rng).beta(a, b, size=(n, shape)).argmax(axis=1).tolist()
            )
            return choices

        return sample

    def choose_with_propensity(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: ThompsonParams,
        rng: random.Random,
        now: float,
        samples: int = DECIDER_SAMPLES,
    ) -> tuple[int, float]:
        """Exact Thompson choice; propensity by the estimator in the module docstring.

        Without the symmetric shortcut, one numpy call draws ``samples + 1`` rows: row 0
        is the served decision (a genuine Thompson draw), the other rows are the
        independent Monte Carlo sample for its propensity.
        """
        k = check_arms(arm_ids, stats)
        check_samples(samples)
        alphas, betas = self.posteriors(stats, params, now)
        if same_posteriors(alphas, betas):
            return self.choose(arm_ids, stats, params, rng, now), 1.0 / k
        draws = numpy_generator(rng).beta(alphas, betas, size=(samples + 1, k))
        winners = draws.argmax(axis=1)
        index = int(winners[0])
        wins = int(np.count_nonzero(winners[1:] == index))
        return index, (wins + 1.0 / k) / (samples + 1.0)
