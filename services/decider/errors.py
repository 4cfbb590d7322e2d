"""How the decider answers errors: one wording each, for the routes and the raw fast path.

Also the JSON response class of every route, the OpenAPI descriptions of the shared
error statuses, and the app's exception handlers (installed by
:func:`services.decider.app.create_app`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final, TypeVar

import orjson
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bandit_core.fold import rejection_text
from mab_client.models import ErrorPublic
from schemas.events import ExperimentConfig, RewardObserved
from schemas.rejections import Rejection

log = logging.getLogger("services.decider")

M = TypeVar("M", bound=BaseModel)

#: The body of a 503 while Redis is unavailable (both serving paths).
STORE_UNAVAILABLE: Final = b'{"detail":"state store unavailable, retry"}'

#: OpenAPI ``responses`` entries shared by the routes.
E404: Final = {"model": ErrorPublic, "description": "No such experiment."}
E409: Final = {"model": ErrorPublic, "description": "Conflicts with the stored configuration."}
E422: Final = {"description": "Invalid request (ids, arms, strategy, params, reward)."}
E503: Final = {"model": ErrorPublic, "description": "Redis or Kafka unavailable; safe to retry."}


class OrjsonResponse(JSONResponse):
    """JSON via orjson (FastAPI's ORJSONResponse is deprecated; this is the same idea)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def not_found(experiment_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id!r} not found")


def reward_rejected(
    reason: Rejection, event: RewardObserved, config: ExperimentConfig | None
) -> HTTPException:
    """The client-facing error for a ``reward_rejection`` reason (404 or 422)."""
    if reason is Rejection.UNKNOWN_EXPERIMENT or config is None:
        return not_found(event.experiment_id)
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, rejection_text(reason, event, config)
    )


def check_batch_size(count: int, noun: str, limit: int) -> None:
    """A batch route's bounds (``POST /rewards``, ``POST /exposures``): 1..``limit``
    items (``MAB_MAX_REWARD_BATCH``), else a 422 saying which bound."""
    if count == 0:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{noun} must not be empty")
    if count > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{count} {noun} in one request; the limit is {limit} (MAB_MAX_REWARD_BATCH)",
        )


def item_errors(index: int, exc: ValidationError) -> list[dict[str, Any]]:
    """The 422 entries of one invalid batch item: ``{index, loc, msg, type}`` per error,
    without the input (never echoed back)."""
    return [
        {
            "index": index,
            "loc": list(e.get("loc", ())),
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]


def validate_items(
    items: Sequence[object], model: type[M]
) -> tuple[list[tuple[int, M]], list[dict[str, Any]]]:
    """A batch's items validated one by one: ``(index, model)`` of the valid ones, and
    the :func:`item_errors` of the others (so one 422 can name every bad item)."""
    valid: list[tuple[int, M]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, model.model_validate(item)))
        except ValidationError as exc:
            errors += item_errors(index, exc)
    return valid, errors


def install_error_handlers(app: FastAPI) -> None:
    """Validation errors without the input, undecodable bodies as 422, Redis as 503."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # Drop "input"/"ctx": never echo a 10 kB (or hostile) value back to the client.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return OrjsonResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers an undecodable body (not JSON, not UTF-8) with a bare 400; every
        # other invalid input is a 422, so this one is too, with a clearer message.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return OrjsonResponse(
                {"detail": "request body is not valid JSON (UTF-8)"}, status_code=422
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(RedisError)
    async def redis_error(request: Request, exc: RedisError) -> Response:
        log.error("redis error on %s %s: %r", request.method, request.url.path, exc)
        return Response(STORE_UNAVAILABLE, status_code=503, media_type="application/json")
