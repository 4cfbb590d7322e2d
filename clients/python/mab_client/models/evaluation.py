"""The answer of ``POST /experiments/{id}/evaluate`` (off-policy evaluation of a target
policy on the logged decisions), with its documentation."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mab_client.models.result import Result


class EstimatePublic(Result):
    """One estimator; ``null`` where undefined (e.g. no CI from a single decision)."""

    estimator: str = Field(description="`ips`, `snips`, `dr`, or `logged` (observed).")
    value: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None


class ArmSupportPublic(Result):
    arm_id: str
    logged_decisions: int
    logged_share: float
    target_share: float = Field(description="Mean probability the target gives this arm.")
    mean_reward: float | None


class EvaluationPublic(Result):
    """Off-policy estimates of a target strategy on the experiment's logged decisions."""

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    missing_reward: str
    confidence: float
    estimates: list[EstimatePublic] = Field(description="IPS, SNIPS and DR, in that order.")
    logged: EstimatePublic = Field(description="What the logging policy earned (observed).")
    ess: float = Field(description="Effective sample size (sum w)^2 / sum w^2.")
    weight_mean: float | None
    weight_max: float | None
    max_weight_share: float | None
    arms: list[ArmSupportPublic]
    warnings: list[str]
    decisions_logged: int
    decisions_considered: int
    decisions_evaluated: int
    decisions_without_reward: int
    decisions_skipped: dict[str, int]
    rewards_logged: int
    rewards_unlinked: int
    rewards_orphan: int
    records_rejected: int
    truncated: bool
    max_decisions: int
    elapsed_s: float
