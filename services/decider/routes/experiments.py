"""Experiments: create, list, get, add arms, hot-swap the strategy.

Each command is validated and applied atomically to the experiment's config key by a
Lua script (:class:`~services.decider.store.ConfigStore`), then logged as an event and
acknowledged by Kafka before the 2xx; if the log refuses it, the Redis write is undone
and the client gets 503 (:func:`log_or_undo`). Within this process the commands of one
experiment are serialised from the write to the ack (:meth:`Runtime.command_lock`), so
the log's order is the versions' order.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from bandit_core.strategies import InvalidParamsError, get_strategy, validate_params
from mab_client.models import ArmsAdd, ConfigPublic, ExperimentPublic
from schemas.events import (
    ArmsAdded,
    ExperimentConfig,
    ExperimentCreated,
    StrategyChanged,
    new_salt,
)
from services.decider.auth import ADMIN_RESPONSES, BODY_RESPONSES, READ_RESPONSES
from services.decider.errors import E404, E409, E422, E503, not_found
from services.decider.models import (
    ConfigUpdate,
    ExperimentCreate,
    config_public,
    experiment_public,
    reward_type_mismatch,
)
from services.decider.paths import EXPERIMENT, ExperimentIdPath
from services.decider.producer import EventLogUnavailableError
from services.decider.runtime import ADMIN, READ, Runtime, RuntimeDep
from services.decider.store import (
    ArmsExistError,
    AttributionChange,
    CommandResult,
    ExperimentMissingError,
    FloorTooHighError,
    RewardTypeError,
    TooManyArmsError,
    UnitsChange,
)

log = logging.getLogger("services.decider")

#: Far beyond any real number of experiments, far below Redis' 64-bit range indexes.
MAX_LIST_OFFSET = 1_000_000_000

router = APIRouter(tags=["experiments"])


async def log_or_undo(rt: Runtime, result: CommandResult, event: Any, create: bool) -> None:
    """Publish a command's event; on failure undo the Redis write (if still ours) → 503."""
    exp_id = result.config.experiment_id
    try:
        await rt.producer.publish(rt.topics.experiments, event)
    except EventLogUnavailableError as exc:
        undone = await rt.store.rollback(exp_id, result)
        if undone and create:
            await rt.store.remove_from_index(exp_id)
        log.error("command on %s not logged (%s); rolled back=%s", exp_id, exc, undone)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "not applied: event log unavailable, retry"
        ) from None
    finally:
        rt.cache.invalidate(exp_id)


@router.post(
    "/experiments",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentPublic,
    summary="Create an experiment",
    description="Validates ids, arms, strategy params and the reward settings (the "
    "strategy must learn from `reward_type`), stores the config atomically "
    "(exactly one of many racing creates wins) and logs `ExperimentCreated`; the 201 "
    "comes after Kafka's ack. Nothing is stored when validation fails.",
    responses={409: E409, 422: E422, 503: E503, **ADMIN_RESPONSES, **BODY_RESPONSES},
    dependencies=[ADMIN],
)
async def create_experiment(body: ExperimentCreate, rt: RuntimeDep) -> ExperimentPublic:
    if len(body.arm_ids) > rt.settings.max_arms:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(body.arm_ids)} arms; an experiment may have at most "
            f"{rt.settings.max_arms} (MAB_MAX_ARMS)",
        )
    if body.strategy is not None:
        strategy, params = body.strategy, dict(body.strategy_params or {})
    else:
        strategy = rt.settings.active_strategy
        try:
            params = validate_params(strategy, body.strategy_params)
        except InvalidParamsError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    mismatch = reward_type_mismatch(strategy, body.reward_type)
    if mismatch is not None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, mismatch)
    now = time.time()
    config = ExperimentConfig(
        experiment_id=body.experiment_id,
        arm_ids=tuple(body.arm_ids),
        strategy=strategy,
        strategy_params=params,
        version=1,
        created_ts=now,
        updated_ts=now,
        attribution_window_s=body.attribution_window_s,
        default_reward=body.default_reward,
        assignment=body.assignment,
        sticky_ttl_s=body.sticky_ttl_s,
        unit_id_storage=body.unit_id_storage,
        salt=new_salt(),
        min_arm_share=body.min_arm_share,
        allocation_interval_s=body.allocation_interval_s,
        reward_type=body.reward_type,
        reward_cap=body.reward_cap,
        control_arm_id=body.control_arm_id,
        holdout_share=body.holdout_share,
        stop_probability=body.stop_probability,
        stop_expected_loss=body.stop_expected_loss,
        route_to_winner=body.route_to_winner,
        metrics=tuple(body.metrics),
        guardrails=tuple(body.guardrails),
        guardrail_alpha=body.guardrail_alpha,
    )
    async with rt.command_lock(config.experiment_id):
        result = await rt.store.create(config)
        if result is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"experiment {body.experiment_id!r} already exists"
            )
        await rt.store.add_to_index(config)
        event = ExperimentCreated(experiment_id=config.experiment_id, ts=now, config=config)
        await log_or_undo(rt, result, event, create=True)
    return experiment_public(config)


