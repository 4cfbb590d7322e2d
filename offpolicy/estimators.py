"""Off-policy estimators (numpy, vectorised): IPS, self-normalised IPS, doubly robust.

Inputs, one entry per logged decision ``i``: the reward ``r_i``, the logged arm ``a_i``,
the logging propensity ``p_i`` (what the decider logged: the probability that its policy
picked ``a_i``) and the target policy's probabilities ``pi_i(.)`` over all arms. The
importance weight is ``w_i = pi_i(a_i) / p_i``.

* **IPS**: ``mean(w_i r_i)``. Unbiased when ``p_i > 0`` wherever ``pi_i > 0``.
* **SNIPS**: ``sum(w_i r_i) / sum(w_i)``. Slightly biased, much lower variance when the
  weights are large; invariant to a constant scaling of the weights.
* **DR**: ``mean( sum_a pi_i(a) q(a) + w_i (r_i - q(a_i)) )`` with a direct model ``q``:
  the per-arm mean logged reward, *cross-fitted*: the data are split in ``folds``
  interleaved folds (``i % folds``) and the ``q`` used for sample ``i`` is fitted on the
  other folds only. So ``q`` never saw ``r_i``, the correction term keeps DR unbiased
  whatever the quality of ``q``, and the per-sample terms stay (close to) independent,
  which the variance estimate below assumes. Interleaved rather than contiguous folds:
  a contiguous split would fit ``q`` on a different time period.

Confidence intervals are the normal approximation with the sample variance of each
estimator's per-sample terms (for SNIPS the delta method: terms ``w_i (r_i - V)`` divided
by ``mean(w)``). Logged bandit data are adaptively collected, so the terms are not
i.i.d. but a martingale difference sequence around the per-decision values; the
martingale central limit theorem gives the same normal interval. A bootstrap would cost
hundreds of re-evaluations and shares the interval's real weakness, heavy-tailed
weights, which the support warnings below report instead. Coverage is checked on
simulated logs in ``tests/unit/test_offpolicy_coverage.py``.

The effective sample size is Kish's ``(sum w)² / sum w²``: the number of on-policy
samples carrying the same information as the weighted ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_CONFIDENCE: Final = 0.95
DEFAULT_FOLDS: Final = 2

#: Warn when the effective sample size is below this fraction of the decisions…
MIN_ESS_FRACTION: Final = 0.1
#: …or below this absolute number.
MIN_ESS: Final = 100.0
#: Warn when one decision carries more than this share of the total weight.
MAX_WEIGHT_SHARE: Final = 0.05
#: Warn when the target puts at least this share of its mass on an arm…
MIN_TARGET_MASS: Final = 0.01
#: …that was served fewer than this many times in the evaluated decisions.
MIN_ARM_DECISIONS: Final = 30
#: Warn when the mean weight (1 in expectation under full support) is off by more.
WEIGHT_MEAN_TOLERANCE: Final = 0.1
#: Warn when the target puts mass on logged decisions whose propensity is below this.
TINY_PROPENSITY: Final = 1e-3


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimator's value, standard error and confidence interval (None if undefined)."""

    estimator: str
    value: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True, slots=True)
class ArmSupport:
    """How much the target relies on one arm versus how often the logger served it."""

    arm_id: str
    logged_decisions: int
    logged_share: float
    target_share: float
    mean_reward: float | None


@dataclass(frozen=True, slots=True)
class Estimates:
    """Everything the estimators say about one target policy on one data set."""

    n: int
    confidence: float
    estimates: list[Estimate]
    logged: Estimate
    ess: float
    weight_mean: float
    weight_max: float
    max_weight_share: float
    arms: list[ArmSupport]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("ess", "weight_mean", "weight_max", "max_weight_share"):
            out[key] = _finite(out[key])
        return out


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _interval(name: str, value: float, se: float, z: float) -> Estimate:
    if not math.isfinite(value):
        return Estimate(name, None, None, None, None)
    if not math.isfinite(se):
        return Estimate(name, value, None, None, None)
    return Estimate(name, value, se, value - z * se, value + z * se)


def _mean_estimate(name: str, terms: FloatArray, z: float) -> Estimate:
    n = terms.size
    if n == 0:
        return Estimate(name, None, None, None, None)
    value = float(terms.mean())
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return _interval(name, value, se, z)


def cross_fitted_arm_means(
    rewards: FloatArray, arms: IntArray, n_arms: int, folds: int = DEFAULT_FOLDS
) -> FloatArray:
    """``q[i, a]``: the mean logged reward of arm ``a`` outside sample ``i``'s fold.

    An arm without data outside the fold gets that complement's overall mean (0 if empty).
    """
    n = rewards.size
    if folds < 2 or n < folds:
        folds = 1
    fold_of = np.arange(n) % folds
    q = np.empty((n, n_arms))
    total_sum = np.bincount(arms, weights=rewards, minlength=n_arms)
    total_cnt = np.bincount(arms, minlength=n_arms).astype(np.float64)
    for f in range(folds):
        mask = fold_of == f
        if folds == 1:
            s, c = total_sum, total_cnt
        else:
            s = total_sum - np.bincount(arms[mask], weights=rewards[mask], minlength=n_arms)
            c = total_cnt - np.bincount(arms[mask], minlength=n_arms)
        pooled = float(s.sum() / c.sum()) if c.sum() > 0 else 0.0
        means = np.where(c > 0, s / np.maximum(c, 1.0), pooled)
        q[mask] = means
    return q


