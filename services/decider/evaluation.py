"""``GET /experiments/{id}/evaluate``: off-policy evaluation for the dashboard.

The decider is a hot service, so this admin-ish endpoint is fenced in:

* the work (reading the experiment's partitions with an own, group-less consumer, the
  fold replay and the estimators, all from :mod:`offpolicy`) runs in a worker thread
  with its own event loop, never on the serving loop;
* one evaluation at a time per process: a second concurrent request gets 429 instead
  of queueing CPU work behind the first;
* bounded: at most ``evaluate_max_decisions`` (most recent) decisions are evaluated, and
  an experiment whose partitions hold more than ``evaluate_max_records`` records is
  refused with 422 pointing at ``mab evaluate``, which has no bound.

The thread still shares the GIL with the serving loop, so decision latency rises while
an evaluation runs (the interpreter switches threads every few milliseconds); the
bounds keep that to seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from bandit_core.strategies import InvalidParamsError, UnknownStrategyError, validate_params
from offpolicy.estimators import ArmSupport, Estimate
from offpolicy.evaluate import EvaluationOptions, EvaluationReport, evaluate_log
from offpolicy.reader import LogTooLargeError, LogUnavailableError, read_experiment_log
from services.decider.auth import ADMIN_RESPONSES, EVALUATE
from services.decider.errors import not_found
from services.decider.models import ErrorPublic
from services.decider.paths import EXPERIMENT, ExperimentIdPath

if TYPE_CHECKING:
    from services.decider.app import Runtime

router = APIRouter()


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


def _blocking_evaluate(
    rt: Runtime,
    experiment_id: str,
    strategy: str,
    params: dict[str, Any],
    options: EvaluationOptions,
) -> EvaluationReport:
    """Read and evaluate on the calling (worker) thread, with its own event loop."""
    s = rt.settings
    log = asyncio.run(
        read_experiment_log(
            s.connection(),
            rt.topics,
            experiment_id,
            max_records=s.evaluate_max_records,
            timeout_s=s.evaluate_timeout_s,
        )
    )
    return evaluate_log(log, strategy, params, options)


#: One evaluation at a time per process (checked, never waited on: see the module docstring).
evaluation_lock = asyncio.Lock()


@router.get(
    f"{EXPERIMENT}/evaluate",
    response_model=EvaluationPublic,
    tags=["admin"],
    summary="Off-policy evaluation of a strategy",
    description="Estimates what `strategy` (with `params`) would have earned on this "
    "experiment's logged decisions: IPS, self-normalised IPS and doubly robust, each with "
    "a confidence interval, the effective sample size and support warnings. Reads the "
    "experiments, decisions and rewards topics (bounded: the most recent "
    "`evaluate_max_decisions` decisions; 422 beyond `evaluate_max_records` records). "
    "One evaluation at a time (429). Method: docs/off-policy-evaluation.md.",
    # Reads whole partitions: an operator's call (admin or read key), not a storefront's.
    dependencies=[EVALUATE],
    responses={
        **ADMIN_RESPONSES,
        404: {"model": ErrorPublic, "description": "No such experiment."},
        422: {"description": "Unknown strategy, invalid params, or log too large."},
        429: {"model": ErrorPublic, "description": "Another evaluation is running."},
        503: {"model": ErrorPublic, "description": "Kafka unavailable."},
    },
)
async def evaluate(
    request: Request,
    experiment_id: ExperimentIdPath,
    strategy: Annotated[str, Query(max_length=64, description="Target strategy name.")],
    params: Annotated[
        str,
        Query(max_length=2000, description="Target params as a JSON object.", examples=["{}"]),
    ] = "{}",
    missing_reward: Annotated[
        str, Query(pattern="^(drop|zero)$", description="Decisions without reward: drop or zero.")
    ] = "drop",
    confidence: Annotated[float, Query(ge=0.5, le=0.999)] = 0.95,
) -> EvaluationPublic:
    rt: Runtime = request.app.state.runtime
    try:
        given = json.loads(params)
    except json.JSONDecodeError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"params is not JSON ({exc})"
        ) from None
    if not isinstance(given, dict):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "params must be a JSON object")
    try:
        clean = validate_params(strategy, given)
    except (UnknownStrategyError, InvalidParamsError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if await rt.store.get_config(experiment_id) is None:
        raise not_found(experiment_id)
    if evaluation_lock.locked():
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, "another evaluation is running; retry shortly"
        )
    options = EvaluationOptions(
        max_decisions=rt.settings.evaluate_max_decisions,
        missing_reward="zero" if missing_reward == "zero" else "drop",
        confidence=confidence,
        samples=rt.settings.evaluate_samples,
    )
    start = time.perf_counter()
    async with evaluation_lock:
        try:
            report = await asyncio.to_thread(
                _blocking_evaluate, rt, experiment_id, strategy, clean, options
            )
        except LogTooLargeError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        except LogUnavailableError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return EvaluationPublic.of(
        report, rt.settings.evaluate_max_decisions, time.perf_counter() - start
    )
