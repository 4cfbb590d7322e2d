"""The answer of ``GET /stats``: per arm statistics, and what the experiment knows of
itself (attribution, the sample-ratio check, guardrails, the stopping rule, the uplift
over the holdout), each with its documentation.

Like every response (:mod:`mab_client.models.responses`), the decider serves these as
its response models, the dashboard and ``mab report`` read them through the SDK, and
unknown fields are ignored, so an older client keeps working against a newer server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mab_client.models.responses import omitted_when_none
from mab_client.models.result import Result, examples


class MetricIntervalPublic(Result):
    """An arm's anytime-valid confidence interval for a metric's mean (docs/guardrails.md),
    at level ``guardrail_alpha / 2``: valid however often it is read."""

    samples: int = Field(description="Rewards of this arm that carried the metric.")
    low: float
    high: float


class GuardrailStatusPublic(Result):
    """One guardrail's verdict on one arm against the control arm."""

    guardrail: int = Field(description="Index in the experiment's `guardrails`.")
    metric: str
    action: Literal["pause", "alert"]
    status: Literal["breached", "ok", "waiting", "control"] = Field(
        description="breached: proven worse than the control beyond the limit (for good); "
        "ok: not proven; waiting: the arm or the control has fewer than min_samples "
        "values; control: this arm is the control."
    )


class ArmStatsPublic(Result):
    arm_id: str
    pulls: int = Field(description="Rewards observed.")
    reward_sum: float
    mean: float = Field(description="reward_sum / pulls (0 when no pulls).")
    decisions: int = Field(description="Decisions served (folded from the decisions topic).")
    propensity: float = Field(description="Current probability that the policy picks it.")
    units: int = Field(
        default=0,
        description="Unique units whose first decision served this arm (each unit once, "
        "within the 7-day dedupe horizon, whatever the assignment mode).",
    )
    metrics: dict[str, MetricIntervalPublic] | None = omitted_when_none(
        "Per declared metric with values: the arm's confidence interval (experiments "
        "with metrics only)."
    )
    guardrails: list[GuardrailStatusPublic] | None = omitted_when_none(
        "Each guardrail's status for this arm (experiments with guardrails only)."
    )
    paused: bool | None = omitted_when_none(
        "True when a breached guardrail with action pause took the arm out of the "
        "bandit's choice (it keeps min_arm_share if set); absent otherwise."
    )


class SrmPublic(Result):
    """The sample-ratio-mismatch check: did units get the arms their allocation versions
    promised? Allocation-version aware, so the bandit's own reweighting is no alarm."""

    p_value: float | None = Field(
        description="P-value of the chi-square test; null when it cannot run (see reason)."
    )
    chi2: float | None = Field(description="The statistic X² = dᵀ Σ⁺ d over the versions.")
    df: int | None = Field(description="Degrees of freedom: the rank of Σ.")
    units: int = Field(description="Units the test covered (each once).")
    alarm: bool = Field(description="p_value < 0.001: assignment does not follow the weights.")
    versions: int = Field(description="Allocation versions the test covered.")
    reason: str | None = Field(
        default=None, description="Why there is no p-value, or why it is 0 (impossible arm)."
    )
    method: str = Field(
        default="pooled",
        description="pooled: one test over all versions, each unit counted once, under "
        "the version of its first decision.",
    )
    skipped_versions: int = Field(
        default=0, description="Versions with counts whose allocation is no longer stored."
    )
    skipped_units: int = Field(
        default=0,
        description="Unit assignments left out: in skipped versions, or counted beyond the "
        "fold's per-version cell limit.",
    )


class AttributionPublic(Result):
    """Where the experiment's decisions stand with respect to their attribution window."""

    window_s: float | None = Field(default=None, description="The configured window.")
    pending: int = Field(default=0, description="Decisions whose window is still open.")
    defaulted: int = Field(default=0, description="Decisions folded with the default reward.")
    late: int = Field(
        default=0, description="Rewards that came after their decision was defaulted."
    )
    untracked: int = Field(
        default=0, description="Decisions not tracked because too many windows were open."
    )


