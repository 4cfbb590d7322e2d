"""The local stack really works: a broker that stores and serves records across a restart, a
Redis that answers, and topic creation that can be repeated safely."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack
from deploy.stack.topics import create_topics

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Spec:
    """A TopicSpec-shaped value, so these tests do not depend on the product's topic list."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"exp-1")
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        out: list[bytes] = []
        async with asyncio.timeout(30):
            while len(out) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(r.value for r in records if r.value is not None)
        return out
    finally:
        await consumer.stop()


async def test_produce_consume_and_redis_roundtrip(
    kafka_bootstrap: str, redis_url: str, ns: str
) -> None:
    topic = f"{ns}roundtrip"
    counts = create_topics(kafka_bootstrap, [Spec(topic, 2)])
    assert counts == {topic: 2}
    values = [f"event-{i}".encode() for i in range(10)]
    await _produce(kafka_bootstrap, topic, values)
    assert await _consume_all(kafka_bootstrap, topic, 2, len(values)) == values

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.hset(f"{ns}arm", mapping={"pulls": 3, "reward_sum": "1.5"})
        assert await client.hgetall(f"{ns}arm") == {b"pulls": b"3", b"reward_sum": b"1.5"}
    finally:
        await client.aclose()


def test_topic_creation_is_idempotent(kafka_bootstrap: str, ns: str) -> None:
    specs = [Spec(f"{ns}a", 3), Spec(f"{ns}b", 1, {"retention.ms": "-1"})]
    first = create_topics(kafka_bootstrap, specs)
    second = create_topics(kafka_bootstrap, specs)
    assert first == second == {f"{ns}a": 3, f"{ns}b": 1}


def test_product_topics_fixture(topics: dict[str, int], ns: str) -> None:
    assert topics
    assert all(name.startswith(ns) and n >= 1 for name, n in topics.items())


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A broker of this test alone: it gets stopped and restarted, others must not notice."""
    stack = LocalStack(StackConfig.throwaway(tmp_path), services=[])
    try:
        yield stack
    finally:
        stack.down()


async def test_records_survive_a_broker_restart(own_stack: LocalStack) -> None:
    """Scenario: records are acknowledged, the broker is stopped and started on the same data
    dir. We expect every acknowledged record back, in order, and the topic still there."""
    await asyncio.to_thread(own_stack.start_kafka)
    topic = f"restart-{uuid.uuid4().hex[:6]}"
    create_topics(own_stack.bootstrap, [Spec(topic, 1)])
    values = [f"r{i}".encode() for i in range(20)]
    await _produce(own_stack.bootstrap, topic, values)

    first_pid = own_stack.kafka.pid()
    assert own_stack.stop("kafka")
    assert own_stack.kafka.pid() is None
    await asyncio.to_thread(own_stack.start_kafka)
    assert own_stack.kafka.pid() not in (None, first_pid)

    assert await _consume_all(own_stack.bootstrap, topic, 1, len(values)) == values
    assert create_topics(own_stack.bootstrap, [Spec(topic, 1)]) == {topic: 1}
