"""Daypart Thompson sampling: one Beta posterior per arm *and time of day*.

For traffic whose winner follows the clock (the original project's story: blue at 9 AM, red at 2 PM,
green at 6 PM), forgetting the past is the wrong cure: yesterday's 2 PM is the best
evidence about today's 2 PM. This is the contextual-bandit view with the hour of day as a
discrete context, one independent Thompson sampler per context (Agrawal & Goyal, ICML
2013, with a finite context set), with empirical-Bayes pooling (Gelman et al., *Bayesian
Data Analysis*, ch. 5): each daypart's posterior starts from the arm's whole-day rate
worth ``prior_weight`` pseudo-rewards, so a daypart with little data falls back to the
whole-day statistics and one with plenty of data ignores them.

The statistics are the fold's fixed 24 hour-of-the-UTC-day buckets
(:mod:`bandit_core.adaptive`, ``ts`` in seconds, each decayed with a one-week half-life);
``buckets`` groups consecutive hours (24 = hourly, 4 = six-hour dayparts, 1 = whole day).
The period is therefore fixed to one day: a param could not change how the fold buckets
events (replay must not depend on params).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Final

from pydantic import Field, field_validator

from bandit_core.adaptive import DAY, DAYPART_HALF_LIFE, DAYPART_WIDTH
from bandit_core.adaptive_shape import DAYPART_BUCKETS
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import BetaThompson
from bandit_core.strategies.base import BetaPrior, StrategyParams

_VALID_BUCKETS: Final = tuple(b for b in range(1, DAYPART_BUCKETS + 1) if DAYPART_BUCKETS % b == 0)
_RATE: Final = math.log(2.0) / DAYPART_HALF_LIFE


class DaypartThompsonParams(StrategyParams):
    buckets: int = Field(
        default=DAYPART_BUCKETS,
        ge=1,
        le=DAYPART_BUCKETS,
        description=f"one of {', '.join(map(str, _VALID_BUCKETS))} (dayparts per UTC day)",
    )
    prior_weight: float = Field(
        default=10.0,
        ge=0.0,
        allow_inf_nan=False,
        description="a number >= 0 (pseudo-rewards of the whole-day rate)",
    )
    neighbour_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="a number between 0 and 1 (weight of the hours next to the daypart)",
    )
    prior_alpha: BetaPrior = 1.0
    prior_beta: BetaPrior = 1.0

    @field_validator("buckets")
    @classmethod
    def _divides_the_day(cls, v: int) -> int:
        if DAYPART_BUCKETS % v:
            raise ValueError(f"must divide {DAYPART_BUCKETS}")
        return v


def _part_weights(first: int, width: int, neighbour_weight: float) -> list[float]:
    """Weight of each hour bucket in the daypart ``[first, first + width)``: 1 inside,
    ``neighbour_weight ** d`` at ``d`` buckets (circularly) outside it."""
    out = [0.0] * DAYPART_BUCKETS
    for h in range(DAYPART_BUCKETS):
        off = (h - first) % DAYPART_BUCKETS
        if off < width:
            out[h] = 1.0
        elif neighbour_weight > 0.0:
            d = min(off - width + 1, DAYPART_BUCKETS - off)
            out[h] = neighbour_weight**d
    return out


class DaypartThompson(BetaThompson[DaypartThompsonParams]):
    name: ClassVar[str] = "daypart_thompson"
    params_model = DaypartThompsonParams

    def posteriors(
        self, stats: Sequence[ArmStats], params: DaypartThompsonParams, now: float
    ) -> tuple[list[float], list[float]]:
        """Beta ``(alphas, betas)`` of each arm for the daypart that contains ``now``."""
        groups = params.buckets
        w = params.prior_weight
        a0 = params.prior_alpha
        b0 = params.prior_beta
        width = DAYPART_BUCKETS // groups
        first = int((now % DAY) // DAYPART_WIDTH) // width * width
        alphas: list[float] = []
        betas: list[float] = []
        weights = _part_weights(first, width, params.neighbour_weight)
        for s in stats:
            day_n = day_s = part_n = part_s = 0.0
            for h in range(DAYPART_BUCKETS):
                n = s.hour_pulls[h]
                if n <= 0.0:
                    continue
                dt = now - s.hour_ts[h]
                f = math.exp(-_RATE * dt) if dt > 0.0 else 1.0
                n *= f
                r = s.hour_sum[h] * f
                day_n += n
                day_s += r
                wh = weights[h]
                if wh:
                    part_n += wh * n
                    part_s += wh * r
            rate = (a0 + day_s) / (a0 + b0 + day_n)
            m = min(w, day_n)  # never more pseudo-data than the arm has real data
            alphas.append(a0 + m * rate + max(part_s, 0.0))
            betas.append(b0 + m * (1.0 - rate) + max(part_n - part_s, 0.0))
        return alphas, betas
