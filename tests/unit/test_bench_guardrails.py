"""The guardrail bench's counting: how replications, breaches and sample sizes are
counted (the numbers in docs/benchmarks.md, "Guardrails", rest on it)."""

from __future__ import annotations

import pytest

from bench.guardrails import (
    Replication,
    guarded_config,
    predicted_n,
    run_replication,
    summarise,
)

pytestmark = pytest.mark.unit


def test_each_replication_counts_once_and_the_median_is_over_breaches_only() -> None:
    reps = [Replication(300, 2), Replication(None, None), Replication(100, 1), Replication(200, 1)]
    summary = summarise(reps)
    assert (summary.replications, summary.breaches) == (4, 3)
    assert summary.rate == 0.75
    assert summary.median_n == 200.0
    none = summarise([Replication(None, None)] * 5)
    assert (none.breaches, none.rate, none.median_n, none.quartiles) == (0, 0.0, None, None)
    assert summarise([]).rate == 0.0


def test_a_replication_stops_at_the_first_breach_and_reports_the_arm_samples() -> None:
    """Scenario: treat always refunds, control never; min_samples 100, batches of 40.
    We expect the breach at exactly 100 values (the fold checks every reward) seen after
    the third batch; with equal rates of 0 no breach within the horizon."""
    config = guarded_config(0.05, 0.0, 100)
    worst = run_replication(config, (0.0, 1.0), horizon=400, batch=40, seed=1)
    assert worst == Replication(100, 3)
    assert run_replication(config, (0.0, 0.0), horizon=400, batch=40, seed=1) == Replication(
        None, None
    )


def test_the_prediction_grows_as_the_difference_shrinks() -> None:
    guardrail = guarded_config(0.05, 0.0, 10).guardrails[0]
    far = predicted_n(guardrail, 0.05, (0.1, 0.5), 100_000)
    near = predicted_n(guardrail, 0.05, (0.1, 0.2), 100_000)
    assert far is not None
    assert near is not None
    assert 10 <= far < near
    assert predicted_n(guardrail, 0.05, (0.2, 0.2), 2_000) is None