def estimate(
    rewards: FloatArray,
    arms: IntArray,
    logging_p: FloatArray,
    target: FloatArray,
    arm_ids: tuple[str, ...] | list[str],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    folds: int = DEFAULT_FOLDS,
) -> Estimates:
    """IPS, SNIPS and DR of the target policy, the logged value, ESS and support warnings.

    ``target`` has shape ``(n, len(arm_ids))``, rows summing to 1 (0 for arms that did
    not exist at that decision); ``arms`` indexes ``arm_ids``.
    """
    z = _z(confidence)
    r = np.asarray(rewards, dtype=np.float64)
    a = np.asarray(arms, dtype=np.int64)
    p = np.asarray(logging_p, dtype=np.float64)
    pi = np.asarray(target, dtype=np.float64)
    n = r.size
    k = len(arm_ids)
    if a.shape != (n,) or p.shape != (n,) or pi.shape != (n, k):
        raise ValueError(
            f"shape mismatch: rewards {r.shape}, arms {a.shape}, propensities {p.shape}, "
            f"target {pi.shape} for {k} arms"
        )
    if n and (a.min() < 0 or a.max() >= k):
        raise ValueError("arm index out of range")
    if n and not (np.all(p > 0.0) and np.all(p <= 1.0)):
        raise ValueError("logging propensities must be in (0, 1]")
    warnings: list[str] = []
    if n == 0:
        empty = [Estimate(name, None, None, None, None) for name in ("ips", "snips", "dr")]
        return Estimates(
            n=0,
            confidence=confidence,
            estimates=empty,
            logged=Estimate("logged", None, None, None, None),
            ess=0.0,
            weight_mean=math.nan,
            weight_max=math.nan,
            max_weight_share=math.nan,
            arms=[ArmSupport(arm, 0, 0.0, 0.0, None) for arm in arm_ids],
            warnings=["no decisions to evaluate"],
        )
    rows = np.arange(n)
    pi_logged = pi[rows, a]
    w = pi_logged / p
    w_sum = float(w.sum())
    w_sq = float((w * w).sum())

    ips = _mean_estimate("ips", w * r, z)

    if w_sum > 0.0:
        w_mean = w_sum / n
        v_sn = float((w * r).sum() / w_sum)
        resid = w * (r - v_sn)
        se_sn = float(resid.std(ddof=1) / math.sqrt(n) / w_mean) if n > 1 else math.nan
        snips = _interval("snips", v_sn, se_sn, z)
    else:
        snips = Estimate("snips", None, None, None, None)
        warnings.append(
            "the target never picks any logged arm at its logged decision (all weights 0): "
            "SNIPS is undefined and IPS/DR rest on the direct model alone"
        )

    q = cross_fitted_arm_means(r, a, k, folds)
    dr_terms = (pi * q).sum(axis=1) + w * (r - q[rows, a])
    dr = _mean_estimate("dr", dr_terms, z)
    logged = _mean_estimate("logged", r, z)

    ess = w_sum**2 / w_sq if w_sq > 0.0 else 0.0
    w_max = float(w.max())
    max_share = w_max / w_sum if w_sum > 0.0 else math.nan

    counts = np.bincount(a, minlength=k)
    sums = np.bincount(a, weights=r, minlength=k)
    target_mass = pi.sum(axis=0) / n
    support = [
        ArmSupport(
            arm_id=arm,
            logged_decisions=int(counts[j]),
            logged_share=float(counts[j] / n),
            target_share=float(target_mass[j]),
            mean_reward=float(sums[j] / counts[j]) if counts[j] else None,
        )
        for j, arm in enumerate(arm_ids)
    ]

    if n < 2:
        warnings.append("fewer than 2 decisions: no confidence interval")
    if w_sum > 0.0 and ess < max(MIN_ESS_FRACTION * n, MIN_ESS):
        warnings.append(
            f"thin support: effective sample size {ess:.1f} of {n} decisions "
            f"(below {MIN_ESS_FRACTION:.0%} of them or {MIN_ESS:g}); the intervals are "
            "unreliable"
        )
    if w_sum > 0.0 and n >= 20 and max_share > MAX_WEIGHT_SHARE:
        warnings.append(
            f"thin support: one decision carries {max_share:.1%} of the total weight "
            f"(max weight {w_max:.1f})"
        )
    for s in support:
        if s.target_share >= MIN_TARGET_MASS and s.logged_decisions < MIN_ARM_DECISIONS:
            warnings.append(
                f"thin support: the target puts {s.target_share:.1%} of its mass on arm "
                f"{s.arm_id!r}, served only {s.logged_decisions} times in the log"
            )
    w_se = float(w.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    if n >= 100 and abs(w_sum / n - 1.0) > max(WEIGHT_MEAN_TOLERANCE, 4.0 * w_se):
        warnings.append(
            f"mean importance weight {w_sum / n:.3f} (expected 1): the target puts mass on "
            "arms the logger (almost) never served, or the logged propensities are off"
        )
    tiny = int(np.count_nonzero((p < TINY_PROPENSITY) & (pi_logged > 0.0)))
    if tiny:
        warnings.append(
            f"thin support: {tiny} decisions the target would make had a logging "
            f"propensity below {TINY_PROPENSITY:g} (weights above {1 / TINY_PROPENSITY:g})"
        )
    return Estimates(
        n=n,
        confidence=confidence,
        estimates=[ips, snips, dr],
        logged=logged,
        ess=float(ess),
        weight_mean=w_sum / n,
        weight_max=w_max,
        max_weight_share=float(max_share),
        arms=support,
        warnings=warnings,
    )
