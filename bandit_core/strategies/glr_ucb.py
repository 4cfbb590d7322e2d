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

The index of arm ``i`` is ``r_i / n_i + c * sqrt(ln(max(N, 1)) / n_i) + d * ln(max(N, 1))
/ n_i`` with ``(n_i, r_i)`` its since-change counts scaled down to its time-decayed count
at ``half_life`` when that is smaller (so an unplayed arm's count fades, like discounted
UCB) and ``N`` the sum of the ``n_i``. Arms with ``n_i < 1`` come first (uniformly among
themselves), and so does an arm restarted by its own detector until it has
``restart_pulls`` observations since the change; ties are broken at random. Nothing
depends on the horizon: ``c``, ``d``, ``restart_pulls``, ``half_life`` (clock units) and
``alpha`` are fixed numbers.

Why the two small-sample rules: with a small ``c`` the Hoeffding bonus of an arm with a
handful of observations is not optimistic enough. Four early zeros on the best arm, or an
alarm that keeps only its last few (low) rewards, put its index below the runner-up,
and nothing but the rare forced pulls lift it again (on the original project's stationary
benchmark 4 of 40 runs ended above 300 regret that way).

* ``d * ln N / n`` is the range term of the empirical-Bernstein bound (UCB-V, Audibert,
  Munos & Szepesvari, "Exploration-exploitation tradeoff using variance estimates in
  multi-armed bandits", TCS 2009, whose index adds ``3 b ln t / n`` for rewards in
  ``[0, b]``): it dominates at small ``n`` and vanishes faster than the ``sqrt`` term, so
  the long-run exploration is still set by the small ``c``.
* GLR-klUCB (Besson et al.) and M-UCB (Cao, Wen, Kveton & Xie, AISTATS 2019) restart an
  alarmed arm from zero, so the index samples it anew. The fold keeps the rewards after
  the estimated change point instead (ADWIN-style), and after a false alarm these are
  the stretch the GLR split picked *because* it was low. So an alarmed arm is pulled
  until it has ``restart_pulls`` (default the fold's ``RESTART_KEEP``, 48) observations
  since the change, kept ones included: as many as the other arms keep after the soft
  restart.

Defaults (``c`` 0.25, ``d`` 0.1, ``restart_pulls`` 48, ``half_life`` 1024, ``alpha`` 0.01)
were chosen on the repository's abrupt scenarios, the original project's stationary
benchmark and the training problems of :mod:`bandit_core.scenario_gen`, and are reported
on its held-out problems (``python -m bench.strategies_heldout``, ``docs/benchmarks.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, Final

from pydantic import Field

from bandit_core.adaptive import RESTART_KEEP
from bandit_core.state import ArmStats
from bandit_core.strategies._index import IndexPolicy
from bandit_core.strategies.base import (
    ExplorationRate,
    HalfLife,
    NonNegative,
    StrategyParams,
    argmax_set,
)
from bandit_core.strategies.glr_thompson import since_change_counts

MAX_RESTART_PULLS: Final = 10_000


class GlrUcbParams(StrategyParams):
    c: NonNegative = 0.25
    d: Annotated[
        NonNegative, Field(description="a number >= 0 (weight of the small-sample term ln(N) / n)")
    ] = 0.1
    restart_pulls: int = Field(
        default=RESTART_KEEP,
        ge=0,
        le=MAX_RESTART_PULLS,
        description=f"an integer between 0 and {MAX_RESTART_PULLS}",
    )
    half_life: HalfLife = 1024.0
    alpha: ExplorationRate = 0.01


class GlrUcb(IndexPolicy[GlrUcbParams]):
    name: ClassVar[str] = "glr_ucb"
    params_model = GlrUcbParams

    def candidates(self, stats: Sequence[ArmStats], params: GlrUcbParams, now: float) -> list[int]:
        """The untried or faded arms and the arms restarted by their own detector that
        still lack ``restart_pulls`` observations since the change, else the argmax of
        the index."""
        c = params.c
        d = params.d
        refill = params.restart_pulls
        h = params.half_life
        counts = [since_change_counts(s, h, now) for s in stats]
        first = [
            i
            for i, (n, _) in enumerate(counts)
            if n < 1.0 or (stats[i].change_points and stats[i].cp_pulls < refill)
        ]
        if first:
            return first
        total = 0.0
        for n, _ in counts:
            total += n
        log_n = math.log(max(total, 1.0))
        return argmax_set([r / n + c * math.sqrt(log_n / n) + d * log_n / n for n, r in counts])

    def exploration(self, params: GlrUcbParams) -> float:
        return params.alpha
