"""Beta-posterior sampling helpers shared by the adaptive Thompson variants."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from bandit_core.rng import numpy_generator


def sample_argmax(alphas: Sequence[float], betas: Sequence[float], rng: random.Random) -> int:
    """Index of the largest single Beta draw per arm (one posterior sample each)."""
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

    Same estimator as :mod:`bandit_core.strategies.thompson` (``(wins + 1/K) / (n + 1)``);
    identical posteriors give exactly ``1/K``.
    """
    k = len(alphas)
    if samples < 1:
        raise ValueError("samples must be >= 1")
    if len(set(zip(alphas, betas, strict=True))) == 1:
        return [1.0 / k] * k
    draws = numpy_generator(rng).beta(alphas, betas, size=(samples, k))
    wins = np.bincount(draws.argmax(axis=1), minlength=k)
    p = (wins + 1.0 / k) / (samples + 1.0)
    p /= p.sum()
    return [float(x) for x in p]
