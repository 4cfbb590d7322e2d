"""``GET /experiments/{id}/allocation``: the current allocation version, cache-friendly.

An SDK deciding locally (and an edge worker) polls this. The body changes only when the
version does or when the experiment's assignment settings change, so it carries an
``ETag`` (the version and a digest of the body) and ``Cache-Control: max-age`` up to
the version's end; a poll with ``If-None-Match`` of the current tag is a bodyless 304.

Not signed: a client that edits its copy only hurts itself, because the server never
trusts a client's weights. An exposure names its version and the server re-derives the
arm and the propensity from its own stored record.

Access: the same as ``GET /decision`` (a client key or the admin key when
``MAB_CLIENT_KEYS`` is set): the weights and the salt are what a storefront needs to
decide, and a read-only key has no use for them.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import orjson
from fastapi import APIRouter, Header
from fastapi.responses import Response

from bandit_core.allocation import seconds_left
from mab_client.assignment import ALGORITHM
from mab_client.models import AllocationArmPublic, AllocationHashPublic, AllocationPublic
from services.decider.allocations import CurrentAllocation
from services.decider.auth import CLIENT_RESPONSES
from services.decider.errors import E404, E503, not_found
from services.decider.paths import EXPERIMENT, ExperimentIdPath
from services.decider.runtime import CLIENT, RuntimeDep

router = APIRouter(tags=["experiments"], dependencies=[CLIENT])


def allocation_public(current: CurrentAllocation) -> AllocationPublic:
    config, record = current.config, current.record
    return AllocationPublic(
        experiment_id=config.experiment_id,
        version=record.version,
        arms=[
            AllocationArmPublic(arm_id=a, weight=w)
            for a, w in zip(record.arm_ids, record.weights, strict=True)
        ],
        assignment=config.assignment,
        salt=config.salt,
        hash=AllocationHashPublic(algorithm=ALGORITHM, unit_id_storage=config.unit_id_storage),
        valid_until=current.valid_until,
        min_arm_share=record.min_arm_share,
    )


def entity_tag(version: int, body: bytes) -> str:
    """A strong validator: the version (readable in logs) and a digest of the body (the
    assignment settings may change within a version)."""
    return f'"{version}-{hashlib.sha256(body).hexdigest()[:16]}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (a list, ``*``, or a weak
    ``W/`` form: RFC 9110 compares weakly for ``If-None-Match``)."""
    if if_none_match is None:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


@router.get(
    f"{EXPERIMENT}/allocation",
    response_model=AllocationPublic,
    summary="Current allocation (for local decisions)",
    description="The weights for new units in the current allocation version (epochs of "
    "the experiment's `allocation_interval_s`), after the traffic floor, with the "
    "assignment mode, the salt and the hashing rule. Every decider worker serves the same "
    "weights for a version (the first to compute it stores it). `ETag` and "
    "`Cache-Control: max-age` (seconds to `valid_until`); `If-None-Match` with the current "
    "tag answers 304 without a body.",
    responses={
        304: {"description": "The client's copy (its `If-None-Match`) is current."},
        404: E404,
        503: E503,
        **CLIENT_RESPONSES,
    },
)
async def allocation(
    experiment_id: ExperimentIdPath,
    rt: RuntimeDep,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    current = await rt.allocations.current(experiment_id)
    if current is None:
        raise not_found(experiment_id)
    body = orjson.dumps(allocation_public(current).model_dump(mode="json"))
    etag = entity_tag(current.record.version, body)
    max_age = seconds_left(
        current.record.version, current.config.allocation_interval_s, rt.allocations.clock()
    )
    headers = {"ETag": etag, "Cache-Control": f"max-age={max_age}"}
    if matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
