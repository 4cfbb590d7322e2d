"""Fixtures shared by the integration tests of the decider's HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from services.decider.app import create_asgi
from services.decider.settings import DeciderSettings


@pytest_asyncio.fixture
async def client(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> AsyncIterator[httpx.AsyncClient]:
    """The served decider app (hot path in front of FastAPI) on the real Kafka + Redis."""
    settings = DeciderSettings(
        redis_url=redis_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=ns,
        redis_prefix=ns,
    )
    asgi = create_asgi(settings)
    async with (
        asgi.api.router.lifespan_context(asgi.api),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi), base_url="http://decider", timeout=30
        ) as c,
    ):
        yield c
