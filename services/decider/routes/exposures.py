"""``POST /exposures``: locally made decisions reported in batches, logged as decisions.

An SDK in local mode decides from an allocation it fetched and reports what it showed.
Each item is judged by :func:`bandit_core.exposures.judge_exposure` against the current
config and the *stored* allocation record it names (the reward consumer judges records
of the exposures topic with the same function), all or nothing like ``POST /rewards``:
one bad item is a 422 naming every bad index, and nothing of the batch is marked or
logged.

Idempotent by ``exposure_id``: a valid batch first sets one mark per item (``SET NX EX``
the allocation retention, one pipeline); an item whose mark exists is a duplicate and is
not produced again. The new items' ``DecisionMade`` events are produced and the answer
waits for Kafka's acks; when Kafka refuses, the marks this request set are deleted, so
the retry the 503 asks for logs them. A concurrent request carrying the same exposure
id may count it a duplicate just before such a rollback (the client retrying the 503
then logs it); the fold counts a unit decision id once either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, status
from redis.exceptions import RedisError

from bandit_core.allocation import AllocationRecord
from bandit_core.exposures import ExposureRejected, judge_exposure
from mab_client.models import ErrorPublic, ExposureCreate, ExposuresCreate, ExposuresPublic
from schemas.codec import encode
from schemas.events import DecisionMade, ExperimentConfig
from schemas.rejections import Rejection
from schemas.topics import partition_key
from services.decider.auth import BODY_RESPONSES, CLIENT_RESPONSES
from services.decider.errors import E422, check_batch_size, validate_items
from services.decider.producer import EventLogUnavailableError
from services.decider.runtime import CLIENT, Runtime, RuntimeDep

log = logging.getLogger("services.decider")

router = APIRouter(tags=["decisions"])

#: Rejections that a stale cached config could cause (an arm or an experiment created on
#: another process a moment ago): confirmed against Redis before they are answered.
_CONFIRM: frozenset[Rejection] = frozenset({Rejection.UNKNOWN_EXPERIMENT, Rejection.UNKNOWN_ARM})


class _Judge:
    """Judges the items of one request: each experiment's config and each named
    allocation version read once per request (the store memoises versions anyway)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.configs: dict[str, ExperimentConfig | None] = {}
        self.confirmed: set[str] = set()
        self.records: dict[tuple[str, int], AllocationRecord | None] = {}

    async def config(self, experiment_id: str) -> ExperimentConfig | None:
        if experiment_id not in self.configs:
            cache = self.rt.cache
            entry = cache.fresh(experiment_id)
            if entry is None:
                entry, _ = await cache.get(experiment_id)
            self.configs[experiment_id] = entry.config if entry is not None else None
        return self.configs[experiment_id]

    async def reread(self, experiment_id: str) -> ExperimentConfig | None:
        """The config from Redis, past the cache (once per experiment and request)."""
        if experiment_id not in self.confirmed:
            self.confirmed.add(experiment_id)
            self.rt.cache.invalidate(experiment_id)
            self.configs[experiment_id] = await self.rt.store.get_config(experiment_id)
        return self.configs[experiment_id]

    async def record(self, experiment_id: str, version: int) -> AllocationRecord | None:
        key = (experiment_id, version)
        if key not in self.records:
            self.records[key] = await self.rt.allocations.get(experiment_id, version)
        return self.records[key]

    async def __call__(self, item: ExposureCreate) -> DecisionMade | ExposureRejected:
        exp = item.experiment_id
        record = await self.record(exp, item.allocation_version)
        verdict = judge_exposure(await self.config(exp), record, item)
        if isinstance(verdict, ExposureRejected) and verdict.reason in _CONFIRM:
            verdict = judge_exposure(await self.reread(exp), record, item)
        return verdict


def _marks(rt: Runtime, events: Sequence[DecisionMade]) -> list[str]:
    keys = rt.allocations.keys
    return [keys.exposure(ev.experiment_id, ev.exposure_id or "") for ev in events]


