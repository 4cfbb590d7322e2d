"""``GET /decision`` and ``POST /reward``: one implementation each, served two ways.

:func:`serve_decision` is the whole decision (cached snapshot, one strategy call, the
``DecisionMade`` event enqueued without waiting, the response body). The FastAPI route
calls it, so the OpenAPI contract, validation and every error shape stay FastAPI's.

:class:`DecisionFastPath` is a pure ASGI middleware that serves the *happy path* of the
same request before FastAPI's router, dependency solver and query parser run: profiling
under wrk showed those layers cost more than the decision itself. It answers only when
the query is exactly ``experiment_id=<valid id>`` (percent- or ``+``-encoded like any
query, trimmed by :func:`schemas.ids.normalize_id` as the route's model trims it) and
the experiment is in memory or Redis; anything else (missing or invalid id, unknown
experiment, extra parameters, a Redis error) falls through to the FastAPI route, which
produces the documented 4xx/5xx.

``POST /reward`` works the same way: a JSON body that validates as :class:`RewardCreate`
is served by :func:`serve_reward` right here (its 404/422/503 are the route's own
``HTTPException`` rendered identically); a body that does not validate is replayed to
FastAPI untouched, so validation errors keep FastAPI's format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import orjson
from fastapi import FastAPI, HTTPException, status
from pydantic import ValidationError
from redis.exceptions import RedisError

from bandit_core.decision_ids import make_decision_id
from bandit_core.fold import reward_rejection
from schemas.codec import encode
from schemas.events import SCHEMA_VERSION, ExperimentConfig, RewardObserved
from schemas.ids import InvalidIdError, normalize_id, random_hex
from schemas.topics import partition_key
from services.decider.auth import Access, Denial
from services.decider.errors import reward_rejected
from services.decider.limits import (
    RATE_LIMITED,
    BodyTooLargeError,
    limited_receive,
    retry_after,
    too_large_body,
)
from services.decider.models import RewardCreate, RewardPublic, RewardsPublic
from services.decider.paths import keep_encoded_segments
from services.decider.producer import EventLogUnavailableError

if TYPE_CHECKING:
    from services.decider.app import Runtime
    from services.decider.decisions import CachedExperiment

log = logging.getLogger("services.decider")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIX = b"experiment_id="
_HEADERS = [(b"content-type", b"application/json")]
#: Larger reward bodies go to FastAPI (and its body limit); a valid one is ~200 bytes.
_MAX_FAST_BODY = 16 * 1024
#: The body of a 503 while Redis is unavailable (the same as the routes' handler).
_STORE_UNAVAILABLE = b'{"detail":"state store unavailable, retry"}'


def decision_made_record(
    experiment_id: str,
    decision_id: str,
    arm_id: str,
    strategy: str,
    strategy_params: dict[str, Any] | orjson.Fragment,
    propensity: float,
    config_version: int,
    snapshot_version: int,
    degraded: bool,
    attribution_window_s: float | None = None,
) -> bytes:
    """The JSON record of a :class:`schemas.events.DecisionMade`, without a model per call.

    Every value is produced by this process from a validated config, so re-validating it
    on each request is pure overhead; ``tests/unit/test_decider_hot_path.py`` pins this
    encoding to the model (same fields, and ``decode`` accepts it). ``strategy_params``
    may come pre-encoded (the cache keeps an ``orjson.Fragment`` per entry).
    """
    return orjson.dumps(
        {
            "event_id": random_hex(),
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
            "attribution_window_s": attribution_window_s,
        }
    )


def decide(
    rt: Runtime, entry: CachedExperiment, degraded: bool, experiment_id: str
) -> tuple[bytes, bytes]:
    """One decision from a cached entry: ``(response body, DecisionMade record)``.

    Synchronous on purpose: on the hot path a coroutine per step costs more than the step.
    """
    config = entry.config
    index, propensity = rt.cache.decide(entry, time.time())
    arm_id = entry.arm_list[index]
    decision_id = make_decision_id(index)
    record = decision_made_record(
        experiment_id,
        decision_id,
        arm_id,
        config.strategy,
        entry.params_json,
        propensity,
        config.version,
        entry.state.version,
        degraded,
        config.attribution_window_s,
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
    body, record = decide(rt, entry, degraded, experiment_id)
    waiting = log_decision(rt, experiment_id, record)
    if waiting is not None:
        await waiting
    return body


def reward_event(body: RewardCreate) -> RewardObserved:
    """The event a validated request body becomes (``source="api"``)."""
    fields: dict[str, Any] = {
        "experiment_id": body.experiment_id,
        "arm_id": body.arm_id,
        "reward": body.reward,
        "decision_id": body.decision_id,
        "source": "api",
        "user_context": body.user_context,
    }
    if body.event_id is not None:
        fields["event_id"] = body.event_id
    return RewardObserved(**fields)


async def reward_rejection_now(
    rt: Runtime, event: RewardObserved
) -> tuple[str | None, ExperimentConfig | None]:
    """``reward_rejection`` against the current config: the consumer's own rule.

    The cache may predate an arm added on another process, so a rejection is confirmed
    against Redis before it is returned (only on this rare path).
    """
    entry = rt.cache.fresh(event.experiment_id)
    if entry is None:
        entry, _ = await rt.cache.get(event.experiment_id)
    config = entry.config if entry is not None else None
    reason = reward_rejection(config, event)
    if reason is not None and reason != "bad_decision_id":
        rt.cache.invalidate(event.experiment_id)
        config = await rt.store.get_config(event.experiment_id)
        reason = reward_rejection(config, event)
    if reason is None and config is None:
        reason = "unknown_experiment"
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
    """Validate a reward against the current config, append it, answer after Kafka's ack.

    The decider never writes reward state: the reward consumer folds the log.
    """
    event = reward_event(body)
    reason, config = await reward_rejection_now(rt, event)
    if reason is not None or config is None:
        reason = reason or "unknown_experiment"
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
        event = reward_event(body)
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
        runtime: Runtime | None = getattr(self.api.state, "runtime", None)
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
            if path == "/decision" and method == "GET":
                denial = runtime.auth.check(authorization, Access.CLIENT)
                if denial is not None:
                    status_code = denial.status
                    await _respond(send, denial.status, denial.body, _denial_headers(denial, cors))
                    return
                experiment_id = _experiment_id(scope["query_string"])
                entry = None if experiment_id is None else runtime.cache.fresh(experiment_id)
                if entry is not None and experiment_id is not None:
                    # The common case, without a coroutine: a fresh cached entry.
                    body, record = decide(runtime, entry, False, experiment_id)
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
                        else await serve_decision(runtime, experiment_id)
                    )
                except RedisError as exc:
                    # Answered here, not by falling through to the route: the route would
                    # ask Redis again and double the wait (two socket timeouts against a
                    # hung Redis, found by the Redis freeze fault test).
                    log.error("redis error on GET /decision: %r", exc)
                    status_code = 503
                    await _respond(send, 503, _STORE_UNAVAILABLE, cors)
                    return
                if served is not None:
                    status_code = 200
                    await _respond(send, 200, served, cors)
                    return
            elif path == "/reward" and method == "POST":
                denial = runtime.auth.check(authorization, Access.CLIENT)
                if denial is not None:
                    status_code = denial.status
                    await _respond(send, denial.status, denial.body, _denial_headers(denial, cors))
                    return
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
            await _respond(send, 503, _STORE_UNAVAILABLE, cors)
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


def _experiment_id(query: bytes) -> str | None:
    """The (trimmed) id of a query that is exactly ``experiment_id=<valid id>``; ``None``:
    anything else, which FastAPI answers (missing or invalid id, extra parameters).

    Decoded as Starlette decodes a query (``parse_qsl`` of its latin-1 text: ``+`` is a
    space, escapes are UTF-8), so both paths read the same id.
    """
    if not query.startswith(_PREFIX) or b"&" in query:
        return None
    try:
        return normalize_id(unquote_plus(query[len(_PREFIX) :].decode("latin-1")))
    except InvalidIdError:
        return None


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
