"""Session fixtures for a real Kafka + Redis, and per-test namespaces that keep tests apart.

Public fixtures:

* ``kafka_bootstrap`` (session, ``str``): ``host:port`` of a real broker.
* ``redis_url`` (session, ``str``): ``redis://:password@host:port/0`` of a real Redis
  (the password is part of the URL; ``MAB_TEST_REDIS_URL`` is used as given).
* ``redis`` (function, ``redis.asyncio.Redis``): a client of that Redis, closed after the test.
* ``drop_namespace`` (function): after the test, every Redis key under ``ns`` is deleted
  (for workloads whose dedupe keys weigh tens of MB that nothing else needs).
* ``ns`` (function, ``str``): a unique prefix like ``t1a2b3c4d-``; use it for topic names,
  consumer group ids and Redis keys so parallel or repeated tests never see each other's data.
* ``topics`` (function, ``dict[str, int]``): the product's topics created under ``ns``
  (``schemas.topics.topic_specs(ns)``), name → partition count.
* ``live`` (function, :class:`~tests.fixtures.streams.LiveNamespace`): ``kafka_bootstrap``,
  ``redis_url``, ``ns``, ``topics`` and ``redis`` in one, for tests that feed the product
  topics and run processors against them.
* ``secure_kafka`` (session, :class:`~tests.fixtures.secure_kafka.SecureKafka`): a second
  local broker whose product listener is SASL_SSL (SCRAM-SHA-512, a CA made in the test).

The stack starts only when one of these is requested (see tests/fixtures/stack.py).

Every test carries exactly one tier marker, the name of its folder (tests/README.md):
collection fails otherwise, so ``pytest -m unit`` can never miss or mislabel a test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from deploy.stack.topics import create_topics, product_topic_specs
from tests.fixtures.secure_kafka import SecureKafka, secure_kafka_stack
from tests.fixtures.stack import StackProvider
from tests.fixtures.streams import LiveNamespace

TIERS = ("unit", "integration", "e2e", "faults")
TESTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test without its tier marker, with two, or with one naming another folder."""
    wrong = []
    for item in items:
        if not item.path.is_relative_to(TESTS_DIR):
            continue
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        folder = item.path.relative_to(TESTS_DIR).parts[0]
        if tiers != [folder]:
            wrong.append(f"{item.nodeid}: tier markers {tiers or 'none'}, folder {folder!r}")
    if wrong:
        raise pytest.UsageError(
            "each test needs exactly one tier marker, the name of its folder "
            "(tests/README.md):\n  " + "\n  ".join(wrong)
        )


@pytest.fixture(scope="session")
def stack_provider() -> Iterator[StackProvider]:
    provider = StackProvider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_provider: StackProvider) -> str:
    return stack_provider.kafka_bootstrap()


@pytest.fixture(scope="session")
def redis_url(stack_provider: StackProvider) -> str:
    return stack_provider.redis_url()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def drop_namespace(redis: Redis, ns: str) -> AsyncIterator[None]:
    yield
    async for key in redis.scan_iter(match=f"{ns}*", count=1000):
        await redis.delete(key)


@pytest.fixture
def ns() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def topics(kafka_bootstrap: str, ns: str) -> dict[str, int]:
    return create_topics(kafka_bootstrap, product_topic_specs(ns))


@pytest.fixture
def live(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], redis: Redis
) -> LiveNamespace:
    return LiveNamespace(kafka_bootstrap, redis_url, ns, topics, redis)


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    with secure_kafka_stack(tmp_path_factory.mktemp("secure-kafka")) as kafka:
        yield kafka
