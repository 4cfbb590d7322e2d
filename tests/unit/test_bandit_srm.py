"""The SRM check: its χ² tail against exact values, its false-alarm rate under correct
assignment with weights that move every version, and its power on a small skew."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandit_core.srm import (
    ALARM_P,
    MAX_ARMS,
    VersionCounts,
    chi2_sf,
    gamma_q,
    srm_test,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("x", [1e-8, 0.01, 0.3, 1.0, 2.5, 7.0, 20.0, 80.0, 400.0])
def test_gamma_q_matches_closed_forms(x: float) -> None:
    """``Q(1, x) = e^-x``, ``Q(1/2, x) = erfc(√x)``, and for integer ``n``
    ``Q(n, x) = e^-x Σ_{j<n} x^j / j!``: both branches (series below ``a + 1``,
    continued fraction above) against exact values, relative error 1e-10 (the
    tail included, where ``1 - P`` would have lost every digit)."""
    assert gamma_q(1.0, x) == pytest.approx(math.exp(-x), rel=1e-10, abs=1e-300)
    assert gamma_q(0.5, x) == pytest.approx(math.erfc(math.sqrt(x)), rel=1e-10, abs=1e-300)
    for n in (2, 5, 17, 60):
        exact = math.exp(-x) * sum(x**j / math.factorial(j) for j in range(n))
        assert gamma_q(float(n), x) == pytest.approx(exact, rel=1e-9, abs=1e-300), n


@pytest.mark.parametrize(
    ("x", "df", "p"),
    [
        # Critical values of the χ² table (e.g. R's qchisq(1 - p, df)).
        (3.841458820694124, 1, 0.05),
        (10.827566170662733, 1, 0.001),
        (13.815510557964274, 2, 0.001),
        (16.26623619623813, 3, 0.001),
        (18.307038053275146, 10, 0.05),
        (124.34211340400407, 100, 0.05),
        (149.44925277903873, 100, 0.001),
    ],
)
def test_chi2_sf_at_table_values(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-7)


def test_gamma_q_refuses_what_is_not_a_distribution() -> None:
    with pytest.raises(ValueError, match="a > 0"):
        gamma_q(0.0, 1.0)
    with pytest.raises(ValueError, match="x >= 0"):
        gamma_q(1.0, -1.0)
    with pytest.raises(ValueError, match="df >= 1"):
        chi2_sf(1.0, 0)
    assert gamma_q(3.0, 0.0) == 1.0
    assert gamma_q(3.0, math.inf) == 0.0


def _moving_weights(rng: np.random.Generator, k: int) -> list[float]:
    """A bandit's allocation: one arm leading, some arms starved (tiny weights)."""
    w = rng.dirichlet(np.full(k, 0.4))
    return [float(x) for x in w / w.sum()]


def _simulate(
    rng: np.random.Generator, versions: int, per_version: int, k: int
) -> list[VersionCounts]:
    arms = [f"arm-{i}" for i in range(k)]
    out = []
    for _ in range(versions):
        w = _moving_weights(rng, k)
        n = int(rng.poisson(per_version))
        counts = rng.multinomial(n, w)
        out.append(VersionCounts(arms, w, {a: int(c) for a, c in zip(arms, counts, strict=True)}))
    return out


def test_no_false_alarms_when_units_follow_moving_weights() -> None:
    """Scenario: 1,000 experiments assigned correctly, each over 30 allocation versions
    whose weights move every version (Dirichlet, so some arms are nearly starved), a
    handful of units per version (Poisson 8), 3 or 5 arms.
    We expect: at most 0.4% alarms (the level is 0.1%; 5 or more of 1,000 has
    probability 0.4% at the nominal rate), and p-values near uniform (about 5% below
    0.05), so the bandit's own reweighting is not mistaken for an SRM."""
    rng = np.random.default_rng(20260516)
    ps = []
    for sim in range(1000):
        result = srm_test(_simulate(rng, 30, 8, 3 if sim % 2 else 5))
        assert result.p_value is not None, result.reason
        ps.append(result.p_value)
    alarms = sum(p < ALARM_P for p in ps)
    assert alarms <= 4, alarms
    below_5pct = sum(p < 0.05 for p in ps) / len(ps)
    assert 0.03 <= below_5pct <= 0.07, below_5pct


def test_detects_a_52_48_split_at_50_50() -> None:
    """20,000 units at 50/50 (over 20 versions), 52% of them on arm a: X² = 32, an alarm."""
    versions = [VersionCounts(["a", "b"], [0.5, 0.5], {"a": 520, "b": 480}) for _ in range(20)]
    result = srm_test(versions)
    assert result.units == 20_000
    assert result.versions == 20
    assert result.df == 1
    assert result.chi2 == pytest.approx(32.0)
    assert result.p_value is not None
    assert result.p_value < 1e-7
    assert result.alarm
    # The same counts at the promised 50/50 are no alarm.
    fair = srm_test([VersionCounts(["a", "b"], [0.5, 0.5], {"a": 5000, "b": 5000})])
    assert fair.p_value == pytest.approx(1.0)
    assert not fair.alarm


