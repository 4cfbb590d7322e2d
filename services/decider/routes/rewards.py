"""``POST /reward`` and ``POST /rewards``: validated like the consumer, logged, acked.

The decider never writes reward state: a reward is checked against the current config
with the reward consumer's own rule (:func:`bandit_core.fold.reward_rejection`), produced
to the rewards topic, and answered after Kafka's ack; the consumer folds it. A JSON body
that validates is normally served by :class:`services.decider.hot_path.DecisionFastPath`
with :func:`serve_reward`; the route serves the OpenAPI contract and FastAPI's
validation errors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from fastapi import APIRouter, HTTPException, status
from pydantic import ValidationError

from bandit_core.fold import reward_rejection
from mab_client.assignment import unit_token
from mab_client.models import ErrorPublic, RewardCreate, RewardPublic, RewardsCreate, RewardsPublic
from schemas.codec import encode
from schemas.events import ExperimentConfig, RewardObserved
from schemas.rejections import Rejection
from schemas.topics import partition_key
from services.decider.auth import BODY_RESPONSES, CLIENT_RESPONSES
from services.decider.errors import E404, E422, reward_rejected
from services.decider.producer import EventLogUnavailableError
from services.decider.runtime import CLIENT, Runtime, RuntimeDep

log = logging.getLogger("services.decider")

router = APIRouter(tags=["decisions"])


class UnitRewardError(Exception):
    """A reward by unit that cannot be attributed: its reason and the explanation."""

    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


async def unit_attribution(rt: Runtime, body: RewardCreate) -> tuple[str | None, str | None]:
    """``(unit token, decision id)`` of a reward: the body's decision id, or, for a reward
    by ``unit_id`` without one in a sticky or consistent experiment, the unit's current
    decision (sticky: the stored one; consistent: the rule's under the current
    allocation). Raises :class:`UnitRewardError` when the unit has no assignment or
    ``arm_id`` is not its arm; nothing is logged then. An unknown experiment is left to
    the caller's rule (404)."""
    if body.unit_id is None:
        return None, body.decision_id
    entry = rt.cache.fresh(body.experiment_id)
    if entry is None:
        entry, _ = await rt.cache.get(body.experiment_id)
    if entry is None:
        return None, body.decision_id
    config = entry.config
    token = unit_token(body.unit_id, config.salt, config.unit_id_storage)
    if body.decision_id is not None or config.assignment == "per_request":
        return token, body.decision_id
    current = await rt.units.current(entry, body.unit_id, rt.allocations.clock())
    if current is None:
        raise UnitRewardError(
            Rejection.NO_ASSIGNMENT,
            f"unit {body.unit_id!r} has no current assignment in experiment "
            f"{body.experiment_id!r} (never decided, or its sticky assignment expired): "
            "send the decision_id, or decide first",
        )
    arm_of_unit = entry.arm_list[current.arm_index]
    # An arm not in the experiment is left to the consumer's rule (unknown_arm).
    if body.arm_id != arm_of_unit and body.arm_id in entry.arm_list:
        raise UnitRewardError(
            Rejection.ARM_MISMATCH,
            f"unit {body.unit_id!r} is assigned arm {arm_of_unit!r} in experiment "
            f"{body.experiment_id!r}, not {body.arm_id!r}",
        )
    return token, current.decision_id


def reward_event(
    body: RewardCreate, token: str | None = None, decision_id: str | None = None
) -> RewardObserved:
    """The event a validated request body becomes (``source="api"``), with the unit's
    token and the decision it is attributed to (:func:`unit_attribution`)."""
    fields: dict[str, Any] = {
        "experiment_id": body.experiment_id,
        "arm_id": body.arm_id,
        "reward": body.reward,
        "decision_id": decision_id if decision_id is not None else body.decision_id,
        "source": "api",
        "user_context": body.user_context,
    }
    if body.event_id is not None:
        fields["event_id"] = body.event_id
    if token is not None:
        fields["unit_id"] = token
    if body.metrics is not None:
        fields["metrics"] = body.metrics
    return RewardObserved(**fields)


