"""The decider: the seed's HTTP API over an event log.

Commands (create, add arms, change strategy) are validated and applied atomically to
the experiment's config key in Redis by a Lua script, then logged as events and
acknowledged by Kafka before the 2xx; if the log refuses them the Redis write is undone.
Rewards are validated with the same rule as the consumer (``reward_rejection``) and
logged (acked) but never applied here: the reward consumer owns arm statistics.
Decisions are served from memory (see :mod:`services.decider.decisions`) and logged
without waiting for the ack.

Run: ``python -m services.decider`` (granian) or ``uvicorn services.decider.app:app``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bandit_core.state import ArmStats, ExperimentState
from bandit_core.strategies import InvalidParamsError, validate_params
from schemas.events import (
    ArmsAdded,
    ExperimentConfig,
    ExperimentCreated,
    StrategyChanged,
)
from schemas.ids import ExperimentId
from schemas.redis_keys import BucketKind, RedisKeys
from schemas.topics import TopicNames
from services.decider.auth import (
    ADMIN,
    ADMIN_RESPONSES,
    BODY_RESPONSES,
    CLIENT,
    CLIENT_RESPONSES,
    OPEN_MODE_WARNING,
    READ,
    READ_RESPONSES,
    AuthPolicy,
)
from services.decider.decisions import DecisionCache
from services.decider.errors import not_found as _not_found
from services.decider.evaluation import router as evaluation_router
from services.decider.hot_path import (
    DecisionFastPath,
    serve_decision,
    serve_reward,
    serve_rewards,
)
from services.decider.limits import CorsPolicy, RateLimiter
from services.decider.metrics import DeciderMetrics
from services.decider.models import (
    ArmsAdd,
    ArmStatsPublic,
    AttributionPublic,
    ConfigPublic,
    ConfigUpdate,
    DecisionPublic,
    ErrorPublic,
    ExperimentCreate,
    ExperimentPublic,
    HealthPublic,
    ReadyPublic,
    RewardCreate,
    RewardPublic,
    RewardsCreate,
    RewardsPublic,
    StatsPublic,
)
from services.decider.paths import EXPERIMENT, ExperimentIdPath
from services.decider.producer import EventLogUnavailableError, EventProducer
from services.decider.readiness import ReadinessProbe
from services.decider.settings import DeciderSettings
from services.decider.store import (
    ArmsExistError,
    AttributionChange,
    CommandResult,
    ConfigStore,
    ExperimentMissingError,
    TooManyArmsError,
)
from services.decider.timeseries import (
    TimeRangeError,
    TimeseriesPublic,
    build_points,
    parse_change_points,
    parse_time,
    resolve_range,
    winner_changes,
)
from stream_runtime.process import JsonFormatter, freeze_startup_heap
from stream_runtime.redis_client import AnyRedis, redis_from_url
from stream_runtime.settings import settings_errors

log = logging.getLogger("services.decider")

#: Far beyond any real number of experiments, far below Redis' 64-bit range indexes.
MAX_LIST_OFFSET = 1_000_000_000
#: How often ``/ready`` repeats the open-mode warning in the log.
OPEN_WARNING_EVERY_S = 60.0


class OrjsonResponse(JSONResponse):
    """JSON via orjson (FastAPI's ORJSONResponse is deprecated; this is the same idea)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass(slots=True)
class Runtime:
    """The process-wide resources, created in the lifespan and shared by the routes."""

    settings: DeciderSettings
    redis: AnyRedis
    store: ConfigStore
    producer: EventProducer
    cache: DecisionCache
    topics: TopicNames
    auth: AuthPolicy
    limiter: RateLimiter | None
    cors: CorsPolicy
    metrics: DeciderMetrics
    readiness: ReadinessProbe
    _command_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    _open_warned_at: float = float("-inf")

    def readiness_auth(self) -> dict[str, str]:
        """The auth mode for ``/ready``'s body; in open mode also the warning, which is
        logged too, at most once a minute (probes come every few seconds)."""
        if self.settings.auth != "open":
            return {"auth": "keys"}
        now = time.monotonic()
        if now - self._open_warned_at >= OPEN_WARNING_EVERY_S:
            self._open_warned_at = now
            log.warning(OPEN_MODE_WARNING)
        return {"auth": "open", "warning": OPEN_MODE_WARNING}

    def command_lock(self, experiment_id: str) -> asyncio.Lock:
        """Serialises the commands of one experiment in this process, from the Redis
        write to Kafka's ack. Without it two racing commands could store versions 2 and
        3 but log 3 before 2 (their Redis replies and sends interleave), and a replay of
        the experiments topic would end on the older config. Commands are rare; the
        hot path never takes it. (Several decider processes can still interleave: a
        replay must keep the highest ``config.version``, see docs/security.md.)"""
        lock = self._command_locks.get(experiment_id)
        if lock is None:
            lock = asyncio.Lock()
            self._command_locks[experiment_id] = lock
        return lock


async def get_runtime(request: Request) -> Runtime:
    """Async on purpose: a sync dependency would hop to the threadpool on every request."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ExperimentIdQuery = Annotated[
    ExperimentId,
    Query(description="The experiment to decide for (trimmed).", examples=["cta-button-test"]),
]

_E404 = {"model": ErrorPublic, "description": "No such experiment."}
_E409 = {"model": ErrorPublic, "description": "Conflicts with the stored configuration."}
_E422 = {"description": "Invalid request (ids, arms, strategy, params, reward)."}
_E503 = {"model": ErrorPublic, "description": "Redis or Kafka unavailable; safe to retry."}


def _configure_logging(level: str) -> None:
    """One JSON object per line (the stream processors' format), with ``extra=`` fields
    such as ``decision_id``; left alone when the host (pytest, an embedding app) has
    configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    log.setLevel(level)
    logging.getLogger("services").setLevel(level)


def create_app(settings: DeciderSettings | None = None) -> FastAPI:
    """Build the app; no I/O happens until the lifespan starts (safe at import)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            cfg = settings if settings is not None else DeciderSettings()
        except ValidationError as exc:
            # One clear line instead of a traceback (uvicorn then exits non-zero);
            # `python -m services.decider` refuses the same settings before binding.
            _configure_logging("INFO")
            log.critical(
                "decider not started: %s", "; ".join(settings_errors(exc, DeciderSettings))
            )
            raise
        _configure_logging(cfg.log_level)
        redis = redis_from_url(
            cfg.redis_url,
            socket_timeout=cfg.redis_socket_timeout_s,
            socket_connect_timeout=cfg.redis_socket_timeout_s,
            health_check_interval=30,
        )
        topics = TopicNames.with_prefix(cfg.topic_prefix)
        producer = EventProducer(
            cfg.connection(),
            topics,
            send_timeout_s=cfg.kafka_send_timeout_s,
            enqueue_timeout_s=cfg.kafka_enqueue_timeout_s,
            linger_ms=cfg.kafka_linger_ms,
            max_batch_bytes=cfg.kafka_max_batch_bytes,
            decision_linger_ms=cfg.kafka_decision_linger_ms,
        )
        store = ConfigStore(redis, RedisKeys(cfg.redis_prefix))
        cache = DecisionCache(
            store,
            max_staleness_s=cfg.snapshot_max_staleness_s,
            max_entries=cfg.cache_max_experiments,
            propensity_samples=cfg.propensity_samples,
            degraded_max_age_s=cfg.snapshot_degraded_max_age_s,
        )
        auth = AuthPolicy.from_settings(cfg)
        limiter = (
            RateLimiter(cfg.rate_limit_per_s, cfg.rate_limit_burst)
            if cfg.rate_limit_per_s is not None
            else None
        )
        await producer.start(cfg.kafka_start_timeout_s)
        metrics.delivery = lambda: producer.stats
        app.state.auth = auth
        app.state.runtime = Runtime(
            cfg,
            redis,
            store,
            producer,
            cache,
            topics,
            auth=auth,
            limiter=limiter,
            cors=CorsPolicy(cfg.cors_origins),
            metrics=metrics,
            readiness=ReadinessProbe(redis, producer, cfg.ready_timeout_s, cfg.ready_cache_s),
        )
        log.info(
            "decider started",
            extra={
                "strategy": cfg.active_strategy,
                "topics": str(topics),
                "redis_prefix": cfg.redis_prefix,
                "auth": cfg.auth,
                "host": cfg.api_host,
                "admin_key": auth.admin_required,
                "client_keys": auth.client_required,
                "read_keys": auth.read_keys,
                "cors_origins": cfg.cors_origins,
                "rate_limit_per_s": cfg.rate_limit_per_s,
            },
        )
        if cfg.auth == "open":
            log.warning(OPEN_MODE_WARNING)
        freeze_startup_heap()
        try:
            yield
        finally:
            await producer.stop()
            await redis.aclose()
            s = producer.stats
            log.info(
                "decider stopped",
                extra={
                    "decisions_enqueued": s.enqueued,
                    "decisions_delivered": s.delivered,
                    "decisions_failed": s.failed,
                },
            )

    app = FastAPI(
        title="MAB E-Commerce Optimizer: decider",
        version="1.0.0",
        description=(
            "Decisions and rewards for multi-armed bandit experiments. Every accepted "
            "command and reward is an event in Kafka; arm statistics are folded from the "
            "log by the reward consumer."
        ),
        default_response_class=OrjsonResponse,
        lifespan=lifespan,
    )
    metrics = DeciderMetrics()
    app.state.metrics = metrics
    _install_error_handlers(app)
    _add_routes(app)
    app.include_router(evaluation_router)
    return app


def create_asgi(settings: DeciderSettings | None = None) -> DecisionFastPath:
    """The served ASGI app: the hot path in front of :func:`create_app`'s FastAPI app."""
    return DecisionFastPath(create_app(settings))


def _install_error_handlers(app: FastAPI) -> None:
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
        return OrjsonResponse({"detail": "state store unavailable, retry"}, status_code=503)


async def _log_or_undo(rt: Runtime, result: CommandResult, event: Any, create: bool) -> None:
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


def _add_routes(app: FastAPI) -> None:
    @app.get(
        "/health",
        response_model=HealthPublic,
        tags=["ops"],
        summary="Liveness",
        description="Answers without any I/O: the process is up and serving HTTP.",
    )
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        response_model=ReadyPublic,
        tags=["ops"],
        summary="Readiness",
        description="200 only when Redis answers PING and Kafka answers a metadata request "
        "listing our topics, each within the ready timeout (1 s); else 503 naming the failure. "
        "The verdict is reused for `MAB_READY_CACHE_S` (1 s), so probes cannot amplify load. "
        "`auth` says whether admin calls need the admin key (`keys`) or not (`open`, with a "
        "`warning`).",
        responses={
            503: {
                "model": ReadyPublic,
                "description": "A dependency is down.",
                "content": {
                    "application/json": {
                        "example": {
                            "status": "not_ready",
                            "redis": "ok",
                            "kafka": "no metadata within 1.0s",
                            "auth": "keys",
                        }
                    }
                },
            }
        },
    )
    async def ready(rt: RuntimeDep) -> Response:
        body = await rt.readiness.verdict()
        code = 200 if body["status"] == "ready" else 503
        return OrjsonResponse({**body, **rt.readiness_auth()}, status_code=code)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        description="Request latency histograms per route, decisions per strategy, rewards "
        "per outcome, decision-event delivery counters and process metrics, in the "
        "Prometheus text format. Open like /health: restrict it by network in production.",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        registry = request.app.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/experiments",
        status_code=status.HTTP_201_CREATED,
        response_model=ExperimentPublic,
        tags=["experiments"],
        summary="Create an experiment",
        description="Validates ids, arms and strategy params, stores the config atomically "
        "(exactly one of many racing creates wins) and logs `ExperimentCreated`; the 201 "
        "comes after Kafka's ack. Nothing is stored when validation fails.",
        responses={409: _E409, 422: _E422, 503: _E503, **ADMIN_RESPONSES, **BODY_RESPONSES},
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
        )
        async with rt.command_lock(config.experiment_id):
            result = await rt.store.create(config)
            if result is None:
                raise HTTPException(
                    status.HTTP_409_CONFLICT, f"experiment {body.experiment_id!r} already exists"
                )
            await rt.store.add_to_index(config)
            event = ExperimentCreated(experiment_id=config.experiment_id, ts=now, config=config)
            await _log_or_undo(rt, result, event, create=True)
        return ExperimentPublic.of(config)

    @app.get(
        "/experiments",
        response_model=list[ExperimentPublic],
        tags=["experiments"],
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
        return [ExperimentPublic.of(c) for c in await rt.store.list_configs(offset, limit)]

    @app.get(
        EXPERIMENT,
        response_model=ExperimentPublic,
        tags=["experiments"],
        summary="Get an experiment",
        description="The stored configuration (arms in insertion order, strategy, params).",
        responses={404: _E404, **READ_RESPONSES},
        dependencies=[READ],
    )
    async def get_experiment(experiment_id: ExperimentIdPath, rt: RuntimeDep) -> ExperimentPublic:
        config = await rt.store.get_config(experiment_id)
        if config is None:
            raise _not_found(experiment_id)
        return ExperimentPublic.of(config)

    @app.post(
        f"{EXPERIMENT}/arms",
        response_model=ExperimentPublic,
        tags=["experiments"],
        summary="Add arms",
        description="Appends new arms atomically (concurrent calls never lose an arm) and "
        "logs `ArmsAdded`. 409 if any arm already exists; 422 beyond `MAB_MAX_ARMS` "
        "(default 1000) arms. "
        "Existing statistics are untouched.",
        responses={
            404: _E404,
            409: _E409,
            422: _E422,
            503: _E503,
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
                raise _not_found(experiment_id) from None
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
            event = ArmsAdded(
                experiment_id=experiment_id,
                ts=result.config.updated_ts,
                added_arm_ids=tuple(body.arm_ids),
                config=result.config,
            )
            await _log_or_undo(rt, result, event, create=False)
        return ExperimentPublic.of(result.config)

    @app.post(
        "/config",
        response_model=ConfigPublic,
        tags=["experiments"],
        summary="Hot-swap the strategy",
        description="Changes strategy and params atomically and logs `StrategyChanged`. "
        "Arm statistics are strategy-independent, so no data is lost.",
        responses={404: _E404, 422: _E422, 503: _E503, **ADMIN_RESPONSES, **BODY_RESPONSES},
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
                result = await rt.store.set_strategy(
                    body.experiment_id, body.strategy, params, attribution
                )
            except ExperimentMissingError:
                raise _not_found(body.experiment_id) from None
            previous = ExperimentConfig.model_validate_json(result.previous_raw)
            event = StrategyChanged(
                experiment_id=body.experiment_id,
                ts=result.config.updated_ts,
                previous_strategy=previous.strategy,
                previous_params=previous.strategy_params,
                config=result.config,
            )
            await _log_or_undo(rt, result, event, create=False)
        c = result.config
        return ConfigPublic(
            experiment_id=c.experiment_id,
            strategy=c.strategy,
            strategy_params=dict(c.strategy_params),
            version=c.version,
            attribution_window_s=c.attribution_window_s,
            default_reward=None if c.attribution_window_s is None else c.default_reward,
        )

    @app.get(
        "/decision",
        response_model=DecisionPublic,
        tags=["decisions"],
        summary="Choose an arm for one visitor",
        description="The hot path: served from an in-process snapshot at most "
        "`snapshot_max_staleness_s` old (a cache miss reads Redis, so a new experiment "
        "is decidable at once). Logs `DecisionMade` with its id and propensity without "
        "waiting for Kafka. Send `decision_id` back with the reward.",
        responses={404: _E404, 422: _E422, 503: _E503, **CLIENT_RESPONSES},
        dependencies=[CLIENT],
    )
    async def decide(experiment_id: ExperimentIdQuery, rt: RuntimeDep) -> Response:
        # Well-formed requests are normally answered by DecisionFastPath with this same
        # function; the route serves the docs, validation errors and 404/503.
        body = await serve_decision(rt, experiment_id)
        if body is None:
            raise _not_found(experiment_id)
        return Response(body, media_type="application/json")

    @app.post(
        "/reward",
        response_model=RewardPublic,
        tags=["decisions"],
        summary="Report a reward",
        description="Validates the reward against the current config (same rule as the "
        "consumer), logs `RewardObserved` and answers after Kafka's ack; statistics are "
        "updated asynchronously by the reward consumer. With `decision_id` the reward "
        "joins its decision, counts once, and must name the decision's arm.",
        responses={
            404: _E404,
            422: _E422,
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
        # Well-formed JSON bodies are normally answered by DecisionFastPath with this
        # same function; the route serves the docs and FastAPI's validation errors.
        return await serve_reward(rt, body)

    @app.post(
        "/rewards",
        response_model=RewardsPublic,
        tags=["decisions"],
        summary="Report a batch of rewards",
        description="Up to `MAB_MAX_REWARD_BATCH` (default 1000) rewards, each validated "
        "exactly like `POST /reward`. All or nothing: if any item is invalid, nothing is "
        "logged and the 422 lists every failing item as `{index, loc, msg, type}` (`type` "
        "is the validation error or the rejection reason, e.g. `unknown_arm`). Otherwise "
        "the answer comes after Kafka acknowledged every reward.",
        responses={
            422: _E422,
            503: {
                "model": ErrorPublic,
                "description": "Not all recorded; retry with the same event_ids to stay "
                "idempotent.",
            },
            **CLIENT_RESPONSES,
            **BODY_RESPONSES,
        },
        dependencies=[CLIENT],
    )
    async def rewards(body: RewardsCreate, rt: RuntimeDep) -> RewardsPublic:
        return await serve_rewards(rt, body.rewards)

    @app.get(
        f"{EXPERIMENT}/stats",
        response_model=StatsPublic,
        tags=["experiments"],
        summary="Arm statistics",
        description="Per arm in config order: rewards observed (pulls), reward sum, mean, "
        "decisions served and the current propensity; read fresh from Redis (no cache).",
        responses={404: _E404, **READ_RESPONSES},
        dependencies=[READ],
    )
    async def stats(experiment_id: ExperimentIdPath, rt: RuntimeDep) -> StatsPublic:
        config_raw, snap_raw = await rt.store.get_config_and_snapshot(experiment_id)
        if config_raw is None:
            raise _not_found(experiment_id)

        def parse() -> tuple[ExperimentConfig, ExperimentState, list[ArmStats], list[float]]:
            config = ExperimentConfig.model_validate_json(config_raw)
            state = ExperimentState.from_snapshot(snap_raw, experiment_id)
            arm_stats = state.stats_for(config.arm_ids)
            return config, state, arm_stats, rt.cache.propensities(config, arm_stats, time.time())

        # O(arms) parsing and Monte Carlo: a catalogue-sized experiment takes tens of
        # milliseconds, which must not stall the decisions served by this event loop.
        config, state, arm_stats, props = await asyncio.to_thread(parse)
        return StatsPublic(
            experiment_id=experiment_id,
            strategy=config.strategy,
            strategy_params=dict(config.strategy_params),
            config_version=config.version,
            snapshot_version=state.version,
            arms=[
                ArmStatsPublic(
                    arm_id=a,
                    pulls=s.pulls,
                    reward_sum=s.reward_sum,
                    mean=s.mean,
                    decisions=s.decisions,
                    propensity=p,
                )
                for a, s, p in zip(config.arm_ids, arm_stats, props, strict=True)
            ],
            propensities=dict(zip(config.arm_ids, props, strict=True)),
            attribution=None
            if config.attribution_window_s is None
            and not (state.pending_count or state.defaulted or state.late or state.untracked)
            else AttributionPublic(
                window_s=config.attribution_window_s,
                pending=state.pending_count,
                defaulted=state.defaulted,
                late=state.late,
                untracked=state.untracked,
            ),
        )

    @app.get(
        f"{EXPERIMENT}/timeseries",
        response_model=TimeseriesPublic,
        response_model_by_alias=True,
        tags=["experiments"],
        summary="Per-hour (or per-minute) performance per arm",
        description="Served from the projector's buckets (bucketed by each event's own "
        "time, UTC): per bucket and arm the decisions, applied rewards, reward sum, "
        "conversion rate and traffic share, plus detected change points and the buckets "
        "where the winning arm changed (highest conversion rate among arms with at least "
        "20 rewards). `from`/`to`: unix seconds or ISO 8601, default the last 48 hours "
        "(hour) or 60 minutes (minute); at most 31 days (hour) or 24 hours (minute) "
        "apart. Contract: docs/timeseries-api.md.",
        responses={404: _E404, 422: _E422, 503: _E503, **READ_RESPONSES},
        dependencies=[READ],
    )
    async def timeseries(
        experiment_id: ExperimentIdPath,
        rt: RuntimeDep,
        bucket: Annotated[
            BucketKind, Query(description="Bucket width: `hour` or `minute`.")
        ] = "hour",
        from_: Annotated[
            str | None,
            Query(
                alias="from",
                max_length=64,
                description="Start: unix seconds or ISO 8601 (naive = UTC).",
                examples=["2026-11-27T09:00:00Z"],
            ),
        ] = None,
        to: Annotated[
            str | None,
            Query(max_length=64, description="End (exclusive): unix seconds or ISO 8601."),
        ] = None,
    ) -> Response:
        try:
            lo, hi = resolve_range(
                bucket, parse_time(from_, "from"), parse_time(to, "to"), time.time()
            )
        except TimeRangeError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        read = await rt.store.read_timeseries(experiment_id, bucket, lo, hi)
        config_raw = read.config_raw
        if config_raw is None:
            raise _not_found(experiment_id)

        def render() -> bytes:
            config = ExperimentConfig.model_validate_json(config_raw)
            points = build_points(config.arm_ids, read.buckets)
            public = TimeseriesPublic(
                experiment_id=experiment_id,
                bucket=bucket,
                from_=lo,
                to=hi,
                arm_ids=list(config.arm_ids),
                points=points,
                change_points=parse_change_points(read.change_points),
                winner_changes=winner_changes(points),
            )
            return orjson.dumps(public.model_dump(mode="json", by_alias=True))

        # One point per bucket and arm: 1,000 arms over 48 hours are 48,000 points, whose
        # building and encoding would stall this event loop's decisions for a while.
        return Response(await asyncio.to_thread(render), media_type="application/json")


app = create_asgi()
