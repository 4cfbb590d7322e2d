"""Fixtures shared by the integration tests: the decider's HTTP API, a private
password-protected Redis, and the engine's Redis state store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack
from deploy.stack.secrets import REDIS_PASSWORD_FILE
from services.decider.app import create_asgi
from services.decider.hot_path import DecisionFastPath
from services.decider.settings import DeciderSettings
from tests.fixtures.engines import Stores
from tests.fixtures.in_process import on_namespace

#: ``decider_settings(**overrides)``: the settings of a decider on this test's namespace.
SettingsFactory = Callable[..., DeciderSettings]


@contextlib.asynccontextmanager
async def serve_decider(
    settings: DeciderSettings, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, DecisionFastPath]]:
    """The served decider app (hot path in front of FastAPI) in-process, with its client."""
    asgi = create_asgi(settings)
    async with (
        asgi.api.router.lifespan_context(asgi.api),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi),
            base_url="http://decider",
            timeout=30,
            headers=headers,
        ) as c,
    ):
        yield c, asgi


@contextlib.asynccontextmanager
async def both_paths(
    settings: DeciderSettings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two clients of one running decider: the served app (hot path in front of FastAPI)
    and the FastAPI app alone, so one request can be sent down each serving path."""
    async with (
        serve_decider(settings) as (served, asgi),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi.api), base_url="http://decider", timeout=30
        ) as routes,
    ):
        yield served, routes


@pytest.fixture
def decider_settings(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> SettingsFactory:
    def make(**overrides: Any) -> DeciderSettings:
        if "admin_key" not in overrides:
            # Open mode without an admin key: the in-process app is on no network at all.
            overrides.setdefault("auth", "open")
        return DeciderSettings(**{**on_namespace(kafka_bootstrap, redis_url, ns), **overrides})

    return make


@pytest_asyncio.fixture
async def client(decider_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The served decider app in open mode (no API keys, like the original API) on the
    real Kafka + Redis."""
    async with serve_decider(decider_settings()) as (c, _):
        yield c


#: Spaces, quotes, a backslash and URL-reserved characters: quoting and encoding matter.
LOCKED_PASSWORD = 'p@ss:w/rd "quoted" \\ 100% été'


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[LocalStack]:
    """A private Redis (nothing else) whose stored password is :data:`LOCKED_PASSWORD`,
    for tests of clients with a wrong, missing or differently given password."""
    stack = LocalStack(StackConfig.throwaway(), services=[])
    path = stack.config.run_dir / REDIS_PASSWORD_FILE
    path.write_text(LOCKED_PASSWORD + "\n", encoding="utf-8")
    path.chmod(0o600)
    try:
        stack.start_redis()
        yield stack
    finally:
        stack.down()


@pytest.fixture
def stores(redis: Redis) -> Stores:
    """The processor suites' state on the real Redis, whose Lua scripts make the checks
    (tests/unit/conftest.py gives the same suites the memory store)."""
    return Stores("redis", redis)
