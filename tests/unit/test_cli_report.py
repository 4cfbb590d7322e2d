"""``mab report``: the decision summary rendered from ``/stats`` (text and Markdown)."""

from __future__ import annotations

from typing import Any

import pytest

from mab_cli.report_cmd import _guardrail_lines, render
from mab_client.models import StatsPublic
from tests.fixtures.stats import STOPPING, UPLIFT

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "experiment_id": "shop",
    "strategy": "thompson",
    "strategy_params": {},
    "config_version": 1,
    "snapshot_version": 900,
    "arms": [],
    "propensities": {},
}


def test_a_declared_winner_with_its_uplift() -> None:
    stats = StatsPublic.model_validate({**BASE, "stopping": STOPPING, "uplift": UPLIFT})
    text = render(stats)
    assert "Winner: c" in text
    assert "99.0%" in text
    assert "0.0002" in text
    assert "Uplift vs holdout (20.0% on a): 0.16 per visitor" in text
    assert "[0.04, 0.27]" in text
    assert "no guardrails reported" in text
    md = render(stats, markdown=True)
    assert md.startswith("# Decision summary: shop")
    assert "| c | 99.0% | 0.0002 |" in md


def test_nothing_yet() -> None:
    text = render(StatsPublic.model_validate(BASE))
    assert "Winner: not yet" in text
    assert "Uplift vs holdout: no holdout" in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ["no guardrails reported"]),
        ([], ["no guardrails configured"]),
        ([{"metric": "refund", "breached": True, "arm_id": "b"}], ["refund: BREACHED (b)"]),
        ([{"metric": "latency_ms", "status": "ok"}], ["latency_ms: ok"]),
        ({"refund": {"status": "ok"}}, ["refund: ok"]),
        ({"refund": "breached"}, ["refund: breached"]),
        ("weird", ["guardrails: 'weird'"]),
        ([3], ["3"]),
    ],
)
def test_guardrails_are_read_defensively(raw: object, expected: list[str]) -> None:
    assert _guardrail_lines(raw) == expected
