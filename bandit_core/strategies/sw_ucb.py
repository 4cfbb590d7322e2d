"""Sliding-window UCB (Garivier & Moulines, "On upper-confidence bound policies for
switching bandit problems", ALT 2011).

Only rewards of the last ``window`` time units count: the index is
``mean_w + c * sqrt(ln(min(t_w, window)) / n_w)`` with ``n_w`` the arm's rewards in the
window and ``t_w`` all arms' rewards in it. Arms without a reward in the window come first
(uniformly among themselves). The window is read from the fold's fixed bucketed summary
(:mod:`bandit_core.adaptive`), so its resolution is one bucket and its range is bounded.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from bandit_core.adaptive import MAX_WINDOW, MIN_WINDOW, windowed
from bandit_core.state import ArmStats
from bandit_core.strategies.base import (
    NonNegative,
    Strategy,
    StrategyParams,
    argmax_set,
    check_arms,
    uniform_over,
)


class SlidingWindowUcbParams(StrategyParams):
    window: float = Field(
        default=512.0,
        ge=MIN_WINDOW,
        le=MAX_WINDOW,
        allow_inf_nan=False,
        description=f"a number between {MIN_WINDOW:g} and {MAX_WINDOW:g} (time units)",
    )
    c: NonNegative = 0.5


def _candidates(stats: Sequence[ArmStats], params: SlidingWindowUcbParams, now: float) -> list[int]:
    window = params.window
    c = params.c
    counts = [windowed(s, window, now) for s in stats]
    untried = [i for i, (n, _) in enumerate(counts) if n <= 0.0]
    if untried:
        return untried
    total = sum(n for n, _ in counts)
    log_t = math.log(max(min(total, window), 1.0))
    return argmax_set([r / n + c * math.sqrt(log_t / n) for n, r in counts])


class SlidingWindowUcb(Strategy[SlidingWindowUcbParams]):
    name: ClassVar[str] = "sw_ucb"
    params_model = SlidingWindowUcbParams

    def choose(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: SlidingWindowUcbParams,
        rng: random.Random,
        now: float,
    ) -> int:
        check_arms(arm_ids, stats)
        best = _candidates(stats, params, now)
        return best[0] if len(best) == 1 else rng.choice(best)

    def propensities(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: SlidingWindowUcbParams,
        rng: random.Random,
        now: float,
        samples: int = 1000,
    ) -> list[float]:
        k = check_arms(arm_ids, stats)
        return uniform_over(k, _candidates(stats, params, now))