# --- holdout and stopping (docs/stopping.md) ---
class ArmVerdictPublic(Result):
    """One arm's posterior verdict."""

    arm_id: str
    p_best: float = Field(description="Posterior probability that the arm is the best.")
    expected_loss: float = Field(
        description="E[max_j value_j - value_arm]: value per visitor (in the reward's unit) "
        "left on the table by serving this arm for good."
    )


class StoppingPublic(Result):
    """When to stop: the posterior's verdict and the winner the stopping rule declared."""

    posterior: str = Field(
        description="The reference sampler the verdict is read from (thompson for binary "
        "rewards, revenue_thompson for continuous ones), whatever strategy serves."
    )
    arms: list[ArmVerdictPublic]
    leader: str = Field(description="The arm with the highest P(best).")
    stop_probability: float = Field(description="P(best) a winner needs.")
    stop_expected_loss: float = Field(description="Expected loss a winner may have at most.")
    winner: str | None = Field(
        default=None,
        description="The arm declared the winner (a WinnerDeclared event; once, at a fixed "
        "count of rewards); null: not yet. Informational: traffic is not changed.",
    )


class UpliftPublic(Result):
    """The bandit's uplift over the holdout, per visitor on the objective (the reward)."""

    control_arm_id: str
    holdout_share: float
    holdout_visitors: int = Field(description="Rewarded holdout decisions.")
    bandit_visitors: int = Field(description="Rewarded bandit decisions.")
    holdout_mean: float | None = Field(description="Mean reward per holdout visitor.")
    bandit_mean: float | None = Field(description="Mean reward per bandit visitor.")
    uplift: float | None = Field(description="bandit_mean - holdout_mean.")
    low: float = Field(description="Lower end of the anytime-valid interval of the uplift.")
    high: float = Field(description="Upper end of the anytime-valid interval of the uplift.")
    confidence: float = Field(description="Coverage of the interval, at every look at once.")


class StatsPublic(Result):
    """Folded statistics of one experiment, read fresh from Redis."""

    model_config = examples(
        {
            "experiment_id": "cta-button-test",
            "strategy": "thompson",
            "strategy_params": {},
            "config_version": 1,
            "snapshot_version": 12,
            "arms": [
                {
                    "arm_id": "blue-button",
                    "pulls": 4,
                    "reward_sum": 1.0,
                    "mean": 0.25,
                    "decisions": 5,
                    "propensity": 0.3,
                },
                {
                    "arm_id": "green-button",
                    "pulls": 3,
                    "reward_sum": 2.0,
                    "mean": 0.6667,
                    "decisions": 7,
                    "propensity": 0.7,
                },
            ],
            "propensities": {"blue-button": 0.3, "green-button": 0.7},
        }
    )

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    config_version: int
    snapshot_version: int = Field(description="Events folded so far (0: none yet).")
    arms: list[ArmStatsPublic]
    propensities: dict[str, float]
    attribution: AttributionPublic | None = omitted_when_none(
        "Attribution-window counts; absent for experiments that never had a window."
    )
    assignment: str | None = omitted_when_none(
        "How requests with a unit id are assigned: sticky, consistent or "
        "per_request (absent from servers older than visitor assignment)."
    )
    srm: SrmPublic | None = omitted_when_none(
        "Sample-ratio-mismatch check; absent until units are counted."
    )
    stopping: StoppingPublic | None = omitted_when_none(
        "P(best), expected loss and the declared winner; absent until a reward is folded."
    )
    uplift: UpliftPublic | None = omitted_when_none(
        "The bandit's uplift over the holdout; absent without a holdout."
    )

    def arm(self, arm_id: str) -> ArmStatsPublic:
        """The statistics of one arm (``KeyError`` naming the known arms)."""
        for a in self.arms:
            if a.arm_id == arm_id:
                return a
        raise KeyError(f"arm {arm_id!r} not in {[a.arm_id for a in self.arms]}")

    @property
    def total_pulls(self) -> int:
        return sum(a.pulls for a in self.arms)


ArmStats = ArmStatsPublic
Stats = StatsPublic
