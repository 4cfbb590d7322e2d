"""The decider's outermost ASGI app: the edge checks, the hot requests, then FastAPI.

:class:`DecisionFastPath` is a pure ASGI app that serves the *happy path* of
``GET /decision`` and ``POST /reward`` before FastAPI's router, dependency solver and
query parser run: profiling under wrk showed those layers cost more than the decision
itself. It calls the routes' own functions
(:func:`~services.decider.routes.decisions.serve_decision`,
:func:`~services.decider.routes.rewards.serve_reward`) with the same
:class:`~services.decider.runtime.Runtime`, so each behaviour has one implementation
and both paths answer byte for byte alike.

It answers a decision only when the query is exactly ``experiment_id=<valid id>``, or
that and ``unit_id=<valid unit id>`` in either order (percent- or ``+``-encoded like
any query, trimmed as the route's model trims them), and the experiment is in memory or
Redis; anything else (missing or invalid ids, unknown experiment, other parameters)
falls through to the FastAPI route, which produces the documented 4xx. A query without
``&`` is the unkeyed decision, tested first so that it costs what it did before units.
A reward body that validates as :class:`RewardCreate` is served here (its 404/422/503
are the route's own ``HTTPException`` rendered identically); one that does not is
replayed to FastAPI untouched, so validation errors keep FastAPI's format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_plus

import orjson
from fastapi import FastAPI, HTTPException
from pydantic import ValidationError
from redis.exceptions import RedisError

from mab_client.assignment import normalize_unit_id
from mab_client.errors import InvalidUnitIdError
from mab_client.models import RewardCreate
from schemas.ids import InvalidIdError, normalize_id
from services.decider.auth import Access, Denial
from services.decider.errors import STORE_UNAVAILABLE
from services.decider.limits import (
    RATE_LIMITED,
    BodyTooLargeError,
    limited_receive,
    retry_after,
    too_large_body,
)
from services.decider.paths import keep_encoded_segments
from services.decider.routes.decisions import (
    decide_cached,
    decide_unit_now,
    log_decision,
    serve_decision,
)
from services.decider.routes.rewards import serve_reward
from services.decider.runtime import Runtime, runtime_of

log = logging.getLogger("services.decider")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIX = b"experiment_id="
_UNIT_PREFIX = b"unit_id="
_HEADERS = [(b"content-type", b"application/json")]
#: Larger reward bodies go to FastAPI (and its body limit); a valid one is ~200 bytes.
_MAX_FAST_BODY = 16 * 1024


Headers = list[tuple[bytes, bytes]]

#: Paths that never need a key nor count against a rate limit (docs/security.md).
OPEN_PATHS = frozenset(
    {"/health", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_HOT_PATHS = frozenset({"/decision", "/reward"})


async def _respond(send: Send, status_code: int, body: bytes, extra: Headers | None = None) -> None:
    headers = [*_HEADERS, (b"content-length", b"%d" % len(body))]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DecisionFastPath:
    """The decider's outermost ASGI app: the edge checks, hot requests, then FastAPI.

    It wraps the FastAPI app from the outside (not as a Starlette middleware), so a hot
    request skips FastAPI's whole middleware stack too; lifespan and every other request
    go to FastAPI untouched. Every HTTP request passes the same edge first: body size
    limit, rate limit per key, request metrics and CORS headers; the two hot routes also
    check their API key here (the other routes check it in a FastAPI dependency, so the
    OpenAPI document shows it). All of it reads settings built once at start-up.
    """

    def __init__(self, api: FastAPI) -> None:
        self.app: ASGIApp = api
        self.api = api
        self._cors_app: ASGIApp | None = None

    def _downstream(self, runtime: Runtime) -> ASGIApp:
        """FastAPI, behind Starlette's CORS middleware when origins are configured."""
        if not runtime.cors.enabled:
            return self.app
        if self._cors_app is None:
            from starlette.middleware.cors import CORSMiddleware

            self._cors_app = CORSMiddleware(
                self.app,
                allow_origins=runtime.cors.origin_list,
                allow_methods=["GET", "POST", "PUT"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        return self._cors_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = runtime_of(self.api)
        if scope["type"] != "http" or runtime is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        authorization = origin = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"origin":
                origin = value
            elif name == b"content-length":
                length = value
        cors = runtime.cors.headers_for(origin) if runtime.cors.enabled else []
        # Never the raw path as a label (unbounded); FastAPI's route template replaces it.
        route = path if path in _HOT_PATHS else "unmatched"
        status_code = 0
        try:
            if method in _BODY_METHODS:
                limit = runtime.settings.max_body_bytes
                if length is not None and (not length.isdigit() or int(length) > limit):
                    status_code = 413
                    await _respond(send, 413, too_large_body(limit), cors)
                    return
                receive = limited_receive(receive, limit)
            limiter = runtime.limiter
            if limiter is not None and method != "OPTIONS" and path not in OPEN_PATHS:
                who = runtime.auth.principal(authorization) if runtime.auth.enabled else None
                if who is None:
                    client = scope.get("client")
                    who = f"addr:{client[0] if client else '?'}"
                wait = limiter.acquire(who)
                if wait > 0.0:
                    status_code = 429
                    await _respond(
                        send, 429, RATE_LIMITED, [(b"retry-after", retry_after(wait)), *cors]
                    )
                    return
            is_decision = path == "/decision" and method == "GET"
            if is_decision or (path == "/reward" and method == "POST"):
                # Both fast routes are the storefront's: checked for the client key here,
                # as their FastAPI routes' dependency would.
                denial = runtime.auth.check(authorization, Access.CLIENT)
                if denial is not None:
                    status_code = denial.status
                    await _respond(send, denial.status, denial.body, _denial_headers(denial, cors))
                    return
                if is_decision:
                    query: bytes = scope["query_string"]
                    unit_id = None
                    if b"&" in query:
                        experiment_id, unit_id = _unit_query(query)
                    else:
                        experiment_id = _experiment_id(query)
                    entry = None if experiment_id is None else runtime.cache.fresh(experiment_id)
                    if entry is not None and experiment_id is not None:
                        # The common cases, without a coroutine: a fresh cached entry, and
                        # a unit decided without I/O (else the awaited path below).
                        answer = (
                            decide_cached(runtime, entry, False, experiment_id)
                            if unit_id is None
                            else decide_unit_now(runtime, entry, False, experiment_id, unit_id)
                        )
                        if answer is not None:
                            body, record = answer
                            if record is not None:
                                waiting = log_decision(runtime, experiment_id, record)
                                if waiting is not None:
                                    await waiting
                            status_code = 200
                            await _respond(send, 200, body, cors)
                            return
                    try:
                        served = (
                            None
                            if experiment_id is None
                            else await serve_decision(runtime, experiment_id, unit_id)
                        )
                    except RedisError as exc:
                        # Answered here, not by falling through to the route: the route
                        # would ask Redis again and double the wait (two socket timeouts
                        # against a hung Redis, found by the Redis freeze fault test).
                        log.error("redis error on GET /decision: %r", exc)
                        status_code = 503
                        await _respond(send, 503, STORE_UNAVAILABLE, cors)
                        return
                    if served is not None:
                        status_code = 200
                        await _respond(send, 200, served, cors)
                        return
                else:
                    status_code = await self._reward(scope, receive, send, runtime, cors)
                    if status_code:
                        return
            status_code, route = await self._forward(scope, receive, send, runtime)
        finally:
            runtime.metrics.request(route, method, status_code, time.perf_counter() - started)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, runtime: Runtime
    ) -> tuple[int, str]:
        """Hand the request to FastAPI; returns the status sent and the route template.

        A body that outgrows the limit while FastAPI reads it is answered 413 here, and
        FastAPI sees a disconnect (it would turn any exception raised while reading into
        a 400); whatever it sends afterwards is dropped. An id sent percent-encoded in
        the path keeps its ``%2F``/``%25`` for routing (:mod:`services.decider.paths`).
        """
        keep_encoded_segments(scope)
        status_code = 0
        cut = False
        cors = runtime.cors.headers_for(_header(scope, b"origin")) if runtime.cors.enabled else []

        async def guarded() -> Message:
            nonlocal status_code, cut
            try:
                return await receive()
            except BodyTooLargeError:
                if not status_code:
                    status_code, cut = 413, True
                    limit = runtime.settings.max_body_bytes
                    await _respond(send, 413, too_large_body(limit), cors)
                return {"type": "http.disconnect"}

        async def watch(message: Message) -> None:
            nonlocal status_code
            if cut:
                return
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        await self._downstream(runtime)(scope, guarded, watch)
        matched = scope.get("route")
        # path_format: the template without convertors (``/experiments/{experiment_id}``).
        route = getattr(matched, "path_format", None) or "unmatched"
        return status_code, route

    async def _reward(
        self, scope: Scope, receive: Receive, send: Send, runtime: Runtime, cors: Headers
    ) -> int:
        """Serve a well-formed reward; ``0``: not answered (FastAPI must), else the status."""
        headers = dict(scope["headers"])
        raw = b""
        more = True
        try:
            while more and len(raw) <= _MAX_FAST_BODY:
                message = await receive()
                if message["type"] != "http.request":
                    return 499  # client went away
                raw += message.get("body", b"")
                more = message.get("more_body", False)
        except BodyTooLargeError:
            await _respond(send, 413, too_large_body(runtime.settings.max_body_bytes), cors)
            return 413
        parsed: RewardCreate | None = None
        if not more and headers.get(b"content-type", b"").startswith(b"application/json"):
            try:
                parsed = RewardCreate.model_validate_json(raw)
            except ValidationError:
                parsed = None
        if parsed is None:
            # Hand FastAPI the body already read: its validation errors keep their format.
            return await self._replay_to_api(scope, raw, more, receive, send, runtime)
        try:
            public = await serve_reward(runtime, parsed)
        except HTTPException as exc:
            await _respond(send, exc.status_code, orjson.dumps({"detail": exc.detail}), cors)
            return exc.status_code
        except RedisError as exc:
            log.error("redis error on POST /reward: %r", exc)
            await _respond(send, 503, STORE_UNAVAILABLE, cors)
            return 503
        await _respond(send, 200, orjson.dumps(public.model_dump()), cors)
        return 200

    async def _replay_to_api(
        self,
        scope: Scope,
        raw: bytes,
        more: bool,
        receive: Receive,
        send: Send,
        runtime: Runtime,
    ) -> int:
        status_code, _ = await self._forward(scope, _replay(raw, more, receive), send, runtime)
        return status_code or 500


def _unquoted(value: bytes) -> str:
    """A query value as Starlette reads it (``unquote_plus`` of its latin-1 text); a
    value without ``%`` or ``+``, the common one, has nothing to unescape."""
    raw = value.decode("latin-1")
    return unquote_plus(raw) if "%" in raw or "+" in raw else raw


def _experiment_id(query: bytes) -> str | None:
    """The (trimmed) id of a query that is exactly ``experiment_id=<valid id>``; ``None``:
    anything else, which FastAPI answers (missing or invalid id, extra parameters).

    Decoded as Starlette decodes a query (``parse_qsl`` of its latin-1 text: ``+`` is a
    space, escapes are UTF-8), so both paths read the same id.
    """
    if not query.startswith(_PREFIX) or b"&" in query:
        return None
    try:
        return normalize_id(_unquoted(query[len(_PREFIX) :]))
    except InvalidIdError:
        return None


def _unit_query(query: bytes) -> tuple[str | None, str | None]:
    """``(experiment id, unit id)`` of a query that is exactly ``experiment_id=E&unit_id=U``
    or ``unit_id=U&experiment_id=E`` with both valid; ``(None, None)`` otherwise (FastAPI
    answers it: its 422 names the bad parameter)."""
    first, _, second = query.partition(b"&")
    if first.startswith(_UNIT_PREFIX):
        first, second = second, first
    if not second.startswith(_UNIT_PREFIX) or b"&" in second:
        return None, None
    experiment_id = _experiment_id(first)
    if experiment_id is None:
        return None, None
    try:
        unit_id = normalize_unit_id(_unquoted(second[len(_UNIT_PREFIX) :]))
    except InvalidUnitIdError:
        return None, None
    return experiment_id, unit_id


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _denial_headers(denial: Denial, cors: Headers) -> Headers:
    extra = denial.raw_headers()[1:]  # content-type is sent by _respond
    return [*extra, *cors]


def _replay(first: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that hands FastAPI the body already read, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": first, "more_body": more}
        return await receive()

    return replay