def test_reweighting_is_expected_per_version() -> None:
    """90/10 for 1,000 units, then 10/90 for 3,000: the pooled counts (1,200/2,800) are
    far from either allocation, yet each version got exactly what it promised, so there
    is no alarm; a consistent 3-point excess of arm a in both versions is one."""
    right = [
        VersionCounts(["a", "b"], [0.9, 0.1], {"a": 900, "b": 100}),
        VersionCounts(["a", "b"], [0.1, 0.9], {"a": 300, "b": 2700}),
    ]
    result = srm_test(right)
    assert result.chi2 == pytest.approx(0.0, abs=1e-9)
    assert not result.alarm
    skewed = [
        VersionCounts(["a", "b"], [0.9, 0.1], {"a": 930, "b": 70}),
        VersionCounts(["a", "b"], [0.1, 0.9], {"a": 390, "b": 2610}),
    ]
    assert srm_test(skewed).alarm


def test_a_unit_on_an_arm_without_weight_is_impossible() -> None:
    """An arm added after the version (or with weight 0 there) cannot get its units."""
    result = srm_test([VersionCounts(["a", "b"], [1.0, 0.0], {"a": 10, "b": 1})])
    assert result.p_value == 0.0
    assert result.alarm
    assert result.reason is not None
    assert "'b'" in result.reason
    late = srm_test([VersionCounts(["a", "b"], [0.5, 0.5], {"a": 10, "c": 1})])
    assert late.alarm
    assert late.reason is not None
    assert "'c'" in late.reason


def test_starved_arms_are_pooled_not_alarmed() -> None:
    """Arms expecting 0.1 units each that got 2: χ² per cell would say p ~ 1e-9; pooled
    with the others the test stays calibrated (a small excess, no alarm)."""
    arms = ["a", "b", "c", "d"]
    versions = [VersionCounts(arms, [0.4975, 0.4975, 0.0025, 0.0025], {"a": 19, "b": 19, "c": 2})]
    result = srm_test(versions)
    assert result.df == 1  # a, b; c and d pooled into b's cell (too few to stand alone)
    assert not result.alarm


def test_what_cannot_be_tested_says_why() -> None:
    assert srm_test([]).reason == "no units counted yet"
    few = srm_test([VersionCounts(["a", "b"], [0.5, 0.5], {"a": 2, "b": 1})])
    assert few.p_value is None
    assert few.reason is not None
    assert "too few units" in few.reason
    many = [f"a{i}" for i in range(MAX_ARMS + 1)]
    wide = srm_test([VersionCounts(many, [1 / len(many)] * len(many), {"a0": 5})])
    assert wide.p_value is None
    assert wide.reason is not None
    assert "at most 100" in wide.reason


def test_returning_units_are_counted_at_their_first_decision_only() -> None:
    """Scenario: 200 returning units (the consistent mode) visit all 20 versions; each
    version assigns them correctly by the rule's exponential race (fixed per-unit
    uniforms, weights moving a little), so a unit mostly keeps its arm.
    We expect: counting every unit in every version alarms on this correct assignment in
    most runs (the versions are not independent); counting each unit once, under the
    version of its first visit (what the fold does), alarms in at most 1 of 100 (the
    test's level is 0.1%), and a population skewed in every version still alarms."""
    rng = np.random.default_rng(7)
    arms = ["a", "b", "c"]
    every_version_alarms = first_visit_alarms = 0
    for _ in range(100):
        u = rng.random((200, 3))
        first_visit = rng.integers(0, 20, 200)
        base = rng.dirichlet([5.0, 5.0, 5.0])
        every, first = [], []
        for v in range(20):
            w = base + rng.normal(0, 0.01, 3)
            w = np.clip(w, 0.01, None)
            w /= w.sum()
            winners = np.argmin(-np.log(u) / w, axis=1)
            weights = [float(x) for x in w]
            counts = {a: int((winners == i).sum()) for i, a in enumerate(arms)}
            every.append(VersionCounts(arms, weights, counts))
            new = winners[first_visit == v]
            first.append(
                VersionCounts(arms, weights, {a: int((new == i).sum()) for i, a in enumerate(arms)})
            )
        every_version_alarms += srm_test(every).alarm
        first_visit_alarms += srm_test(first).alarm
    assert every_version_alarms > 30, every_version_alarms
    assert first_visit_alarms <= 1, first_visit_alarms
    skewed = [VersionCounts(["a", "b"], [0.5, 0.5], {"a": 60, "b": 40}) for _ in range(20)]
    assert srm_test(skewed).alarm
