"""The decider's process-wide resources, their lifecycle, and the FastAPI dependencies.

One :class:`Runtime` per served app: settings, Redis, the config store, the Kafka
producer, the decision cache, auth, limits, metrics, readiness, the off-policy
evaluation worker and the allocation store. :func:`open_runtime` builds and starts them
in the app's lifespan and stops them in reverse order; no I/O happens before it runs, so
building the app (for its OpenAPI document, or at import under a server) is free.

Routes declare what they need with the ``Annotated`` dependencies below
(:data:`RuntimeDep`, ``dependencies=[ADMIN]``...); only
:func:`runtime_of` knows where the runtime is kept. The raw fast path
(:mod:`services.decider.hot_path`) takes the same runtime through it, so both serving
paths share every resource and every function.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Request, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from schemas.topics import TopicNames
from services.decider.allocations import AllocationStore
from services.decider.auth import OPEN_MODE_WARNING, Access, AuthPolicy
from services.decider.decisions import DecisionCache
from services.decider.evaluation import EvaluationWorker
from services.decider.limits import CorsPolicy, RateLimiter
from services.decider.metrics import DeciderMetrics
from services.decider.producer import EventProducer
from services.decider.readiness import ReadinessProbe
from services.decider.settings import DeciderSettings
from services.decider.srm import srm_gauge_loop
from services.decider.store import ConfigStore
from services.decider.units import UnitAssigner
from stream_runtime.process import JsonFormatter, freeze_startup_heap
from stream_runtime.redis_client import AnyRedis
from stream_runtime.settings import settings_errors

log = logging.getLogger("services.decider")

#: How often ``/ready`` repeats the open-mode warning in the log.
OPEN_WARNING_EVERY_S = 60.0


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
    evaluator: EvaluationWorker
    allocations: AllocationStore
    units: UnitAssigner
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


def configure_logging(level: str) -> None:
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


def load_settings(given: DeciderSettings | None) -> DeciderSettings:
    """``given``, or the settings read from the environment.

    An invalid environment is one clear critical line instead of a traceback (uvicorn
    then exits non-zero); ``python -m services.decider`` refuses the same settings
    before binding.
    """
    try:
        return given if given is not None else DeciderSettings()
    except ValidationError as exc:
        configure_logging("INFO")
        log.critical("decider not started: %s", "; ".join(settings_errors(exc, DeciderSettings)))
        raise


@asynccontextmanager
async def open_runtime(given: DeciderSettings | None = None) -> AsyncIterator[Runtime]:
    """Build and start the runtime; on exit flush Kafka, close Redis, stop the worker."""
    cfg = load_settings(given)
    configure_logging(cfg.log_level)
    redis = cfg.redis_client(health_check_interval=30)
    topics = cfg.topics
    producer = EventProducer(
        cfg.connection(),
        topics,
        send_timeout_s=cfg.kafka_send_timeout_s,
        enqueue_timeout_s=cfg.kafka_enqueue_timeout_s,
        linger_ms=cfg.kafka_linger_ms,
        max_batch_bytes=cfg.kafka_max_batch_bytes,
        decision_linger_ms=cfg.kafka_decision_linger_ms,
    )
    store = ConfigStore(redis, cfg.keys)
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
    allocations = AllocationStore(redis, cfg.keys, cache, cfg.allocation_retention_s)
    runtime = Runtime(
        cfg,
        redis,
        store,
        producer,
        cache,
        topics,
        auth=auth,
        limiter=limiter,
        cors=CorsPolicy(cfg.cors_origins),
        metrics=DeciderMetrics(lambda: producer.stats),
        readiness=ReadinessProbe(redis, producer, cfg.ready_timeout_s, cfg.ready_cache_s),
        evaluator=EvaluationWorker(),
        allocations=allocations,
        units=UnitAssigner(redis, cfg.keys, allocations, memo_entries=cfg.sticky_memo_entries),
    )
    log.info(
        "decider started",
        extra={
            "strategy": cfg.active_strategy,
            "topics": str(topics),
            "redis_prefix": cfg.mab_redis_prefix,
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
    srm_gauges = asyncio.create_task(srm_gauge_loop(store, runtime.allocations, runtime.metrics))
    try:
        yield runtime
    finally:
        srm_gauges.cancel()
        runtime.evaluator.close()
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


def attach(app: FastAPI, runtime: Runtime) -> None:
    """Make ``runtime`` the one :func:`runtime_of` returns for ``app``."""
    app.state.runtime = runtime


def runtime_of(app: FastAPI) -> Runtime | None:
    """The app's runtime; ``None`` before its lifespan started."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    return runtime


# -- FastAPI dependencies -------------------------------------------------------------------


async def get_runtime(request: Request) -> Runtime:
    """Async on purpose: a sync dependency would hop to the threadpool on every request."""
    runtime = runtime_of(request.app)
    if runtime is None:
        raise RuntimeError("the decider's lifespan has not started")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

#: The OpenAPI security scheme (Swagger's "Authorize" button). Checking is ours.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="`MAB_ADMIN_KEY` for admin calls; a `MAB_CLIENT_KEYS` key (or the admin "
    "key) for decisions and rewards; any configured key for reads; a `MAB_READ_KEYS` key "
    "(or the admin key) for evaluation. Decisions, rewards and reads are open without "
    "client keys; admin calls and evaluation only under `MAB_AUTH=open`.",
)


def _authorization(request: Request) -> bytes | None:
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def _require(need: Access) -> params.Depends:
    """A route dependency refusing requests whose key may not make ``need`` calls, with
    the same :class:`~services.decider.auth.Denial` the fast path sends."""

    async def dependency(
        request: Request,
        rt: RuntimeDep,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> None:
        denial = rt.auth.check(_authorization(request), need)
        if denial is not None:
            raise denial.http_exception()

    marker: params.Depends = Depends(dependency)
    return marker


#: Route dependencies: ``dependencies=[ADMIN]``, ``[CLIENT]``, ``[READ]``, ``[EVALUATE]``.
ADMIN = _require(Access.ADMIN)
CLIENT = _require(Access.CLIENT)
READ = _require(Access.READ)
EVALUATE = _require(Access.EVALUATE)
