"""The experiment's health lines and tables on the live page (:mod:`dashboard.health`)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from dashboard import health
from mab_client import Stats
from mab_client.models import (
    GuardrailStatusPublic,
    MetricIntervalPublic,
    SrmPublic,
    StoppingPublic,
    UpliftPublic,
)
from tests.fixtures.stats import STOPPING, UPLIFT, stats_of

pytestmark = pytest.mark.unit


def test_srm_status_states() -> None:
    """Absent before any unit; ``ok`` and ``alarm`` with the p-value and what was
    covered; ``n/a`` with the server's reason."""
    base = stats_of([("blue", 10, 3.0, 12, 0.5), ("green", 4, 2.0, 8, 0.5)])
    assert health.srm_status(base) is None
    srm: dict[str, Any] = {
        "p_value": 0.42,
        "chi2": 0.65,
        "df": 1,
        "units": 20,
        "alarm": False,
        "versions": 3,
        "method": "pooled",
    }

    def with_srm(**change: Any) -> Stats:
        return base.model_copy(update={"srm": SrmPublic.model_validate({**srm, **change})})

    state, line = health.srm_status(with_srm()) or ("", "")
    assert state == "ok"
    assert "p = 0.42" in line
    assert "20 units over 3 allocation versions (pooled)" in line
    state, line = health.srm_status(with_srm(p_value=2e-8, alarm=True, skipped_units=5)) or ("", "")
    assert state == "alarm"
    assert "p = 2e-08" in line
    assert "5 units in expired versions left out" in line
    state, line = health.srm_status(with_srm(p_value=None, reason="too few units")) or ("", "")
    assert state == "n/a"
    assert "too few units" in line


def test_guardrail_table_lists_each_arm_and_guardrail() -> None:
    """Absent without guardrails; with them, one row per arm and guardrail with the
    status, the arm's interval (NaN before any value) and the pause."""
    base = stats_of([("control", 10, 3.0, 12, 0.5), ("treat", 4, 2.0, 8, 0.5)])
    assert health.guardrail_table(base) is None
    control, treat = base.arms
    guard = {"guardrail": 0, "metric": "refund", "action": "pause"}
    arms = [
        control.model_copy(
            update={
                "guardrails": [GuardrailStatusPublic.model_validate({**guard, "status": "control"})]
            }
        ),
        treat.model_copy(
            update={
                "guardrails": [
                    GuardrailStatusPublic.model_validate({**guard, "status": "breached"})
                ],
                "metrics": {"refund": MetricIntervalPublic(samples=120, low=0.4, high=0.8)},
                "paused": True,
            }
        ),
    ]
    table = health.guardrail_table(base.model_copy(update={"arms": arms}))
    assert table is not None
    assert list(table["status"]) == ["control", "breached"]
    assert list(table["paused"]) == [False, True]
    assert (table["samples"].iloc[1], table["low"].iloc[1], table["high"].iloc[1]) == (
        120,
        0.4,
        0.8,
    )
    assert math.isnan(table["low"].iloc[0])


def test_stopping_line_says_how_far_the_leader_is_from_a_winner() -> None:
    base = stats_of([("a", 10, 3.0, 12, 0.5), ("c", 4, 2.0, 8, 0.5)])
    assert health.stopping_line(base) is None
    running = StoppingPublic.model_validate({**STOPPING, "winner": None, "stop_probability": 0.999})
    state, line = health.stopping_line(base.model_copy(update={"stopping": running})) or ("", "")
    assert state == "running"
    assert "leader c at P(best) 99.0% (needs 99.9%)" in line
    assert "expected loss 0.0002 (needs at most 0.001)" in line
    won = StoppingPublic.model_validate(STOPPING)
    state, line = health.stopping_line(base.model_copy(update={"stopping": won})) or ("", "")
    assert (state, line) == (
        "winner",
        "Winner declared: c; now P(best) 99.0%, expected loss 0.0002.",
    )


@pytest.mark.parametrize(
    ("low", "high", "state"),
    [(0.04, 0.27, "better"), (-0.05, -0.01, "worse"), (-0.01, 0.05, "unclear")],
)
def test_uplift_line_reads_the_interval(low: float, high: float, state: str) -> None:
    base = stats_of([("a", 10, 3.0, 12, 0.5), ("c", 4, 2.0, 8, 0.5)])
    assert health.uplift_line(base) is None
    uplift = UpliftPublic.model_validate({**UPLIFT, "low": low, "high": high})
    got, line = health.uplift_line(base.model_copy(update={"uplift": uplift})) or ("", "")
    assert got == state
    assert line.startswith("Uplift over the holdout (20% on a, 180 vs 720 rewarded visitors)")
    assert "+0.16 per visitor" in line
    empty = UpliftPublic.model_validate({**UPLIFT, "uplift": None, "bandit_mean": None})
    got, line = health.uplift_line(base.model_copy(update={"uplift": empty})) or ("", "")
    assert (got, line.endswith("not measured yet.")) == ("unclear", True)
