"""Sample-ratio mismatch (SRM): were units assigned the arms the allocations promised?

A bandit moves its weights every allocation version, so comparing the pooled counts
with one set of weights would alarm on the bandit's own reweighting. The test is
allocation-version aware: each version ``v`` assigned ``n_v`` units, ``o_v`` per arm,
under weights ``w_v``; under correct assignment ``o_v`` is multinomial(``n_v``,
``w_v``), independently per version, so

    d = Σ_v (o_v - n_v w_v)                 (observed minus expected, per arm)
    Σ = Σ_v n_v (diag(w_v) - w_v w_vᵀ)      (its covariance)
    X² = dᵀ Σ⁺ d,  df = rank(Σ)

and ``X²`` is asymptotically χ² with ``df`` degrees of freedom (``Σ⁺``: the
pseudo-inverse; every ``w_v`` sums to 1, so the all-ones direction carries no
variance and is left out). An alarm is ``p < ALARM_P``.

Two guards keep the χ² approximation honest. Arms whose expected count over all
versions is small (a bandit starves its losers) are pooled into one cell, a linear map
``A`` of ``d`` and ``Σ`` (``A d``, ``A Σ Aᵀ``) that keeps the test exact in form: a
count of 3 where 0.2 were expected is not a one-in-a-billion event, which χ² would
claim. And a unit counted on an arm its version gave no weight (or did not have) is
impossible under correct assignment: that is reported as such (``p = 0``, no ``X²``,
the reason naming the arm), since the
pseudo-inverse would silently ignore it.

The sum assumes the versions' counts are independent, which holds because each unit
is counted once, at its first decision (the fold's ``n:`` key): a first exposure under
version ``v`` is a draw from ``w_v``. Counting a returning unit again in every version
it visits (the ``consistent`` mode and local decisions keep a unit's arm correlated
across versions: the rule moves as few units as it can) would make ``d`` vary far more
than ``Σ`` says, and correct assignment would alarm.

The χ² survival function is the regularised upper incomplete gamma function
``Q(df/2, X²/2)`` (:func:`gamma_q`), implemented here (series and continued fraction,
Numerical Recipes §6.2) so that the core does not need scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

#: An SRM alarm: the counts are this unlikely under correct assignment.
ALARM_P: Final = 0.001
#: Most arms the check runs for (the covariance is arms x arms).
MAX_ARMS: Final = 100
#: Arms (or the pool of small ones) expected fewer units than this over all versions are
#: pooled: the usual validity rule of Pearson's χ² (every expected count at least 5).
MIN_EXPECTED: Final = 5.0
#: Relative eigenvalue below which a direction of ``Σ`` counts as no variance (rank).
_RANK_TOL: Final = 1e-9
_GAMMA_EPS: Final = 1e-15
_GAMMA_MAX_ITER: Final = 10_000
_TINY: Final = 1e-300


def gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function ``Q(a, x) = Γ(a, x) / Γ(a)``.

    ``x < a + 1``: ``1 - P(a, x)`` from P's power series, which converges fast there;
    otherwise Q's continued fraction (modified Lentz), which converges fast in the
    tail, where ``1 - P`` would lose every digit to cancellation.
    """
    if not (a > 0.0 and math.isfinite(a)):
        raise ValueError(f"gamma_q needs a finite a > 0, got {a!r}")
    if math.isnan(x) or x < 0.0:
        raise ValueError(f"gamma_q needs x >= 0, got {x!r}")
    if x == 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(_GAMMA_MAX_ITER):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _GAMMA_EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _GAMMA_MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _GAMMA_EPS:
            break
    return min(1.0, math.exp(log_prefactor) * h)


def chi2_sf(x: float, df: int) -> float:
    """P(χ²_df > x): the p-value of a χ² statistic."""
    if df < 1:
        raise ValueError(f"a chi-square distribution needs df >= 1, got {df}")
    return gamma_q(df / 2.0, x / 2.0)


