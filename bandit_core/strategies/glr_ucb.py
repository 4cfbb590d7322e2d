"""Change-detection UCB: a UCB index with a small exploration constant on the statistics
since the last detected change point, plus a little forced uniform exploration.

GLR-UCB of Besson, Kaufmann, Maillard & Seznec, "Efficient change-point detection for
tackling piecewise-stationary bandits" (JMLR 2022): per-arm Bernoulli GLR detectors
restart the statistics an index is computed on, and forced exploration (their
``alpha``) keeps every arm sampled so that a change on a losing arm is seen too.

Why an index and not Thompson (:mod:`~bandit_core.strategies.glr_thompson`): a losing
arm whose rewards rise must be pulled for its detector to fire. A Beta posterior on a
few dozen pulls of a low-rate arm almost never draws above the leader, so the arm waits
for its counts to fade; the bonus ``c * sqrt(ln(N) / n)`` grows as ``n`` fades and keeps
each arm at about ``c**2 ln(N) / gap**2`` effective pulls, which is what lets a sliding
window UCB with a small ``c`` (Garivier & Moulines 2011) react quickly, while the GLR
restarts let the memory stay long when nothing changes.

The index of arm ``i`` is ``r_i / n_i + c * sqrt(ln(max(N, 1)) / n_i)`` with ``(n_i,
r_i)`` its since-change counts scaled down to its time-decayed count at ``half_life``
when that is smaller (so an unplayed arm's count fades, like discounted UCB) and ``N``
the sum of the ``n_i``. Arms with ``n_i < 1`` come first (uniformly among themselves);
ties are broken at random. Nothing depends on the horizon: ``c``, ``half_life`` (clock
units) and ``alpha`` are fixed numbers.

Defaults (``c`` 0.25, ``half_life`` 1024, ``alpha`` 0.01) were chosen on the
repository's abrupt scenarios and the training problems of
:mod:`bandit_core.scenario_gen`, and are reported on its held-out problems
(``python -m bench.strategies_heldout``, ``docs/benchmarks.md``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from pydantic import Field

from bandit_core.adaptive import MAX_HALF_LIFE, MIN_HALF_LIFE
from bandit_core.state import ArmStats
from bandit_core.strategies.base import (
    Strategy,
    StrategyParams,
    argmax_set,
    check_arms,
    uniform_over,
)
from bandit_core.strategies.glr_thompson import since_change_counts

DEFAULT_C: Final = 0.25
DEFAULT_HALF_LIFE: Final = 1024.0
DEFAULT_ALPHA: Final = 0.01


class GlrUcbParams(StrategyParams):
    RULES: ClassVar[dict[str, str]] = {
        **StrategyParams.RULES,
        "c": "a number >= 0",
        "half_life": f"a number between {MIN_HALF_LIFE:g} and {MAX_HALF_LIFE:g} (time units)",
        "alpha": "a number between 0 and 0.5 (forced exploration rate)",
    }

    c: float = Field(default=DEFAULT_C, ge=0.0, allow_inf_nan=False)
    half_life: float = Field(
        default=DEFAULT_HALF_LIFE, ge=MIN_HALF_LIFE, le=MAX_HALF_LIFE, allow_inf_nan=False
    )
    alpha: float = Field(default=DEFAULT_ALPHA, ge=0.0, le=0.5, allow_inf_nan=False)


def glr_ucb_candidates(
    stats: Sequence[ArmStats], params: Mapping[str, Any], now: float
) -> list[int]:
    """The arms the index picks from (all tied): the untried ones, else the argmax."""
    c = float(params.get("c", DEFAULT_C))
    h = float(params.get("half_life", DEFAULT_HALF_LIFE))
    counts = [since_change_counts(s, h, now) for s in stats]
    untried = [i for i, (n, _) in enumerate(counts) if n < 1.0]
    if untried:
        return untried
    total = 0.0
    for n, _ in counts:
        total += n
    log_n = math.log(max(total, 1.0))
    return argmax_set([r / n + c * math.sqrt(log_n / n) for n, r in counts])


class GlrUcb(Strategy):
    name: ClassVar[str] = "glr_ucb"
    params_model: ClassVar[type[StrategyParams]] = GlrUcbParams

    def choose(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: Mapping[str, Any],
        rng: random.Random,
        now: float,
    ) -> int:
        k = check_arms(arm_ids, stats)
        alpha = float(params.get("alpha", DEFAULT_ALPHA))
        if alpha and rng.random() < alpha:
            return rng.randrange(k)
        best = glr_ucb_candidates(stats, params, now)
        return best[0] if len(best) == 1 else rng.choice(best)

    def propensities(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: Mapping[str, Any],
        rng: random.Random,
        now: float,
        samples: int = 1000,
    ) -> list[float]:
        """Closed form: ``alpha / K`` for every arm plus ``1 - alpha`` spread over the
        index's tied candidates."""
        k = check_arms(arm_ids, stats)
        alpha = float(params.get("alpha", DEFAULT_ALPHA))
        p = uniform_over(k, glr_ucb_candidates(stats, params, now))
        return [alpha / k + (1.0 - alpha) * x for x in p]
