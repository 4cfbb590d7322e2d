"""The experiment's health on the live page: checks that say whether its numbers can be
trusted and whether it can stop, each as one line (or a small table) for an operator.

Read from ``GET /stats`` through the SDK: the sample-ratio check (docs/assignment.md),
the guardrails (docs/guardrails.md), the stopping rule's verdict and the bandit's uplift
over the holdout (docs/stopping.md). Pure functions of the stats, so they are tested
without Streamlit.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mab_client import Stats


def srm_status(stats: Stats) -> tuple[str, str] | None:
    """The SRM check as (state, one line for an operator); ``None`` before any unit.

    State ``alarm`` (p < 0.001: units did not get the arms their allocations promised,
    look for a bug in assignment, caching or logging before trusting the results),
    ``ok``, or ``n/a`` (too few units, too many arms: the reason says which).
    """
    srm = stats.srm
    if srm is None:
        return None
    covered = f"{srm.units:,} units over {srm.versions:,} allocation versions ({srm.method})"
    if srm.skipped_units:
        covered += f"; {srm.skipped_units:,} units in expired versions left out"
    if srm.p_value is None:
        return "n/a", f"SRM check not computed: {srm.reason}. {covered}."
    if srm.alarm:
        why = f" {srm.reason}." if srm.reason else ""
        return "alarm", f"Sample ratio mismatch: p = {srm.p_value:.2g}.{why} {covered}."
    return "ok", f"No sample ratio mismatch: p = {srm.p_value:.3g}. {covered}."


def guardrail_table(stats: Stats) -> pd.DataFrame | None:
    """One row per arm and guardrail (docs/guardrails.md): the status, the arm's
    anytime-valid interval for the metric and whether the arm is paused; ``None`` for an
    experiment without guardrails."""
    rows: list[dict[str, Any]] = []
    for arm in stats.arms:
        for g in arm.guardrails or []:
            interval = (arm.metrics or {}).get(g.metric)
            rows.append(
                {
                    "arm_id": arm.arm_id,
                    "metric": g.metric,
                    "status": g.status,
                    "action": g.action,
                    "samples": 0 if interval is None else interval.samples,
                    "low": math.nan if interval is None else interval.low,
                    "high": math.nan if interval is None else interval.high,
                    "paused": bool(arm.paused),
                }
            )
    return pd.DataFrame(rows) if rows else None


def stopping_line(stats: Stats) -> tuple[str, str] | None:
    """The stopping rule as (state, one line): ``winner`` once one is declared, else
    ``running`` with the leader's P(best) and expected loss against the thresholds;
    ``None`` before any reward is folded."""
    stopping = stats.stopping
    if stopping is None:
        return None
    by_arm = {a.arm_id: a for a in stopping.arms}
    if stopping.winner is not None:
        won = by_arm.get(stopping.winner)
        # Declared once, at a check; the posterior keeps moving: say which is which.
        detail = (
            ""
            if won is None
            else f"; now P(best) {won.p_best:.1%}, expected loss {won.expected_loss:.4g}"
        )
        return "winner", f"Winner declared: {stopping.winner}{detail}."
    leader = by_arm.get(stopping.leader)
    if leader is None:
        return "running", f"Leader {stopping.leader}; no winner yet."
    return "running", (
        f"No winner yet: leader {stopping.leader} at P(best) {leader.p_best:.1%} "
        f"(needs {stopping.stop_probability:.1%}), expected loss {leader.expected_loss:.4g} "
        f"(needs at most {stopping.stop_expected_loss:.4g})."
    )


def uplift_line(stats: Stats) -> tuple[str, str] | None:
    """The bandit's uplift over the holdout as (state, one line): ``better`` or
    ``worse`` when the anytime-valid interval excludes 0, else ``unclear``; ``None``
    without a holdout."""
    uplift = stats.uplift
    if uplift is None:
        return None
    head = (
        f"Uplift over the holdout ({uplift.holdout_share:.0%} on {uplift.control_arm_id}, "
        f"{uplift.holdout_visitors:,} vs {uplift.bandit_visitors:,} rewarded visitors)"
    )
    if uplift.uplift is None:
        return "unclear", f"{head}: not measured yet."
    interval = f"[{uplift.low:.4g}, {uplift.high:.4g}] at {uplift.confidence:.0%}"
    state = "better" if uplift.low > 0 else "worse" if uplift.high < 0 else "unclear"
    return state, f"{head}: {uplift.uplift:+.4g} per visitor, {interval}."