@dataclass(frozen=True, slots=True)
class VersionCounts:
    """One allocation version: its arms and weights, and the units counted per arm."""

    arm_ids: Sequence[str]
    weights: Sequence[float]
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class SrmResult:
    """The check's outcome. ``p_value``/``chi2``/``df`` are ``None`` when it cannot
    run, with ``reason`` saying why; ``reason`` also explains a ``p_value`` of 0 for
    impossible assignments. ``units`` and ``versions``: what the test covered."""

    p_value: float | None
    chi2: float | None
    df: int | None
    units: int
    versions: int
    reason: str | None = None
    #: How the versions were combined: ``pooled`` (one test over the versions' sum).
    method: str = "pooled"

    @property
    def alarm(self) -> bool:
        """``p < ALARM_P``: the assignment does not follow the allocations."""
        return self.p_value is not None and self.p_value < ALARM_P


def srm_test(versions: Sequence[VersionCounts]) -> SrmResult:
    """The allocation-version-aware SRM test over ``versions`` (see the module doc),
    each unit counted once, under the version of its first decision."""
    return _pooled(versions)


def _pooled(versions: Sequence[VersionCounts]) -> SrmResult:
    units = sum(sum(v.counts.values()) for v in versions)
    arm_index: dict[str, int] = {}
    for v in versions:
        for arm in (*v.arm_ids, *v.counts):
            arm_index.setdefault(arm, len(arm_index))
    k = len(arm_index)
    if units == 0:
        return SrmResult(None, None, None, 0, len(versions), "no units counted yet")
    if k > MAX_ARMS:
        return SrmResult(
            None, None, None, units, len(versions), f"{k} arms: computed for at most {MAX_ARMS}"
        )
    d = np.zeros(k)
    expected = np.zeros(k)
    cov = np.zeros((k, k))
    for v in versions:
        n = sum(v.counts.values())
        if n == 0:
            continue
        w = np.zeros(k)
        for arm, weight in zip(v.arm_ids, v.weights, strict=True):
            w[arm_index[arm]] = weight
        total = w.sum()
        if total <= 0.0:
            raise ValueError("an allocation's weights must not all be zero")
        w /= total  # stored weights sum to 1 up to rounding
        o = np.zeros(k)
        for arm, count in v.counts.items():
            o[arm_index[arm]] = count
            if count and w[arm_index[arm]] == 0.0:
                return SrmResult(
                    0.0,
                    None,
                    None,
                    units,
                    len(versions),
                    f"{count} unit(s) assigned arm {arm!r}, which its allocation "
                    "version gave no weight",
                )
        d += o - n * w
        expected += n * w
        cov += n * (np.diag(w) - np.outer(w, w))
    pool = _pooling(expected)
    if pool.shape[0] < 2:
        return SrmResult(
            None,
            None,
            None,
            units,
            len(versions),
            f"too few units: fewer than two arms expect {MIN_EXPECTED:g} or more",
        )
    d_p = pool @ d
    cov_p = pool @ cov @ pool.T
    eigvals, eigvecs = np.linalg.eigh(cov_p)
    keep = eigvals > _RANK_TOL * max(float(eigvals.max()), _TINY)
    df = int(keep.sum())
    if df == 0:
        return SrmResult(None, None, None, units, len(versions), "no variance to test")
    proj = eigvecs[:, keep].T @ d_p
    chi2 = float(np.sum(proj * proj / eigvals[keep]))
    return SrmResult(chi2_sf(chi2, df), chi2, df, units, len(versions))


def _pooling(expected: np.ndarray) -> np.ndarray:
    """The 0/1 matrix mapping arms to cells: arms expecting at least
    :data:`MIN_EXPECTED` units keep their own cell, the others share one; a pool that
    still expects too few joins the smallest large arm."""
    k = expected.shape[0]
    large = [i for i in range(k) if expected[i] >= MIN_EXPECTED]
    small = [i for i in range(k) if expected[i] < MIN_EXPECTED]
    cells: list[list[int]] = [[i] for i in large]
    if small:
        if float(expected[small].sum()) >= MIN_EXPECTED or not cells:
            cells.append(small)
        else:
            smallest = min(range(len(cells)), key=lambda c: float(expected[cells[c][0]]))
            cells[smallest] = cells[smallest] + small
    pool = np.zeros((len(cells), k))
    for row, members in enumerate(cells):
        pool[row, members] = 1.0
    return pool
