"""Beta-posterior sampling shared by Thompson sampling and its adaptive variants.

The variants differ only in *which* statistics feed the Beta posteriors (all of them,
decayed, per-daypart, since the last change point); :class:`BetaThompson` is everything
else.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from bandit_core.rng import numpy_generator
from bandit_core.state import ArmStats
from bandit_core.strategies.base import ExploringStrategy, P, mix_uniform

#: From this many arms one vectorised numpy draw beats a loop of ``betavariate`` despite
#: numpy's per-call overhead: the threshold sits above the measured crossover (near 16
#: arms), so small experiments keep the loop.
NUMPY_CHOOSE_MIN_ARMS: Final = 24


def beta_posteriors(
    prior_alpha: float, prior_beta: float, counts: Iterable[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Beta ``(alphas, betas)`` from each arm's ``(pulls, reward_sum)``: the fractional
    Bernoulli update, exact for 0/1 rewards."""
    alphas: list[float] = []
    betas: list[float] = []
    for n, r in counts:
        # max(): float error in a sum must never push a parameter to <= 0.
        alphas.append(prior_alpha + max(r, 0.0))
        betas.append(prior_beta + max(n - r, 0.0))
    return alphas, betas


def same_posteriors(alphas: Sequence[float], betas: Sequence[float]) -> bool:
    """Whether every arm has the same posterior: then each is picked with exactly
    ``1/K`` by symmetry (a fresh experiment, the common case, costs no Monte Carlo)."""
    return len(set(zip(alphas, betas, strict=True))) == 1


def check_samples(samples: int) -> None:
    """A Monte Carlo estimate needs at least one draw (a bug upstream, not user input)."""
    if samples < 1:
        raise ValueError("samples must be >= 1")


def sample_argmax(alphas: Sequence[float], betas: Sequence[float], rng: random.Random) -> int:
    """Index of the largest single Beta draw per arm (one posterior sample each)."""
    if len(alphas) >= NUMPY_CHOOSE_MIN_ARMS:
        return int(numpy_generator(rng).beta(alphas, betas).argmax())
    beta = rng.betavariate
    best_i, best = 0, -1.0
    for i in range(len(alphas)):
        x = beta(alphas[i], betas[i])
        if x > best:
            best_i, best = i, x
    return best_i


def argmax_propensities(
    alphas: Sequence[float], betas: Sequence[float], rng: random.Random, samples: int
) -> list[float]:
    """Monte Carlo P(arm i has the largest draw), smoothed so no arm gets exactly 0.

    The estimator of :mod:`bandit_core.strategies.thompson` (``(wins + 1/K) / (n + 1)``);
    identical posteriors give exactly ``1/K``.
    """
    k = len(alphas)
    check_samples(samples)
    if same_posteriors(alphas, betas):
        return [1.0 / k] * k
    draws = numpy_generator(rng).beta(alphas, betas, size=(samples, k))
    wins = np.bincount(draws.argmax(axis=1), minlength=k)
    p = (wins + 1.0 / k) / (samples + 1.0)
    p /= p.sum()
    return [float(x) for x in p]


class BetaThompson(ExploringStrategy[P]):
    """Thompson sampling on posteriors from :meth:`posteriors`, with optional uniform
    forced exploration (:meth:`~bandit_core.strategies.base.Strategy.exploration`), whose
    propensities mix in closed form."""

    @abstractmethod
    def posteriors(
        self, stats: Sequence[ArmStats], params: P, now: float
    ) -> tuple[list[float], list[float]]:
        """Beta (alpha, beta) per arm."""

    def exploit(self, stats: Sequence[ArmStats], params: P, rng: random.Random, now: float) -> int:
        return sample_argmax(*self.posteriors(stats, params, now), rng)

    def exploit_propensities(
        self, stats: Sequence[ArmStats], params: P, rng: random.Random, now: float, samples: int
    ) -> list[float]:
        return argmax_propensities(*self.posteriors(stats, params, now), rng, samples)

    def mix_exploration(self, explore: float, k: int, p: list[float]) -> list[float]:
        """Renormalised after mixing: Monte Carlo estimates carry float noise in their sum."""
        mixed = mix_uniform(explore, k, p)
        total = sum(mixed)
        return [x / total for x in mixed]

    def posterior_draws(
        self, stats: Sequence[ArmStats], params: P, rng: random.Random, now: float, samples: int
    ) -> npt.NDArray[np.float64]:
        """Draws of each arm's conversion rate from its Beta posterior (independent arms)."""
        check_samples(samples)
        alphas, betas = self.posteriors(stats, params, now)
        gen = numpy_generator(rng)
        draws: npt.NDArray[np.float64] = gen.beta(alphas, betas, size=(samples, len(alphas)))
        return draws


class HalfLifePriors(Protocol):
    """The params a :class:`HalfLifeThompson` reads."""

    half_life: float
    prior_alpha: float
    prior_beta: float


class HalfLifeThompson(BetaThompson[Any]):
    """Thompson on each arm's counts as :attr:`arm_counts` reads them at the params'
    ``half_life``: the adaptive variants differ only in that function (and in forced
    exploration). Generic over ``Any`` because the params models cannot share a base
    class without reordering their fields (and so the params a config reports)."""

    @staticmethod
    @abstractmethod
    def arm_counts(stats: ArmStats, half_life: float, now: float) -> tuple[float, float]:
        """One arm's ``(pulls, reward_sum)`` at ``half_life`` and ``now``: a plain function
        (a subclass assigns ``staticmethod(f)``), so an arm costs one call."""

    def posteriors(
        self, stats: Sequence[ArmStats], params: HalfLifePriors, now: float
    ) -> tuple[list[float], list[float]]:
        arm_counts = self.arm_counts
        h = params.half_life
        counts = (arm_counts(s, h, now) for s in stats)
        return beta_posteriors(params.prior_alpha, params.prior_beta, counts)
