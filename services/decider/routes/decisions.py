"""``GET /decision``: one implementation, served by this route and by the raw fast path.

:func:`serve_decision` is the whole decision (cached snapshot, one strategy call, the
``DecisionMade`` event enqueued without waiting, the response body). With a
``unit_id`` the experiment's assignment mode decides (:func:`decide_unit`,
:mod:`services.decider.units`); without one, the original mab-ecommerce-optimizer
API's decision is unchanged, byte for byte. Well-formed
requests are normally answered by :class:`services.decider.hot_path.DecisionFastPath`
with these same functions; the route serves the OpenAPI contract, validation errors and
404/503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Annotated, NamedTuple

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response

from bandit_core.decision_ids import HOLDOUT_MARK, holdout_decision_id, make_decision_id
from bandit_core.holdout import unit_held_out
from mab_client.assignment import unit_token
from mab_client.models import DecisionPublic
from schemas.events import DecisionAssignment
from schemas.ids import ExperimentId, UnitId
from schemas.topics import partition_key
from schemas.wire import encode_decision_made
from services.decider.auth import CLIENT_RESPONSES
from services.decider.decisions import CachedExperiment
from services.decider.errors import E404, E422, E503, not_found
from services.decider.runtime import CLIENT, Runtime, RuntimeDep
from services.decider.units import UnitDecision

log = logging.getLogger("services.decider")

router = APIRouter(tags=["decisions"])

ExperimentIdQuery = Annotated[
    ExperimentId,
    Query(description="The experiment to decide for (trimmed).", examples=["cta-button-test"]),
]
UnitIdQuery = Annotated[
    UnitId | None,
    Query(
        description="The randomisation unit (visitor, session or account id; 1-200 "
        "printable characters after trimming). With it the experiment's `assignment` "
        "mode decides (sticky: the unit keeps its first arm; consistent: a hash of the "
        "unit onto the current allocation); without it, a fresh draw per request.",
        examples=["visitor-8c1f2a"],
    ),
]


def decide_cached(
    rt: Runtime, entry: CachedExperiment, degraded: bool, experiment_id: str
) -> tuple[bytes, bytes]:
    """One decision from a cached entry: ``(response body, DecisionMade record)``.

    Synchronous on purpose: on the hot path a coroutine per step costs more than the step.
    """
    index, decision_id, propensity = _per_request(rt, entry, time.time(), None)
    body, record = _answer(rt, entry, degraded, experiment_id, index, decision_id, propensity, None)
    assert record is not None  # a decision without a unit is always logged
    return body, record


def _per_request(
    rt: Runtime, entry: CachedExperiment, now: float, unit_id: str | None
) -> tuple[int, str, float]:
    """A fresh draw for one request: the holdout's control arm (its id marked,
    :func:`~bandit_core.decision_ids.holdout_decision_id`) or the policy's choice, with
    the arm's logged propensity (holdout included either way). With a unit, the unit's
    holdout hash says whether it is held out (the same answer on every request); without
    one, a draw per request."""
    held = (
        rt.cache.held_out(entry)
        if unit_id is None
        else unit_held_out(unit_id, entry.config.salt, entry.holdout)
    )
    if held:
        index = entry.control
        return index, holdout_decision_id(make_decision_id(index)), entry.logged[index]
    index, propensity = rt.cache.decide(entry, now)
    return index, make_decision_id(index), propensity


class UnitFields(NamedTuple):
    """What a decision for a request with a unit adds to the answer and the event."""

    #: The request's unit id, echoed in the response.
    unit_id: str
    #: What the event carries for the unit (a digest or the id: ``unit_id_storage``);
    #: ``None`` only when nothing is logged.
    token: str | None
    #: The mode that assigned it (``None``: per_request, left out of the event).
    assignment: DecisionAssignment | None = None
    allocation_version: int | None = None
    #: ``False`` for a returning sticky unit: its assignment was logged when it was made.
    logged: bool = True


def _answer(
    rt: Runtime,
    entry: CachedExperiment,
    degraded: bool,
    experiment_id: str,
    index: int,
    decision_id: str,
    propensity: float,
    unit: UnitFields | None,
) -> tuple[bytes, bytes | None]:
    """The response body (the original API's shape; ``unit_id`` and ``assignment`` added
    only for a request with a unit) and the ``DecisionMade`` record, ``None`` when the
    unit's assignment was logged before. Positional and without ``**kwargs``: it runs
    for every decision, and the unkeyed case must cost what it did before units."""
    config = entry.config
    arm_id = entry.arm_list[index]
    record = (
        encode_decision_made(
            experiment_id=experiment_id,
            decision_id=decision_id,
            arm_id=arm_id,
            strategy=config.strategy,
            strategy_params=entry.params_json,
            propensity=propensity,
            config_version=config.version,
            snapshot_version=entry.state.version,
            degraded=degraded,
            attribution_window_s=config.attribution_window_s,
            unit_id=None if unit is None else unit.token,
            assignment=None if unit is None else unit.assignment,
            allocation_version=None if unit is None else unit.allocation_version,
            holdout=True if decision_id[-1] == HOLDOUT_MARK else None,
        )
        if unit is None or unit.logged
        else None
    )
    rt.metrics.decision(config.strategy)
    if log.isEnabledFor(logging.DEBUG):  # thousands per second: opt-in (LOG_LEVEL=DEBUG)
        log.debug(
            "decision served",
            extra={
                "experiment_id": experiment_id,
                "decision_id": decision_id,
                "arm_id": arm_id,
                "propensity": propensity,
                "degraded": degraded,
            },
        )
    served: dict[str, object] = {
        "experiment_id": experiment_id,
        "arm_id": arm_id,
        "strategy": config.strategy,
        "metadata": entry.metadata_json,
        "decision_id": decision_id,
        "propensity": propensity,
    }
    if unit is not None:
        served["unit_id"] = unit.unit_id
        served["assignment"] = config.assignment
    return orjson.dumps(served), record


def decide_unit_now(
    rt: Runtime, entry: CachedExperiment, degraded: bool, experiment_id: str, unit_id: str
) -> tuple[bytes, bytes | None] | None:
    """:func:`decide_unit` when it needs no I/O (a per-request or consistent unit, or a
    returning sticky unit this worker remembers, under an allocation it holds): the
    hot path's synchronous case. ``None``: await :func:`decide_unit`."""
    config = entry.config
    now = rt.allocations.clock()
    if config.assignment == "per_request":
        index, decision_id, propensity = _per_request(rt, entry, now, unit_id)
        token = unit_token(unit_id, config.salt, config.unit_id_storage)
        rt.metrics.unit_decision(config.assignment, "new")
        return _answer(
            rt,
            entry,
            degraded,
            experiment_id,
            index,
            decision_id,
            propensity,
            UnitFields(unit_id, token),
        )
    decided = rt.units.assign_now(entry, unit_id, now)
    return (
        None
        if decided is None
        else _unit_answer(rt, entry, degraded, experiment_id, unit_id, decided)
    )


