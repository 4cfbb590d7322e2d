"""``GET /experiments/{id}/evaluate``: off-policy evaluation for the dashboard.

The decider is a hot service, so this operator's endpoint is fenced in: the work runs
in the decider's evaluation process, never in the serving one
(:mod:`services.decider.evaluation`); one evaluation at a time per process (a second
concurrent request gets 429 instead of queueing CPU work behind the first); at most
``evaluate_max_decisions`` (most recent) decisions are evaluated, and an experiment
whose partitions hold more than ``evaluate_max_records`` records is refused with 422
pointing at ``mab evaluate``, which has no bound.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from bandit_core.strategies import InvalidParamsError, UnknownStrategyError, validate_params
from mab_client.models import ErrorPublic, EvaluationPublic
from offpolicy.evaluate import EvaluationOptions
from services.decider.auth import ADMIN_RESPONSES
from services.decider.errors import not_found
from services.decider.evaluation import (
    EvaluationJob,
    EvaluationProcessError,
    evaluation_lock,
    evaluation_public,
    run_evaluation,
)
from services.decider.paths import EXPERIMENT, ExperimentIdPath
from services.decider.runtime import EVALUATE, RuntimeDep

# Reads whole partitions: an operator's call (admin or read key), not a storefront's.
router = APIRouter(tags=["admin"], dependencies=[EVALUATE])


@router.get(
    f"{EXPERIMENT}/evaluate",
    response_model=EvaluationPublic,
    summary="Off-policy evaluation of a strategy",
    description="Estimates what `strategy` (with `params`) would have earned on this "
    "experiment's logged decisions: IPS, self-normalised IPS and doubly robust, each with "
    "a confidence interval, the effective sample size and support warnings. Reads the "
    "experiments, decisions and rewards topics (bounded: the most recent "
    "`evaluate_max_decisions` decisions; 422 beyond `evaluate_max_records` records). "
    "One evaluation at a time (429). Method: docs/off-policy-evaluation.md.",
    responses={
        **ADMIN_RESPONSES,
        404: {"model": ErrorPublic, "description": "No such experiment."},
        422: {"description": "Unknown strategy, invalid params, or log too large."},
        429: {"model": ErrorPublic, "description": "Another evaluation is running."},
        503: {
            "model": ErrorPublic,
            "description": "Kafka unavailable, or the evaluation process stopped; retry.",
        },
    },
)
async def evaluate(
    rt: RuntimeDep,
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
    s = rt.settings
    job = EvaluationJob(
        kafka=s.connection(),
        topics=rt.topics,
        experiment_id=experiment_id,
        strategy=strategy,
        params=clean,
        options=EvaluationOptions(
            max_decisions=s.evaluate_max_decisions,
            missing_reward="zero" if missing_reward == "zero" else "drop",
            confidence=confidence,
            samples=s.evaluate_samples,
        ),
        max_records=s.evaluate_max_records,
        timeout_s=s.evaluate_timeout_s,
    )
    start = time.perf_counter()
    async with evaluation_lock:
        try:
            outcome = await rt.evaluator.call(run_evaluation, job)
        except EvaluationProcessError as exc:
            if not exc.stopped:
                raise  # a bug in the evaluation: a 500, with the worker's traceback logged
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; retry") from None
    if outcome.refused == "too_large":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, outcome.detail)
    if outcome.refused == "unavailable" or outcome.report is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, outcome.detail)
    return evaluation_public(outcome.report, s.evaluate_max_decisions, time.perf_counter() - start)
