"""Change-detection Thompson sampling: Thompson on the statistics since the last detected
change point, plus a little forced uniform exploration.

This is the GLR-klUCB scheme of Besson & Kaufmann, "Efficient change-point detection for
tackling piecewise-stationary bandits" (JMLR 2022) with a Beta-posterior (Thompson) index
instead of kl-UCB, as in the change-detection Thompson framework of Ghatak (IEEE TC 2020):

* the detector is the per-arm Bernoulli GLR test kept by the fold with fixed constants
  (:mod:`bandit_core.adaptive`); an alarm keeps the alarmed arm's rewards after the
  estimated change point and shrinks every other arm's since-change statistics to a few
  dozen observations (a soft global restart: when the best arm changes, the others' old
  means are weak evidence, not none);
* the forced exploration rate ``alpha`` keeps every arm sampled, so a change on an arm
  that is currently losing is detected too (their ``alpha``; the theory's value
  ``sqrt(K ln T / T)`` needs the horizon, so the default is a fixed 1 %);
* a losing arm is sampled too rarely for its detector to fire quickly, so its
  since-change counts are also capped by its time-decayed count with a long
  ``half_life`` (default 2048 time units): an unplayed arm's posterior slowly widens.

Defaults were chosen on the repository's abrupt scenarios and the training problems of
:mod:`bandit_core.scenario_gen` and are reported on its held-out problems
(``python -m bench.strategies_heldout``, ``docs/benchmarks.md``). ``half_life`` is in the
clock's unit (seconds in the service): 2048 s suits storefront traffic of a reward a
second or more; at one reward a minute use about a day (86400), or ``daypart_thompson``
when the winner follows the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from pydantic import Field

from bandit_core.adaptive import MAX_HALF_LIFE, MIN_HALF_LIFE, decayed
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import BetaThompson
from bandit_core.strategies.base import StrategyParams

DEFAULT_ALPHA: Final = 0.01
DEFAULT_PRIOR: Final = 1.0
DEFAULT_HALF_LIFE: Final = 2048.0


class GlrThompsonParams(StrategyParams):
    RULES: ClassVar[dict[str, str]] = {
        **StrategyParams.RULES,
        "alpha": "a number between 0 and 0.5 (forced exploration rate)",
        "half_life": f"a number between {MIN_HALF_LIFE:g} and {MAX_HALF_LIFE:g} (time units)",
        "prior_alpha": "a number > 0",
        "prior_beta": "a number > 0",
    }

    half_life: float = Field(
        default=DEFAULT_HALF_LIFE, ge=MIN_HALF_LIFE, le=MAX_HALF_LIFE, allow_inf_nan=False
    )
    alpha: float = Field(default=DEFAULT_ALPHA, ge=0.0, le=0.5, allow_inf_nan=False)
    prior_alpha: float = Field(default=DEFAULT_PRIOR, gt=0.0, allow_inf_nan=False)
    prior_beta: float = Field(default=DEFAULT_PRIOR, gt=0.0, allow_inf_nan=False)


def since_change_counts(stats: ArmStats, half_life: float, now: float) -> tuple[float, float]:
    """An arm's ``(pulls, reward_sum)`` since its last change point, scaled down to its
    decayed count at ``half_life`` when that is smaller (an unplayed arm fades)."""
    n = float(stats.cp_pulls)
    r = stats.cp_sum
    if n > 0.0:
        dn, _ = decayed(stats, half_life, now)
        if dn < n:
            r *= dn / n
            n = dn
    return n, r


def since_change_posteriors(
    stats: Sequence[ArmStats], params: Mapping[str, Any], now: float
) -> tuple[list[float], list[float]]:
    """Beta ``(alphas, betas)`` from each arm's :func:`since_change_counts`."""
    a0 = float(params.get("prior_alpha", DEFAULT_PRIOR))
    b0 = float(params.get("prior_beta", DEFAULT_PRIOR))
    h = float(params.get("half_life", DEFAULT_HALF_LIFE))
    alphas: list[float] = []
    betas: list[float] = []
    for s in stats:
        n, r = since_change_counts(s, h, now)
        alphas.append(a0 + max(r, 0.0))
        betas.append(b0 + max(n - r, 0.0))
    return alphas, betas


class GlrThompson(BetaThompson):
    name: ClassVar[str] = "glr_thompson"
    params_model: ClassVar[type[StrategyParams]] = GlrThompsonParams

    def posteriors(
        self, stats: Sequence[ArmStats], params: Mapping[str, Any], now: float
    ) -> tuple[list[float], list[float]]:
        return since_change_posteriors(stats, params, now)

    def exploration(self, params: Mapping[str, Any]) -> float:
        return float(params.get("alpha", DEFAULT_ALPHA))
