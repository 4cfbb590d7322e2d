"""Off-policy evaluation for the decider: the response shape and the evaluation itself.

The route (:mod:`services.decider.routes.evaluation`) runs :func:`blocking_evaluate` in
a worker thread with its own event loop, never on the serving loop. The thread still
shares the GIL with the serving loop, so decision latency rises while an evaluation
runs (the interpreter switches threads every few milliseconds); the route's bounds keep
that to seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from offpolicy.estimators import ArmSupport, Estimate
from offpolicy.evaluate import EvaluationOptions, EvaluationReport, evaluate_log
from offpolicy.reader import read_experiment_log
from schemas.topics import TopicNames
from stream_runtime.kafka_connection import KafkaConnection


class EstimatePublic(BaseModel):
    """One estimator; ``null`` where undefined (e.g. no CI from a single decision)."""

    estimator: str = Field(description="`ips`, `snips`, `dr`, or `logged` (observed).")
    value: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, e: Estimate) -> EstimatePublic:
        return cls(
            estimator=e.estimator,
            value=e.value,
            std_error=e.std_error,
            ci_low=e.ci_low,
            ci_high=e.ci_high,
        )


class ArmSupportPublic(BaseModel):
    arm_id: str
    logged_decisions: int
    logged_share: float
    target_share: float = Field(description="Mean probability the target gives this arm.")
    mean_reward: float | None

    @classmethod
    def of(cls, s: ArmSupport) -> ArmSupportPublic:
        return cls(
            arm_id=s.arm_id,
            logged_decisions=s.logged_decisions,
            logged_share=s.logged_share,
            target_share=s.target_share,
            mean_reward=s.mean_reward,
        )


class EvaluationPublic(BaseModel):
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

    @classmethod
    def of(cls, r: EvaluationReport, max_decisions: int, elapsed_s: float) -> EvaluationPublic:
        res = r.result.to_dict()
        return cls(
            experiment_id=r.experiment_id,
            strategy=r.strategy,
            strategy_params=r.strategy_params,
            missing_reward=r.missing_reward,
            confidence=r.result.confidence,
            estimates=[EstimatePublic.of(e) for e in r.result.estimates],
            logged=EstimatePublic.of(r.result.logged),
            ess=r.result.ess,
            weight_mean=res["weight_mean"],
            weight_max=res["weight_max"],
            max_weight_share=res["max_weight_share"],
            arms=[ArmSupportPublic.of(s) for s in r.result.arms],
            warnings=r.warnings,
            decisions_logged=r.decisions_logged,
            decisions_considered=r.decisions_considered,
            decisions_evaluated=r.decisions_evaluated,
            decisions_without_reward=r.decisions_without_reward,
            decisions_skipped=r.decisions_skipped,
            rewards_logged=r.rewards_logged,
            rewards_unlinked=r.rewards_unlinked,
            rewards_orphan=r.rewards_orphan,
            records_rejected=r.records_rejected,
            truncated=r.truncated,
            max_decisions=max_decisions,
            elapsed_s=elapsed_s,
        )


def blocking_evaluate(
    kafka: KafkaConnection,
    topics: TopicNames,
    experiment_id: str,
    strategy: str,
    params: dict[str, Any],
    options: EvaluationOptions,
    max_records: int,
    timeout_s: float,
) -> EvaluationReport:
    """Read and evaluate on the calling (worker) thread, with its own event loop."""
    log = asyncio.run(
        read_experiment_log(
            kafka, topics, experiment_id, max_records=max_records, timeout_s=timeout_s
        )
    )
    return evaluate_log(log, strategy, params, options)


#: One evaluation at a time per process (checked, never waited on: see the module docstring).
evaluation_lock = asyncio.Lock()
