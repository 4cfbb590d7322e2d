"""``GET /decision``: one implementation, served by this route and by the raw fast path.

:func:`serve_decision` is the whole decision (cached snapshot, one strategy call, the
``DecisionMade`` event enqueued without waiting, the response body). Well-formed
requests are normally answered by :class:`services.decider.hot_path.DecisionFastPath`
with these same functions; the route serves the OpenAPI contract, validation errors and
404/503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response

from bandit_core.decision_ids import make_decision_id
from mab_client.models import DecisionPublic
from schemas.ids import ExperimentId
from schemas.topics import partition_key
from schemas.wire import encode_decision_made
from services.decider.auth import CLIENT_RESPONSES
from services.decider.decisions import CachedExperiment
from services.decider.errors import E404, E422, E503, not_found
from services.decider.runtime import CLIENT, Runtime, RuntimeDep

log = logging.getLogger("services.decider")

router = APIRouter(tags=["decisions"])

ExperimentIdQuery = Annotated[
    ExperimentId,
    Query(description="The experiment to decide for (trimmed).", examples=["cta-button-test"]),
]


def decide_cached(
    rt: Runtime, entry: CachedExperiment, degraded: bool, experiment_id: str
) -> tuple[bytes, bytes]:
    """One decision from a cached entry: ``(response body, DecisionMade record)``.

    Synchronous on purpose: on the hot path a coroutine per step costs more than the step.
    """
    config = entry.config
    index, propensity = rt.cache.decide(entry, time.time())
    arm_id = entry.arm_list[index]
    decision_id = make_decision_id(index)
    record = encode_decision_made(
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
    body = orjson.dumps(
        {
            "experiment_id": experiment_id,
            "arm_id": arm_id,
            "strategy": config.strategy,
            "metadata": entry.metadata_json,
            "decision_id": decision_id,
            "propensity": propensity,
        }
    )
    return body, record


def log_decision(rt: Runtime, experiment_id: str, record: bytes) -> Awaitable[bool] | None:
    """Enqueue the event. ``None`` when it is enqueued (the common case, no coroutine);
    otherwise the producer's queue is full and the caller awaits the returned wait for
    room (backpressure, see :meth:`~services.decider.producer.EventProducer.send_when_room`).
    """
    key = partition_key(experiment_id)
    if rt.producer.try_send(rt.topics.decisions, key, record):
        return None
    return rt.producer.send_when_room(rt.topics.decisions, key, record)


async def serve_decision(rt: Runtime, experiment_id: str) -> bytes | None:
    """Decide for one visitor and return the response body; ``None``: no such experiment.

    The whole decision: cached snapshot, one strategy call (or a pre-drawn choice), the
    ``DecisionMade`` event enqueued without waiting for Kafka, the response body.
    Raises :class:`RedisError` only when nothing usable is cached (the caller maps it).
    """
    entry = rt.cache.fresh(experiment_id)
    degraded = False
    if entry is None:
        entry, degraded = await rt.cache.get(experiment_id)
        if entry is None:
            return None
    body, record = decide_cached(rt, entry, degraded, experiment_id)
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
    "waiting for Kafka. Send `decision_id` back with the reward.",
    responses={404: E404, 422: E422, 503: E503, **CLIENT_RESPONSES},
    dependencies=[CLIENT],
)
async def decide(experiment_id: ExperimentIdQuery, rt: RuntimeDep) -> Response:
    body = await serve_decision(rt, experiment_id)
    if body is None:
        raise not_found(experiment_id)
    return Response(body, media_type="application/json")
