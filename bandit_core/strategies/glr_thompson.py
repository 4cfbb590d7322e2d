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

from typing import ClassVar

from bandit_core.adaptive import decayed
from bandit_core.state import ArmStats
from bandit_core.strategies._beta import HalfLifeThompson
from bandit_core.strategies.base import BetaPrior, ExplorationRate, HalfLife, StrategyParams


class GlrThompsonParams(StrategyParams):
    half_life: HalfLife = 2048.0
    alpha: ExplorationRate = 0.01
    prior_alpha: BetaPrior = 1.0
    prior_beta: BetaPrior = 1.0


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


class GlrThompson(HalfLifeThompson):
    """Beta posteriors from each arm's :func:`since_change_counts`."""

    name: ClassVar[str] = "glr_thompson"
    params_model = GlrThompsonParams
    arm_counts = staticmethod(since_change_counts)

    def exploration(self, params: GlrThompsonParams) -> float:
        return params.alpha