async def decide_unit(
    rt: Runtime, entry: CachedExperiment, degraded: bool, experiment_id: str, unit_id: str
) -> tuple[bytes, bytes | None]:
    """A decision for a request with a (valid, trimmed) unit id: ``(body, record)``,
    the record ``None`` for a returning sticky unit (nothing is logged: a pull is a
    unit's assignment). Raises :class:`redis.exceptions.RedisError` when the allocation
    or the sticky table cannot be reached."""
    answer = decide_unit_now(rt, entry, degraded, experiment_id, unit_id)
    if answer is not None:
        return answer
    decided = await rt.units.assign(entry, unit_id, rt.allocations.clock())
    return _unit_answer(rt, entry, degraded, experiment_id, unit_id, decided)


def _unit_answer(
    rt: Runtime,
    entry: CachedExperiment,
    degraded: bool,
    experiment_id: str,
    unit_id: str,
    decided: UnitDecision,
) -> tuple[bytes, bytes | None]:
    """The answer to a sticky or consistent unit's request (see :func:`_answer`)."""
    mode = entry.config.assignment
    assert mode != "per_request", "per-request units are answered by decide_unit_now"
    a = decided.assignment
    rt.metrics.unit_decision(mode, decided.outcome)
    return _answer(
        rt,
        entry,
        degraded,
        experiment_id,
        a.arm_index,
        a.decision_id,
        a.propensity,
        UnitFields(unit_id, decided.token, mode, a.version, decided.outcome == "new"),
    )


def log_decision(rt: Runtime, experiment_id: str, record: bytes) -> Awaitable[bool] | None:
    """Enqueue the event. ``None`` when it is enqueued (the common case, no coroutine);
    otherwise the producer's queue is full and the caller awaits the returned wait for
    room (backpressure, see :meth:`~services.decider.producer.EventProducer.send_when_room`).
    """
    key = partition_key(experiment_id)
    if rt.producer.try_send(rt.topics.decisions, key, record):
        return None
    return rt.producer.send_when_room(rt.topics.decisions, key, record)


async def serve_decision(
    rt: Runtime, experiment_id: str, unit_id: str | None = None
) -> bytes | None:
    """Decide for one visitor and return the response body; ``None``: no such experiment.

    The whole decision: cached snapshot, one strategy call (or a pre-drawn choice; with
    a unit id, the experiment's assignment mode), the ``DecisionMade`` event enqueued
    without waiting for Kafka, the response body. Raises :class:`RedisError` only when
    nothing usable is cached or a unit's assignment needs Redis (the caller maps it).
    """
    entry = rt.cache.fresh(experiment_id)
    degraded = False
    if entry is None:
        entry, degraded = await rt.cache.get(experiment_id)
        if entry is None:
            return None
    record: bytes | None
    if unit_id is None:
        body, record = decide_cached(rt, entry, degraded, experiment_id)
    else:
        body, record = await decide_unit(rt, entry, degraded, experiment_id, unit_id)
    if record is not None:
        waiting = log_decision(rt, experiment_id, record)
        if waiting is not None:
            await waiting
    return body


@router.get(
    "/decision",
    response_model=DecisionPublic,
    summary="Choose an arm for one visitor",
    description="The hot path: served from an in-process snapshot at most "
    "`snapshot_max_staleness_s` old (a cache miss reads Redis, so a new experiment "
    "is decidable at once). Logs `DecisionMade` with its id and propensity without "
    "waiting for Kafka. Send `decision_id` back with the reward. With `unit_id`, the "
    "experiment's `assignment` mode decides and the answer adds `unit_id` and "
    "`assignment` (docs/assignment.md); a returning sticky unit gets its stored "
    "decision id, arm and propensity back, and no new decision is logged.",
    responses={404: E404, 422: E422, 503: E503, **CLIENT_RESPONSES},
    dependencies=[CLIENT],
)
async def decide(
    experiment_id: ExperimentIdQuery, rt: RuntimeDep, unit_id: UnitIdQuery = None
) -> Response:
    body = await serve_decision(rt, experiment_id, unit_id)
    if body is None:
        raise not_found(experiment_id)
    return Response(body, media_type="application/json")