async def _mark(rt: Runtime, events: Sequence[DecisionMade]) -> list[bool]:
    """Set each exposure's mark if absent (one pipeline); ``True``: this request set it."""
    ttl = rt.settings.allocation_retention_s
    pipe = rt.redis.pipeline(transaction=False)
    for key in _marks(rt, events):
        pipe.set(key, b"1", nx=True, ex=ttl)
    return [bool(r) for r in await pipe.execute()]


async def _unmark(rt: Runtime, events: Sequence[DecisionMade]) -> None:
    """Remove the marks of exposures Kafka did not take, so their retry is not taken for
    a duplicate. If Redis fails here too, those exposure ids stay marked until the
    retention ends (a retry then counts them as duplicates): logged loudly."""
    try:
        await rt.redis.delete(*_marks(rt, events))
    except RedisError as exc:
        log.error(
            "exposure marks not removed after a failed write",
            extra={"exposures": len(events), "error": repr(exc)},
        )


async def serve_exposures(rt: Runtime, items: Sequence[object]) -> ExposuresPublic:
    """Judge every item, then mark, produce and wait for Kafka (see the module docstring)."""
    check_batch_size(len(items), "exposures", rt.settings.max_reward_batch)
    judge = _Judge(rt)
    valid, errors = validate_items(items, ExposureCreate)
    events: list[DecisionMade] = []
    for index, body in valid:
        verdict = await judge(body)
        if isinstance(verdict, DecisionMade):
            events.append(verdict)
            continue
        rt.metrics.exposure(verdict.reason)
        errors.append({"index": index, "loc": [], "msg": verdict.detail, "type": verdict.reason})
    errors.sort(key=lambda e: int(e["index"]))
    if errors:
        log.info("exposures rejected", extra={"exposures": len(items), "errors": len(errors)})
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, errors)
    marked = await _mark(rt, events)
    new = [ev for ev, fresh in zip(events, marked, strict=True) if fresh]
    duplicates = len(events) - len(new)
    if new:
        records = [(partition_key(ev.experiment_id), encode(ev)) for ev in new]
        try:
            await rt.producer.publish_many(rt.topics.decisions, records)
        except EventLogUnavailableError as exc:
            await _unmark(rt, new)
            rt.metrics.exposure("unavailable", len(new))
            log.error("exposures not logged", extra={"exposures": len(new), "error": str(exc)})
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "exposures not recorded: event log unavailable, retry",
            ) from None
    rt.metrics.exposure("accepted", len(new))
    rt.metrics.exposure("duplicate", duplicates)
    return ExposuresPublic(accepted=len(new), duplicates=duplicates)


#: The answers besides the 200, for the OpenAPI document.
_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorPublic, "description": "Not recorded; retry the same batch."},
    422: E422,
    **CLIENT_RESPONSES,
    **BODY_RESPONSES,
}


@router.post(
    "/exposures",
    response_model=ExposuresPublic,
    summary="Report locally made decisions",
    description="Up to `MAB_MAX_REWARD_BATCH` (default 1000) exposures: decisions an SDK "
    "made locally from `GET /experiments/{id}/allocation`. Each is checked against the "
    "stored allocation version it names (the arm must be the one the assignment rule "
    "gives its unit there) and logged as a `DecisionMade` with that version's weight as "
    "its propensity. All or nothing: a 422 lists every failing item as `{index, loc, "
    "msg, type}` (`type`: the validation error or the rejection reason, e.g. "
    "`arm_not_assigned`, `unknown_allocation`) and nothing is logged. An `exposure_id` "
    "already reported counts as a duplicate and is not logged again. The answer comes "
    "after Kafka acknowledged every new one.",
    responses=_RESPONSES,
    dependencies=[CLIENT],
)
async def exposures(body: ExposuresCreate, rt: RuntimeDep) -> ExposuresPublic:
    return await serve_exposures(rt, body.exposures)
