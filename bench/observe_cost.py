"""Microseconds per :func:`bandit_core.adaptive.observe` (the reward consumer's per-reward
adaptive update), pure Python, no I/O.

``python -m bench.observe_cost [--rewards N] [--arms K] [--repeats R]`` folds N Bernoulli
(p = 0.1) rewards over K arms, 10 ms apart, through ``observe`` (+ ``restart_others`` on
an alarm, as the fold does) and prints the best of R repeats. Compare commits by running
it on each; on a shared machine run them back to back.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from bandit_core.adaptive import observe, restart_others
from bandit_core.state import ArmStats


def us_per_observe(rewards: int, arms: int, repeats: int) -> float:
    rng = random.Random(1)
    stream = [(rng.randrange(arms), 1.0 if rng.random() < 0.1 else 0.0) for _ in range(rewards)]
    best = float("inf")
    for _ in range(repeats):
        stats = [ArmStats() for _ in range(arms)]
        ts = 1.7e9
        started = time.perf_counter()
        for i, r in stream:
            ts += 0.01
            s = stats[i]
            if observe(s, r, ts) is not None:
                restart_others(stats, s)
        best = min(best, time.perf_counter() - started)
    return best / rewards * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="µs per adaptive observe")
    parser.add_argument("--rewards", type=int, default=100_000)
    parser.add_argument("--arms", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cost = us_per_observe(args.rewards, args.arms, args.repeats)
    print(f"{cost:.2f} µs per observe ({args.rewards} rewards, {args.arms} arms)")


if __name__ == "__main__":
    main()
