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
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from bandit_core.adaptive import MAX_WINDOW, MIN_WINDOW, windowed
from bandit_core.state import ArmStats
from bandit_core.strategies._index import IndexPolicy
from bandit_core.strategies.base import NonNegative, StrategyParams, argmax_set


class SlidingWindowUcbParams(StrategyParams):
    window: float = Field(
        default=512.0,
        ge=MIN_WINDOW,
        le=MAX_WINDOW,
        allow_inf_nan=False,
        description=f"a number between {MIN_WINDOW:g} and {MAX_WINDOW:g} (time units)",
    )
    c: NonNegative = 0.5


class SlidingWindowUcb(IndexPolicy[SlidingWindowUcbParams]):
    name: ClassVar[str] = "sw_ucb"
    params_model = SlidingWindowUcbParams

    def candidates(
        self, stats: Sequence[ArmStats], params: SlidingWindowUcbParams, now: float
    ) -> list[int]:
        window = params.window
        c = params.c
        counts = [windowed(s, window, now) for s in stats]
        untried = [i for i, (n, _) in enumerate(counts) if n <= 0.0]
        if untried:
            return untried
        total = sum(n for n, _ in counts)
        log_t = math.log(max(min(total, window), 1.0))
        return argmax_set([r / n + c * math.sqrt(log_t / n) for n, r in counts])
