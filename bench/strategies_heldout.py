"""Adaptive strategies on random piecewise-stationary problems nobody tuned for.

``python -m bench.strategies_heldout [--set heldout|train] [--runs N] [--start I] [--problems N]``
draws the problems of :mod:`bandit_core.scenario_gen` (generator seeds ``TRAIN_SEEDS``
were used to pick the defaults, ``HELDOUT_SEEDS`` only to report them) and checks, per
problem, the two claims of the issue:

* the best adaptive strategy (defaults or any point of :data:`GRID`, i.e. tuned for
  that very problem after the fact) has at most half of stationary Thompson's regret;
* the change-point strategy ``glr_ucb`` with default params is within 1.5x of that best
  tuned strategy (``glr_thompson``'s default is reported next to it).

It prints one markdown row per problem and the median and worst ratios. Every run goes
through :func:`bandit_core.simulate.run_once` (the service's ``choose`` and fold update)
with common random numbers, like ``mab simulate``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bandit_core.scenario_gen import HELDOUT_SEEDS, TRAIN_SEEDS, random_piecewise_environment
from bandit_core.simulate import Environment, run_once, run_seed
from bandit_core.strategies import params_for

#: What "tuned" may pick from, per problem (the defaults are in it too); the first
#: entry is the change-point strategy whose defaults the claim is about.
GRID: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("glr_ucb", {}),
    ("glr_thompson", {}),
    ("discounted_thompson", {}),
    ("sw_ucb", {}),
    ("discounted_thompson", {"half_life": 1024.0}),
    ("sw_ucb", {"window": 960.0, "c": 0.2}),
    ("sw_ucb", {"window": 960.0, "c": 0.3}),
    ("sw_ucb", {"window": 512.0, "c": 0.2}),
    ("glr_thompson", {"alpha": 0.0}),
    ("glr_ucb", {"c": 0.2}),
    ("glr_ucb", {"c": 0.3}),
    ("glr_ucb", {"half_life": 512.0}),
)


@dataclass(frozen=True, slots=True)
class ProblemResult:
    seed: int
    arms: int
    horizon: int
    changes: int
    thompson: float
    glr_default: float
    glr_thompson_default: float
    best: float
    best_config: str

    @property
    def best_vs_thompson(self) -> float:
        return self.best / self.thompson

    @property
    def glr_vs_best(self) -> float:
        return self.glr_default / self.best


def mean_regret(env: Environment, name: str, params: dict[str, Any], runs: int) -> float:
    means = env.means_by_step()
    typed = params_for(name, params)
    return statistics.fmean(
        run_once(env, name, typed, run_seed(42, j), means=means).regret for j in range(runs)
    )


def evaluate(seed: int, runs: int) -> ProblemResult:
    env = random_piecewise_environment(seed)
    thompson = mean_regret(env, "thompson", {}, runs)
    scores = [(mean_regret(env, name, params, runs), name, params) for name, params in GRID]
    glr_default = scores[0][0]
    glr_thompson_default = scores[1][0]
    best, name, params = min(scores, key=lambda s: s[0])
    return ProblemResult(
        seed=seed,
        arms=len(env.arms),
        horizon=env.horizon,
        changes=len(env.segments) - 1,
        thompson=thompson,
        glr_default=glr_default,
        glr_thompson_default=glr_thompson_default,
        best=best,
        best_config=f"{name} {json.dumps(params)}" if params else f"{name} (defaults)",
    )


def report(results: Sequence[ProblemResult]) -> str:
    lines = [
        "| gen. seed | arms | horizon | changes | thompson | best tuned | best / thompson "
        "| glr_ucb default | glr_ucb / best | glr_thompson default | glr_thompson / best |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {r.arms} | {r.horizon} | {r.changes} | {r.thompson:.1f} "
            f"| {r.best:.1f} ({r.best_config}) | {r.best_vs_thompson:.2f} "
            f"| {r.glr_default:.1f} | {r.glr_vs_best:.2f} "
            f"| {r.glr_thompson_default:.1f} | {r.glr_thompson_default / r.best:.2f} |"
        )
    half = [r.best_vs_thompson for r in results]
    glr = [r.glr_vs_best for r in results]
    glr_ts = [r.glr_thompson_default / r.best for r in results]
    lines += [
        "",
        f"best / thompson: median {statistics.median(half):.2f}, worst {max(half):.2f}, "
        f"<= 0.5 on {sum(x <= 0.5 for x in half)}/{len(half)}",
        f"glr_ucb default / best tuned: median {statistics.median(glr):.2f}, "
        f"worst {max(glr):.2f}, <= 1.5 on {sum(x <= 1.5 for x in glr)}/{len(glr)}",
        f"glr_thompson default / best tuned: median {statistics.median(glr_ts):.2f}, "
        f"worst {max(glr_ts):.2f}, <= 1.5 on {sum(x <= 1.5 for x in glr_ts)}/{len(glr_ts)}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--set", choices=("heldout", "train"), default="heldout")
    parser.add_argument("--runs", type=int, default=8, help="runs per problem and config")
    parser.add_argument("--start", type=int, default=0, help="skip the first START problems")
    parser.add_argument("--problems", type=int, default=0, help="then N problems (0: all)")
    args = parser.parse_args(argv)
    seeds = HELDOUT_SEEDS if args.set == "heldout" else TRAIN_SEEDS
    seeds = seeds[args.start :]
    if args.problems:
        seeds = seeds[: args.problems]
    started = time.perf_counter()
    results = []
    for seed in seeds:
        results.append(evaluate(seed, args.runs))
        print(repr(results[-1]), flush=True)
    print(report(results))
    elapsed = time.perf_counter() - started
    print(
        f"\n{len(seeds)} problems x {len(GRID) + 1} configs x {args.runs} runs in {elapsed:.0f} s"
    )


if __name__ == "__main__":
    main()
