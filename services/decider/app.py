"""The decider: the original mab-ecommerce-optimizer API over an event log.

This module only assembles the app: the routers of :mod:`services.decider.routes` (one
per resource), the exception handlers (:mod:`services.decider.errors`), the lifespan
that opens the :class:`~services.decider.runtime.Runtime`, and the raw fast path in
front (:mod:`services.decider.hot_path`). Commands are validated atomically in Redis and
acknowledged by Kafka before the 2xx, rewards are validated and logged (the reward
consumer folds them), decisions are served from memory and logged without waiting.

Run: ``python -m services.decider`` (granian) or ``uvicorn services.decider.app:app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.decider.errors import OrjsonResponse, install_error_handlers
from services.decider.hot_path import DecisionFastPath
from services.decider.routes import (
    allocation,
    decisions,
    evaluation,
    experiments,
    exposures,
    ops,
    rewards,
    stats,
)
from services.decider.runtime import attach, open_runtime
from services.decider.settings import DeciderSettings


def create_app(settings: DeciderSettings | None = None) -> FastAPI:
    """Build the app; no I/O happens until the lifespan starts (safe at import).

    ``settings``: ``None`` reads them from the environment when the lifespan starts.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings) as runtime:
            attach(app, runtime)
            yield

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
    install_error_handlers(app)
    for module in (
        ops,
        experiments,
        decisions,
        rewards,
        exposures,
        stats,
        allocation,
        evaluation,
    ):
        app.include_router(module.router)
    return app


def create_asgi(settings: DeciderSettings | None = None) -> DecisionFastPath:
    """The served ASGI app: the hot path in front of :func:`create_app`'s FastAPI app."""
    return DecisionFastPath(create_app(settings))


app = create_asgi()