#: Rejections no later config can lift: a decision id's shape, a reward above 1 on a
#: binary experiment (reward_type is fixed at creation) and a metric the experiment does
#: not declare or a value outside its range (the metrics are fixed at creation too).
_FINAL: Final = frozenset(
    {Rejection.BAD_DECISION_ID, Rejection.REWARD_OUT_OF_RANGE, Rejection.BAD_METRIC}
)


async def reward_rejection_now(
    rt: Runtime, event: RewardObserved
) -> tuple[Rejection | None, ExperimentConfig | None]:
    """``reward_rejection`` against the current config: the consumer's own rule.

    The cache may predate an arm added on another process, so a rejection is confirmed
    against Redis before it is returned (only on this rare path), unless no newer config
    could change it (:data:`_FINAL`).
    """
    entry = rt.cache.fresh(event.experiment_id)
    if entry is None:
        entry, _ = await rt.cache.get(event.experiment_id)
    config = entry.config if entry is not None else None
    reason = reward_rejection(config, event)
    if reason is not None and reason not in _FINAL:
        rt.cache.invalidate(event.experiment_id)
        config = await rt.store.get_config(event.experiment_id)
        reason = reward_rejection(config, event)
    if reason is None and config is None:
        reason = Rejection.UNKNOWN_EXPERIMENT
    return reason, config


def _log_unavailable(
    rt: Runtime, events: Sequence[RewardObserved], exc: EventLogUnavailableError
) -> HTTPException:
    """Count and log rewards Kafka did not acknowledge; the 503 tells the client to retry."""
    for _ in events:
        rt.metrics.reward("unavailable")
    first = events[0]
    log.error(
        "reward not logged",
        extra={
            "experiment_id": first.experiment_id,
            "decision_id": first.decision_id,
            "rewards": len(events),
            "error": str(exc),
        },
    )
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "reward not recorded: event log unavailable, retry",
    )


def _log_accepted(rt: Runtime, events: Sequence[RewardObserved]) -> None:
    for _ in events:
        rt.metrics.reward("accepted")
    if log.isEnabledFor(logging.DEBUG):
        for event in events:
            log.debug(
                "reward logged",
                extra={
                    "experiment_id": event.experiment_id,
                    "decision_id": event.decision_id,
                    "event_id": event.event_id,
                },
            )


async def serve_reward(rt: Runtime, body: RewardCreate) -> RewardPublic:
    """Validate a reward against the current config, append it, answer after Kafka's ack."""
    try:
        event = reward_event(body, *await unit_attribution(rt, body))
    except UnitRewardError as exc:
        rt.metrics.reward(exc.reason)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.detail) from None
    reason, config = await reward_rejection_now(rt, event)
    if reason is not None or config is None:
        reason = reason or Rejection.UNKNOWN_EXPERIMENT
        rt.metrics.reward(reason)
        log.info(
            "reward rejected",
            extra={
                "experiment_id": event.experiment_id,
                "decision_id": event.decision_id,
                "arm_id": event.arm_id,
                "reason": reason,
            },
        )
        raise reward_rejected(reason, event, config)
    try:
        await rt.producer.publish(rt.topics.rewards, event)
    except EventLogUnavailableError as exc:
        raise _log_unavailable(rt, [event], exc) from None
    _log_accepted(rt, [event])
    return RewardPublic(
        experiment_id=event.experiment_id,
        arm_id=event.arm_id,
        strategy=config.strategy,
        event_id=event.event_id,
    )


