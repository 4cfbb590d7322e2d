"""Group commit of acked records (rewards, commands) on a real broker.

The decider produces every acked record handed in during one event-loop iteration as one
group (``EventProducer._produce_group``). These tests pin what a group must never do:
answer a caller whose record Kafka did not acknowledge, or fail a caller whose record it
did. The broker refuses records for real: a topic whose ``max.message.bytes`` is smaller
than any record batch rejects every write (``MESSAGE_TOO_LARGE``).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.harness import topic_count
from deploy.stack.topics import create_topics
from schemas.topics import TopicNames, TopicSpec, topic_specs
from services.decider import runtime as runtime_module
from services.decider.producer import EventLogUnavailableError, EventProducer
from services.decider.settings import DeciderSettings
from tests.fixtures.in_process import on_namespace
from tests.integration.conftest import SettingsFactory, serve_decider

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Any record batch is larger than this: the broker refuses it (MESSAGE_TOO_LARGE).
REFUSING = {"max.message.bytes": "64"}
SEND_TIMEOUT_S = 1.0


def refusing_topic(bootstrap: str, name: str) -> str:
    create_topics(bootstrap, [TopicSpec(name, 1, dict(REFUSING))])
    return name


async def test_one_group_answers_each_record_by_its_own_ack(
    kafka_bootstrap: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: 12 callers publish concurrently in the same loop iteration, 8 to a healthy
    topic and 4 to a topic the broker refuses, so their records form one group.
    We expect: one group; the 8 return after their acks and their records are in the
    topic; exactly the 4 others raise EventLogUnavailableError, and none of their records
    is in the refusing topic."""
    names = TopicNames.with_prefix(ns)
    bad = refusing_topic(kafka_bootstrap, f"{ns}refusing")
    producer = EventProducer(
        kafka_bootstrap,
        names,
        send_timeout_s=SEND_TIMEOUT_S,
        enqueue_timeout_s=1.0,
        linger_ms=5,
    )
    await producer.start(30)
    try:
        groups_before = producer.groups
        calls = [
            producer.publish_many(
                bad if i % 3 == 0 else names.rewards, [(b"exp-%d" % i, b'{"i": %d}' % i)]
            )
            for i in range(12)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert producer.groups == groups_before + 1
    finally:
        await producer.stop()
    failed = [i for i, o in enumerate(outcomes) if o is not None]
    assert failed == [0, 3, 6, 9]
    assert all(isinstance(outcomes[i], EventLogUnavailableError) for i in failed)
    assert await asyncio.to_thread(topic_count, kafka_bootstrap, names.rewards) == 8
    assert await asyncio.to_thread(topic_count, kafka_bootstrap, bad) == 0


async def test_no_200_for_a_reward_kafka_did_not_ack(
    kafka_bootstrap: str, redis_url: str, ns: str
) -> None:
    """Scenario: the rewards topic refuses every write (the experiments topic is healthy);
    20 clients POST /reward at once while 4 admin calls create experiments, so rewards
    and commands share groups.
    We expect: every reward answered 503 with the documented body (none 200), nothing in
    the rewards topic; every create answered 201 and logged: a refused record fails
    exactly the requests it belongs to."""
    names = TopicNames.with_prefix(ns)
    create_topics(
        kafka_bootstrap,
        [s for s in topic_specs(ns) if s.name != names.rewards]
        + [TopicSpec(names.rewards, 3, dict(REFUSING))],
    )
    # Not the decider_settings fixture: its topics would be created before this one's.
    settings = DeciderSettings(
        **on_namespace(kafka_bootstrap, redis_url, ns),
        kafka_send_timeout_s=SEND_TIMEOUT_S,
        auth="open",
    )
    async with serve_decider(settings) as (client, _):
        created = await client.post(
            "/experiments", json={"experiment_id": "shop", "arm_ids": ["a", "b"]}
        )
        assert created.status_code == 201, created.text

        async def reward(i: int) -> httpx.Response:
            body = {"experiment_id": "shop", "arm_id": "ab"[i % 2], "reward": 1.0}
            return await client.post("/reward", json=body)

        async def create(i: int) -> httpx.Response:
            return await client.post(
                "/experiments", json={"experiment_id": f"shop-{i}", "arm_ids": ["a", "b"]}
            )

        answers = await asyncio.gather(
            *(reward(i) for i in range(20)), *(create(i) for i in range(4))
        )
    rewards, creates = answers[:20], answers[20:]
    assert [r.status_code for r in rewards] == [503] * 20
    assert all(
        r.json() == {"detail": "reward not recorded: event log unavailable, retry"} for r in rewards
    )
    assert [r.status_code for r in creates] == [201] * 4, [r.text for r in creates]
    assert await asyncio.to_thread(topic_count, kafka_bootstrap, names.rewards) == 0
    assert await asyncio.to_thread(topic_count, kafka_bootstrap, names.experiments) == 5


async def test_concurrent_rewards_share_groups_and_all_land(
    kafka_bootstrap: str, ns: str, topics: dict[str, int], decider_settings: SettingsFactory
) -> None:
    """Scenario: 40 clients POST /reward at once on a healthy broker.
    We expect: 40 answers 200, fewer groups than rewards (they were committed together),
    and exactly 40 records in the rewards topic."""
    names = TopicNames.with_prefix(ns)
    async with serve_decider(decider_settings()) as (client, asgi):
        created = await client.post(
            "/experiments", json={"experiment_id": "shop", "arm_ids": ["a", "b"]}
        )
        assert created.status_code == 201, created.text
        producer = asgi.api.state.runtime.producer
        groups_before = producer.groups
        answers = await asyncio.gather(
            *(
                client.post("/reward", json={"experiment_id": "shop", "arm_id": "a", "reward": 1.0})
                for _ in range(40)
            )
        )
        groups = producer.groups - groups_before
    assert [r.status_code for r in answers] == [200] * 40
    assert 1 <= groups < 40
    assert await asyncio.to_thread(topic_count, kafka_bootstrap, names.rewards) == 40


async def test_the_started_decider_freezes_its_start_up_heap(
    decider_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: the decider's lifespan runs against the real broker and Redis.
    We expect: the start-up heap is frozen once, before the first request (full
    collections over it held POST /reward for 60-100 ms; see
    ``stream_runtime.process.freeze_startup_heap``), and the app then serves."""
    calls: list[str] = []
    monkeypatch.setattr(runtime_module, "freeze_startup_heap", lambda: calls.append("frozen"))
    async with serve_decider(decider_settings()) as (client, _):
        assert calls == ["frozen"]
        assert (await client.get("/health")).status_code == 200
    assert calls == ["frozen"]