@router.get(
    "/experiments",
    response_model=list[ExperimentPublic],
    summary="List experiments",
    description="All experiments in creation order (paginated by offset/limit).",
    responses={**READ_RESPONSES},
    dependencies=[READ],
)
async def list_experiments(
    rt: RuntimeDep,
    # Bounded: Redis ranges are signed 64-bit, a larger offset was a RedisError (503).
    offset: Annotated[int, Query(ge=0, le=MAX_LIST_OFFSET, description="Skip this many.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
) -> list[ExperimentPublic]:
    return [experiment_public(c) for c in await rt.store.list_configs(offset, limit)]


@router.get(
    EXPERIMENT,
    response_model=ExperimentPublic,
    summary="Get an experiment",
    description="The stored configuration (arms in insertion order, strategy, params) "
    "and its visitor-assignment settings (`units`).",
    responses={404: E404, **READ_RESPONSES},
    dependencies=[READ],
)
async def get_experiment(experiment_id: ExperimentIdPath, rt: RuntimeDep) -> ExperimentPublic:
    config = await rt.store.get_config(experiment_id)
    if config is None:
        raise not_found(experiment_id)
    return experiment_public(config, units=True)


@router.post(
    f"{EXPERIMENT}/arms",
    response_model=ExperimentPublic,
    summary="Add arms",
    description="Appends new arms atomically (concurrent calls never lose an arm) and "
    "logs `ArmsAdded`. 409 if any arm already exists; 422 beyond `MAB_MAX_ARMS` "
    "(default 1000) arms. "
    "Existing statistics are untouched.",
    responses={
        404: E404,
        409: E409,
        422: E422,
        503: E503,
        **ADMIN_RESPONSES,
        **BODY_RESPONSES,
    },
    dependencies=[ADMIN],
)
async def add_arms(
    experiment_id: ExperimentIdPath, body: ArmsAdd, rt: RuntimeDep
) -> ExperimentPublic:
    async with rt.command_lock(experiment_id):
        try:
            result = await rt.store.add_arms(
                experiment_id, list(body.arm_ids), rt.settings.max_arms
            )
        except ExperimentMissingError:
            raise not_found(experiment_id) from None
        except ArmsExistError as exc:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"arms already in experiment {experiment_id!r}: {exc.arm_ids}",
            ) from None
        except TooManyArmsError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"experiment {experiment_id!r} has {exc.current} arms; adding "
                f"{len(body.arm_ids)} would exceed the maximum of {rt.settings.max_arms} "
                "(MAB_MAX_ARMS)",
            ) from None
        except FloorTooHighError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"experiment {experiment_id!r} keeps min_arm_share {exc.min_arm_share} for "
                f"every arm; adding {len(body.arm_ids)} arms would need more than the whole "
                "traffic (arms x min_arm_share must be at most 1)",
            ) from None
        event = ArmsAdded(
            experiment_id=experiment_id,
            ts=result.config.updated_ts,
            added_arm_ids=tuple(body.arm_ids),
            config=result.config,
        )
        await log_or_undo(rt, result, event, create=False)
    return experiment_public(result.config)


@router.post(
    "/config",
    response_model=ConfigPublic,
    summary="Hot-swap the strategy",
    description="Changes strategy and params atomically and logs `StrategyChanged`. "
    "Arm statistics are strategy-independent, so no data is lost. The attribution and "
    "assignment settings given change too (absent: unchanged); `unit_id_storage` and "
    "the salt are fixed at creation (422), and so are `reward_type` and `reward_cap`: "
    "the new strategy must learn from the experiment's reward type (422 otherwise).",
    responses={404: E404, 422: E422, 503: E503, **ADMIN_RESPONSES, **BODY_RESPONSES},
    dependencies=[ADMIN],
)
async def change_strategy(body: ConfigUpdate, rt: RuntimeDep) -> ConfigPublic:
    params = dict(body.strategy_params or {})
    async with rt.command_lock(body.experiment_id):
        try:
            attribution = AttributionChange(
                window_s=body.attribution_window_s,
                keep_window="attribution_window_s" not in body.model_fields_set,
                default_reward=body.default_reward,
            )
            units = UnitsChange(
                assignment=body.assignment,
                sticky_ttl_s=body.sticky_ttl_s,
                keep_ttl="sticky_ttl_s" not in body.model_fields_set,
                min_arm_share=body.min_arm_share,
                allocation_interval_s=body.allocation_interval_s,
            )
            result = await rt.store.set_strategy(
                body.experiment_id,
                body.strategy,
                params,
                attribution,
                units,
                get_strategy(body.strategy).reward_types,
            )
        except ExperimentMissingError:
            raise not_found(body.experiment_id) from None
        except RewardTypeError as exc:
            mismatch = reward_type_mismatch(body.strategy, exc.reward_type)
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"experiment {body.experiment_id!r}: {mismatch}",
            ) from None
        except FloorTooHighError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"min_arm_share {exc.min_arm_share} does not fit experiment "
                f"{body.experiment_id!r}: its arms times min_arm_share must be at most 1",
            ) from None
        previous = ExperimentConfig.model_validate_json(result.previous_raw)
        event = StrategyChanged(
            experiment_id=body.experiment_id,
            ts=result.config.updated_ts,
            previous_strategy=previous.strategy,
            previous_params=previous.strategy_params,
            config=result.config,
        )
        await log_or_undo(rt, result, event, create=False)
    return config_public(result.config)
