"""``GET /decision``: one implementation, served two ways.

:func:`serve_decision` is the whole decision (cached snapshot, one strategy call, the
``DecisionMade`` event enqueued without waiting, the response body). The FastAPI route
calls it, so the OpenAPI contract, validation and every error shape stay FastAPI's.

:class:`DecisionFastPath` is a pure ASGI middleware that serves the *happy path* of the
same request before FastAPI's router, dependency solver and query parser run: profiling
under wrk showed those layers cost more than the decision itself. It answers only when
the query is exactly ``experiment_id=<valid id>`` and the experiment is in memory or
Redis; anything else (missing or invalid id, unknown experiment, extra parameters, a
Redis error) falls through to the FastAPI route, which produces the documented 4xx/5xx.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
from redis.exceptions import RedisError

from bandit_core.decision_ids import make_decision_id
from schemas.events import SCHEMA_VERSION
from schemas.ids import is_valid_id
from schemas.topics import partition_key

if TYPE_CHECKING:
    from services.decider.app import Runtime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIX = b"experiment_id="
_HEADERS = [(b"content-type", b"application/json")]


def decision_made_record(
    experiment_id: str,
    decision_id: str,
    arm_id: str,
    strategy: str,
    strategy_params: dict[str, Any],
    propensity: float,
    config_version: int,
    snapshot_version: int,
    degraded: bool,
) -> bytes:
    """The JSON record of a :class:`schemas.events.DecisionMade`, without a model per call.

    Every value is produced by this process from a validated config, so re-validating it
    on each request is pure overhead; ``tests/unit/test_decider_hot_path.py`` pins this
    encoding to the model (same fields, and ``decode`` accepts it).
    """
    return orjson.dumps(
        {
            "event_id": uuid.UUID(bytes=os.urandom(16), version=4).hex,
            "ts": time.time(),
            "schema_version": SCHEMA_VERSION,
            "experiment_id": experiment_id,
            "type": "decision_made",
            "decision_id": decision_id,
            "arm_id": arm_id,
            "strategy": strategy,
            "strategy_params": strategy_params,
            "propensity": propensity,
            "config_version": config_version,
            "snapshot_version": snapshot_version,
            "degraded": degraded,
        }
    )


async def serve_decision(rt: Runtime, experiment_id: str) -> bytes | None:
    """Decide for one visitor and return the response body; ``None``: no such experiment.

    Raises :class:`RedisError` only when nothing usable is cached (the caller maps it).
    """
    entry, degraded = await rt.cache.get(experiment_id)
    if entry is None:
        return None
    config = entry.config
    index, propensity = rt.cache.decide(entry, time.time())
    arm_id = entry.arm_list[index]
    decision_id = make_decision_id(index)
    record = decision_made_record(
        experiment_id,
        decision_id,
        arm_id,
        config.strategy,
        config.strategy_params,
        propensity,
        config.version,
        entry.state.version,
        degraded,
    )
    await rt.producer.send_nowait(rt.topics.decisions, partition_key(experiment_id), record)
    return orjson.dumps(
        {
            "experiment_id": experiment_id,
            "arm_id": arm_id,
            "strategy": config.strategy,
            "metadata": {"arms": entry.arm_list},
            "decision_id": decision_id,
            "propensity": propensity,
        }
    )


class DecisionFastPath:
    """ASGI middleware: answer well-formed ``GET /decision`` before FastAPI's routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/decision" and scope["method"] == "GET":
            body = await self._try(scope)
            if body is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [*_HEADERS, (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _try(scope: Scope) -> bytes | None:
        query: bytes = scope["query_string"]
        if not query.startswith(_PREFIX) or b"&" in query:
            return None
        experiment_id = unquote(query[len(_PREFIX) :].decode("latin-1"))
        runtime = getattr(scope["app"].state, "runtime", None)
        if runtime is None or not is_valid_id(experiment_id):
            return None
        try:
            return await serve_decision(runtime, experiment_id)
        except RedisError:
            return None  # the route answers 503 with the documented body
