"""Scenario generators: the original project's convergence benchmark, and random
piecewise-stationary problems for tuning adaptive defaults on one set and reporting on
another (held out).

Defaults tuned on the hand-written ``scenarios/*.json`` alone would be tuned to four
stories; the random families below vary what those fix (arm count 2-8, horizon
5,000-20,000, 1-4 changes, gap between the best and second-best arm, which arms move), so
a default that holds on a held-out draw holds for the family, not for one file.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Final

import numpy as np

from bandit_core.simulate import Environment, Scenario, parse_scenario

#: The original mab-ecommerce-optimizer's benchmark (its ``tests/test_convergence.py``,
#: described in its README and ``convergence_test_results.md``): 20 samples drawn from
#: ``numpy.random.default_rng(42)``:
#: 4 rates uniform in [0.03, 0.40], then one arm (uniform index) is lifted to
#: ``max(rates) + uniform(0.15, 0.30)`` (clipped to 0.95), rounded to 3 decimals.
ORIGINAL_SAMPLES: Final = 20
ORIGINAL_ROUNDS: Final = 2000
ORIGINAL_ARMS: Final = ("A", "B", "C", "D")


def original_convergence_scenario() -> Scenario:
    """The original project's 20 stationary 4-arm environments (reproduces its per-sample gaps)."""
    rng = np.random.default_rng(42)
    envs: list[dict[str, Any]] = []
    for _ in range(ORIGINAL_SAMPLES):
        rates = rng.uniform(0.03, 0.40, size=4)
        winner = int(rng.integers(0, 4))
        rates[winner] = float(np.clip(rates.max() + rng.uniform(0.15, 0.30), 0.0, 0.95))
        envs.append(
            {
                "horizon": ORIGINAL_ROUNDS,
                "arms": list(ORIGINAL_ARMS),
                "segments": [{"start": 0, "means": [round(float(x), 3) for x in rates]}],
            }
        )
    return parse_scenario(
        {
            "name": "original_convergence",
            "description": (
                "The original mab-ecommerce-optimizer's convergence benchmark: 20 stationary "
                "4-arm Bernoulli environments x 2,000 rounds, best arm 0.15-0.41 above the "
                "second best. "
                "Rates as it draws them: numpy default_rng(42), per sample 4 x "
                "uniform(0.03, 0.40), one uniformly chosen arm lifted to max + "
                "uniform(0.15, 0.30) (clipped to 0.95), 3 decimals "
                "(bandit_core.scenario_gen.original_convergence_scenario). Run j uses "
                "environment j % 20."
            ),
            "environments": envs,
        }
    )


#: Families of abrupt changes (each also moves the best arm to another arm):
#: ``rotation`` redraws every mean, ``riser`` lifts one losing arm above the best and
#: leaves the others alone, ``faller`` drops the best arm below the second best.
CHANGE_KINDS: Final = ("rotation", "rotation", "riser", "faller")
MIN_SEGMENT_SHARE: Final = 0.15


def _segment_means(rng: random.Random, k: int, best_arm: int) -> list[float]:
    """Means with ``best_arm`` on top by a relative gap of 20-60 % of its rate."""
    top = rng.uniform(0.04, 0.4)
    second = top * (1.0 - rng.uniform(0.2, 0.6))
    means = [round(rng.uniform(0.2 * top, second), 4) for _ in range(k)]
    means[best_arm] = round(top, 4)
    others = [i for i in range(k) if i != best_arm]
    means[rng.choice(others)] = round(second, 4)
    return means


def _next_means(rng: random.Random, means: list[float]) -> list[float]:
    k = len(means)
    best = max(range(k), key=lambda i: means[i])
    new_best = rng.choice([i for i in range(k) if i != best])
    kind = rng.choice(CHANGE_KINDS)
    lifted = round(min(0.95, means[best] * (1.0 + rng.uniform(0.25, 1.0))), 4)
    if kind == "rotation" or (kind == "riser" and lifted <= means[best]):
        return _segment_means(rng, k, new_best)
    out = list(means)
    if kind == "riser":
        out[new_best] = lifted
        return out
    # faller: the best arm drops below the (now best) second arm
    order = sorted(range(k), key=lambda i: means[i], reverse=True)
    second = order[1]
    out[best] = round(means[second] * (1.0 - rng.uniform(0.2, 0.6)), 4)
    return out


def random_piecewise_environment(seed: int) -> Environment:
    """One random piecewise-stationary Bernoulli problem, a pure function of ``seed``.

    2-8 arms, horizon 5,000-20,000 steps, 1-4 abrupt changes of the best arm at random
    times with every stationary stretch at least 15 % of the horizon.
    """
    rng = random.Random(seed)
    k = rng.randint(2, 8)
    horizon = rng.randrange(5000, 20001, 500)
    changes = rng.randint(1, 4)
    min_len = int(MIN_SEGMENT_SHARE * horizon)
    while True:
        cuts = sorted(rng.sample(range(min_len, horizon - min_len), changes))
        bounds = [0, *cuts, horizon]
        if all(b - a >= min_len for a, b in itertools.pairwise(bounds)):
            break
    means = _segment_means(rng, k, rng.randrange(k))
    segments = [{"start": 0, "means": means}]
    for start in cuts:
        means = _next_means(rng, means)
        segments.append({"start": start, "means": means})
    return Environment.model_validate(
        {"horizon": horizon, "arms": [f"arm{i}" for i in range(k)], "segments": segments}
    )


def random_piecewise_scenario(seed: int, name: str = "") -> Scenario:
    """:func:`random_piecewise_environment` as a one-environment scenario."""
    return Scenario(
        name=name or f"piecewise_{seed}",
        description=f"random piecewise-stationary problem, generator seed {seed}",
        environments=(random_piecewise_environment(seed),),
    )


#: Generator seeds of the two sets: tune on TRAIN_SEEDS, report on HELDOUT_SEEDS.
TRAIN_SEEDS: Final = tuple(range(1000, 1012))
HELDOUT_SEEDS: Final = tuple(range(2000, 2020))