async def serve_rewards(rt: Runtime, items: Sequence[object]) -> RewardsPublic:
    """``POST /rewards``: every item validated like ``POST /reward``, all or nothing.

    Items are checked one by one with the same model (:class:`RewardCreate`) and the
    same config rule as :func:`serve_reward`; if any item fails, nothing is produced and
    the 422 lists every failing item as ``{"index": i, ...}``. Otherwise all events are
    sent at once and the answer comes after Kafka acknowledged every one of them. A 503
    may follow a partial write: retrying with the same ``event_id`` values is safe
    (the fold applies each event id once), which is why the answer returns them.
    """
    limit = rt.settings.max_reward_batch
    if not items:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "rewards must not be empty")
    if len(items) > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(items)} rewards in one request; the limit is {limit} (MAB_MAX_REWARD_BATCH)",
        )
    errors: list[dict[str, Any]] = []
    events: list[RewardObserved] = []
    for index, item in enumerate(items):
        try:
            body = RewardCreate.model_validate(item)
        except ValidationError as exc:
            errors += [
                {
                    "index": index,
                    "loc": list(e.get("loc", ())),
                    "msg": e.get("msg", ""),
                    "type": e.get("type", ""),
                }
                for e in exc.errors()
            ]
            continue
        try:
            event = reward_event(body, *await unit_attribution(rt, body))
        except UnitRewardError as exc:
            errors.append(
                {"index": index, "loc": ["unit_id"], "msg": exc.detail, "type": exc.reason}
            )
            continue
        reason, config = await reward_rejection_now(rt, event)
        if reason is not None:
            detail = reward_rejected(reason, event, config).detail
            errors.append({"index": index, "loc": [], "msg": detail, "type": reason})
            continue
        events.append(event)
    if errors:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, errors)
    try:
        records = [(partition_key(ev.experiment_id), encode(ev)) for ev in events]
        await rt.producer.publish_many(rt.topics.rewards, records)
    except EventLogUnavailableError as exc:
        raise _log_unavailable(rt, events, exc) from None
    _log_accepted(rt, events)
    return RewardsPublic(accepted=len(events), event_ids=[ev.event_id for ev in events])


@router.post(
    "/reward",
    response_model=RewardPublic,
    summary="Report a reward",
    description="Validates the reward against the current config (same rule as the "
    "consumer), logs `RewardObserved` and answers after Kafka's ack; statistics are "
    "updated asynchronously by the reward consumer. With `decision_id` the reward "
    "joins its decision, counts once, and must name the decision's arm. With `unit_id` "
    "and no `decision_id`, a sticky or consistent experiment attributes it to the "
    "unit's current decision (422 `no_assignment` without one, `arm_mismatch` when "
    "`arm_id` is not the unit's arm).",
    responses={
        404: E404,
        422: E422,
        503: {
            "model": ErrorPublic,
            "description": "Not recorded; retry (with the same event_id to stay idempotent).",
            "content": {
                "application/json": {
                    "example": {"detail": "reward not recorded: event log unavailable, retry"}
                }
            },
        },
        **CLIENT_RESPONSES,
        **BODY_RESPONSES,
    },
    dependencies=[CLIENT],
)
async def reward(body: RewardCreate, rt: RuntimeDep) -> RewardPublic:
    return await serve_reward(rt, body)


@router.post(
    "/rewards",
    response_model=RewardsPublic,
    summary="Report a batch of rewards",
    description="Up to `MAB_MAX_REWARD_BATCH` (default 1000) rewards, each validated "
    "exactly like `POST /reward`. All or nothing: if any item is invalid, nothing is "
    "logged and the 422 lists every failing item as `{index, loc, msg, type}` (`type` "
    "is the validation error or the rejection reason, e.g. `unknown_arm`). Otherwise "
    "the answer comes after Kafka acknowledged every reward.",
    responses={
        422: E422,
        503: {
            "model": ErrorPublic,
            "description": "Not all recorded; retry with the same event_ids to stay idempotent.",
        },
        **CLIENT_RESPONSES,
        **BODY_RESPONSES,
    },
    dependencies=[CLIENT],
)
async def rewards(body: RewardsCreate, rt: RuntimeDep) -> RewardsPublic:
    return await serve_rewards(rt, body.rewards)
